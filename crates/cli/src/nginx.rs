//! Rendering an nginx.conf that runs the filter in ngx_wasm_module (nginx built with Kong's
//! Wasm module, which Kong itself runs on).
//!
//! ngx_wasm_module differs from Envoy where the filter must know it (see `docs/gateways.md`),
//! so the rendered filter configuration states the host (`host`) and the metric-name cap the
//! `metrics {}` block sets (`max_metric_name_bytes`), and the location is set up so that the
//! filter can read what it meters: bodies stay in memory, responses are not buffered.
//!
//! Every argument that comes from the user is written as a single-quoted nginx string
//! ([`quote`]), so no path or configuration text can end a directive early.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};
use tokenmeter_core::config::host::{HostKind, NGINX_SUMMARY_PROPERTY};
use tokenmeter_core::config::{Config, ConfigError, MIN_METRIC_NAME_BYTES};
use tokenmeter_core::series::metrics;

/// The module name `nginx-config` uses unless told otherwise.
pub const DEFAULT_NAME: &str = "tokenmeter";

/// ngx_wasm_module's default `max_metric_name_length`, its prefix included.
pub const DEFAULT_MAX_METRIC_NAME_LENGTH: usize =
    tokenmeter_core::config::host::NGX_METRIC_NAME_LENGTH;

/// The size of the `shm_kv` zone: each value a capped dimension admits is one small entry
/// (about 256 bytes of slab with its key), so 1 MiB holds the default caps several times.
pub const SHM_KV_SIZE: &str = "1m";

/// Where nginx listens, where it forwards, and what it loads.
#[derive(Debug, Clone)]
pub struct NginxSpec {
    /// The `module` name, which ngx_wasm_module also puts in every metric name (`pw:NAME:`).
    pub name: String,
    pub wasm_path: String,
    pub listen_host: String,
    pub listen_port: u16,
    pub upstream_host: String,
    pub upstream_port: u16,
    /// Speak TLS to the upstream (with SNI and `Host` set to the upstream host).
    pub upstream_tls: bool,
    /// The `metrics { max_metric_name_length }` nginx is given.
    pub max_metric_name_length: usize,
    /// Write an access log with each request's usage summary to this path.
    pub access_log: Option<String>,
}

/// A configuration or argument the nginx rendering cannot use; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("the filter configuration is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("the filter configuration must be a JSON object")]
    NotObject,
    #[error("host must be an object, e.g. {{\"kind\": \"nginx\"}}")]
    HostNotObject,
    #[error("host.kind is {0}, but this configuration is for nginx: remove host.kind or set it to \"nginx\"")]
    WrongHost(String),
    #[error("--name {0:?} cannot name an nginx module: use letters, digits, '_' and '-' (e.g. \"tokenmeter\")")]
    BadName(String),
    #[error("--max-metric-name-length {length} leaves {left} bytes after ngx_wasm_module's {prefix:?} prefix; the filter needs at least {MIN_METRIC_NAME_BYTES}: raise --max-metric-name-length to {} or more", MIN_METRIC_NAME_BYTES + prefix.len())]
    NameLengthTooSmall {
        length: usize,
        left: usize,
        prefix: String,
    },
    #[error("max_metric_name_bytes is {given}, but --max-metric-name-length {length} leaves only {fits} after ngx_wasm_module's {prefix:?} prefix (longer names trap there): lower max_metric_name_bytes to {fits}, remove it, or raise --max-metric-name-length")]
    NameCapTooLarge {
        given: u64,
        fits: usize,
        length: usize,
        prefix: String,
    },
    #[error("--access-log writes the usage summary from an nginx variable, but host.summary_property is {0:?}: set it to \"ngx.NAME\" (e.g. \"ngx.tokenmeter\") or leave it out")]
    NoSummaryVariable(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The prefix ngx_wasm_module adds to each metric name of the module `name`, which counts
/// against `max_metric_name_length`.
pub fn metric_prefix(name: &str) -> String {
    format!("pw:{name}:")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The filter configuration as nginx will pass it: the user's `text` with the `host` keys
/// and `max_metric_name_bytes` nginx needs added where the user has not set them, as one
/// line of JSON, and its parse (with the metric-name cap settled, as the filter does at
/// start, so a configuration whose names cannot fit is refused here too).
pub fn filter_config(text: &str, spec: &NginxSpec) -> Result<(String, Config), NginxError> {
    if !valid_name(&spec.name) {
        return Err(NginxError::BadName(spec.name.clone()));
    }
    let prefix = metric_prefix(&spec.name);
    let fits = spec.max_metric_name_length.saturating_sub(prefix.len());
    if fits < MIN_METRIC_NAME_BYTES {
        return Err(NginxError::NameLengthTooSmall {
            length: spec.max_metric_name_length,
            left: fits,
            prefix,
        });
    }
    let mut v: Value = serde_json::from_str(text).map_err(NginxError::NotJson)?;
    let obj = v.as_object_mut().ok_or(NginxError::NotObject)?;
    let host = obj
        .entry("host")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or(NginxError::HostNotObject)?;
    if let Some(kind) = host.get("kind") {
        // "auto" settles on nginx there; anything else is the parse's to refuse.
        if kind.as_str() == Some(HostKind::Envoy.as_str()) {
            return Err(NginxError::WrongHost(kind.to_string()));
        }
    }
    for (key, value) in [
        ("kind", json!(HostKind::Nginx.as_str())),
        // The rendered `wasm {}` block declares the zone shared data needs.
        ("shared_data", json!(true)),
        ("summary_property", json!(NGINX_SUMMARY_PROPERTY)),
    ] {
        host.entry(key).or_insert(value);
    }
    match obj.get("max_metric_name_bytes").and_then(Value::as_u64) {
        Some(given) if given > fits as u64 => {
            return Err(NginxError::NameCapTooLarge {
                given,
                fits,
                length: spec.max_metric_name_length,
                prefix,
            })
        }
        Some(_) => {}
        // Absent, or not a number (the parse names that field).
        None => {
            obj.entry("max_metric_name_bytes").or_insert(json!(fits));
        }
    }
    let text = v.to_string();
    let mut config = Config::parse(text.as_bytes())?;
    metrics::settle_name_cap(&mut config, None)?;
    if spec.access_log.is_some() && summary_variable(&config).is_none() {
        return Err(NginxError::NoSummaryVariable(
            config.host.summary_property().unwrap_or("").to_string(),
        ));
    }
    Ok((text, config))
}

/// The nginx variable the access-log summary is written to (`$NAME` for `ngx.NAME`).
pub fn summary_variable(config: &Config) -> Option<&str> {
    config.host.summary_property()?.strip_prefix("ngx.")
}

/// `s` as a single-quoted nginx string: nginx reads `\\` as `\` and `\'` as `'` there (and
/// `\n`, `\t`, `\r` as control characters, which escaping every backslash also prevents).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A size for nginx: in kilobytes when it is a whole number of them.
fn size(bytes: usize) -> String {
    if bytes % 1024 == 0 {
        format!("{}k", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The access log line, one JSON object per request: the same keys as Envoy's
/// ([`crate::bootstrap::ACCESS_LOG_FIELDS`]) from nginx's variables; `None` is the summary
/// variable. nginx has no route name; the matching `server_name` stands in.
pub const ACCESS_LOG_FIELDS: &[(&str, Option<&str>)] = &[
    ("time", Some("$time_iso8601")),
    ("method", Some("$request_method")),
    ("path", Some("$request_uri")),
    ("status", Some("$status")),
    ("route", Some("$server_name")),
    ("upstream", Some("$upstream_addr")),
    ("request_id", Some("$request_id")),
    ("user_agent", Some("$http_user_agent")),
    ("tokenmeter", None),
];

/// The `log_format` string (before nginx quoting), writing `$var` for the summary.
pub fn access_log_format(var: &str) -> String {
    let fields: Vec<String> = ACCESS_LOG_FIELDS
        .iter()
        .map(|(k, v)| {
            let value = v.map_or_else(|| format!("${var}"), str::to_string);
            format!("\"{k}\":\"{value}\"")
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Kong's Prometheus plugin reads each label out of ngx_wasm_module's metric names with a Lua
/// pattern (`string.find`, the second capture being the value) from the filter's
/// `NAME.meta.json`. This is the `(label=\.=(.*?);\.;)` rule in Lua's syntax, with the dot
/// before the first label taken into the match so that the name Kong keeps (everything
/// before the first label) does not end in one.
pub fn kong_label_pattern(label: &str) -> String {
    format!("(%.?{label}=%.=(.-);%.;)")
}

/// The filter's `NAME.meta.json` for Kong: the label patterns of every label under `config`,
/// one a line.
pub fn kong_meta_json(config: &Config) -> String {
    let patterns: Vec<String> = crate::bootstrap::label_names(config)
        .iter()
        .map(|l| {
            format!(
                "  {{\"label\": {}, \"pattern\": {}}}",
                crate::bootstrap::q(l),
                crate::bootstrap::q(&kong_label_pattern(l))
            )
        })
        .collect();
    format!(
        "{{\"metrics\": {{\"label_patterns\": [\n{}\n]}}}}\n",
        patterns.join(",\n")
    )
}

/// Renders nginx.conf. `filter_config` and `config` must come from [`filter_config`].
pub fn render(spec: &NginxSpec, filter_config: &str, config: &Config) -> String {
    let var = summary_variable(config);
    let mut y = String::new();
    let _ = write!(
        y,
        "# nginx.conf rendered by `tokenmeter nginx-config`, for nginx with ngx_wasm_module (Kong's\n\
         # Wasm module). Built as a dynamic module, it needs its load_module line before anything else:\n\
         #   load_module modules/ngx_wasmx_module.so;\n\
         # listener -> tokenmeter (proxy_wasm) -> proxy_pass upstream.\n\
         \n\
         worker_processes auto;\n\
         \n\
         events {{}}\n\
         \n\
         wasm {{\n\
         \x20   module {name} {wasm};\n\
         \x20   # A shared key-value zone (the default namespace, which the filter's keys fall into):\n\
         \x20   # cardinality caps count once for all workers (host.shared_data). Without a zone,\n\
         \x20   # shared-data calls trap, and host.shared_data must be false (caps per worker).\n\
         \x20   shm_kv * {shm};\n\
         \x20   metrics {{\n\
         \x20       # Metric names up to this length, {prefix} included; the filter keeps its\n\
         \x20       # names within max_metric_name_bytes, this less that prefix.\n\
         \x20       max_metric_name_length {length};\n\
         \x20   }}\n\
         }}\n\
         \n\
         http {{\n",
        name = spec.name,
        wasm = quote(&spec.wasm_path),
        shm = SHM_KV_SIZE,
        prefix = metric_prefix(&spec.name),
        length = spec.max_metric_name_length,
    );
    if let (Some(_), Some(var)) = (&spec.access_log, var) {
        let _ = writeln!(
            y,
            "    # One JSON object per request; the {var} field is the filter's usage summary (a JSON\n\
             \x20   # text in a string field, as in Envoy's log).\n\
             \x20   log_format tokenmeter escape=json {};",
            quote(&access_log_format(var))
        );
        y.push('\n');
    }
    let _ = writeln!(
        y,
        "    server {{\n        listen {};",
        host_port(&spec.listen_host, spec.listen_port)
    );
    if let Some(path) = &spec.access_log {
        let _ = writeln!(y, "        access_log {} tokenmeter;", quote(path));
    }
    let _ = writeln!(y, "\n        location / {{");
    if let Some(var) = var {
        let _ = writeln!(
            y,
            "            # The filter writes each request's usage summary here (host.summary_property\n\
             \x20           # ngx.{var}): only declared variables can be set by a filter.\n\
             \x20           set ${var} \"\";"
        );
    }
    let scheme = if spec.upstream_tls { "https" } else { "http" };
    let _ = writeln!(
        y,
        "            proxy_wasm {name} {config};\n\
         \x20           # Body rewrites under proxy buffering can wedge a worker in ngx_wasm_module.\n\
         \x20           proxy_buffering off;\n\
         \x20           # Larger request bodies go to a temporary file, which a filter cannot read: at\n\
         \x20           # least max_body_bytes ({max_body}).\n\
         \x20           client_body_buffer_size {buffer};\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_read_timeout 600s;\n\
         \x20           proxy_pass {scheme}://{upstream};",
        name = spec.name,
        config = quote(filter_config),
        max_body = config.max_body_bytes,
        buffer = size(config.max_body_bytes),
        upstream = host_port(&spec.upstream_host, spec.upstream_port),
    );
    if spec.upstream_tls {
        let _ = writeln!(
            y,
            "            proxy_ssl_server_name on;\n\
             \x20           proxy_ssl_name {host};\n\
             \x20           proxy_set_header Host {host};",
            host = quote(&spec.upstream_host)
        );
    }
    y.push_str("        }\n    }\n}\n");
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NginxSpec {
        NginxSpec {
            name: DEFAULT_NAME.into(),
            wasm_path: "/opt/tm/it's.wasm".into(),
            listen_host: "127.0.0.1".into(),
            listen_port: 10000,
            upstream_host: "api.openai.com".into(),
            upstream_port: 443,
            upstream_tls: true,
            max_metric_name_length: DEFAULT_MAX_METRIC_NAME_LENGTH,
            access_log: Some("/var/log/nginx/tokens.log".into()),
        }
    }

    /// Undoes [`quote`] as nginx reads a single-quoted string.
    fn unquote(s: &str) -> String {
        let inner = s
            .strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .unwrap();
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(n @ ('\\' | '\'' | '"')) => out.push(n),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(n) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn quoting_survives_nginx_unescaping() {
        for s in [
            "plain",
            "it's",
            r"back\slash",
            r#"{"a":"x\ny\\'z"}"#,
            r"\n\t\r",
            "'",
        ] {
            assert_eq!(unquote(&quote(s)), s, "{s}");
        }
    }

    #[test]
    fn adds_the_nginx_keys_unless_set() {
        let (text, config) = filter_config(
            r#"{"dimensions":[{"name":"model"}],"host":{"summary_property":"ngx.usage"}}"#,
            &spec(),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["host"]["kind"], "nginx");
        assert_eq!(v["host"]["shared_data"], true);
        assert_eq!(v["host"]["summary_property"], "ngx.usage");
        // 256 - "pw:tokenmeter:".
        assert_eq!(v["max_metric_name_bytes"], 242);
        assert_eq!(config.max_metric_name_bytes, Some(242));
        assert!(config.host.shared_data());
        assert_eq!(summary_variable(&config), Some("usage"));
        let y = render(&spec(), &text, &config);
        assert!(y.contains("set $usage \"\";"), "{y}");
        assert!(y.contains(r#""tokenmeter":"$usage"}"#), "{y}");

        let (text, _) = filter_config(
            r#"{"max_metric_name_bytes":100,"host":{"shared_data":false}}"#,
            &spec(),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["max_metric_name_bytes"], 100);
        assert_eq!(v["host"]["shared_data"], false);
    }

    #[test]
    fn refuses_what_nginx_cannot_run() {
        let s = spec();
        let e = filter_config(r#"{"host":{"kind":"envoy"}}"#, &s).unwrap_err();
        assert!(e.to_string().contains("host.kind"), "{e}");
        let e = filter_config(r#"{"max_metric_name_bytes":300}"#, &s).unwrap_err();
        assert!(
            e.to_string().contains("lower max_metric_name_bytes to 242"),
            "{e}"
        );
        let short = NginxSpec {
            max_metric_name_length: 70,
            ..spec()
        };
        let e = filter_config("{}", &short).unwrap_err();
        assert!(
            e.to_string()
                .contains("raise --max-metric-name-length to 78"),
            "{e}"
        );
        let e = filter_config(r#"{"host":{"summary_property":""}}"#, &s).unwrap_err();
        assert!(e.to_string().contains("--access-log"), "{e}");
        let e = filter_config(
            "{}",
            &NginxSpec {
                name: "tm meter".into(),
                ..spec()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--name"), "{e}");
        // A cap the configuration's names cannot fit under is refused as the filter would.
        let many: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"name":"a rather long dimension name {i}","value":"x"}}"#))
            .collect();
        let e =
            filter_config(&format!(r#"{{"dimensions":[{}]}}"#, many.join(",")), &s).unwrap_err();
        assert!(e.to_string().contains("max_metric_name_bytes"), "{e}");
        let e = filter_config(r#"{"namespace":"LLM"}"#, &s).unwrap_err();
        assert!(e.to_string().contains("namespace"), "{e}");
    }

    #[test]
    fn renders_the_wasm_block_and_the_location() {
        let s = spec();
        let (text, config) = filter_config(
            r#"{"max_body_bytes":524288,"dimensions":[{"name":"model"}]}"#,
            &s,
        )
        .unwrap();
        let y = render(&s, &text, &config);
        for line in [
            r"module tokenmeter '/opt/tm/it\'s.wasm';",
            "shm_kv * 1m;",
            "max_metric_name_length 256;",
            "listen 127.0.0.1:10000;",
            "access_log '/var/log/nginx/tokens.log' tokenmeter;",
            "set $tokenmeter \"\";",
            "proxy_buffering off;",
            "client_body_buffer_size 512k;",
            "proxy_pass https://api.openai.com:443;",
            "proxy_ssl_name 'api.openai.com';",
        ] {
            assert!(y.contains(line), "{line}:\n{y}");
        }
        let directive = y
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("proxy_wasm tokenmeter "))
            .unwrap();
        let json = unquote(directive.strip_suffix(';').unwrap());
        assert_eq!(json, text);
        // What the filter makes of it at start-up: the same configuration, names settled.
        let mut parsed = Config::parse(json.as_bytes()).unwrap();
        metrics::settle_name_cap(&mut parsed, None).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(size(262_145), "262145");
        assert_eq!(host_port("::1", 80), "[::1]:80");
    }

    /// Lua's `string.find` for the patterns [`kong_label_pattern`] makes: `%.` a dot, `.-`
    /// the shortest run, `%.?` an optional dot. Returns where the match starts and capture 2.
    fn lua_find(subject: &str, label: &str) -> Option<(usize, String)> {
        let needle = format!("{label}=.=");
        let at = subject.find(&needle)?;
        let start = if at > 0 && subject.as_bytes()[at - 1] == b'.' {
            at - 1
        } else {
            at
        };
        let rest = &subject[at + needle.len()..];
        let end = rest.find(";.;")?;
        Some((start, rest[..end].to_string()))
    }

    #[test]
    fn kong_patterns_extract_each_label_and_leave_a_clean_name() {
        let config =
            Config::parse(br#"{"dimensions":[{"name":"model"},{"name":"API ID"}]}"#).unwrap();
        let meta: Value = serde_json::from_str(&kong_meta_json(&config)).unwrap();
        let patterns = meta["metrics"]["label_patterns"].as_array().unwrap();
        assert_eq!(patterns.len(), crate::bootstrap::label_names(&config).len());
        assert_eq!(patterns[0]["label"], "model");
        assert_eq!(patterns[0]["pattern"], "(%.?model=%.=(.-);%.;)");
        assert_eq!(patterns[1]["pattern"], "(%.?api_id=%.=(.-);%.;)");
        // What Kong does with them, on a name as the filter defines it.
        let key = "pw.tokenmeter.llm_prompt_tokens_total.model=.=gpt-4o;.;api_id=.=my api/v1;.;";
        let (m_at, model) = lua_find(key, "model").unwrap();
        let (a_at, api) = lua_find(key, "api_id").unwrap();
        assert_eq!((model.as_str(), api.as_str()), ("gpt-4o", "my api/v1"));
        assert_eq!(
            &key[..m_at.min(a_at)],
            "pw.tokenmeter.llm_prompt_tokens_total"
        );
    }

    #[test]
    fn the_access_log_has_envoys_keys() {
        let nginx: Vec<&str> = ACCESS_LOG_FIELDS.iter().map(|(k, _)| *k).collect();
        let envoy: Vec<&str> = crate::bootstrap::ACCESS_LOG_FIELDS
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(nginx, envoy);
        let line = access_log_format("tokenmeter");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["tokenmeter"], "$tokenmeter");
    }
}

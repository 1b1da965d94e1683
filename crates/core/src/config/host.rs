//! The `host` block: which proxy-wasm host runs the filter, and what follows from it.
//!
//! Hosts differ where the ABI leaves room (see `docs/gateways.md`). Envoy keeps shared data
//! for every VM of the process, answers `xds.*` and `response.code_details`, and lets a
//! filter set any property. ngx_wasm_module (Kong) traps shared-data calls unless an
//! `shm_kv` zone is declared, has no `xds.*` or `response.code_details`, accepts only
//! `ngx.*` (declared nginx variables) and `wasmx.*` properties, and limits metric names
//! (256 bytes with its own `pw:NAME:` prefix by default).
//!
//! A filter cannot ask whether a shared-data call would trap without making it, so the
//! choice is made once per VM at start-up from properties every host answers without harm
//! ([`HostAnswers`]), and the configuration can state it outright.

use serde::Deserialize;

use super::ConfigError;

/// Which host the filter runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Not stated: decided at start-up ([`HostSettings::resolve`]); Envoy's manners until then.
    Auto,
    Envoy,
    /// ngx_wasm_module: Kong, or nginx built with it.
    Nginx,
}

impl HostKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::Auto => "auto",
            HostKind::Envoy => "envoy",
            HostKind::Nginx => "nginx",
        }
    }
}

/// What the host answered at start-up, before any call that could trap. Asked only when
/// `host.kind` is `auto`: ngx_wasm_module logs an alert for `plugin_vm_id` (not implemented
/// there), and older builds crash reading `plugin_name` outside a request, so nothing else
/// is asked in a root context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAnswers {
    /// Whether `plugin_vm_id` was answered (Envoy does; ngx_wasm_module does not).
    pub vm_id: bool,
}

/// The name ngx_wasm_module knows the filter by when `host.filter_name` does not say.
pub const DEFAULT_FILTER_NAME: &str = "tokenmeter";

/// ngx_wasm_module's default `max_metric_name_length`, its `pw:NAME:` prefix included.
pub const NGX_METRIC_NAME_LENGTH: usize = 256;

/// The `host` block, validated; [`HostSettings::resolve`] settles what `auto` left open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    pub kind: HostKind,
    shared_data: Option<bool>,
    /// `None`: the host's default; `Some("")`: no summary.
    summary_property: Option<String>,
    /// The name in `proxy_wasm NAME` (nginx): its metric names carry `pw:NAME:`.
    filter_name: Option<String>,
    detected: bool,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            kind: HostKind::Auto,
            shared_data: None,
            summary_property: None,
            filter_name: None,
            detected: false,
        }
    }
}

/// The property Envoy's access loggers read as `%FILTER_STATE(wasm.tokenmeter)%`.
pub const ENVOY_SUMMARY_PROPERTY: &str = "tokenmeter";
/// The nginx variable `$tokenmeter`, which the location must declare (`set $tokenmeter "";`).
pub const NGINX_SUMMARY_PROPERTY: &str = "ngx.tokenmeter";

/// Where a property the core asks for is read on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// As asked.
    Same,
    /// Under another path.
    At(&'a [&'a str]),
    /// The host has no such property: answer `None` without a call (ngx_wasm_module logs
    /// an error line for every unknown property it is asked for).
    Absent,
}

/// Envoy properties and their nginx counterparts, where nginx has one.
const NGINX_PROPERTIES: &[(&[&str], &[&str])] = &[
    // `proxy_pass`'s server name and port: the closest to Envoy's cluster.
    (&["xds", "cluster_name"], &["ngx", "proxy_host"]),
    // The matching `server_name`: nginx's virtual host.
    (&["xds", "virtual_host_name"], &["ngx", "server_name"]),
    (&["xds", "node", "id"], &["ngx", "hostname"]),
];

impl HostSettings {
    /// Whether the host must be asked who it is ([`HostAnswers`]).
    pub fn needs_answers(&self) -> bool {
        self.kind == HostKind::Auto
    }

    /// Whether the kind was decided from the host's answers rather than stated.
    pub fn detected(&self) -> bool {
        self.detected
    }

    /// Settles `auto` from what the host answered: Envoy answers `plugin_vm_id`,
    /// ngx_wasm_module does not. Returns the metric-name limit the host imposes, if any.
    pub fn resolve(&mut self, answers: &HostAnswers) -> Option<usize> {
        self.detected = self.kind == HostKind::Auto;
        if self.kind == HostKind::Auto {
            self.kind = if answers.vm_id {
                HostKind::Envoy
            } else {
                HostKind::Nginx
            };
        }
        match self.kind {
            HostKind::Nginx => {
                let name = self.filter_name.as_deref().unwrap_or(DEFAULT_FILTER_NAME);
                Some(NGX_METRIC_NAME_LENGTH.saturating_sub("pw:".len() + name.len() + 1))
            }
            HostKind::Envoy | HostKind::Auto => None,
        }
    }

    /// Whether cardinality caps live in the host's shared data (for the whole process)
    /// rather than in each VM (then a cap holds per worker).
    pub fn shared_data(&self) -> bool {
        self.shared_data.unwrap_or(self.kind != HostKind::Nginx)
    }

    /// The property the access-log summary is written to; `None` for none.
    pub fn summary_property(&self) -> Option<&str> {
        let name = match &self.summary_property {
            Some(name) => name.as_str(),
            None if self.kind == HostKind::Nginx => NGINX_SUMMARY_PROPERTY,
            None => ENVOY_SUMMARY_PROPERTY,
        };
        (!name.is_empty()).then_some(name)
    }

    /// Whether a property one filter sets is read by the others of the stream (Envoy's
    /// filter state; nginx variables are not shared this way).
    pub fn shares_stream_properties(&self) -> bool {
        self.kind != HostKind::Nginx
    }

    /// Whether the host says why a response failed (`response.code_details`).
    pub fn has_code_details(&self) -> bool {
        self.kind != HostKind::Nginx
    }

    /// Where to read `path` on this host.
    pub fn lookup(&self, path: &[String]) -> Lookup<'static> {
        if self.kind != HostKind::Nginx {
            return Lookup::Same;
        }
        if let Some((_, to)) = NGINX_PROPERTIES.iter().find(|(from, _)| {
            from.len() == path.len() && from.iter().zip(path).all(|(a, b)| *a == b.as_str())
        }) {
            return Lookup::At(to);
        }
        match path {
            [first, ..] if first == "xds" => Lookup::Absent,
            [a, b] if a == "response" && b == "code_details" => Lookup::Absent,
            _ => Lookup::Same,
        }
    }

    /// Reads `path` where this host keeps it, through `get` (the host's property call).
    pub fn read(
        &self,
        path: &[String],
        get: impl Fn(&[String]) -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        match self.lookup(path) {
            Lookup::Same => get(path),
            Lookup::At(other) => get(&other.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            Lookup::Absent => None,
        }
    }

    /// The line logged once per VM at start: what was decided and what it means.
    pub fn describe(&self, name_cap: Option<usize>) -> String {
        let caps = if self.shared_data() {
            "cardinality caps in shared data (one count for every worker)"
        } else {
            "cardinality caps per VM (each worker counts its own values; set host.shared_data when the host has a shared key-value zone)"
        };
        let summary = match self.summary_property() {
            Some(p) => format!("access-log summary in property {p}"),
            None => "no access-log summary".to_string(),
        };
        let names = match name_cap {
            Some(n) => format!("metric names at most {n} bytes"),
            None => "metric names unbounded".to_string(),
        };
        let how = if self.detected {
            " (detected: set host.kind to state it)"
        } else {
            ""
        };
        format!(
            "tokenmeter: host {}{how}; {caps}; {summary}; {names}",
            self.kind.as_str()
        )
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHost {
    kind: Option<String>,
    shared_data: Option<bool>,
    summary_property: Option<String>,
    filter_name: Option<String>,
}

impl RawHost {
    pub(crate) fn validate(self) -> Result<HostSettings, ConfigError> {
        let kind = match self.kind.as_deref() {
            None | Some("auto") => HostKind::Auto,
            Some("envoy") => HostKind::Envoy,
            Some("nginx") => HostKind::Nginx,
            Some(other) => {
                return Err(ConfigError::new(
                    "host.kind",
                    format!("{other:?} is not a host; use \"auto\" (the default: decided at start-up), \"envoy\" or \"nginx\" (ngx_wasm_module, Kong)"),
                ))
            }
        };
        if let Some(p) = &self.summary_property {
            let ok = p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok || p.starts_with('.') || p.ends_with('.') || p.contains("..") {
                return Err(ConfigError::new(
                    "host.summary_property",
                    format!("{p:?} is not a property name; use letters, digits, '_' and '-' in dot-separated parts (e.g. \"ngx.tokenmeter\"), or \"\" for no summary"),
                ));
            }
            if kind == HostKind::Nginx
                && !p.is_empty()
                && !(p.starts_with("ngx.") || p.starts_with("wasmx."))
            {
                return Err(ConfigError::new(
                    "host.summary_property",
                    format!("{p:?} cannot be set on nginx: only ngx.* (a declared variable, e.g. \"ngx.tokenmeter\" with `set $tokenmeter \"\";`) and wasmx.* properties are writable there"),
                ));
            }
        }
        if let Some(name) = &self.filter_name {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "host.filter_name",
                    format!("{name:?} is not a filter name; give the name of `proxy_wasm NAME` in the nginx configuration"),
                ));
            }
        }
        Ok(HostSettings {
            kind,
            shared_data: self.shared_data,
            summary_property: self.summary_property,
            filter_name: self.filter_name,
            detected: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<HostSettings, ConfigError> {
        serde_json::from_str::<RawHost>(json).unwrap().validate()
    }

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn auto_becomes_envoy_when_the_vm_id_is_answered_and_nginx_otherwise() {
        let mut h = HostSettings::default();
        assert!(h.needs_answers());
        let envoy = HostAnswers { vm_id: true };
        assert_eq!(h.resolve(&envoy), None);
        assert_eq!(h.kind, HostKind::Envoy);
        assert!(h.shared_data());
        assert_eq!(h.summary_property(), Some("tokenmeter"));
        assert!(h.has_code_details());
        assert_eq!(h.lookup(&path(&["xds", "route_name"])), Lookup::Same);

        let mut h = settings(r#"{"filter_name": "meter"}"#).unwrap();
        let ngx = HostAnswers { vm_id: false };
        // 256 - "pw:meter:".
        assert_eq!(h.resolve(&ngx), Some(247));
        assert_eq!(h.kind, HostKind::Nginx);
        assert!(!h.shared_data());
        assert_eq!(h.summary_property(), Some("ngx.tokenmeter"));
        assert!(!h.has_code_details());
    }

    #[test]
    fn a_stated_kind_wins_over_what_the_host_answers() {
        let mut h = settings(r#"{"kind": "nginx", "shared_data": true}"#).unwrap();
        assert!(!h.needs_answers(), "a stated host is not asked");
        h.resolve(&HostAnswers { vm_id: true });
        assert_eq!(h.kind, HostKind::Nginx);
        assert!(h.shared_data());
        let mut h = settings(r#"{"kind": "envoy", "summary_property": ""}"#).unwrap();
        assert_eq!(h.resolve(&HostAnswers::default()), None);
        assert_eq!(h.kind, HostKind::Envoy);
        assert_eq!(h.summary_property(), None);
    }

    #[test]
    fn nginx_reads_its_own_properties_and_never_asks_for_envoys() {
        let mut h = settings(r#"{"kind": "nginx"}"#).unwrap();
        h.resolve(&HostAnswers::default());
        assert_eq!(
            h.lookup(&path(&["xds", "cluster_name"])),
            Lookup::At(&["ngx", "proxy_host"])
        );
        assert_eq!(
            h.lookup(&path(&["xds", "virtual_host_name"])),
            Lookup::At(&["ngx", "server_name"])
        );
        assert_eq!(h.lookup(&path(&["xds", "route_name"])), Lookup::Absent);
        assert_eq!(
            h.lookup(&path(&["response", "code_details"])),
            Lookup::Absent
        );
        assert_eq!(h.lookup(&path(&["request", "id"])), Lookup::Same);
        assert_eq!(h.lookup(&path(&["ngx", "upstream_addr"])), Lookup::Same);
    }

    #[test]
    fn bad_host_settings_are_refused_naming_the_field() {
        let e = settings(r#"{"kind": "kong"}"#).unwrap_err();
        assert_eq!(e.field, "host.kind");
        let e = settings(r#"{"summary_property": "a b"}"#).unwrap_err();
        assert_eq!(e.field, "host.summary_property");
        let e = settings(r#"{"kind": "nginx", "summary_property": "tokenmeter"}"#).unwrap_err();
        assert_eq!(e.field, "host.summary_property");
        assert!(e.message.contains("ngx."), "{}", e.message);
        assert!(settings(r#"{"kind": "nginx", "summary_property": "wasmx.tm"}"#).is_ok());
        let e = settings(r#"{"filter_name": ""}"#).unwrap_err();
        assert_eq!(e.field, "host.filter_name");
    }

    #[test]
    fn the_start_line_says_what_was_chosen() {
        let mut h = HostSettings::default();
        let cap = h.resolve(&HostAnswers::default());
        let line = h.describe(cap);
        assert!(line.contains("host nginx"), "{line}");
        assert!(line.contains("per VM"), "{line}");
        assert!(line.contains("ngx.tokenmeter"), "{line}");
        assert!(line.contains("242 bytes"), "{line}");
        assert!(line.contains("detected"), "{line}");
    }
}

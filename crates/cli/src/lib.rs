//! `tokenmeter`: the companion binary of the tokenmeter filter, as a library so that its
//! parts are tested where they are (`src/main.rs` only calls [`main`]).
//!
//! - Pure logic: [`quality`] (monitor definitions, sampling, prompts, scores, aggregation,
//!   reports), [`ingest`] (record batches), [`bootstrap`] (Envoy configuration rendering),
//!   [`nginx`], [`istio`] and [`envoy_gateway`] (the other gateways' configurations).
//! - Edges, with `anyhow` errors: the commands below, the collector and store, the judge
//!   client, the scheduler and the alerts.
//!
//! It uses the core (`tokenmeter-core`) for the filter configuration, series naming and
//! the record format, so that what it renders and accepts is what the filter does.

pub mod bootstrap;
pub mod envoy_gateway;
pub mod ingest;
pub mod istio;
pub mod nginx;
pub mod quality;

mod alerts;
mod browse;
mod collector;
mod console;
mod db;
mod eval;
mod evaluate;
mod judge;
mod params;
mod records;
mod retention;
mod rollups;
mod runs;
mod scheduler;
mod serve;
mod store;
mod stores;
mod tiers;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::bootstrap::BootstrapSpec;
use tokenmeter_core::config::Config;

#[derive(Parser)]
#[command(
    name = "tokenmeter",
    version,
    about = "Token metering and quality monitoring for LLM traffic at the gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a filter configuration file exactly as the filter does at load time.
    CheckConfig {
        /// The filter configuration (JSON).
        file: PathBuf,
    },
    /// Print a complete Envoy bootstrap that runs the filter in front of one upstream.
    EnvoyConfig {
        /// The filter configuration (JSON).
        #[arg(long)]
        filter_config: PathBuf,
        /// Path of tokenmeter.wasm as Envoy will see it.
        #[arg(long)]
        wasm: String,
        /// Listener: PORT (on 127.0.0.1) or HOST:PORT.
        #[arg(long)]
        listen: String,
        /// Admin port (always on 127.0.0.1).
        #[arg(long)]
        admin: u16,
        /// The LLM API upstream, HOST:PORT.
        #[arg(long)]
        upstream: String,
        /// Use TLS to the upstream (implied by port 443), with SNI and Host set to its host.
        #[arg(long)]
        upstream_tls: bool,
        /// Envoy node id (the `Gateway ID` dimension).
        #[arg(long)]
        node_id: Option<String>,
        /// Envoy node locality region (the `Location` dimension).
        #[arg(long)]
        region: Option<String>,
        /// Also write an access log with each request's token usage to this path.
        #[arg(long)]
        access_log: Option<String>,
        /// How often Envoy computes histograms, in milliseconds (Envoy's default: 5000).
        #[arg(long)]
        stats_flush_interval_ms: Option<u64>,
        /// Send sampled inference records and usage rollups to `tokenmeter serve` at
        /// HOST:PORT: adds the collector cluster, and a `collect` block to the filter
        /// configuration if it has none. Repeat for several collectors sharing one store.
        #[arg(long)]
        collector: Vec<String>,
    },
    /// Print an nginx.conf that runs the filter in ngx_wasm_module (nginx with Kong's Wasm
    /// module) in front of one upstream.
    NginxConfig {
        /// The filter configuration (JSON); the host keys nginx needs are added to it.
        #[arg(long)]
        filter_config: PathBuf,
        /// Path of tokenmeter.wasm as nginx will see it.
        #[arg(long)]
        wasm: String,
        /// Listener: PORT (on 127.0.0.1) or HOST:PORT.
        #[arg(long)]
        listen: String,
        /// The LLM API upstream, HOST:PORT.
        #[arg(long)]
        upstream: String,
        /// Use TLS to the upstream (implied by port 443), with SNI and Host set to its host.
        #[arg(long)]
        upstream_tls: bool,
        /// The module name; ngx_wasm_module puts it in every metric name (pw:NAME:).
        #[arg(long, default_value = nginx::DEFAULT_NAME)]
        name: String,
        /// ngx_wasm_module's `metrics { max_metric_name_length }`, its pw:NAME: prefix included.
        #[arg(long, default_value_t = nginx::DEFAULT_MAX_METRIC_NAME_LENGTH)]
        max_metric_name_length: usize,
        /// Also write an access log with each request's token usage to this path.
        #[arg(long)]
        access_log: Option<String>,
        /// Also write the filter's Kong metadata (the label patterns Kong's Prometheus plugin
        /// reads) to this file; Kong wants it beside the module as NAME.meta.json.
        #[arg(long)]
        kong_meta: Option<PathBuf>,
    },
    /// Print Istio's WasmPlugin for the filter and the mesh configuration that labels its metrics.
    IstioConfig {
        /// The filter configuration (JSON).
        #[arg(long)]
        filter_config: PathBuf,
        /// The module as an OCI image (oci://REGISTRY/NAME:TAG; oci:// is added when missing).
        #[arg(long, conflicts_with = "url", required_unless_present = "url")]
        image: Option<String>,
        /// The module as a file to download (https://, http:// or file://).
        #[arg(long)]
        url: Option<String>,
        /// SHA-256 of the module, checked by Istio before it is loaded.
        #[arg(long)]
        sha256: Option<String>,
        /// The WasmPlugin's name.
        #[arg(long, default_value = "tokenmeter")]
        name: String,
        /// The WasmPlugin's namespace (the gateway's, or istio-system for every proxy).
        #[arg(long, default_value = "istio-system")]
        namespace: String,
        /// A pod label of the proxies to run in, KEY=VALUE; repeat for several.
        #[arg(long = "selector", default_value = "istio=ingressgateway")]
        selectors: Vec<String>,
    },
    /// Print Envoy Gateway's EnvoyExtensionPolicy for the filter and the EnvoyProxy bootstrap
    /// that labels its metrics.
    EnvoyGatewayConfig {
        /// The filter configuration (JSON).
        #[arg(long)]
        filter_config: PathBuf,
        /// The module as an OCI image (REGISTRY/NAME:TAG).
        #[arg(long, conflicts_with = "url", required_unless_present = "url")]
        image: Option<String>,
        /// The module as a file to download (https:// or http://).
        #[arg(long)]
        url: Option<String>,
        /// SHA-256 of the module, checked before it is loaded.
        #[arg(long)]
        sha256: Option<String>,
        /// A Gateway to attach the filter to; repeat for several.
        #[arg(long = "gateway", required_unless_present = "routes")]
        gateways: Vec<String>,
        /// An HTTPRoute to attach the filter to; repeat for several.
        #[arg(long = "route")]
        routes: Vec<String>,
        /// The resources' name (the EnvoyProxy is NAME-proxy).
        #[arg(long, default_value = "tokenmeter")]
        name: String,
        /// The resources' namespace: the Gateway's or the routes'.
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// Collect records and usage over HTTP into the store, and run monitors on their
    /// schedules.
    Serve {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Address to listen on, HOST:PORT (port 0 picks a free one, printed at start).
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: String,
        /// A monitor definition to run on its schedule; repeat for several.
        #[arg(long = "monitor")]
        monitors: Vec<PathBuf>,
        /// Prefix of the quality metric names at /metrics.
        #[arg(long, default_value = "llm")]
        namespace: String,
        /// Largest accepted request body; larger ones get 413.
        #[arg(long, default_value_t = 16 * 1024 * 1024)]
        max_body_bytes: usize,
        /// Also run every monitor once at start, besides its schedule.
        #[arg(long)]
        run_monitors_now: bool,
        /// A file holding the token reads of the store need (`Authorization: Bearer`);
        /// required to listen beyond loopback.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A file holding the token record and rollup posts need (`Authorization: Bearer`,
        /// the filter's `collect.token`); without it ingestion is open.
        #[arg(long)]
        ingest_token_file: Option<PathBuf>,
    },
    /// Import or export records.
    Records {
        #[command(subcommand)]
        command: RecordsCommand,
    },
    /// Evaluate a monitor's window once; exit 0 when every metric is ok, 2 on a breach, 3
    /// when too little was scored to decide, 4 when the window had nothing to judge, 1 on
    /// error.
    Eval {
        /// The monitor definition (YAML).
        #[arg(long)]
        monitor: PathBuf,
        /// Read records from this store (also the judge-result cache): an SQLite file or a
        /// postgres:// URL.
        #[arg(long, conflicts_with = "records", required_unless_present = "records")]
        db: Option<String>,
        /// Read records from this JSONL file.
        #[arg(long)]
        records: Option<PathBuf>,
        /// With --records: keep the judge-result cache (and run history) in this store.
        #[arg(long, requires = "records")]
        cache_db: Option<String>,
        /// A file holding the PostgreSQL password of --db or --cache-db.
        #[arg(long)]
        db_password_file: Option<PathBuf>,
        /// Report format.
        #[arg(long, value_enum, default_value = "table")]
        format: eval::Format,
        /// Write the report to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the per-record table (JSONL) to this file.
        #[arg(long)]
        records_out: Option<PathBuf>,
        /// Score every metric of a record in one judge call.
        #[arg(long)]
        combined: bool,
        /// Evaluate as if now were this RFC 3339 time (the window ends here, less its offset).
        #[arg(long)]
        now: Option<String>,
        /// Do not send alerts for a breach.
        #[arg(long)]
        no_alerts: bool,
    },
}

/// Where the store is.
#[derive(clap::Args)]
struct DbArgs {
    /// The store: an SQLite file (created if missing), or a PostgreSQL database as
    /// postgres://USER@HOST:PORT/DB[?sslmode=verify-full&sslrootcert=CA.pem] (the schema
    /// is created and migrated; the password comes from --db-password-file or
    /// TOKENMETER_DB_PASSWORD, never the URL).
    #[arg(long)]
    db: String,
    /// A file holding the PostgreSQL password.
    #[arg(long)]
    db_password_file: Option<PathBuf>,
}

impl DbArgs {
    fn location(&self) -> Result<db::Location> {
        db::Location::parse(&self.db, self.db_password_file.as_deref())
    }
}

/// How long the store keeps each kind of data (ISO 8601 durations, e.g. P30D; `forever`
/// keeps it). A job of `serve` deletes what is older every ten minutes.
#[derive(clap::Args)]
struct RetentionArgs {
    /// Records (prompts and answers) and the judge results cached for them.
    #[arg(long, default_value = "P30D")]
    retain_records: String,
    /// Usage rollups per minute; older ones are read from the hourly rollups.
    #[arg(long, default_value = "P8D")]
    retain_minutes: String,
    /// Usage rollups per hour; older ones are read from the daily rollups.
    #[arg(long, default_value = "P90D")]
    retain_hours: String,
    /// Usage rollups per day.
    #[arg(long, default_value = "forever")]
    retain_days: String,
    /// Monitor runs, their scores and claims.
    #[arg(long, default_value = "P400D")]
    retain_runs: String,
}

impl RetentionArgs {
    fn settings(&self) -> Result<retention::Retention> {
        retention::Retention::parse(&[
            ("--retain-records", &self.retain_records),
            ("--retain-minutes", &self.retain_minutes),
            ("--retain-hours", &self.retain_hours),
            ("--retain-days", &self.retain_days),
            ("--retain-runs", &self.retain_runs),
        ])
    }
}

#[derive(Subcommand)]
enum RecordsCommand {
    /// Store the records of a JSONL file (`-` for stdin); existing ids are kept as they are.
    Import {
        #[command(flatten)]
        db: DbArgs,
        file: PathBuf,
    },
    /// Print stored records as JSONL, ordered by time.
    Export {
        #[command(flatten)]
        db: DbArgs,
        /// Start: a duration before now (P7D) or an RFC 3339 time.
        #[arg(long)]
        since: String,
        /// End (exclusive): a duration before now or an RFC 3339 time; default: no end.
        #[arg(long)]
        until: Option<String>,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs the command line; the process exits with the code returned.
pub fn main() -> ExitCode {
    // Usage errors exit 1 like any other error: `eval` reserves 2 for a breach.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { file } => {
            let (_, mut config) = read_config(&file)?;
            // The metric-name cap as the filter settles it at start-up: a stated nginx host
            // brings its limit; any host, a configured max_metric_name_bytes.
            let limit = match config.host.kind {
                tokenmeter_core::config::host::HostKind::Nginx => config
                    .host
                    .resolve(&tokenmeter_core::config::host::HostAnswers { vm_id: false }),
                _ => None,
            };
            tokenmeter_core::series::metrics::settle_name_cap(&mut config, limit)
                .with_context(|| format!("{}", file.display()))?;
            let labels: Vec<&str> = config.label_names().collect();
            println!(
                "{}: ok (namespace {:?}, labels [{}])",
                file.display(),
                config.namespace,
                labels.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::EnvoyConfig {
            filter_config,
            wasm,
            listen,
            admin,
            upstream,
            upstream_tls,
            node_id,
            region,
            access_log,
            stats_flush_interval_ms,
            collector,
        } => {
            // With --collector, the collect block's cluster is the one rendered here, so a
            // block that names none is completed before the configuration is checked.
            let mut collectors = Vec::new();
            for addr in &collector {
                let Some((host, port)) = addr.rsplit_once(':') else {
                    bail!("--collector must be HOST:PORT, got {addr:?}");
                };
                collectors.push((host.to_string(), parse_port(port, "--collector")?));
            }
            let (text, config) = if collectors.is_empty() {
                read_config(&filter_config)?
            } else {
                let text =
                    with_collector(&read_text(&filter_config)?, bootstrap::COLLECTOR_CLUSTER)?;
                let config = Config::parse(text.as_bytes()).with_context(|| {
                    format!("{} with the collect block", filter_config.display())
                })?;
                (text, config)
            };
            let (listen_host, listen_port) = listen_addr(&listen)?;
            let (upstream_host, upstream_port) = host_port(&upstream, "--upstream")?;
            let spec = BootstrapSpec {
                // One line: JSON strings cannot span lines, so trimming lines is lossless.
                filter_config: text.lines().map(str::trim).collect(),
                wasm_path: wasm,
                listen_host,
                listen_port,
                admin_port: admin,
                upstream_host,
                upstream_port,
                upstream_tls: upstream_tls || upstream_port == 443,
                node_id,
                region,
                access_log,
                stats_flush_ms: stats_flush_interval_ms,
                collectors,
            };
            print!("{}", bootstrap::render(&spec, &config));
            Ok(ExitCode::SUCCESS)
        }
        Command::NginxConfig {
            filter_config,
            wasm,
            listen,
            upstream,
            upstream_tls,
            name,
            max_metric_name_length,
            access_log,
            kong_meta,
        } => {
            let (listen_host, listen_port) = listen_addr(&listen)?;
            let (upstream_host, upstream_port) = host_port(&upstream, "--upstream")?;
            let spec = nginx::NginxSpec {
                name,
                wasm_path: wasm,
                listen_host,
                listen_port,
                upstream_host,
                upstream_port,
                upstream_tls: upstream_tls || upstream_port == 443,
                max_metric_name_length,
                access_log,
            };
            let (text, config) = nginx::filter_config(&read_text(&filter_config)?, &spec)
                .with_context(|| format!("{} for nginx", filter_config.display()))?;
            if let Some(path) = kong_meta {
                std::fs::write(&path, nginx::kong_meta_json(&config))
                    .with_context(|| format!("cannot write --kong-meta {}", path.display()))?;
            }
            print!("{}", nginx::render(&spec, &text, &config));
            Ok(ExitCode::SUCCESS)
        }
        Command::IstioConfig {
            filter_config,
            image,
            url,
            sha256,
            name,
            namespace,
            selectors,
        } => {
            let (value, config) = read_config_value(&filter_config)?;
            let url = match (image, url) {
                (Some(image), _) if image.starts_with("oci://") => image,
                (Some(image), _) if image.contains("://") => {
                    bail!("--image must be an OCI reference (oci://REGISTRY/NAME:TAG), got {image:?}; use --url for a file to download")
                }
                (Some(image), _) => format!("oci://{image}"),
                (None, Some(url)) => {
                    if !["https://", "http://", "file://"]
                        .iter()
                        .any(|s| url.starts_with(s))
                    {
                        bail!("--url must start with https://, http:// or file://, got {url:?}; use --image for an OCI image");
                    }
                    url
                }
                (None, None) => bail!("give --image or --url"),
            };
            let selector = selectors
                .iter()
                .map(|s| match s.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => bail!("--selector must be KEY=VALUE (a pod label), got {s:?}"),
                })
                .collect::<Result<Vec<_>>>()?;
            let spec = istio::IstioSpec {
                name,
                namespace,
                selector,
                url,
                sha256,
            };
            print!("{}", istio::render(&spec, &value, &config));
            Ok(ExitCode::SUCCESS)
        }
        Command::EnvoyGatewayConfig {
            filter_config,
            image,
            url,
            sha256,
            gateways,
            routes,
            name,
            namespace,
        } => {
            let (value, config) = read_config_value(&filter_config)?;
            let code = match (image, url) {
                // Envoy Gateway takes the bare reference.
                (Some(image), _) => {
                    let image = image.strip_prefix("oci://").unwrap_or(&image).to_string();
                    if image.contains("://") {
                        bail!("--image must be an OCI reference (REGISTRY/NAME:TAG), got {image:?}; use --url for a file to download");
                    }
                    envoy_gateway::Code::Image(image)
                }
                (None, Some(url)) => {
                    if !url.starts_with("https://") && !url.starts_with("http://") {
                        bail!("--url must start with https:// or http://, got {url:?}; use --image for an OCI image");
                    }
                    envoy_gateway::Code::Http(url)
                }
                (None, None) => bail!("give --image or --url"),
            };
            let spec = envoy_gateway::EnvoyGatewaySpec {
                name,
                namespace,
                gateways,
                routes,
                code,
                sha256,
            };
            print!("{}", envoy_gateway::render(&spec, &value, &config));
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            db,
            retention,
            listen,
            monitors,
            namespace,
            max_body_bytes,
            run_monitors_now,
            token_file,
            ingest_token_file,
        } => {
            let db = db.location()?;
            let retention = retention.settings()?;
            runtime()?.block_on(serve::run(serve::ServeArgs {
                db,
                retention,
                listen,
                monitors,
                namespace,
                max_body_bytes,
                run_monitors_now,
                token_file,
                ingest_token_file,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Records { command } => {
            match command {
                RecordsCommand::Import { db, file } => records::import(&db.location()?, &file)?,
                RecordsCommand::Export { db, since, until } => {
                    records::export(&db.location()?, &since, until.as_deref())?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            monitor,
            db,
            records,
            cache_db,
            db_password_file,
            format,
            out,
            records_out,
            combined,
            now,
            no_alerts,
        } => runtime()?.block_on(eval::run(eval::EvalArgs {
            monitor,
            db: db
                .map(|d| db::Location::parse(&d, db_password_file.as_deref()))
                .transpose()?,
            records,
            cache_db: cache_db
                .map(|d| db::Location::parse(&d, db_password_file.as_deref()))
                .transpose()?,
            format,
            out,
            records_out,
            combined,
            now,
            no_alerts,
        })),
    }
}

/// The filter configuration with its `collect` block pointed at `cluster` (a default
/// block when it has none).
fn with_collector(text: &str, cluster: &str) -> Result<String> {
    let mut v: serde_json::Value =
        serde_json::from_str(text).context("the filter configuration is not JSON")?;
    let Some(obj) = v.as_object_mut() else {
        bail!("the filter configuration must be a JSON object");
    };
    let collect = obj
        .entry("collect")
        .or_insert_with(|| serde_json::json!({}));
    let Some(collect) = collect.as_object_mut() else {
        bail!("collect must be an object");
    };
    collect.insert("cluster".into(), serde_json::Value::String(cluster.into()));
    Ok(v.to_string())
}

/// `--listen`: PORT (on 127.0.0.1) or HOST:PORT.
fn listen_addr(text: &str) -> Result<(String, u16)> {
    match text.rsplit_once(':') {
        Some(_) => host_port(text, "--listen"),
        None => Ok(("127.0.0.1".to_string(), parse_port(text, "--listen")?)),
    }
}

/// HOST:PORT, with an IPv6 host in brackets or bare (`[::1]:80`, `::1:80`).
fn host_port(text: &str, flag: &str) -> Result<(String, u16)> {
    let Some((host, port)) = text.rsplit_once(':') else {
        bail!("{flag} must be HOST:PORT, got {text:?}");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{flag} must be HOST:PORT, got {text:?}");
    }
    Ok((host.to_string(), parse_port(port, flag)?))
}

fn parse_port(text: &str, flag: &str) -> Result<u16> {
    text.parse()
        .with_context(|| format!("{flag}: {text:?} is not a port number"))
}

fn read_text(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read filter configuration {}", path.display()))
}

/// The configuration as a JSON value (for renderers that embed it as an object), and its parse.
fn read_config_value(path: &PathBuf) -> Result<(serde_json::Value, Config)> {
    let (text, config) = read_config(path)?;
    // An empty file is a valid configuration (all defaults): an empty object.
    let value = if text.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?
    };
    Ok((value, config))
}

fn read_config(path: &PathBuf) -> Result<(String, Config)> {
    let text = read_text(path)?;
    let config = Config::parse(text.as_bytes()).with_context(|| format!("{}", path.display()))?;
    Ok((text, config))
}

//! `tokenmeter`: the companion binary of the tokenmeter filter.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use tokenmeter::bootstrap::{self, BootstrapSpec};
use tokenmeter::config::Config;

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
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
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
            let (_, config) = read_config(&file)?;
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
        } => {
            let (text, config) = read_config(&filter_config)?;
            let (listen_host, listen_port) = match listen.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, "--listen")?),
                None => ("127.0.0.1".to_string(), parse_port(&listen, "--listen")?),
            };
            let Some((upstream_host, port)) = upstream.rsplit_once(':') else {
                bail!("--upstream must be HOST:PORT, got {upstream:?}");
            };
            let upstream_port = parse_port(port, "--upstream")?;
            let spec = BootstrapSpec {
                // One line: JSON strings cannot span lines, so trimming lines is lossless.
                filter_config: text.lines().map(str::trim).collect(),
                wasm_path: wasm,
                listen_host,
                listen_port,
                admin_port: admin,
                upstream_host: upstream_host.to_string(),
                upstream_port,
                upstream_tls: upstream_tls || upstream_port == 443,
                node_id,
                region,
            };
            print!("{}", bootstrap::render(&spec, &config));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_port(text: &str, flag: &str) -> Result<u16> {
    text.parse()
        .with_context(|| format!("{flag}: {text:?} is not a port number"))
}

fn read_config(path: &PathBuf) -> Result<(String, Config)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read filter configuration {}", path.display()))?;
    let config = Config::parse(text.as_bytes()).with_context(|| format!("{}", path.display()))?;
    Ok((text, config))
}

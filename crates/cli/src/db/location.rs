//! Where the store is, from `--db`: a file path (SQLite), or a `postgres://` URL.
//!
//! A PostgreSQL password never comes from the command line (every user of the machine
//! sees it in `ps`): a URL that holds one is refused, and the password is read from
//! `--db-password-file`, else `TOKENMETER_DB_PASSWORD`, else libpq's `PGPASSWORD`.
//!
//! TLS follows the URL's `sslmode`: `disable` (the default), or `require`, `verify-ca` and
//! `verify-full`, which all verify the server's certificate and name, against
//! `sslrootcert` (a PEM file) when given, else the public web's roots. `prefer` is refused:
//! it falls back to plain text without saying so.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The store's database.
#[derive(Clone)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(Box<PgTarget>),
}

/// A PostgreSQL database, password included, and how to reach it.
#[derive(Clone)]
pub struct PgTarget {
    pub(crate) config: postgres::Config,
    /// Verify the server against these roots (`None`: the public web's); no TLS when
    /// `tls` is false.
    pub(crate) tls: bool,
    pub(crate) root_cert: Option<PathBuf>,
    /// The URL without secrets, for messages.
    pub(crate) shown: String,
}

/// How long a connection attempt may take before the database counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one statement, or an unanswered write on the connection, may take.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Location {
    /// Reads `--db`; `password_file` is `--db-password-file`.
    pub fn parse(text: &str, password_file: Option<&Path>) -> Result<Location> {
        let is_url = text.starts_with("postgres://") || text.starts_with("postgresql://");
        if !is_url {
            if password_file.is_some() {
                bail!("--db-password-file: only a PostgreSQL --db (postgres://…) takes a password; {text} is an SQLite file");
            }
            return Ok(Location::Sqlite(PathBuf::from(text)));
        }
        let password = read_password(password_file)?;
        PgTarget::parse(text, password).map(|t| Location::Postgres(Box::new(t)))
    }

    /// A PostgreSQL database with its password given (tests, which must not share one
    /// process-wide variable).
    #[cfg(test)]
    pub(crate) fn postgres(url: &str, password: &str) -> Result<Location> {
        PgTarget::parse(url, Some(password.to_string())).map(|t| Location::Postgres(Box::new(t)))
    }

    /// The SQLite file, when the store is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Location::Sqlite(p) => Some(p),
            Location::Postgres(_) => None,
        }
    }

    /// For messages: the path, or the URL without secrets.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(t) => t.shown.clone(),
        }
    }
}

fn read_password(file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--db-password-file: cannot read {}", path.display()))?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            bail!("--db-password-file: {} is empty", path.display());
        }
        return Ok(Some(password.to_string()));
    }
    for var in ["TOKENMETER_DB_PASSWORD", "PGPASSWORD"] {
        if let Ok(p) = std::env::var(var) {
            if !p.is_empty() {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

impl PgTarget {
    fn parse(url: &str, password: Option<String>) -> Result<PgTarget> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut ssl_mode = "disable".to_string();
        let mut root_cert = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            // Decoded as the rest of the URL is (`%20` in a path).
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            match key {
                "sslmode" => ssl_mode = value.into_owned(),
                "sslrootcert" => root_cert = Some(PathBuf::from(value.into_owned())),
                _ => kept.push(pair),
            }
        }
        let tls = match ssl_mode.as_str() {
            "disable" => false,
            "require" | "verify-ca" | "verify-full" => true,
            "prefer" | "allow" => bail!("--db: sslmode={ssl_mode} falls back to plain text without saying so; say sslmode=disable or sslmode=require (tokenmeter verifies the server's certificate whenever it uses TLS)"),
            other => bail!("--db: sslmode={other:?} is not one of disable, require, verify-ca, verify-full"),
        };
        if root_cert.is_some() && !tls {
            bail!("--db: sslrootcert needs sslmode=require, verify-ca or verify-full");
        }
        let rebuilt = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = postgres::Config::from_str(&rebuilt)
            .map_err(|e| anyhow::anyhow!("--db: not a PostgreSQL URL ({e}), e.g. postgres://tokenmeter@db.example:5432/tokenmeter?sslmode=verify-full"))?;
        if config.get_password().is_some() {
            bail!("--db: the URL holds a password, which every user of this machine can read in `ps`; take it out and give it with --db-password-file FILE or in TOKENMETER_DB_PASSWORD");
        }
        if let Some(p) = &password {
            config.password(p.as_bytes());
        }
        if config.get_hosts().is_empty() {
            bail!(
                "--db: the URL names no host, e.g. postgres://tokenmeter@127.0.0.1:5432/tokenmeter"
            );
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        // A database that stops answering (a lock held elsewhere, a network that drops
        // packets) must not hold the collector for ever: the statement fails, the sender
        // gets 503 and tries again.
        config.tcp_user_timeout(STALL_TIMEOUT);
        let options = config.get_options().unwrap_or_default().to_string();
        if !options.contains("statement_timeout") {
            let timeout = format!("-c statement_timeout={}", STALL_TIMEOUT.as_millis());
            config.options(format!("{options} {timeout}").trim());
        }
        config.application_name("tokenmeter");
        config.ssl_mode(if tls {
            postgres::config::SslMode::Require
        } else {
            postgres::config::SslMode::Disable
        });
        let host = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let port = config
            .get_ports()
            .first()
            .map_or(String::new(), |p| format!(":{p}"));
        let shown = format!(
            "postgres://{}@{host}{port}/{}{}",
            config.get_user().unwrap_or_default(),
            config.get_dbname().unwrap_or_default(),
            if tls { " (TLS)" } else { "" }
        );
        Ok(PgTarget {
            config,
            tls,
            root_cert,
            shown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(url: &str) -> Result<PgTarget> {
        PgTarget::parse(url, Some("pw".into()))
    }

    #[test]
    fn paths_are_sqlite_and_urls_postgres() {
        assert!(matches!(
            Location::parse("data/t.db", None).unwrap(),
            Location::Sqlite(_)
        ));
        let t = pg("postgres://tm@127.0.0.1:5433/store").unwrap();
        assert_eq!(t.shown, "postgres://tm@127.0.0.1:5433/store");
        assert!(!t.tls);
        assert_eq!(t.config.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn a_password_on_the_command_line_is_refused() {
        for url in [
            "postgres://tm:secret@127.0.0.1/store",
            "postgres://tm@127.0.0.1/store?password=secret",
        ] {
            let e = pg(url).err().unwrap().to_string();
            assert!(e.contains("--db-password-file"), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let e = Location::parse("t.db", Some(Path::new("pw")))
            .err()
            .unwrap();
        assert!(e.to_string().contains("only a PostgreSQL --db"), "{e}");
    }

    #[test]
    fn tls_modes() {
        let t = pg("postgres://tm@db.example/s?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert!(t.tls);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        let t = pg("postgres://tm@db.example/s?sslmode=verify-full&sslrootcert=/my%20certs/ca.pem")
            .unwrap();
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/my certs/ca.pem")));
        assert!(t.shown.ends_with("(TLS)"));
        let e = pg("postgres://tm@db.example/s?sslmode=prefer")
            .err()
            .unwrap();
        assert!(e.to_string().contains("sslmode=require"), "{e}");
        let e = pg("postgres://tm@db.example/s?sslrootcert=/ca.pem")
            .err()
            .unwrap();
        assert!(e.to_string().contains("sslrootcert needs"), "{e}");
    }
}

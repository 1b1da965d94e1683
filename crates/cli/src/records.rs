//! `tokenmeter records import` and `export`: moving records between JSONL files and the
//! store.

use std::io::{BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};

use crate::ingest;
use crate::quality::duration::{parse_rfc3339, IsoDuration};

use crate::db::Location;
use crate::store::Store;

/// Imports a JSONL file (or stdin for `-`) in one transaction.
pub fn import(db: &Location, file: &Path) -> Result<()> {
    let mut body = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut body)
            .context("cannot read records from stdin")?;
    } else {
        body = std::fs::read(file)
            .with_context(|| format!("cannot read records from {}", file.display()))?;
    }
    let received = Utc::now();
    let batch = ingest::parse_batch(&body, received)
        .with_context(|| format!("{}: nothing imported", file.display()))?;
    let mut store = Store::open(db)?;
    let stored = store.insert(&batch, received.timestamp_micros())?;
    println!(
        "imported {} records into {} ({} new, {} duplicates)",
        batch.len(),
        db.describe(),
        stored.stored,
        stored.duplicates
    );
    Ok(())
}

/// A time given as an RFC 3339 time, or as an ISO 8601 duration before now.
pub fn parse_time(flag: &str, text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Some(t) = parse_rfc3339(text) {
        return Ok(t);
    }
    match IsoDuration::parse(text) {
        Ok(d) => Ok(now - d.as_delta()),
        Err(_) => bail!("{flag}: {text:?} is neither a duration before now (e.g. P7D, PT6H) nor an RFC 3339 time (e.g. 2026-11-26T10:00:00Z)"),
    }
}

/// Writes the records with `since <= time < until` to stdout as JSONL, by time.
pub fn export(db: &Location, since: &str, until: Option<&str>) -> Result<()> {
    if let Some(path) = db.sqlite_path().filter(|p| !p.exists()) {
        bail!(
            "{}: no such database; collect records with tokenmeter serve or records import first",
            path.display()
        );
    }
    let now = Utc::now();
    let from = parse_time("--since", since, now)?;
    let to = match until {
        Some(u) => parse_time("--until", u, now)?.timestamp_micros(),
        None => i64::MAX,
    };
    let store = Store::open(db)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for line in store.records_between(from.timestamp_micros(), to)? {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

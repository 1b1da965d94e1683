//! The SQLite backend: one file, WAL journal, `synchronous = FULL`, so a transaction is on
//! disk (the WAL fsynced) when its commit returns, and the collector answers 200 only after
//! that. NORMAL would also survive a crash of the process but could lose the last commits
//! on power loss; the fsync per batch is cheap next to the HTTP round trip.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, ErrorCode};

use super::{DbError, Row, Value};

pub(super) struct Conn {
    conn: Connection,
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// A failure, as unavailable when waiting or retrying later can mend it.
fn classify(e: rusqlite::Error) -> DbError {
    let unavailable = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
        )
    );
    if unavailable {
        DbError::Unavailable(e.to_string())
    } else {
        DbError::Failed(e.to_string())
    }
}

impl Conn {
    pub(super) fn open(path: &Path) -> Result<Conn> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .with_context(|| format!("{} is not a tokenmeter database", path.display()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("{}: cannot switch the database to WAL mode (got {mode}); put it on a local file system", path.display());
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every tier and marginal upsert comes in up to 32 sizes (`tiers::write_upserts`).
        conn.set_prepared_statement_cache_capacity(256);
        Ok(Conn { conn })
    }

    pub(super) fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(classify)?;
        let n = stmt.execute(params_from_iter(params)).map_err(classify)?;
        Ok(n as u64)
    }

    pub(super) fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.conn.execute_batch(sql).map_err(classify)
    }

    pub(super) fn query(
        &self,
        sql: &str,
        params: &[Value],
        f: &mut dyn FnMut(Row<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(classify)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(params_from_iter(params)).map_err(classify)?;
        // One buffer for every row: a 30-day query reads many.
        let mut values = Vec::with_capacity(width);
        while let Some(r) = rows.next().map_err(classify)? {
            values.clear();
            for i in 0..width {
                values.push(match r.get_ref(i).map_err(classify)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Real(v) => Value::Int(v as i64),
                    ValueRef::Blob(_) => bail!("column {i} of the result is a blob"),
                });
            }
            f(Row(&values))?;
        }
        Ok(())
    }
}

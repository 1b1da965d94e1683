//! The store's database: an SQLite file (the default, one collector) or a PostgreSQL server
//! (a fleet's collectors sharing one store), behind one small interface so that the store's
//! SQL is written once and the same tests run on both.
//!
//! Statements are written in what both dialects accept: `?N` placeholders (sent to
//! PostgreSQL as `$N`), `ON CONFLICT`, `RETURNING`, `CAST`. Where they differ (JSON access,
//! table definitions) the caller asks [`Db::dialect`]. Values cross as [`Value`]: 64-bit
//! integers, text, booleans and NULL, all the store keeps.

mod location;
mod pg;
mod sqlite;

use anyhow::{bail, Result};

pub use location::Location;

/// Which SQL a statement must be written in, where the two differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The text of member `key` of the JSON object in column `col`, or NULL. `key` must be
    /// a checked name (letters, digits, `_`): it is written into the statement.
    pub(crate) fn json_text(self, col: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({col}, '$.\"{key}\"')"),
            Dialect::Postgres => format!("(CAST({col} AS jsonb) ->> '{key}')"),
        }
    }

    /// The same, the member's name bound at `param` (`?N`), so that one statement serves
    /// every name. The name must still be a checked one (SQLite reads it into a path).
    pub(crate) fn json_text_bound(self, col: &str, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({col}, '$.\"' || {param} || '\"')"),
            Dialect::Postgres => format!("(CAST({col} AS jsonb) ->> CAST({param} AS TEXT))"),
        }
    }
}

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Binds a list of values: `params![a, b]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::db::Value::from($v)),*][..] };
}
pub(crate) use params;

/// One row of a result, its columns by position.
#[derive(Clone, Copy)]
pub(crate) struct Row<'a>(pub(crate) &'a [Value]);

impl Row<'_> {
    fn at(&self, i: usize) -> Result<&Value> {
        match self.0.get(i) {
            Some(v) => Ok(v),
            None => bail!("the result has no column {i}"),
        }
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            Value::Bool(b) => Ok(i64::from(*b)),
            other => bail!("column {i}: expected an integer, found {other:?}"),
        }
    }

    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<String> {
        match self.at(i)? {
            Value::Text(v) => Ok(v.clone()),
            other => bail!("column {i}: expected text, found {other:?}"),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    /// A boolean: PostgreSQL's, or SQLite's integer.
    pub(crate) fn bool(&self, i: usize) -> Result<bool> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(v) => Ok(*v != 0),
            other => bail!("column {i}: expected a boolean, found {other:?}"),
        }
    }
}

/// Why a statement failed, where the caller acts on the reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// The database cannot be reached or cannot take writes now (the server is down, the
    /// connection broke, the file is locked or the disk is full): the collector answers
    /// 503 and the sender tries again later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Two transactions collided (PostgreSQL's serialization failure or deadlock): run it
    /// again.
    #[error("the transaction collided with another: {0}")]
    Collided(String),
    #[error("{0}")]
    Failed(String),
}

/// Whether an error (anywhere in its chain) is the database being unavailable.
pub(crate) fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<DbError>(), Some(DbError::Unavailable(_))))
}

enum Conn {
    Sqlite(sqlite::Conn),
    Postgres(pg::Conn),
}

/// An open database.
pub(crate) struct Db {
    conn: Conn,
    /// A transaction is open: one inside it would commit the outer one's work early on
    /// PostgreSQL (which only warns at a second BEGIN), so it is refused.
    in_transaction: std::cell::Cell<bool>,
}

/// How many times a transaction that collided with another runs again.
const ATTEMPTS: usize = 8;

impl Db {
    pub(crate) fn open(location: &Location) -> Result<Db> {
        let conn = match location {
            Location::Sqlite(path) => Conn::Sqlite(sqlite::Conn::open(path)?),
            Location::Postgres(target) => Conn::Postgres(pg::Conn::open(target)?),
        };
        Ok(Db {
            conn,
            in_transaction: std::cell::Cell::new(false),
        })
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self.conn {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        Ok(match &self.conn {
            Conn::Sqlite(c) => c.execute(sql, params)?,
            Conn::Postgres(c) => c.execute(sql, params)?,
        })
    }

    /// Runs statements without parameters, `;`-separated.
    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        match &self.conn {
            Conn::Sqlite(c) => c.batch(sql)?,
            Conn::Postgres(c) => c.batch(sql)?,
        }
        Ok(())
    }

    /// Calls `f` with each row of a query, in order.
    pub(crate) fn query(
        &self,
        sql: &str,
        params: &[Value],
        f: &mut dyn FnMut(Row<'_>) -> Result<()>,
    ) -> Result<()> {
        match &self.conn {
            Conn::Sqlite(c) => c.query(sql, params, f),
            Conn::Postgres(c) => c.query(sql, params, f),
        }
    }

    /// Every row of a query, each made into a `T`.
    pub(crate) fn query_all<T>(
        &self,
        sql: &str,
        params: &[Value],
        mut f: impl FnMut(Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query(sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query, if any, made into a `T`.
    pub(crate) fn query_one<T>(
        &self,
        sql: &str,
        params: &[Value],
        f: impl FnOnce(Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.query(sql, params, &mut |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs `f` in one transaction: all of it is committed or none. A transaction that
    /// collided with a concurrent one (another collector) runs again, so `f` must be safe
    /// to repeat.
    pub(crate) fn transaction<T>(&self, mut f: impl FnMut(&Db) -> Result<T>) -> Result<T> {
        if self.in_transaction.replace(true) {
            bail!("a transaction cannot begin inside another");
        }
        let outcome = self.attempts(&mut f);
        self.in_transaction.set(false);
        outcome
    }

    fn attempts<T>(&self, f: &mut impl FnMut(&Db) -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.begin()?;
            let outcome = f(self).and_then(|v| self.commit().map(|()| v));
            match outcome {
                Ok(v) => return Ok(v),
                Err(e) => {
                    // A failed rollback (the connection is gone) loses nothing more.
                    let _ = self.rollback();
                    let collided = e
                        .chain()
                        .any(|c| matches!(c.downcast_ref::<DbError>(), Some(DbError::Collided(_))));
                    if collided && attempt >= ATTEMPTS {
                        // Other writers keep winning: answer as busy, to be tried later.
                        return Err(DbError::Unavailable(format!(
                            "the transaction collided with others {ATTEMPTS} times: {e:#}"
                        ))
                        .into());
                    }
                    if !collided {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Ends any transaction left open (by a panic); nothing to report if there was none.
    pub(crate) fn abandon(&self) {
        let _ = self.rollback();
    }

    fn begin(&self) -> Result<()> {
        match &self.conn {
            Conn::Sqlite(c) => c.batch("BEGIN IMMEDIATE")?,
            Conn::Postgres(c) => c.begin()?,
        }
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        match &self.conn {
            Conn::Sqlite(c) => c.batch("COMMIT")?,
            Conn::Postgres(c) => c.commit()?,
        }
        Ok(())
    }

    fn rollback(&self) -> Result<()> {
        match &self.conn {
            Conn::Sqlite(c) => c.batch("ROLLBACK")?,
            Conn::Postgres(c) => c.rollback()?,
        }
        Ok(())
    }
}

/// A statement with `?N` placeholders as PostgreSQL writes them (`$N`). Quoted text is
/// left alone.
pub(crate) fn to_dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            to_dollar_placeholders("SELECT '?1', x FROM t WHERE a = ?1 AND b = ?12 AND c = '?'"),
            "SELECT '?1', x FROM t WHERE a = $1 AND b = $12 AND c = '?'"
        );
        assert_eq!(to_dollar_placeholders("a ? b"), "a ? b");
    }
}

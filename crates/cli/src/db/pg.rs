//! The PostgreSQL backend.
//!
//! The client (the `postgres` crate, which drives `tokio-postgres` on a runtime of its own)
//! lives on a thread of its own and takes statements over a channel: the store is called
//! from async tasks as well as from blocking ones, and that client must never run inside
//! the server's runtime.
//!
//! A lost connection is made again at the next statement, so the collector recovers by
//! itself when the server comes back; until then every statement fails as
//! [`DbError::Unavailable`]. A connection lost inside a transaction fails the rest of that
//! transaction rather than running its remaining statements on a new connection.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use postgres::error::SqlState;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::location::PgTarget;
use super::{to_dollar_placeholders, DbError, Row, Value};

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => Err(format!("cannot bind an integer as {ty}").into()),
            },
            Value::Bool(b) => match *ty {
                Type::BOOL => b.to_sql(ty, out),
                Type::INT8 => i64::from(*b).to_sql(ty, out),
                _ => Err(format!("cannot bind a boolean as {ty}").into()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_str().to_sql(ty, out)
                }
                _ => Err(format!("cannot bind text as {ty}").into()),
            },
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::FLOAT8
                | Type::BOOL
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
                | Type::UNKNOWN
        )
    }

    to_sql_checked!();
}

enum Op {
    Execute,
    Query,
    Batch,
    Begin,
    Commit,
    Rollback,
}

enum Answer {
    Changed(u64),
    Rows(Vec<Vec<Value>>),
    Done,
}

struct Job {
    op: Op,
    sql: String,
    params: Vec<Value>,
    reply: mpsc::SyncSender<Result<Answer, DbError>>,
}

pub(super) struct Conn {
    jobs: mpsc::Sender<Job>,
}

impl Conn {
    pub(super) fn open(target: &PgTarget) -> Result<Conn> {
        let tls = tls_config(target)?;
        let mut worker = Worker {
            target: target.clone(),
            tls,
            client: None,
            statements: HashMap::new(),
            in_transaction: false,
            broken: false,
        };
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tokenmeter-postgres".into())
            .spawn(move || {
                for job in queue {
                    let answer = worker.run(job.op, &job.sql, &job.params);
                    let _ = job.reply.send(answer);
                }
            })
            .context("cannot start the database thread")?;
        let conn = Conn { jobs };
        // Connect now (on the client's own thread, like every call): a wrong URL or
        // password is told at start, not at the first batch.
        conn.batch("SELECT 1")?;
        Ok(conn)
    }

    fn ask(&self, op: Op, sql: &str, params: &[Value]) -> Result<Answer, DbError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || DbError::Unavailable("the database thread has stopped".into());
        self.jobs
            .send(Job {
                op,
                sql: sql.to_string(),
                params: params.to_vec(),
                reply,
            })
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    pub(super) fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        match self.ask(Op::Execute, sql, params)? {
            Answer::Changed(n) => Ok(n),
            _ => Ok(0),
        }
    }

    pub(super) fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.ask(Op::Batch, sql, &[]).map(|_| ())
    }

    pub(super) fn begin(&self) -> Result<(), DbError> {
        self.ask(Op::Begin, "", &[]).map(|_| ())
    }

    pub(super) fn commit(&self) -> Result<(), DbError> {
        self.ask(Op::Commit, "", &[]).map(|_| ())
    }

    pub(super) fn rollback(&self) -> Result<(), DbError> {
        self.ask(Op::Rollback, "", &[]).map(|_| ())
    }

    pub(super) fn query(
        &self,
        sql: &str,
        params: &[Value],
        f: &mut dyn FnMut(Row<'_>) -> Result<()>,
    ) -> Result<()> {
        if let Answer::Rows(rows) = self.ask(Op::Query, sql, params)? {
            for row in &rows {
                f(Row(row))?;
            }
        }
        Ok(())
    }
}

/// Most prepared statements kept per connection.
const MAX_STATEMENTS: usize = 512;

struct Worker {
    target: PgTarget,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    client: Option<Client>,
    /// Prepared statements by their text, for the connection they were prepared on.
    statements: HashMap<String, Statement>,
    in_transaction: bool,
    /// The connection broke inside the open transaction.
    broken: bool,
}

impl Worker {
    fn client(&mut self) -> Result<&mut Client, DbError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.lost();
        }
        if self.client.is_none() {
            if self.in_transaction {
                self.broken = true;
                return Err(DbError::Unavailable(
                    "the connection broke during the transaction".into(),
                ));
            }
            let connected = match &self.tls {
                Some(tls) => self.target.config.connect(tls.clone()),
                None => self.target.config.connect(NoTls),
            };
            let client = connected.map_err(|e| {
                DbError::Unavailable(format!(
                    "cannot connect to {}: {}",
                    self.target.shown,
                    chain(&e)
                ))
            })?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| DbError::Unavailable("no connection".into()))
    }

    fn lost(&mut self) {
        self.client = None;
        self.statements.clear();
        if self.in_transaction {
            self.broken = true;
        }
    }

    /// Runs a job; a connection found broken when the job could not have changed anything
    /// yet (a `BEGIN`, a read outside a transaction) is made again and the job run once
    /// more, so that the first request after a database restart does not fail on a
    /// connection that was idle through it.
    fn run(&mut self, op: Op, sql: &str, params: &[Value]) -> Result<Answer, DbError> {
        let had_connection = self.client.is_some();
        let answer = self.run_once(&op, sql, params);
        let harmless = |w: &Worker| match op {
            Op::Begin => true,
            Op::Query => !w.in_transaction && is_read(sql),
            _ => false,
        };
        match answer {
            Err(DbError::Unavailable(_))
                if had_connection && self.client.is_none() && harmless(self) =>
            {
                self.run_once(&op, sql, params)
            }
            other => other,
        }
    }

    fn run_once(&mut self, op: &Op, sql: &str, params: &[Value]) -> Result<Answer, DbError> {
        match op {
            Op::Begin => {
                self.in_transaction = false;
                self.broken = false;
                self.client()?
                    .batch_execute("BEGIN")
                    .map_err(|e| self.failed(e))?;
                self.in_transaction = true;
                Ok(Answer::Done)
            }
            Op::Commit => {
                if self.broken {
                    self.in_transaction = false;
                    self.broken = false;
                    return Err(DbError::Unavailable(
                        "the connection broke during the transaction; nothing of it was committed"
                            .into(),
                    ));
                }
                let done = self
                    .client()?
                    .batch_execute("COMMIT")
                    .map_err(|e| self.failed(e));
                self.in_transaction = false;
                done.map(|()| Answer::Done)
            }
            Op::Rollback => {
                let broken = std::mem::take(&mut self.broken);
                if !broken {
                    if let Some(c) = self.client.as_mut() {
                        let _ = c.batch_execute("ROLLBACK");
                    }
                }
                self.in_transaction = false;
                Ok(Answer::Done)
            }
            Op::Batch => {
                self.check_transaction()?;
                self.client()?
                    .batch_execute(sql)
                    .map_err(|e| self.failed(e))?;
                Ok(Answer::Done)
            }
            Op::Execute | Op::Query => {
                self.check_transaction()?;
                let statement = self.statement(sql)?;
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                if matches!(op, &Op::Execute) {
                    let n = self.client()?.execute(&statement, &refs);
                    return n.map(Answer::Changed).map_err(|e| self.failed(e));
                }
                let rows = self.client()?.query(&statement, &refs);
                let rows = rows.map_err(|e| self.failed(e))?;
                rows.iter()
                    .map(convert)
                    .collect::<Result<Vec<_>, _>>()
                    .map(Answer::Rows)
            }
        }
    }

    fn check_transaction(&self) -> Result<(), DbError> {
        if self.in_transaction && self.broken {
            return Err(DbError::Unavailable(
                "the connection broke during the transaction".into(),
            ));
        }
        Ok(())
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        if self.statements.len() >= MAX_STATEMENTS {
            // The store's statements are a few hundred shapes; past that, start afresh
            // rather than keep every one here and in the server's session.
            self.statements.clear();
        }
        let prepared = self.client()?.prepare(&to_dollar_placeholders(sql));
        let s = prepared.map_err(|e| self.failed(e))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    /// Sorts a failure: the connection lost, a collision to run again, or the statement's
    /// own fault.
    fn failed(&mut self, e: postgres::Error) -> DbError {
        let message = chain(&e);
        if e.is_closed() || self.client.as_ref().is_some_and(Client::is_closed) {
            self.lost();
            return DbError::Unavailable(message);
        }
        match e.code() {
            Some(c)
                if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                DbError::Collided(message)
            }
            Some(c)
                if c.code().starts_with("08")
                    || c.code().starts_with("53")
                    || c.code().starts_with("57P") =>
            {
                self.lost();
                DbError::Unavailable(message)
            }
            // statement_timeout: the database is too slow or locked; the connection is fine.
            Some(c) if *c == SqlState::QUERY_CANCELED => DbError::Unavailable(message),
            _ if e.code().is_none() && e.as_db_error().is_none() => {
                // Not the server's answer: an I/O failure on the way.
                self.lost();
                DbError::Unavailable(message)
            }
            // A prepared statement the server no longer has, or whose plan changed under
            // it (a pooler between, a schema changed): prepare anew next time.
            Some(c)
                if *c == SqlState::INVALID_SQL_STATEMENT_NAME
                    || *c == SqlState::FEATURE_NOT_SUPPORTED =>
            {
                self.statements.clear();
                DbError::Failed(message)
            }
            _ => DbError::Failed(message),
        }
    }
}

/// Whether a statement only reads: the store's reads are plain `SELECT`s and `WITH …
/// SELECT`s that name no writing statement (and call no function that writes).
fn is_read(sql: &str) -> bool {
    let upper = sql.trim_start().to_ascii_uppercase();
    (upper.starts_with("SELECT") || upper.starts_with("WITH"))
        && ![
            "INSERT",
            "UPDATE",
            "DELETE",
            "PG_ADVISORY",
            "NEXTVAL",
            "SETVAL",
        ]
        .iter()
        .any(|w| upper.contains(w))
}

/// An error with its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn convert(row: &postgres::Row) -> Result<Vec<Value>, DbError> {
    let bad = |e: postgres::Error| DbError::Failed(chain(&e));
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let v = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(bad)?.map(Value::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map_err(bad)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map_err(bad)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(bad)?.map(Value::Bool),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => row
                .try_get::<_, Option<String>>(i)
                .map_err(bad)?
                .map(Value::Text),
            ref other => {
                return Err(DbError::Failed(format!(
                    "column {} is of type {other}; the store reads integers, booleans and text (cast it in the query)",
                    column.name()
                )))
            }
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(out)
}

/// The TLS client of a target that asks for TLS: the server's certificate and name are
/// verified against the target's roots, else the public web's.
fn tls_config(target: &PgTarget) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    if !target.tls {
        warn_if_plain_beyond_loopback(target);
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    match &target.root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    anyhow!(
                        "--db: sslrootcert {}: cannot read PEM certificates ({e})",
                        path.display()
                    )
                })?;
            if certs.is_empty() {
                anyhow::bail!("--db: sslrootcert {} holds no certificate", path.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| anyhow!("--db: sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS library offers no protocol version")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

/// Once per process: the store is opened by every pass, claim and run.
fn warn_if_plain_beyond_loopback(target: &PgTarget) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let remote = target.config.get_hosts().iter().any(|h| match h {
        postgres::config::Host::Tcp(name) => {
            name != "localhost"
                && name
                    .parse::<std::net::IpAddr>()
                    .map_or(true, |ip| !ip.is_loopback())
        }
        postgres::config::Host::Unix(_) => false,
    });
    if remote {
        WARNED.call_once(|| {
            eprintln!(
            "warning: {} is reached without TLS: records (users' prompts and answers) and the password cross the network in the clear; add sslmode=verify-full to --db",
            target.shown
        );
        });
    }
}

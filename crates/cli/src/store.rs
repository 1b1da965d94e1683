//! The store: records, usage rollups, the judge-result cache and monitor runs, in an SQLite
//! file or a PostgreSQL database (see `db`). Several collectors may share one database:
//! every write is idempotent under concurrent writers (a record by its id, a rollup batch
//! by its id), a scheduled monitor run is claimed by one of them (`monitor_claims`), and
//! old data goes by the retention settings (`retention`).

use anyhow::{bail, Context, Result};

use crate::db::{params, Db, Dialect, Location, Value};
use crate::ingest::Incoming;
use crate::quality::report::{Report, Row};
use tokenmeter_core::series::rollup::Batch;

/// The schema version this binary writes (SQLite's `PRAGMA user_version`, PostgreSQL's
/// `tokenmeter_schema` table).
pub const SCHEMA_VERSION: i64 = 7;

const MIGRATION_1: &str = "
CREATE TABLE records (
    id          TEXT PRIMARY KEY,
    time_us     INTEGER NOT NULL,
    received_us INTEGER NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX records_by_time ON records (time_us, id);
CREATE TABLE judge_cache (
    key            TEXT PRIMARY KEY,
    prompt_version TEXT NOT NULL,
    judge_model    TEXT NOT NULL,
    content        TEXT NOT NULL,
    created_us     INTEGER NOT NULL
);
CREATE TABLE monitor_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    monitor     TEXT NOT NULL,
    started_us  INTEGER NOT NULL,
    finished_us INTEGER NOT NULL,
    breached    INTEGER,
    error       TEXT,
    report      TEXT
);
CREATE INDEX monitor_runs_by_monitor ON monitor_runs (monitor, id);
CREATE TABLE monitor_scores (
    run_id         INTEGER NOT NULL REFERENCES monitor_runs (id),
    record_id      TEXT NOT NULL,
    metric         TEXT NOT NULL,
    status         TEXT NOT NULL,
    score          INTEGER,
    reason         TEXT NOT NULL,
    judge_model    TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    PRIMARY KEY (run_id, record_id, metric)
);
";

/// Version 5: the judge cache also keeps refusals (a content filter, a context too long):
/// `content` is then the judge's error, and a rerun does not ask again.
const MIGRATION_5: &str = "
ALTER TABLE judge_cache ADD COLUMN refusal INTEGER NOT NULL DEFAULT 0;
";

/// Version 6: the alerts firing after each monitor's last run (see `alerts::condition`),
/// so that the next run tells only what changed. `firing` is the alert as JSON.
const MIGRATION_6: &str = "
CREATE TABLE monitor_alerts (
    monitor  TEXT NOT NULL,
    key      TEXT NOT NULL,
    since_us INTEGER NOT NULL,
    firing   TEXT NOT NULL,
    PRIMARY KEY (monitor, key)
);
";

/// Version 7, for several collectors on one database and for retention: the scheduled
/// runs claimed (one collector runs each), and where the minute and hour tiers begin once
/// retention has deleted their oldest buckets (`tiers::Horizons`).
const MIGRATION_7: &str = "
CREATE TABLE monitor_claims (
    monitor    TEXT NOT NULL,
    slot_us    INTEGER NOT NULL,
    instance   TEXT NOT NULL,
    claimed_us INTEGER NOT NULL,
    PRIMARY KEY (monitor, slot_us)
);
CREATE TABLE tier_horizons (
    tier  TEXT PRIMARY KEY,
    since INTEGER NOT NULL
);
CREATE INDEX monitor_runs_by_time ON monitor_runs (finished_us);
CREATE INDEX judge_cache_by_time ON judge_cache (created_us);
CREATE INDEX rollup_batches_by_time ON rollup_batches (received_us);
";

/// Usage rollups (`POST /v1/rollups`, see `tokenmeter_core::series::rollup`): one row per
/// minute and series, summed over every batch that named it; each batch is added once.
/// `series` is the row's labels as a JSON object; histograms are JSON `{buckets, sum,
/// count}` with the core's fixed bounds.
const MIGRATION_2: &str = "
CREATE TABLE rollup_batches (
    id          TEXT PRIMARY KEY,
    received_us INTEGER NOT NULL,
    rows        INTEGER NOT NULL
);
CREATE TABLE rollups (
    minute            INTEGER NOT NULL,
    series            TEXT NOT NULL,
    requests_1xx      INTEGER NOT NULL,
    requests_2xx      INTEGER NOT NULL,
    requests_3xx      INTEGER NOT NULL,
    requests_4xx      INTEGER NOT NULL,
    requests_5xx      INTEGER NOT NULL,
    requests_none     INTEGER NOT NULL,
    errors_timeout          INTEGER NOT NULL,
    errors_upstream_reset   INTEGER NOT NULL,
    errors_client_cancelled INTEGER NOT NULL,
    errors_rate_limited     INTEGER NOT NULL,
    errors_client_error     INTEGER NOT NULL,
    errors_upstream_error   INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens      INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    reasoning_tokens  INTEGER NOT NULL,
    estimated         INTEGER NOT NULL,
    invalid_usage     INTEGER NOT NULL,
    duration_ms       TEXT NOT NULL,
    ttft_ms           TEXT NOT NULL,
    tpot_ms           TEXT NOT NULL,
    PRIMARY KEY (minute, series)
);
";

/// The whole schema of this version on PostgreSQL, which has no older versions to migrate
/// from: the same tables as SQLite's, with 64-bit integers and booleans.
fn postgres_schema() -> String {
    let mut sql = String::from(
        "
CREATE TABLE tokenmeter_schema (version BIGINT NOT NULL);
CREATE TABLE records (
    id          TEXT PRIMARY KEY,
    time_us     BIGINT NOT NULL,
    received_us BIGINT NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX records_by_time ON records (time_us, id);
CREATE TABLE judge_cache (
    key            TEXT PRIMARY KEY,
    prompt_version TEXT NOT NULL,
    judge_model    TEXT NOT NULL,
    content        TEXT NOT NULL,
    created_us     BIGINT NOT NULL,
    refusal        BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE monitor_runs (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    monitor     TEXT NOT NULL,
    started_us  BIGINT NOT NULL,
    finished_us BIGINT NOT NULL,
    breached    BOOLEAN,
    error       TEXT,
    report      TEXT
);
CREATE INDEX monitor_runs_by_monitor ON monitor_runs (monitor, id);
CREATE TABLE monitor_scores (
    run_id         BIGINT NOT NULL REFERENCES monitor_runs (id) ON DELETE CASCADE,
    record_id      TEXT NOT NULL,
    metric         TEXT NOT NULL,
    status         TEXT NOT NULL,
    score          BIGINT,
    reason         TEXT NOT NULL,
    judge_model    TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    PRIMARY KEY (run_id, record_id, metric)
);
CREATE INDEX monitor_scores_by_record ON monitor_scores (record_id);
CREATE TABLE monitor_alerts (
    monitor  TEXT NOT NULL,
    key      TEXT NOT NULL,
    since_us BIGINT NOT NULL,
    firing   TEXT NOT NULL,
    PRIMARY KEY (monitor, key)
);
CREATE TABLE rollup_batches (
    id          TEXT PRIMARY KEY,
    received_us BIGINT NOT NULL,
    rows        BIGINT NOT NULL
);
",
    );
    sql.push_str(&crate::tiers::schema(Dialect::Postgres));
    sql.push_str(&crate::tiers::marginal_schema(Dialect::Postgres));
    sql.push_str(&MIGRATION_7.replace("INTEGER", "BIGINT"));
    sql
}

/// A record's JSON with every NUL character (`\u0000`, in a user's text) made U+FFFD:
/// PostgreSQL's JSON type refuses NUL, which would make every filtered read of the records
/// fail; both backends store the same text.
fn without_nul(json: String) -> String {
    if !json.contains("\\u0000") {
        return json;
    }
    let mut out = String::with_capacity(json.len());
    let mut rest = json.as_str();
    while let Some(i) = rest.find("\\u0000") {
        let (before, after) = rest.split_at(i);
        out.push_str(before);
        // An escape only where an even number of backslashes comes before it (`\\u0000`
        // is a backslash and the text "u0000").
        let backslashes = before.bytes().rev().take_while(|b| *b == b'\\').count();
        out.push_str(if backslashes % 2 == 0 {
            "\\ufffd"
        } else {
            "\\u0000"
        });
        rest = after.get(6..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// Records per insert statement, well inside both databases' limits on bound values.
const RECORDS_PER_STATEMENT: usize = 32;

/// An insert of `n` records that answers the ids it stored (not those already there).
fn insert_records(n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "(?{}, ?{}, ?{}, ?{})",
                4 * i + 1,
                4 * i + 2,
                4 * i + 3,
                4 * i + 4
            )
        })
        .collect();
    format!(
        "INSERT INTO records (id, time_us, received_us, record) VALUES {}
         ON CONFLICT (id) DO NOTHING RETURNING id",
        rows.join(", ")
    )
}

/// How many records of a batch were new and how many were already stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub stored: u64,
    pub duplicates: u64,
}

/// A monitor's most recent run, and its most recent successful one.
pub struct MonitorRuns {
    pub last_failed: bool,
    pub last_report: Option<(Report, i64)>,
}

pub struct Store {
    db: Db,
    series: crate::tiers::SeriesIds,
}

/// Serializes migrations of one PostgreSQL database by several collectors starting at
/// once (`pg_advisory_xact_lock`; any constant only tokenmeter uses).
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e6d;

impl Store {
    /// Opens (creating if needed) and migrates the store.
    pub fn open(location: &Location) -> Result<Store> {
        let db = Db::open(location)?;
        let store = Store {
            db,
            series: Default::default(),
        };
        store
            .migrate()
            .with_context(|| format!("cannot prepare database {}", location.describe()))?;
        Ok(store)
    }

    /// The database, for the retention job and the tiers.
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    fn migrate(&self) -> Result<()> {
        match self.db.dialect() {
            Dialect::Sqlite => self.migrate_sqlite(),
            Dialect::Postgres => self.migrate_postgres(),
        }
    }

    fn migrate_sqlite(&self) -> Result<()> {
        let version = |db: &Db| -> Result<i64> {
            db.query_one("PRAGMA user_version", &[], |r| r.int(0))
                .map(Option::unwrap_or_default)
        };
        if version(&self.db)? == SCHEMA_VERSION {
            // Nothing to write: readers (`records export`) never contend with the collector.
            return Ok(());
        }
        // The transaction begins immediate: a deferred one that reads then writes cannot
        // wait for a busy writer (SQLite answers "database is locked" at once).
        self.db.transaction(|db| {
            let version = version(db)?;
            if version > SCHEMA_VERSION {
                bail!("its schema version {version} is newer than this tokenmeter supports ({SCHEMA_VERSION}); upgrade tokenmeter");
            }
            if version < 1 {
                db.batch(MIGRATION_1)?;
            }
            if version < 2 {
                db.batch(MIGRATION_2)?;
            }
            if version < 3 {
                db.batch(&crate::tiers::schema(Dialect::Sqlite))?;
                crate::tiers::migrate_from_v2(db)?;
            }
            if version < 4 {
                db.batch(&crate::tiers::marginal_schema(Dialect::Sqlite))?;
                crate::tiers::fill_marginals(db)?;
            }
            if version < 5 {
                db.batch(MIGRATION_5)?;
            }
            if version < 6 {
                db.batch(MIGRATION_6)?;
            }
            if version < 7 {
                db.batch(MIGRATION_7)?;
            }
            db.batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        })
    }

    fn migrate_postgres(&self) -> Result<()> {
        self.db.transaction(|db| {
            db.execute("SELECT pg_advisory_xact_lock(?1)", params![MIGRATION_LOCK])?;
            let exists = db
                .query_one(
                    "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'tokenmeter_schema'",
                    &[],
                    |_| Ok(()),
                )?
                .is_some();
            if !exists {
                let other = db
                    .query_one(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() LIMIT 1",
                        &[],
                        |r| r.text(0),
                    )?;
                if let Some(table) = other {
                    bail!("the database already holds tables ({table} among them) and none is tokenmeter's; give tokenmeter a database of its own");
                }
                db.batch(&postgres_schema())?;
                db.execute(
                    "INSERT INTO tokenmeter_schema (version) VALUES (?1)",
                    params![SCHEMA_VERSION],
                )?;
                return Ok(());
            }
            let version = db
                .query_one("SELECT max(version) FROM tokenmeter_schema", &[], |r| r.opt_int(0))?
                .flatten()
                .unwrap_or(0);
            if version > SCHEMA_VERSION {
                bail!("its schema version {version} is newer than this tokenmeter supports ({SCHEMA_VERSION}); upgrade tokenmeter");
            }
            // Later versions add their steps here, as SQLite's do.
            if version < SCHEMA_VERSION {
                bail!("its schema version {version} is older than any this tokenmeter migrates from");
            }
            Ok(())
        })
    }

    /// Stores a batch in one transaction; a record whose id is already stored is kept as
    /// it was and counted as a duplicate.
    pub fn insert(&mut self, batch: &[Incoming], received_us: i64) -> Result<Stored> {
        let mut json = Vec::with_capacity(batch.len());
        for item in batch {
            json.push(without_nul(serde_json::to_string(&item.record)?));
        }
        // Each id once (the first of the batch kept), in id order: collectors storing
        // overlapping batches at once take the rows' locks in one order, so never deadlock.
        let mut rows: Vec<(&Incoming, &String)> = batch.iter().zip(&json).collect();
        rows.sort_by(|a, b| a.0.record.id.cmp(&b.0.record.id));
        rows.dedup_by(|later, first| later.0.record.id == first.0.record.id);
        let repeated = (batch.len() - rows.len()) as u64;
        self.db
            .transaction(|db| {
                let mut counts = Stored {
                    stored: 0,
                    duplicates: repeated,
                };
                // Several records per statement (a round trip each on PostgreSQL); within
                // one, as across them, the first of an id is kept.
                for chunk in rows.chunks(RECORDS_PER_STATEMENT) {
                    let mut values = Vec::with_capacity(chunk.len() * 4);
                    for (item, json) in chunk {
                        values.extend([
                            Value::from(item.record.id.as_str()),
                            item.time_us.into(),
                            received_us.into(),
                            Value::from(json.as_str()),
                        ]);
                    }
                    let stored = db
                        .query_all(&insert_records(chunk.len()), &values, |_| Ok(()))?
                        .len() as u64;
                    counts.stored += stored;
                    counts.duplicates += chunk.len() as u64 - stored;
                }
                Ok(counts)
            })
            .context("cannot store the batch")
    }

    /// Adds a rollup batch in one transaction; `false` when a batch with its id was added
    /// before (a retried delivery, perhaps to another collector), which changes nothing.
    pub fn insert_rollups(&mut self, batch: &Batch, received_us: i64) -> Result<bool> {
        let known = &self.series;
        let (added, new_series) = self
            .db
            .transaction(|db| {
                let added = db.execute(
                    "INSERT INTO rollup_batches (id, received_us, rows) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO NOTHING",
                    params![batch.id.as_str(), received_us, batch.rows.len() as i64],
                )?;
                if added == 0 {
                    return Ok((false, Vec::new()));
                }
                Ok((true, crate::tiers::add_batch(db, batch, known)?))
            })
            .context("cannot store the rollups")?;
        self.series.committed(new_series);
        Ok(added)
    }

    /// The rollups of a usage query, summed per step and group: `(step index, group, sums)`.
    pub fn usage(
        &self,
        q: &crate::usage::Query,
    ) -> Result<Vec<(i64, Option<String>, crate::usage::Sums)>> {
        crate::tiers::usage(&self.db, q)
    }

    /// The rollups of an operations query, summed per step and group.
    pub fn operations(&self, q: &crate::usage::Query) -> Result<Vec<crate::usage::OperationsRow>> {
        crate::tiers::operations(&self.db, q)
    }

    /// A page of records (newest first) and how many match in all.
    pub fn records_page(&self, q: &crate::browse::RecordsQuery) -> Result<(i64, Vec<String>)> {
        let dialect = self.db.dialect();
        // Field names are fixed (`model`, `route`, `operation`); values are bound.
        let mut filter = String::new();
        for (i, (field, _)) in q.filters.iter().enumerate() {
            filter.push_str(&format!(
                " AND {} = ?{}",
                dialect.json_text("record", field),
                i + 3
            ));
        }
        let mut values: Vec<Value> = vec![q.from_us.into(), q.to_us.into()];
        values.extend(q.filters.iter().map(|(_, v)| Value::from(v)));
        if let Some(metric) = &q.metric {
            // The latest score of the metric from any monitor's latest run that scored the
            // record; pass is against that run's acceptable score.
            let acceptable = match dialect {
                Dialect::Sqlite => {
                    "json_extract(r.report, '$.metrics.' || s.metric || '.acceptable_score')"
                }
                Dialect::Postgres => {
                    "CAST(CAST(r.report AS jsonb) -> 'metrics' -> s.metric ->> 'acceptable_score' AS DOUBLE PRECISION)"
                }
            };
            let verdict = match q.pass {
                None => String::new(),
                Some(true) => format!(" AND s.score >= {acceptable}"),
                Some(false) => format!(" AND s.score < {acceptable}"),
            };
            filter.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM monitor_scores s JOIN monitor_runs r ON r.id = s.run_id
                   WHERE s.record_id = records.id AND s.metric = ?{} AND s.status = 'scored'{verdict}
                     AND s.run_id = (SELECT max(s2.run_id) FROM monitor_scores s2
                                     JOIN monitor_runs r2 ON r2.id = s2.run_id
                                     WHERE s2.record_id = s.record_id AND s2.metric = s.metric
                                       AND r2.monitor = r.monitor))",
                values.len() + 1
            ));
            values.push(metric.into());
        }
        let total = self
            .db
            .query_one(
                &format!(
                    "SELECT count(*) FROM records WHERE time_us >= ?1 AND time_us < ?2{filter}"
                ),
                &values,
                |r| r.int(0),
            )?
            .unwrap_or(0);
        let n = values.len();
        values.push(q.limit.into());
        values.push(q.offset.into());
        let rows = self.db.query_all(
            &format!(
                "SELECT record FROM records WHERE time_us >= ?1 AND time_us < ?2{filter}
                 ORDER BY time_us DESC, id LIMIT ?{} OFFSET ?{}",
                n + 1,
                n + 2
            ),
            &values,
            |r| r.text(0),
        )?;
        Ok((total, rows))
    }

    /// One record by id, as stored.
    pub fn record(&self, id: &str) -> Result<Option<String>> {
        self.db.query_one(
            "SELECT record FROM records WHERE id = ?1",
            params![id],
            |r| r.text(0),
        )
    }

    /// The scores of a record: per monitor and metric, the latest successful run's.
    pub fn scores(&self, record_id: &str) -> Result<Vec<crate::browse::Score>> {
        self.db.query_all(
            "SELECT s.metric, s.status, s.score, s.reason, s.judge_model, s.prompt_version,
                    r.monitor, s.run_id
             FROM monitor_scores s JOIN monitor_runs r ON r.id = s.run_id
             WHERE s.record_id = ?1
               AND s.run_id = (SELECT max(s2.run_id) FROM monitor_scores s2
                               JOIN monitor_runs r2 ON r2.id = s2.run_id
                               WHERE s2.record_id = s.record_id AND s2.metric = s.metric
                                 AND r2.monitor = r.monitor)
             ORDER BY r.monitor, s.metric",
            params![record_id],
            |r| {
                Ok(crate::browse::Score {
                    metric: r.text(0)?,
                    status: r.text(1)?,
                    score: r.opt_int(2)?,
                    reason: r.text(3)?,
                    judge_model: r.text(4)?,
                    prompt_version: r.text(5)?,
                    monitor: r.text(6)?,
                    run_id: r.int(7)?,
                })
            },
        )
    }

    /// Records with `from_us <= time < to_us`, by time then id, as stored JSON text.
    pub fn records_between(&self, from_us: i64, to_us: i64) -> Result<Vec<String>> {
        self.db.query_all(
            "SELECT record FROM records WHERE time_us >= ?1 AND time_us < ?2 ORDER BY time_us, id",
            params![from_us, to_us],
            |r| r.text(0),
        )
    }

    #[cfg(test)]
    pub fn count_records(&self) -> Result<i64> {
        Ok(self
            .db
            .query_one("SELECT count(*) FROM records", &[], |r| r.int(0))?
            .unwrap_or(0))
    }

    /// A cached judge outcome: the answer's text, or the refusal's message (`true`).
    pub fn cache_get(&self, key: &str) -> Result<Option<(String, bool)>> {
        self.db.query_one(
            "SELECT content, refusal FROM judge_cache WHERE key = ?1",
            params![key],
            |r| Ok((r.text(0)?, r.bool(1)?)),
        )
    }

    pub fn cache_put(
        &self,
        key: &str,
        prompt_version: &str,
        judge_model: &str,
        (content, refusal): (&str, bool),
        now_us: i64,
    ) -> Result<()> {
        self.db.execute(
            "INSERT INTO judge_cache (key, prompt_version, judge_model, content, created_us, refusal)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (key) DO UPDATE SET prompt_version = excluded.prompt_version,
                 judge_model = excluded.judge_model, content = excluded.content,
                 created_us = excluded.created_us, refusal = excluded.refusal",
            params![key, prompt_version, judge_model, content, now_us, refusal],
        )?;
        Ok(())
    }

    /// Stores a run: its report and per-record rows, or the error that stopped it.
    pub fn save_run(
        &mut self,
        monitor: &str,
        started_us: i64,
        finished_us: i64,
        outcome: Result<(&Report, &[Row]), &str>,
    ) -> Result<()> {
        let report_json = match &outcome {
            Ok((report, _)) => Some(serde_json::to_string(report)?),
            Err(_) => None,
        };
        self.db.transaction(|db| {
            match &outcome {
                Ok((report, rows)) => {
                    let json = report_json.as_deref().unwrap_or_default();
                    let run_id = db
                        .query_one(
                            "INSERT INTO monitor_runs (monitor, started_us, finished_us, breached, report)
                             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                            params![monitor, started_us, finished_us, report.breached, json],
                            |r| r.int(0),
                        )?
                        .context("the database gave no id for the run")?;
                    for row in rows.iter() {
                        db.execute(
                            "INSERT INTO monitor_scores (run_id, record_id, metric, status, score, reason, judge_model, prompt_version)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                             ON CONFLICT (run_id, record_id, metric) DO UPDATE SET status = excluded.status,
                                 score = excluded.score, reason = excluded.reason,
                                 judge_model = excluded.judge_model, prompt_version = excluded.prompt_version",
                            params![
                                run_id,
                                row.record_id.as_str(),
                                row.metric.name(),
                                row.status.as_str(),
                                row.score.map(i64::from),
                                row.reason.as_str(),
                                row.judge_model.as_str(),
                                row.prompt_version.as_str()
                            ],
                        )?;
                    }
                }
                Err(error) => {
                    db.execute(
                        "INSERT INTO monitor_runs (monitor, started_us, finished_us, error) VALUES (?1, ?2, ?3, ?4)",
                        params![monitor, started_us, finished_us, *error],
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Claims the run of `monitor` scheduled at `slot_us` for `instance`: `true` for the
    /// one collector of those sharing the database that gets it, `false` for the others
    /// (they read its result from the store).
    pub fn claim_run(
        &self,
        monitor: &str,
        slot_us: i64,
        instance: &str,
        now_us: i64,
    ) -> Result<bool> {
        let n = self.db.execute(
            "INSERT INTO monitor_claims (monitor, slot_us, instance, claimed_us) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (monitor, slot_us) DO NOTHING",
            params![monitor, slot_us, instance, now_us],
        )?;
        Ok(n == 1)
    }

    /// Runs that finished in the quality query's window, in time order.
    pub fn runs(&self, q: &crate::runs::QualityQuery) -> Result<Vec<crate::runs::StoredRun>> {
        let rows = self.db.query_all(
            "SELECT id, monitor, finished_us, error, report FROM monitor_runs
             WHERE finished_us >= ?1 AND finished_us < ?2 AND (CAST(?3 AS TEXT) IS NULL OR monitor = ?3)
             ORDER BY finished_us, id",
            params![q.from_us, q.to_us, q.monitor.as_deref()],
            run_row,
        )?;
        rows.into_iter().map(stored_run).collect()
    }

    /// The latest run of a monitor, if it ever ran.
    pub fn last_run(&self, monitor: &str) -> Result<Option<crate::runs::StoredRun>> {
        let row = self.db.query_one(
            "SELECT id, monitor, finished_us, error, report FROM monitor_runs
             WHERE monitor = ?1 ORDER BY id DESC LIMIT 1",
            params![monitor],
            run_row,
        )?;
        row.map(stored_run).transpose()
    }

    /// `(monitor, metric, score, count)` over the runs of the window, each record's latest
    /// score per monitor and metric counted once (overlapping windows score a record often).
    pub fn score_histograms(
        &self,
        q: &crate::runs::QualityQuery,
    ) -> Result<Vec<(String, String, i64, u64)>> {
        self.db.query_all(
            "WITH latest AS (
                 SELECT r.monitor, s.record_id, s.metric, max(s.run_id) AS run_id
                 FROM monitor_scores s JOIN monitor_runs r ON r.id = s.run_id
                 WHERE r.finished_us >= ?1 AND r.finished_us < ?2
                   AND (CAST(?3 AS TEXT) IS NULL OR r.monitor = ?3)
                 GROUP BY r.monitor, s.record_id, s.metric)
             SELECT l.monitor, l.metric, s.score, count(*)
             FROM latest l JOIN monitor_scores s
               ON s.run_id = l.run_id AND s.record_id = l.record_id AND s.metric = l.metric
             WHERE s.status = 'scored' AND s.score IS NOT NULL
             GROUP BY l.monitor, l.metric, s.score ORDER BY l.monitor, l.metric, s.score",
            params![q.from_us, q.to_us, q.monitor.as_deref()],
            |r| Ok((r.text(0)?, r.text(1)?, r.int(2)?, r.int(3)?.max(0) as u64)),
        )
    }

    /// The latest run of a monitor, and its latest successful report.
    pub fn monitor_runs(&self, monitor: &str) -> Result<MonitorRuns> {
        let last_failed = self
            .db
            .query_one(
                "SELECT error IS NOT NULL FROM monitor_runs WHERE monitor = ?1 ORDER BY id DESC LIMIT 1",
                params![monitor],
                |r| r.bool(0),
            )?
            .unwrap_or(false);
        let last = self.db.query_one(
            "SELECT report, finished_us FROM monitor_runs WHERE monitor = ?1 AND report IS NOT NULL ORDER BY id DESC LIMIT 1",
            params![monitor],
            |r| Ok((r.text(0)?, r.int(1)?)),
        )?;
        let last_report = match last {
            Some((json, finished_us)) => Some((
                serde_json::from_str(&json).context("a stored monitor report is unreadable")?,
                finished_us.div_euclid(1_000_000),
            )),
            None => None,
        };
        Ok(MonitorRuns {
            last_failed,
            last_report,
        })
    }

    /// The alerts firing after the monitor's last run, in key order.
    pub fn firing_alerts(&self, monitor: &str) -> Result<Vec<crate::alerts::condition::Firing>> {
        let rows = self.db.query_all(
            "SELECT firing FROM monitor_alerts WHERE monitor = ?1 ORDER BY key",
            params![monitor],
            |r| r.text(0),
        )?;
        rows.iter()
            .map(|json| serde_json::from_str(json).context("a stored alert is unreadable"))
            .collect()
    }

    /// Replaces the alerts firing for the monitor.
    pub fn set_firing_alerts(
        &mut self,
        monitor: &str,
        firing: &[crate::alerts::condition::Firing],
    ) -> Result<()> {
        let mut json = Vec::with_capacity(firing.len());
        for f in firing {
            json.push(serde_json::to_string(f)?);
        }
        self.db.transaction(|db| {
            db.execute("DELETE FROM monitor_alerts WHERE monitor = ?1", params![monitor])?;
            for (f, json) in firing.iter().zip(&json) {
                db.execute(
                    "INSERT INTO monitor_alerts (monitor, key, since_us, firing) VALUES (?1, ?2, ?3, ?4)",
                    params![monitor, f.key.as_str(), f.since_us, json.as_str()],
                )?;
            }
            Ok(())
        })
    }

    pub fn check(&self) -> Result<()> {
        self.db.query_one("SELECT 1", &[], |_| Ok(()))?;
        Ok(())
    }
}

type RunRow = (i64, String, i64, Option<String>, Option<String>);

fn run_row(r: crate::db::Row<'_>) -> Result<RunRow> {
    Ok((
        r.int(0)?,
        r.text(1)?,
        r.int(2)?,
        r.opt_text(3)?,
        r.opt_text(4)?,
    ))
}

fn stored_run((id, monitor, finished_us, error, report): RunRow) -> Result<crate::runs::StoredRun> {
    let report = report
        .map(|json| serde_json::from_str(&json))
        .transpose()
        .context("a stored monitor report is unreadable")?;
    Ok(crate::runs::StoredRun {
        id,
        monitor,
        finished_us,
        error,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::parse_batch;
    use tokenmeter_testkit::postgres::Postgres;

    fn now() -> chrono::DateTime<chrono::Utc> {
        crate::quality::duration::parse_rfc3339("2026-11-26T10:00:00Z").unwrap()
    }

    /// What keeps a test's database alive: its directory, or its PostgreSQL server.
    #[allow(dead_code)]
    enum Keep {
        Dir(tempfile::TempDir),
        Server(Postgres),
    }

    /// A fresh SQLite store.
    fn sqlite() -> (Location, Keep) {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sqlite(dir.path().join("t.db"));
        (location, Keep::Dir(dir))
    }

    /// A fresh database on a real PostgreSQL server of its own.
    fn postgres() -> (Location, Keep) {
        let pg = Postgres::start().unwrap();
        pg.create_database("store").unwrap();
        let location = Location::postgres(&pg.url("store"), pg.password()).unwrap();
        (location, Keep::Server(pg))
    }

    /// Runs `check` on a fresh store of each backend.
    fn on_both(check: impl Fn(&Location)) {
        for (name, (location, keep)) in [("sqlite", sqlite()), ("postgres", postgres())] {
            eprintln!("on {name}");
            check(&location);
            drop(keep);
        }
    }

    fn rows(store: &Store, sql: &str) -> Vec<Vec<crate::db::Value>> {
        store.db.query_all(sql, &[], |r| Ok(r.0.to_vec())).unwrap()
    }

    fn int(v: &crate::db::Value) -> i64 {
        match v {
            crate::db::Value::Int(i) => *i,
            other => panic!("not an integer: {other:?}"),
        }
    }

    fn text(v: &crate::db::Value) -> &str {
        match v {
            crate::db::Value::Text(t) => t,
            other => panic!("not text: {other:?}"),
        }
    }

    fn settled(team: &str, prompt: u64) -> tokenmeter_core::exchange::settlement::Settlement {
        use tokenmeter_core::exchange::settlement::Settlement;
        use tokenmeter_core::openai::usage::{Usage, UsageSource};
        Settlement {
            labels: vec![team.to_string()],
            status: Some(200),
            usage: Some(Usage {
                prompt,
                completion: 2,
                total: prompt + 2,
                cached: None,
                reasoning: None,
                audio_prompt: None,
                audio_completion: None,
                source: UsageSource::Reported,
            }),
            duration_ms: 300,
            ..Settlement::default()
        }
    }

    #[test]
    fn rollup_batches_add_up_once_each() {
        use tokenmeter_core::series::rollup::Rollups;
        on_both(|location| {
            let mut store = Store::open(location).unwrap();
            let mut r = Rollups::new("vm".into(), vec!["team".into()], 10, 10);
            r.record(60_000, &settled("red", 5));
            r.record(60_000, &settled("blue", 1));
            r.seal();
            let first = r.next().unwrap().clone();
            r.delivered(&first.id);
            // The same minute again, in a later batch from the same VM.
            r.record(61_000, &settled("red", 7));
            r.seal();
            let second = r.next().unwrap().clone();
            assert!(store.insert_rollups(&first, 1).unwrap());
            assert!(
                !store.insert_rollups(&first, 2).unwrap(),
                "a retry adds nothing"
            );
            assert!(store.insert_rollups(&second, 3).unwrap());
            let got = rows(
                &store,
                "SELECT r.bucket, s.labels, r.requests_2xx, r.prompt_tokens, r.duration_ms_count,
                        r.duration_ms_sum
                 FROM rollups_minute r JOIN series s ON s.id = r.series_id ORDER BY s.labels",
            );
            assert_eq!(got.len(), 2);
            assert_eq!(
                (
                    int(&got[0][0]),
                    text(&got[0][1]),
                    int(&got[0][2]),
                    int(&got[0][3])
                ),
                (60, r#"{"team":"blue"}"#, 1, 1)
            );
            assert_eq!(
                (text(&got[1][1]), int(&got[1][2]), int(&got[1][3])),
                (r#"{"team":"red"}"#, 2, 12)
            );
            assert_eq!(
                (int(&got[1][4]), int(&got[1][5])),
                (2, 600),
                "the histograms add up"
            );
        });
    }

    /// Rows spread over three days, one per `step_min` minutes, `i` prompt tokens each.
    fn spread(store: &mut Store, minutes: i64, step_min: i64) -> Vec<(i64, u64)> {
        use tokenmeter_core::series::rollup::Row;
        let mut rows = Vec::new();
        let mut sent = Vec::new();
        for i in 0..minutes / step_min {
            let minute = 1_767_225_600 + i * step_min * 60;
            let prompt = (i % 7 + 1) as u64;
            sent.push((minute, prompt));
            rows.push(Row {
                requests: [0, 1, 0, 0, 0, 0],
                prompt_tokens: prompt,
                total_tokens: prompt,
                ..Row::new(minute, vec![["a", "b"][(i % 2) as usize].to_string()])
            });
        }
        for (n, chunk) in rows.chunks(500).enumerate() {
            let batch = Batch {
                id: format!("vm-{n}"),
                labels: vec!["model".into()],
                rows: chunk.to_vec(),
            };
            assert!(store.insert_rollups(&batch, 0).unwrap());
        }
        sent
    }

    /// Checks usage and operations queries of `store` against the rows `sent`.
    fn check_queries(store: &Store, sent: &[(i64, u64)], windows: &[(i64, i64, i64)]) {
        for &(step, from, to) in windows {
            let q = crate::usage::Query {
                from,
                to,
                step,
                group_by: Some("model".into()),
                scope: None,
            };
            let want: u64 = sent
                .iter()
                .filter(|(m, _)| *m >= from && *m < to)
                .map(|(_, p)| p)
                .sum();
            let answer = crate::usage::answer(&q, store.usage(&q).unwrap());
            assert_eq!(
                answer.totals.prompt_tokens as u64, want,
                "step {step}, {from}..{to}"
            );
            let per_step: Vec<i64> = answer.groups[0]
                .points
                .iter()
                .map(|p| p.sums.prompt_tokens)
                .collect();
            let want_a: Vec<i64> = {
                let mut m = std::collections::BTreeMap::new();
                for (i, (minute, p)) in sent.iter().enumerate() {
                    if i % 2 == 0 && *minute >= from && *minute < to {
                        *m.entry((minute - from) / step).or_insert(0) += *p as i64;
                    }
                }
                m.into_values().collect()
            };
            assert_eq!(per_step, want_a, "group a per step, step {step}");
            let ops = crate::usage::operations(&q, store.operations(&q).unwrap());
            assert_eq!(
                ops.totals.requests as usize,
                sent.iter().filter(|(m, _)| *m >= from && *m < to).count()
            );
            // The same from the marginals: all series, and one label's value.
            let total = crate::usage::Query {
                group_by: None,
                ..q.clone()
            };
            let all = crate::usage::answer(&total, store.usage(&total).unwrap());
            assert_eq!(
                all.totals.prompt_tokens as u64, want,
                "ungrouped, step {step}"
            );
            assert_eq!(all.groups.len(), 1);
            let scoped = crate::usage::Query {
                group_by: None,
                scope: Some(("model".into(), "a".into())),
                ..q.clone()
            };
            let a = crate::usage::answer(&scoped, store.usage(&scoped).unwrap());
            let a_steps: Vec<i64> = a.groups[0]
                .points
                .iter()
                .map(|p| p.sums.prompt_tokens)
                .collect();
            assert_eq!(a_steps, want_a, "scoped to model a, step {step}");
        }
    }

    #[test]
    fn queries_over_the_tiers_equal_the_minutes_they_cover() {
        on_both(|location| {
            let mut store = Store::open(location).unwrap();
            let start = 1_767_225_600;
            let sent = spread(&mut store, 3 * 1440, 7);
            check_queries(
                &store,
                &sent,
                &[
                    (86_400, start, start + 3 * 86_400),
                    (86_400, start, start + 2 * 86_400 + 5 * 3600 + 23 * 60 + 1),
                    (3_600, start + 3600, start + 30 * 3600 + 59),
                    (60, start + 120, start + 86_400),
                    (300, start, start + 3 * 86_400),
                ],
            );
        });
    }

    #[test]
    fn retention_deletes_old_data_and_old_minutes_read_from_the_hours() {
        on_both(|location| {
            let mut store = Store::open(location).unwrap();
            let start = 1_767_225_600;
            let sent = spread(&mut store, 3 * 1440, 7);
            let records = parse_batch(
                b"{\"id\":\"old\",\"time\":\"2026-01-01T00:00:00Z\"}\n{\"id\":\"new\",\"time\":\"2026-01-03T23:00:00Z\"}",
                now(),
            )
            .unwrap();
            store.insert(&records, 0).unwrap();
            // At the end of day 3: minutes older than a day go, hours older than two days.
            let now_s = start + 3 * 86_400;
            let r = crate::retention::Retention {
                records: Some(86_400),
                minutes: Some(86_400 + 1800),
                hours: Some(2 * 86_400),
                days: None,
                runs: Some(86_400),
            };
            let d = crate::retention::enforce(&store.db, &r, now_s).unwrap();
            assert_eq!(d.records, 1);
            assert!(d.minutes > 0 && d.hours > 0, "{d:?}");
            assert_eq!(store.count_records().unwrap(), 1);
            let horizons = crate::tiers::Horizons::read(&store.db).unwrap();
            // Minutes from 23 h 30 min back, rounded down to the hour; hours from day 2.
            assert_eq!(horizons.minute, start + 2 * 86_400 - 3600);
            assert_eq!(horizons.hour, start + 86_400);
            let oldest =
                |table: &str| int(&rows(&store, &format!("SELECT min(bucket) FROM {table}"))[0][0]);
            // Rows come every 7 minutes: the oldest left is within 7 minutes of the horizon.
            assert!((0..7 * 60).contains(&(oldest("rollups_minute") - horizons.minute)));
            assert_eq!(oldest("rollups_hour"), horizons.hour);
            assert_eq!(oldest("marginals_hour"), horizons.hour);
            assert_eq!(oldest("rollups_day"), start);
            // Whole-day and whole-hour windows stay exact over the deleted minutes and hours.
            check_queries(
                &store,
                &sent,
                &[
                    (86_400, start, start + 3 * 86_400),
                    (3_600, start + 86_400, start + 3 * 86_400),
                    (60, horizons.minute, start + 3 * 86_400),
                ],
            );
            // Five-minute steps over deleted minutes read whole hours, each in the step
            // its hour begins in: the window's total is the same.
            let q = crate::usage::Query {
                from: start + 86_400,
                to: start + 2 * 86_400,
                step: 300,
                group_by: None,
                scope: None,
            };
            let a = crate::usage::answer(&q, store.usage(&q).unwrap());
            let want: u64 = sent
                .iter()
                .filter(|(m, _)| *m >= q.from && *m < q.to)
                .map(|(_, p)| p)
                .sum();
            assert_eq!(a.totals.prompt_tokens as u64, want);
            // A second pass finds nothing more to delete.
            let again = crate::retention::enforce(&store.db, &r, now_s).unwrap();
            assert_eq!(again, crate::retention::Deleted::default());
        });
    }

    #[test]
    fn a_version_2_store_moves_its_rollups_into_the_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATION_1).unwrap();
            conn.execute_batch(MIGRATION_2).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            let h = |n: usize| {
                format!(r#"{{"buckets":[{}],"sum":40,"count":1}}"#, {
                    let mut b = vec!["0"; n];
                    b[1] = "1";
                    b.join(",")
                })
            };
            conn.execute(
                "INSERT INTO rollups VALUES (7260, '{\"team\":\"red\"}', 0, 3, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0,
                    10, 5, 15, 2, 1, 0, 0, ?1, ?2, ?3)",
                rusqlite::params![h(13), h(13), h(10)],
            )
            .unwrap();
        }
        let store = Store::open(&Location::Sqlite(path)).unwrap();
        let gone = rows(
            &store,
            "SELECT count(*) FROM sqlite_master WHERE name = 'rollups'",
        );
        assert_eq!(int(&gone[0][0]), 0);
        for (table, bucket) in [
            ("rollups_minute", 7260),
            ("rollups_hour", 7200),
            ("rollups_day", 0),
        ] {
            let got = rows(&store, &format!("SELECT bucket, requests_2xx + requests_4xx, errors_rate_limited, total_tokens, duration_ms_b1 FROM {table}"));
            let got: Vec<i64> = got[0].iter().map(int).collect();
            assert_eq!(got, [bucket, 4, 1, 15, 1], "{table}");
        }
        for (table, label, value) in [("marginals_day", "", ""), ("marginals_hour", "team", "red")]
        {
            let total = rows(
                &store,
                &format!("SELECT total_tokens FROM {table} WHERE label = '{label}' AND value = '{value}'"),
            );
            assert_eq!(int(&total[0][0]), 15, "{table} {label}={value}");
        }
    }

    #[test]
    fn a_records_scores_are_its_latest_runs_per_monitor_and_metric() {
        on_both(|location| {
            let store = Store::open(location).unwrap();
            let run = |monitor: &str| {
                store
                    .db
                    .query_one(
                        "INSERT INTO monitor_runs (monitor, started_us, finished_us) VALUES (?1, 0, 0) RETURNING id",
                        params![monitor],
                        |r| r.int(0),
                    )
                    .unwrap()
                    .unwrap()
            };
            let score = |run: i64, record: &str, metric: &str, score: i64| {
                store
                    .db
                    .execute(
                        "INSERT INTO monitor_scores VALUES (?1, ?2, ?3, 'scored', ?4, 'why', 'judge-1', 'v1')",
                        params![run, record, metric, score],
                    )
                    .unwrap();
            };
            let a1 = run("app");
            score(a1, "r1", "groundedness", 2);
            score(a1, "r1", "fluency", 5);
            let b1 = run("other");
            score(b1, "r1", "groundedness", 4);
            let a2 = run("app");
            score(a2, "r1", "groundedness", 3);
            score(a2, "r2", "groundedness", 1);
            let got: Vec<(String, String, Option<i64>, i64)> = store
                .scores("r1")
                .unwrap()
                .into_iter()
                .map(|s| (s.monitor, s.metric, s.score, s.run_id))
                .collect();
            assert_eq!(
                got,
                [
                    ("app".into(), "fluency".into(), Some(5), a1),
                    ("app".into(), "groundedness".into(), Some(3), a2),
                    ("other".into(), "groundedness".into(), Some(4), b1),
                ]
            );
            assert!(store.scores("none").unwrap().is_empty());
        });
    }

    #[test]
    fn migrates_and_refuses_newer_schemas() {
        on_both(|location| {
            let store = Store::open(location).unwrap();
            match store.db.dialect() {
                Dialect::Sqlite => {
                    let v = rows(&store, "PRAGMA user_version");
                    assert_eq!(int(&v[0][0]), SCHEMA_VERSION);
                    store.db.batch("PRAGMA user_version = 99").unwrap();
                }
                Dialect::Postgres => {
                    let v = rows(&store, "SELECT version FROM tokenmeter_schema");
                    assert_eq!(int(&v[0][0]), SCHEMA_VERSION);
                    store
                        .db
                        .batch("UPDATE tokenmeter_schema SET version = 99")
                        .unwrap();
                }
            }
            drop(store);
            let e = Store::open(location).err().unwrap();
            assert!(
                format!("{e:#}").contains("newer than this tokenmeter supports"),
                "{e:#}"
            );
        });
    }

    #[test]
    fn idempotent_on_id_and_windowed_by_time() {
        on_both(|location| {
            let mut s = Store::open(location).unwrap();
            let batch = parse_batch(
                b"{\"id\":\"b\",\"time\":\"2026-11-26T09:00:00Z\"}\n{\"id\":\"a\",\"time\":\"2026-11-26T08:00:00Z\"}\n{\"id\":\"a\",\"time\":\"2026-11-26T08:30:00Z\"}",
                now(),
            )
            .unwrap();
            let got = s.insert(&batch, 0).unwrap();
            assert_eq!(
                got,
                Stored {
                    stored: 2,
                    duplicates: 1
                }
            );
            assert_eq!(
                s.insert(&batch, 0).unwrap(),
                Stored {
                    stored: 0,
                    duplicates: 3
                }
            );
            assert_eq!(s.count_records().unwrap(), 2);
            let from = now().timestamp_micros() - 3 * 3_600_000_000;
            let all = s.records_between(from, now().timestamp_micros()).unwrap();
            assert_eq!(all.len(), 2);
            assert!(
                all[0].contains("\"a\"") && all[0].contains("08:00:00Z"),
                "{all:?}"
            );
            let late = s
                .records_between(
                    now().timestamp_micros() - 3_600_000_000,
                    now().timestamp_micros(),
                )
                .unwrap();
            assert_eq!(late.len(), 1);
        });
    }

    #[test]
    fn cache_round_trip() {
        on_both(|location| {
            let s = Store::open(location).unwrap();
            assert_eq!(s.cache_get("k").unwrap(), None);
            s.cache_put("k", "v1", "m", ("{\"score\": 4}", false), 0)
                .unwrap();
            assert_eq!(
                s.cache_get("k").unwrap(),
                Some(("{\"score\": 4}".to_string(), false))
            );
            s.cache_put("r", "v1", "m", ("HTTP 400: content filter", true), 0)
                .unwrap();
            assert_eq!(
                s.cache_get("r").unwrap(),
                Some(("HTTP 400: content filter".to_string(), true))
            );
        });
    }

    /// Several collectors on one database, each with its own connection, given the same
    /// records and rollup batches at once: each counted once, the sums exact.
    #[test]
    fn concurrent_writers_store_each_record_and_batch_once() {
        use tokenmeter_core::series::rollup::Rollups;
        on_both(|location| {
            drop(Store::open(location).unwrap());
            let lines: String = (0..200)
                .map(|i| {
                    format!(
                        "{{\"id\":\"r{i}\",\"time\":\"2026-11-26T09:{:02}:00Z\"}}\n",
                        i % 60
                    )
                })
                .collect();
            let records = parse_batch(lines.as_bytes(), now()).unwrap();
            let mut batches = Vec::new();
            for vm in 0..4 {
                let mut r = Rollups::new(format!("vm{vm}"), vec!["team".into()], 100, 100);
                for i in 0..50 {
                    r.record(
                        60_000 + i * 60_000,
                        &settled(["red", "blue", "green"][(i % 3) as usize], 3),
                    );
                }
                r.seal();
                while let Some(b) = r.next().cloned() {
                    r.delivered(&b.id);
                    batches.push(b);
                }
            }
            let stored: Vec<(Stored, usize)> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..3)
                    .map(|_| {
                        s.spawn(|| {
                            let mut store = Store::open(location).unwrap();
                            let stored = store.insert(&records, 0).unwrap();
                            let added = batches
                                .iter()
                                .filter(|b| store.insert_rollups(b, 0).unwrap())
                                .count();
                            (stored, added)
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            assert_eq!(stored.iter().map(|(s, _)| s.stored).sum::<u64>(), 200);
            assert_eq!(stored.iter().map(|(s, _)| s.duplicates).sum::<u64>(), 400);
            assert_eq!(stored.iter().map(|(_, a)| a).sum::<usize>(), batches.len());
            let store = Store::open(location).unwrap();
            assert_eq!(store.count_records().unwrap(), 200);
            let total = rows(
                &store,
                "SELECT CAST(sum(prompt_tokens) AS BIGINT) FROM rollups_minute",
            );
            assert_eq!(int(&total[0][0]), 4 * 50 * 3);
            let day = rows(
                &store,
                "SELECT CAST(sum(prompt_tokens) AS BIGINT) FROM marginals_day WHERE label = ''",
            );
            assert_eq!(int(&day[0][0]), 4 * 50 * 3);
        });
    }

    #[test]
    fn one_collector_claims_each_scheduled_run() {
        on_both(|location| {
            let stores: Vec<Store> = (0..3).map(|_| Store::open(location).unwrap()).collect();
            for slot in [0, 60_000_000] {
                let won: Vec<bool> = stores
                    .iter()
                    .enumerate()
                    .map(|(i, s)| s.claim_run("m", slot, &format!("c{i}"), 0).unwrap())
                    .collect();
                assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
            }
            assert!(stores[0].claim_run("other", 0, "c0", 0).unwrap());
        });
    }

    #[test]
    fn postgres_gone_is_unavailable_until_it_returns() {
        let pg = Postgres::start().unwrap();
        pg.create_database("store").unwrap();
        let location = Location::postgres(&pg.url("store"), pg.password()).unwrap();
        let mut store = Store::open(&location).unwrap();
        let batch = |id: &str| {
            parse_batch(
                format!("{{\"id\":\"{id}\",\"time\":\"2026-11-26T09:00:00Z\"}}").as_bytes(),
                now(),
            )
            .unwrap()
        };
        store.insert(&batch("a"), 0).unwrap();
        // Another connection, idle through the outage.
        let mut idle = Store::open(&location).unwrap();
        pg.stop().unwrap();
        let e = store.insert(&batch("b"), 0).err().unwrap();
        assert!(crate::db::is_unavailable(&e), "{e:#}");
        assert!(store.check().is_err());
        pg.start_again().unwrap();
        // The same store, without reopening: it connects again by itself.
        store.insert(&batch("b"), 0).unwrap();
        assert_eq!(store.count_records().unwrap(), 2);
        // Its first read and its first transaction after the restart find the broken
        // connection before anything was done, and run on a new one.
        assert_eq!(idle.count_records().unwrap(), 2);
        pg.restart().unwrap();
        idle.insert(&batch("c"), 0).unwrap();
        assert_eq!(idle.count_records().unwrap(), 3);
    }

    #[test]
    fn a_statement_held_past_its_timeout_is_unavailable_not_a_hang() {
        let pg = Postgres::start().unwrap();
        pg.create_database("store").unwrap();
        let url = format!("{}?options=-c%20statement_timeout%3D300", pg.url("store"));
        let mut store = Store::open(&Location::postgres(&url, pg.password()).unwrap()).unwrap();
        let batch = parse_batch(b"{\"id\":\"a\"}", now()).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                pg.psql(
                    "store",
                    "BEGIN; LOCK TABLE records; SELECT pg_sleep(3); COMMIT",
                )
            });
            std::thread::sleep(std::time::Duration::from_millis(500));
            let start = std::time::Instant::now();
            let e = store.insert(&batch, 0).err().unwrap();
            assert!(crate::db::is_unavailable(&e), "{e:#}");
            assert!(start.elapsed() < std::time::Duration::from_secs(2));
        });
        // The same connection serves the next statement.
        store.insert(&batch, 0).unwrap();
        assert_eq!(store.count_records().unwrap(), 1);
    }

    #[test]
    fn nul_characters_in_text_are_stored_as_u_fffd_and_records_stay_browsable() {
        assert_eq!(
            without_nul(r#"{"q":"a\u0000b"}"#.into()),
            r#"{"q":"a\ufffdb"}"#
        );
        // A backslash then the text u0000 is not a NUL.
        assert_eq!(
            without_nul(r#"{"q":"a\\u0000b"}"#.into()),
            r#"{"q":"a\\u0000b"}"#
        );
        assert_eq!(
            without_nul(r#"{"q":"\\\u0000"}"#.into()),
            r#"{"q":"\\\ufffd"}"#
        );
        on_both(|location| {
            let mut store = Store::open(location).unwrap();
            let batch = parse_batch(
                b"{\"id\":\"n\",\"time\":\"2026-11-26T09:00:00Z\",\"model\":\"gpt\",\"question\":\"a\\u0000b\"}",
                now(),
            )
            .unwrap();
            store.insert(&batch, 0).unwrap();
            let q = crate::browse::RecordsQuery {
                from_us: 0,
                to_us: i64::MAX,
                filters: vec![("model", "gpt".into())],
                metric: None,
                pass: None,
                limit: 10,
                offset: 0,
            };
            let (total, records) = store.records_page(&q).unwrap();
            assert_eq!(total, 1);
            assert!(records[0].contains("a\\ufffdb"), "{records:?}");
        });
    }

    #[test]
    fn absurd_counts_saturate_instead_of_breaking_the_queries() {
        use tokenmeter_core::series::rollup::Row;
        on_both(|location| {
            let mut store = Store::open(location).unwrap();
            for n in 0..3 {
                let batch = Batch {
                    id: format!("vm-{n}"),
                    labels: vec!["team".into()],
                    rows: vec![Row {
                        requests: [u64::MAX, u64::MAX, 0, 0, 0, 0],
                        prompt_tokens: u64::MAX,
                        ..Row::new(1_767_225_600, vec!["red".into()])
                    }],
                };
                assert!(store.insert_rollups(&batch, 0).unwrap());
            }
            for (step, group_by) in [(86_400, Some("team".to_string())), (60, None)] {
                let q = crate::usage::Query {
                    from: 1_767_225_600,
                    to: 1_767_225_600 + 86_400,
                    step,
                    group_by,
                    scope: None,
                };
                let a = crate::usage::answer(&q, store.usage(&q).unwrap());
                assert_eq!(a.totals.requests, i64::MAX);
                assert_eq!(a.totals.prompt_tokens, i64::MAX);
                let ops = crate::usage::operations(&q, store.operations(&q).unwrap());
                assert_eq!(ops.totals.requests, i64::MAX);
            }
        });
    }

    #[test]
    fn postgres_over_verified_tls() {
        let pg = Postgres::start_tls().unwrap();
        pg.create_database("store").unwrap();
        let ca = pg.ca_file().unwrap().display().to_string();
        let url = |mode: &str| format!("{}?sslmode={mode}&sslrootcert={ca}", pg.url("store"));
        let store =
            Store::open(&Location::postgres(&url("verify-full"), pg.password()).unwrap()).unwrap();
        store.check().unwrap();
        let plain = Location::postgres(&pg.url("store"), pg.password()).unwrap();
        let e = Store::open(&plain).err().unwrap();
        assert!(format!("{e:#}").contains("cannot connect"), "{e:#}");
        // A server whose certificate the roots do not vouch for is refused.
        let untrusted = Location::postgres(
            &format!("{}?sslmode=require", pg.url("store")),
            pg.password(),
        )
        .unwrap();
        let e = Store::open(&untrusted).err().unwrap();
        assert!(format!("{e:#}").contains("cannot connect"), "{e:#}");
    }

    #[test]
    fn postgres_refuses_a_database_that_holds_other_tables() {
        let pg = Postgres::start().unwrap();
        pg.create_database("app").unwrap();
        pg.psql("app", "CREATE TABLE users (id int)").unwrap();
        let e = Store::open(&Location::postgres(&pg.url("app"), pg.password()).unwrap())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("a database of its own"), "{e:#}");
    }
}

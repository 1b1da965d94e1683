//! The SQLite store: records, the judge-result cache and monitor runs, in one file.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a transaction is on disk (WAL
//! fsynced) when its commit returns, and the collector answers 200 only after that.
//! NORMAL would also survive a crash of the process, but could lose the last commits on
//! power loss; the fsync per batch is cheap next to the HTTP round trip.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::ingest::Incoming;
use crate::quality::report::{Report, Row};
use tokenmeter_core::series::rollup::Batch;

/// The schema version this binary writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 6;

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
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) and migrates the store.
    pub fn open(path: &Path) -> Result<Store> {
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
        let mut store = Store { conn };
        store
            .migrate()
            .with_context(|| format!("cannot prepare database {}", path.display()))?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let current: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current == SCHEMA_VERSION {
            // Nothing to write: readers (`records export`) never contend with the collector.
            return Ok(());
        }
        // Immediate: a deferred transaction that reads then writes cannot wait for a busy
        // writer (SQLite answers "database is locked" at once); this one waits its turn.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            bail!("its schema version {version} is newer than this tokenmeter supports ({SCHEMA_VERSION}); upgrade tokenmeter");
        }
        if version < 1 {
            tx.execute_batch(MIGRATION_1)?;
        }
        if version < 2 {
            tx.execute_batch(MIGRATION_2)?;
        }
        if version < 3 {
            tx.execute_batch(&crate::tiers::schema())?;
            crate::tiers::migrate_from_v2(&tx)?;
        }
        if version < 4 {
            tx.execute_batch(&crate::tiers::marginal_schema())?;
            crate::tiers::fill_marginals(&tx)?;
        }
        if version < 5 {
            tx.execute_batch(MIGRATION_5)?;
        }
        if version < 6 {
            tx.execute_batch(MIGRATION_6)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores a batch in one transaction; a record whose id is already stored is kept as
    /// it was and counted as a duplicate.
    pub fn insert(&mut self, batch: &[Incoming], received_us: i64) -> Result<Stored> {
        let tx = self.conn.transaction()?;
        let mut counts = Stored::default();
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO records (id, time_us, received_us, record) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for item in batch {
                let json = serde_json::to_string(&item.record)?;
                match stmt.execute(params![item.record.id, item.time_us, received_us, json])? {
                    0 => counts.duplicates += 1,
                    _ => counts.stored += 1,
                }
            }
        }
        tx.commit().context("cannot commit the batch")?;
        Ok(counts)
    }

    /// Adds a rollup batch in one transaction; `false` when a batch with its id was added
    /// before (a retried delivery), which changes nothing.
    pub fn insert_rollups(&mut self, batch: &Batch, received_us: i64) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let added = tx.execute(
            "INSERT OR IGNORE INTO rollup_batches (id, received_us, rows) VALUES (?1, ?2, ?3)",
            params![batch.id, received_us, batch.rows.len() as i64],
        )?;
        if added == 0 {
            return Ok(false);
        }
        for row in &batch.rows {
            let labels = series_labels(&batch.labels, &row.values);
            let id = crate::tiers::series_id(&tx, &serde_json::to_string(&labels)?)?;
            let pairs: Vec<(&str, &str)> = labels.into_iter().collect();
            crate::tiers::add(&tx, id, &pairs, row)?;
        }
        tx.commit().context("cannot commit the rollups")?;
        Ok(true)
    }

    /// The rollups of a usage query, summed per step and group: `(step index, group, sums)`.
    pub fn usage(
        &self,
        q: &crate::usage::Query,
    ) -> Result<Vec<(i64, Option<String>, crate::usage::Sums)>> {
        crate::tiers::usage(&self.conn, q)
    }

    /// The rollups of an operations query, summed per step and group.
    pub fn operations(&self, q: &crate::usage::Query) -> Result<Vec<crate::usage::OperationsRow>> {
        crate::tiers::operations(&self.conn, q)
    }

    /// A page of records (newest first) and how many match in all.
    pub fn records_page(&self, q: &crate::browse::RecordsQuery) -> Result<(i64, Vec<String>)> {
        // Field names are fixed (`model`, `route`, `operation`); values are bound.
        let mut filter = String::new();
        for (i, (field, _)) in q.filters.iter().enumerate() {
            filter.push_str(&format!(
                " AND json_extract(record, '$.{field}') = ?{}",
                i + 3
            ));
        }
        let mut values: Vec<rusqlite::types::Value> = vec![q.from_us.into(), q.to_us.into()];
        values.extend(q.filters.iter().map(|(_, v)| v.clone().into()));
        if let Some(metric) = &q.metric {
            // The latest score of the metric from any monitor's latest run that scored the
            // record; pass is against that run's acceptable score.
            let verdict = match q.pass {
                None => "",
                Some(true) => {
                    " AND s.score >= json_extract(r.report, '$.metrics.' || s.metric || '.acceptable_score')"
                }
                Some(false) => {
                    " AND s.score < json_extract(r.report, '$.metrics.' || s.metric || '.acceptable_score')"
                }
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
            values.push(metric.clone().into());
        }
        let total: i64 = self.conn.query_row(
            &format!("SELECT count(*) FROM records WHERE time_us >= ?1 AND time_us < ?2{filter}"),
            rusqlite::params_from_iter(values.iter()),
            |r| r.get(0),
        )?;
        let n = values.len();
        values.push(q.limit.into());
        values.push(q.offset.into());
        let mut stmt = self.conn.prepare(&format!(
            "SELECT record FROM records WHERE time_us >= ?1 AND time_us < ?2{filter}
             ORDER BY time_us DESC, id LIMIT ?{} OFFSET ?{}",
            n + 1,
            n + 2
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values.iter()), |r| r.get(0))?;
        Ok((total, rows.collect::<Result<Vec<String>, _>>()?))
    }

    /// One record by id, as stored.
    pub fn record(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT record FROM records WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// The scores of a record: per monitor and metric, the latest successful run's.
    pub fn scores(&self, record_id: &str) -> Result<Vec<crate::browse::Score>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.metric, s.status, s.score, s.reason, s.judge_model, s.prompt_version,
                    r.monitor, s.run_id
             FROM monitor_scores s JOIN monitor_runs r ON r.id = s.run_id
             WHERE s.record_id = ?1
               AND s.run_id = (SELECT max(s2.run_id) FROM monitor_scores s2
                               JOIN monitor_runs r2 ON r2.id = s2.run_id
                               WHERE s2.record_id = s.record_id AND s2.metric = s.metric
                                 AND r2.monitor = r.monitor)
             ORDER BY r.monitor, s.metric",
        )?;
        let rows = stmt.query_map([record_id], |r| {
            Ok(crate::browse::Score {
                metric: r.get(0)?,
                status: r.get(1)?,
                score: r.get(2)?,
                reason: r.get(3)?,
                judge_model: r.get(4)?,
                prompt_version: r.get(5)?,
                monitor: r.get(6)?,
                run_id: r.get(7)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    /// Records with `from_us <= time < to_us`, by time then id, as stored JSON text.
    pub fn records_between(&self, from_us: i64, to_us: i64) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT record FROM records WHERE time_us >= ?1 AND time_us < ?2 ORDER BY time_us, id",
        )?;
        let rows = stmt.query_map(params![from_us, to_us], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    #[cfg(test)]
    pub fn count_records(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))?)
    }

    /// A cached judge outcome: the answer's text, or the refusal's message (`true`).
    pub fn cache_get(&self, key: &str) -> Result<Option<(String, bool)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT content, refusal FROM judge_cache WHERE key = ?1")?;
        Ok(stmt
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    pub fn cache_put(
        &self,
        key: &str,
        prompt_version: &str,
        judge_model: &str,
        (content, refusal): (&str, bool),
        now_us: i64,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO judge_cache (key, prompt_version, judge_model, content, created_us, refusal) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        stmt.execute(params![
            key,
            prompt_version,
            judge_model,
            content,
            now_us,
            refusal
        ])?;
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
        let tx = self.conn.transaction()?;
        match outcome {
            Ok((report, rows)) => {
                tx.execute(
                    "INSERT INTO monitor_runs (monitor, started_us, finished_us, breached, report) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![monitor, started_us, finished_us, report.breached, serde_json::to_string(report)?],
                )?;
                let run_id = tx.last_insert_rowid();
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO monitor_scores (run_id, record_id, metric, status, score, reason, judge_model, prompt_version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for row in rows {
                    stmt.execute(params![
                        run_id,
                        row.record_id,
                        row.metric.name(),
                        row.status,
                        row.score,
                        row.reason,
                        row.judge_model,
                        row.prompt_version
                    ])?;
                }
            }
            Err(error) => {
                tx.execute(
                    "INSERT INTO monitor_runs (monitor, started_us, finished_us, error) VALUES (?1, ?2, ?3, ?4)",
                    params![monitor, started_us, finished_us, error],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs that finished in the quality query's window, in time order.
    pub fn runs(&self, q: &crate::runs::QualityQuery) -> Result<Vec<crate::runs::StoredRun>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, monitor, finished_us, error, report FROM monitor_runs
             WHERE finished_us >= ?1 AND finished_us < ?2 AND (?3 IS NULL OR monitor = ?3)
             ORDER BY finished_us, id",
        )?;
        let rows = stmt.query_map(params![q.from_us, q.to_us, q.monitor], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(stored_run(row?)?);
        }
        Ok(out)
    }

    /// The latest run of a monitor, if it ever ran.
    pub fn last_run(&self, monitor: &str) -> Result<Option<crate::runs::StoredRun>> {
        let row = self
            .conn
            .query_row(
                "SELECT id, monitor, finished_us, error, report FROM monitor_runs
                 WHERE monitor = ?1 ORDER BY id DESC LIMIT 1",
                [monitor],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        row.map(stored_run).transpose()
    }

    /// `(monitor, metric, score, count)` over the runs of the window, each record's latest
    /// score per monitor and metric counted once (overlapping windows score a record often).
    pub fn score_histograms(
        &self,
        q: &crate::runs::QualityQuery,
    ) -> Result<Vec<(String, String, i64, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            "WITH latest AS (
                 SELECT r.monitor, s.record_id, s.metric, max(s.run_id) AS run_id
                 FROM monitor_scores s JOIN monitor_runs r ON r.id = s.run_id
                 WHERE r.finished_us >= ?1 AND r.finished_us < ?2
                   AND (?3 IS NULL OR r.monitor = ?3)
                 GROUP BY r.monitor, s.record_id, s.metric)
             SELECT l.monitor, l.metric, s.score, count(*)
             FROM latest l JOIN monitor_scores s
               ON s.run_id = l.run_id AND s.record_id = l.record_id AND s.metric = l.metric
             WHERE s.status = 'scored' AND s.score IS NOT NULL
             GROUP BY l.monitor, l.metric, s.score ORDER BY l.monitor, l.metric, s.score",
        )?;
        let rows = stmt.query_map(params![q.from_us, q.to_us, q.monitor], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, i64>(3)?.max(0) as u64,
            ))
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    /// The latest run of a monitor, and its latest successful report.
    pub fn monitor_runs(&self, monitor: &str) -> Result<MonitorRuns> {
        let last_failed = self
            .conn
            .query_row(
                "SELECT error IS NOT NULL FROM monitor_runs WHERE monitor = ?1 ORDER BY id DESC LIMIT 1",
                [monitor],
                |r| r.get::<_, bool>(0),
            )
            .optional()?
            .unwrap_or(false);
        let last = self
            .conn
            .query_row(
                "SELECT report, finished_us FROM monitor_runs WHERE monitor = ?1 AND report IS NOT NULL ORDER BY id DESC LIMIT 1",
                [monitor],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
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
        let mut stmt = self
            .conn
            .prepare_cached("SELECT firing FROM monitor_alerts WHERE monitor = ?1 ORDER BY key")?;
        let rows = stmt.query_map([monitor], |r| r.get::<_, String>(0))?;
        rows.map(|json| serde_json::from_str(&json?).context("a stored alert is unreadable"))
            .collect()
    }

    /// Replaces the alerts firing for the monitor.
    pub fn set_firing_alerts(
        &mut self,
        monitor: &str,
        firing: &[crate::alerts::condition::Firing],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM monitor_alerts WHERE monitor = ?1", [monitor])?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO monitor_alerts (monitor, key, since_us, firing) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for f in firing {
                stmt.execute(params![
                    monitor,
                    f.key,
                    f.since_us,
                    serde_json::to_string(f)?
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn check(&self) -> Result<()> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
}

/// The SQL expression of a rollup row's group: its `group_by` label's value, or NULL. The
/// label is a checked name (`[a-z_][a-z0-9_]*`), quoted as a JSON path member.
/// A row's labels by name, sorted: as JSON, the same series always reads the same.
fn series_labels<'a>(
    labels: &'a [String],
    values: &'a [String],
) -> std::collections::BTreeMap<&'a str, &'a str> {
    labels
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect()
}

type RunRow = (i64, String, i64, Option<String>, Option<String>);

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

    fn now() -> chrono::DateTime<chrono::Utc> {
        crate::quality::duration::parse_rfc3339("2026-11-26T10:00:00Z").unwrap()
    }

    #[test]
    fn rollup_batches_add_up_once_each() {
        use tokenmeter_core::exchange::settlement::Settlement;
        use tokenmeter_core::openai::usage::{Usage, UsageSource};
        use tokenmeter_core::series::rollup::Rollups;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("t.db")).unwrap();
        let settled = |team: &str, prompt: u64| Settlement {
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
        };
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
        let rows: Vec<(i64, String, i64, i64, i64, i64)> = store
            .conn
            .prepare(
                "SELECT r.bucket, s.labels, r.requests_2xx, r.prompt_tokens, r.duration_ms_count,
                        r.duration_ms_sum
                 FROM rollups_minute r JOIN series s ON s.id = r.series_id ORDER BY s.labels",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].0, rows[0].1.as_str(), rows[0].2, rows[0].3),
            (60, r#"{"team":"blue"}"#, 1, 1)
        );
        assert_eq!(
            (rows[1].1.as_str(), rows[1].2, rows[1].3),
            (r#"{"team":"red"}"#, 2, 12)
        );
        assert_eq!((rows[1].4, rows[1].5), (2, 600), "the histograms add up");
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

    #[test]
    fn queries_over_the_tiers_equal_the_minutes_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("t.db")).unwrap();
        let start = 1_767_225_600;
        let sent = spread(&mut store, 3 * 1440, 7);
        for (step, from, to) in [
            (86_400, start, start + 3 * 86_400),
            (86_400, start, start + 2 * 86_400 + 5 * 3600 + 23 * 60 + 1),
            (3_600, start + 3600, start + 30 * 3600 + 59),
            (60, start + 120, start + 86_400),
            (300, start, start + 3 * 86_400),
        ] {
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
    fn a_version_2_store_moves_its_rollups_into_the_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
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
                params![h(13), h(13), h(10)],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let gone: i64 = store
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'rollups'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(gone, 0);
        for (table, bucket) in [
            ("rollups_minute", 7260),
            ("rollups_hour", 7200),
            ("rollups_day", 0),
        ] {
            let got: (i64, i64, i64, i64, i64) = store
                .conn
                .query_row(
                    &format!("SELECT bucket, requests_2xx + requests_4xx, errors_rate_limited, total_tokens, duration_ms_b1 FROM {table}"),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .unwrap();
            assert_eq!(got, (bucket, 4, 1, 15, 1), "{table}");
        }
        for (table, label, value) in [("marginals_day", "", ""), ("marginals_hour", "team", "red")]
        {
            let total: i64 = store
                .conn
                .query_row(
                    &format!("SELECT total_tokens FROM {table} WHERE label = ?1 AND value = ?2"),
                    [label, value],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(total, 15, "{table} {label}={value}");
        }
    }

    #[test]
    fn a_records_scores_are_its_latest_runs_per_monitor_and_metric() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let run = |monitor: &str| {
            store
                .conn
                .execute(
                    "INSERT INTO monitor_runs (monitor, started_us, finished_us) VALUES (?1, 0, 0)",
                    [monitor],
                )
                .unwrap();
            store.conn.last_insert_rowid()
        };
        let score = |run: i64, record: &str, metric: &str, score: i64| {
            store
                .conn
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
    }

    #[test]
    fn migrates_and_refuses_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = Store::open(&path).err().unwrap();
        assert!(
            format!("{e:#}").contains("newer than this tokenmeter supports"),
            "{e:#}"
        );
    }

    #[test]
    fn idempotent_on_id_and_windowed_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("t.db")).unwrap();
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
    }

    #[test]
    fn cache_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).unwrap();
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
    }
}

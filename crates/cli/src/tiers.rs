//! The usage rollups in the store, in three tiers: per minute, per hour and per day. Every
//! row a gateway sends is added to all three in one transaction, so each tier holds exact
//! sums of the same traffic; a query reads the coarsest tier whose buckets fit its steps and
//! the finer tiers only for the window's ragged end. A 30-day query in daily steps reads 30
//! rows per series instead of 43,200.
//!
//! Series are stored once (`series`: id and labels as a JSON object with sorted keys), and
//! histograms as one integer column per bucket, so rows are added by SQL alone and summed
//! by SQL alone: no JSON per row on the way in or out.

use anyhow::Result;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use tokenmeter_core::series::rollup::{Histogram, Row, LATENCY_BOUNDS_MS, TPOT_BOUNDS_MS};

use crate::usage::{OperationsRow, Query, Sums};

/// The tiers, coarsest first: table and bucket length in seconds.
pub const TIERS: [(&str, i64); 3] = [
    ("rollups_day", 86_400),
    ("rollups_hour", 3_600),
    ("rollups_minute", 60),
];

const COUNTERS: [&str; 19] = [
    "requests_1xx",
    "requests_2xx",
    "requests_3xx",
    "requests_4xx",
    "requests_5xx",
    "requests_none",
    "errors_timeout",
    "errors_upstream_reset",
    "errors_client_cancelled",
    "errors_rate_limited",
    "errors_client_error",
    "errors_upstream_error",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "estimated",
    "invalid_usage",
];

/// The histograms and their bucket counts (bounds + the overflow bucket).
const HISTOGRAMS: [(&str, usize); 3] = [
    ("duration_ms", LATENCY_BOUNDS_MS.len() + 1),
    ("ttft_ms", LATENCY_BOUNDS_MS.len() + 1),
    ("tpot_ms", TPOT_BOUNDS_MS.len() + 1),
];

fn histogram_columns(name: &str, buckets: usize) -> Vec<String> {
    (0..buckets)
        .map(|i| format!("{name}_b{i}"))
        .chain([format!("{name}_sum"), format!("{name}_count")])
        .collect()
}

/// Every value column of a tier, in the order [`values`] gives them.
fn columns() -> Vec<String> {
    COUNTERS
        .iter()
        .map(|c| c.to_string())
        .chain(
            HISTOGRAMS
                .iter()
                .flat_map(|(name, n)| histogram_columns(name, *n)),
        )
        .collect()
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn histogram_values(h: &Histogram, buckets: usize) -> impl Iterator<Item = i64> + '_ {
    (0..buckets)
        .map(|i| n(h.buckets.get(i).copied().unwrap_or(0)))
        .chain([n(h.sum), n(h.count)])
}

/// A row's values in the order of [`columns`].
fn values(row: &Row) -> Vec<i64> {
    let mut v: Vec<i64> = row
        .requests
        .iter()
        .chain(&row.errors)
        .map(|x| n(*x))
        .collect();
    v.extend(
        [
            row.prompt_tokens,
            row.completion_tokens,
            row.total_tokens,
            row.cached_tokens,
            row.reasoning_tokens,
            row.estimated,
            row.invalid_usage,
        ]
        .map(n),
    );
    for (h, (_, buckets)) in [&row.duration_ms, &row.ttft_ms, &row.tpot_ms]
        .into_iter()
        .zip(HISTOGRAMS)
    {
        v.extend(histogram_values(h, buckets));
    }
    v
}

/// The tables of schema version 3.
pub fn schema() -> String {
    let cols: String = columns()
        .iter()
        .map(|c| format!(",\n    {c} INTEGER NOT NULL"))
        .collect();
    let mut sql = String::from(
        "CREATE TABLE series (\n    id     INTEGER PRIMARY KEY,\n    labels TEXT NOT NULL UNIQUE\n);\n",
    );
    for (table, _) in TIERS {
        sql.push_str(&format!(
            "CREATE TABLE {table} (\n    bucket    INTEGER NOT NULL,\n    series_id INTEGER NOT NULL REFERENCES series (id){cols},\n    PRIMARY KEY (bucket, series_id)\n) WITHOUT ROWID;\n"
        ));
    }
    sql
}

/// The id of a series, stored on first use.
pub fn series_id(conn: &Connection, labels: &str) -> Result<i64> {
    conn.prepare_cached("INSERT OR IGNORE INTO series (labels) VALUES (?1)")?
        .execute([labels])?;
    Ok(conn
        .prepare_cached("SELECT id FROM series WHERE labels = ?1")?
        .query_row([labels], |r| r.get(0))?)
}

/// Adds a row to every tier (the caller's transaction makes it all or nothing).
pub fn add(conn: &Connection, series_id: i64, row: &Row) -> Result<()> {
    let cols = columns();
    let vals = values(row);
    for (table, size) in TIERS {
        let placeholders: String = (0..cols.len()).map(|i| format!(", ?{}", i + 3)).collect();
        let updates: Vec<String> = cols
            .iter()
            .map(|c| format!("{c} = {c} + excluded.{c}"))
            .collect();
        let sql = format!(
            "INSERT INTO {table} (bucket, series_id, {}) VALUES (?1, ?2{placeholders})
             ON CONFLICT (bucket, series_id) DO UPDATE SET {}",
            cols.join(", "),
            updates.join(", ")
        );
        let bucket = row.minute - row.minute.rem_euclid(size);
        let mut stmt = conn.prepare_cached(&sql)?;
        let args: Vec<i64> = [bucket, series_id]
            .into_iter()
            .chain(vals.iter().copied())
            .collect();
        stmt.execute(params_from_iter(args))?;
    }
    Ok(())
}

/// The window split by tier: `(table, from, to)` in seconds, coarsest first. A tier is used
/// only where its buckets lie whole inside one step and inside the window; the minute tier
/// takes the rest (a minute belongs to the step its start is in).
pub fn parts(from: i64, to: i64, step: i64) -> Vec<(&'static str, i64, i64)> {
    let mut out = Vec::new();
    let mut cur = from;
    for (table, size) in TIERS {
        let end = if size == 60 {
            to
        } else if step % size == 0 && cur.rem_euclid(size) == 0 {
            cur + (to - cur).div_euclid(size) * size
        } else {
            continue;
        };
        if end > cur {
            out.push((table, cur, end));
            cur = end;
        }
    }
    out
}

/// `(group column, scope condition)` over `series`; the scope's value is bound as `?4`.
/// Label names are checked to be letters, digits and `_` when the query is read.
fn group_and_scope(q: &Query) -> (String, String) {
    let group = match &q.group_by {
        Some(label) => format!("json_extract(labels, '$.\"{label}\"')"),
        None => "NULL".to_string(),
    };
    let scope = match &q.scope {
        Some((label, _)) => format!("json_extract(labels, '$.\"{label}\"') = ?4"),
        None => "?4 IS NULL".to_string(),
    };
    (group, scope)
}

/// Runs `select` (the summed columns) per step and group over each part of the window.
fn per_step<T>(
    conn: &Connection,
    q: &Query,
    select: &str,
    mut read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let (group, scope) = group_and_scope(q);
    let value = q.scope.as_ref().map(|(_, v)| v.clone());
    let mut out = Vec::new();
    for (table, from, to) in parts(q.from, q.to, q.step) {
        let sql = format!(
            "SELECT (r.bucket - ?1) / ?3 AS step, s.grp, {select}
             FROM {table} r JOIN (SELECT id, {group} AS grp FROM series WHERE {scope}) s
               ON s.id = r.series_id
             WHERE r.bucket >= ?2 AND r.bucket < ?5
             GROUP BY step, s.grp"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![q.from, from, q.step, value, to], &mut read)?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

const REQUESTS: &str =
    "sum(requests_1xx + requests_2xx + requests_3xx + requests_4xx + requests_5xx + requests_none)";
const ERRORS: [&str; 6] = [
    "errors_timeout",
    "errors_upstream_reset",
    "errors_client_cancelled",
    "errors_rate_limited",
    "errors_client_error",
    "errors_upstream_error",
];

/// Usage per step and group: `(step index, group, sums)`, a step possibly in several rows
/// (one per tier part).
pub fn usage(conn: &Connection, q: &Query) -> Result<Vec<(i64, Option<String>, Sums)>> {
    let select = format!(
        "{REQUESTS}, sum({}), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
         sum(cached_tokens), sum(reasoning_tokens)",
        ERRORS.join(" + ")
    );
    per_step(conn, q, &select, |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            Sums {
                requests: r.get(2)?,
                errors: r.get(3)?,
                prompt_tokens: r.get(4)?,
                completion_tokens: r.get(5)?,
                total_tokens: r.get(6)?,
                cached_tokens: r.get(7)?,
                reasoning_tokens: r.get(8)?,
            },
        ))
    })
}

/// Requests, errors and the duration and TTFT histograms per step and group.
pub fn operations(conn: &Connection, q: &Query) -> Result<Vec<OperationsRow>> {
    let buckets = LATENCY_BOUNDS_MS.len() + 1;
    let sums = |name: &str| -> String {
        histogram_columns(name, buckets)
            .iter()
            .map(|c| format!("sum({c})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let select = format!(
        "{REQUESTS}, {}, {}, {}",
        ERRORS.map(|e| format!("sum({e})")).join(", "),
        sums("duration_ms"),
        sums("ttft_ms")
    );
    per_step(conn, q, &select, |r| {
        let int = |i: usize| -> rusqlite::Result<i64> { r.get(i) };
        let histogram = |first: usize| -> rusqlite::Result<Histogram> {
            let mut h = Histogram {
                buckets: Vec::with_capacity(buckets),
                sum: 0,
                count: 0,
            };
            for i in 0..buckets {
                h.buckets.push(int(first + i)?.max(0) as u64);
            }
            h.sum = int(first + buckets)?.max(0) as u64;
            h.count = int(first + buckets + 1)?.max(0) as u64;
            Ok(h)
        };
        let mut errors = [0i64; 6];
        for (i, e) in errors.iter_mut().enumerate() {
            *e = int(3 + i)?;
        }
        Ok(OperationsRow {
            step: r.get(0)?,
            group: r.get(1)?,
            requests: int(2)?,
            errors,
            duration: histogram(9)?,
            ttft: histogram(9 + buckets + 2)?,
        })
    })
}

/// Moves the rollups of schema version 2 (one table, labels and JSON histograms per row)
/// into the tiers, then drops the old table.
pub fn migrate_from_v2(conn: &Connection) -> Result<()> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'rollups'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(());
    }
    let old: Vec<(i64, String, Vec<i64>, [String; 3])> = {
        let mut stmt = conn.prepare(&format!(
            "SELECT minute, series, {}, duration_ms, ttft_ms, tpot_ms FROM rollups",
            COUNTERS.join(", ")
        ))?;
        let rows = stmt.query_map([], |r| {
            let mut counters = Vec::with_capacity(COUNTERS.len());
            for i in 0..COUNTERS.len() {
                counters.push(r.get::<_, i64>(2 + i)?);
            }
            let h = |i: usize| r.get::<_, String>(2 + COUNTERS.len() + i);
            Ok((r.get(0)?, r.get(1)?, counters, [h(0)?, h(1)?, h(2)?]))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (minute, labels, c, [d, t, p]) in old {
        let u = |i: usize| c.get(i).copied().unwrap_or(0).max(0) as u64;
        let row = Row {
            minute,
            values: Vec::new(),
            requests: [u(0), u(1), u(2), u(3), u(4), u(5)],
            errors: [u(6), u(7), u(8), u(9), u(10), u(11)],
            prompt_tokens: u(12),
            completion_tokens: u(13),
            total_tokens: u(14),
            cached_tokens: u(15),
            reasoning_tokens: u(16),
            estimated: u(17),
            invalid_usage: u(18),
            duration_ms: serde_json::from_str(&d)?,
            ttft_ms: serde_json::from_str(&t)?,
            tpot_ms: serde_json::from_str(&p)?,
        };
        let id = series_id(conn, &labels)?;
        add(conn, id, &row)?;
    }
    conn.execute_batch("DROP TABLE rollups")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_split_into_whole_buckets_of_the_coarsest_tier_that_fits() {
        let day = 86_400;
        // Daily steps: whole days, then whole hours, then minutes up to `to`.
        let to = 30 * day + 5 * 3600 + 17 * 60 + 30;
        assert_eq!(
            parts(0, to, day),
            [
                ("rollups_day", 0, 30 * day),
                ("rollups_hour", 30 * day, 30 * day + 5 * 3600),
                ("rollups_minute", 30 * day + 5 * 3600, to),
            ]
        );
        // Hourly steps never read days; 5-minute steps only minutes.
        assert_eq!(parts(0, 7200, 3600), [("rollups_hour", 0, 7200)]);
        assert_eq!(parts(0, 7200, 300), [("rollups_minute", 0, 7200)]);
        // A window shorter than a bucket of its step's tier reads minutes.
        assert_eq!(parts(0, 1800, 3600), [("rollups_minute", 0, 1800)]);
    }

    #[test]
    fn the_schema_has_one_column_per_value() {
        let row = Row {
            minute: 0,
            values: vec![],
            requests: [0; 6],
            errors: [0; 6],
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cached_tokens: 0,
            reasoning_tokens: 0,
            estimated: 0,
            invalid_usage: 0,
            duration_ms: Histogram {
                buckets: vec![0; 13],
                sum: 0,
                count: 0,
            },
            ttft_ms: Histogram {
                buckets: vec![0; 13],
                sum: 0,
                count: 0,
            },
            tpot_ms: Histogram {
                buckets: vec![0; 10],
                sum: 0,
                count: 0,
            },
        };
        assert_eq!(values(&row).len(), columns().len());
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&schema()).unwrap();
    }
}

//! The usage rollups in the store, in three tiers: per minute, per hour and per day. Every
//! row a gateway sends is added to all three in one transaction, so each tier holds exact
//! sums of the same traffic; a query reads the coarsest tier whose buckets fit its steps and
//! the finer tiers only for the window's ragged end. A 30-day query in daily steps reads 30
//! rows per series instead of 43,200.
//!
//! Series are stored once (`series`: id and labels as a JSON object with sorted keys), and
//! histograms as one integer column per bucket, so rows are added by SQL alone: no JSON per
//! row on the way in or out.
//!
//! The hour and day tiers also keep **marginals** (schema version 4): the same sums per
//! label value (`label`, `value`) and for all series together (`''`, `''`). A query grouped
//! by one label, or scoped to one label's value, reads those instead of every series: a
//! fleet's 10,000 series become a few rows per bucket. Series that lack the label are the
//! total less the label's values, so grouped answers stay exact.

use std::collections::HashMap;
use std::sync::OnceLock;

use anyhow::Result;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use tokenmeter_core::series::rollup::{
    Histogram, Row, ERROR_TYPES, LATENCY_BOUNDS_MS, STATUS_CLASSES, TPOT_BOUNDS_MS,
};

use crate::usage::{OperationsRow, Query, Sums};

/// The tiers, coarsest first: table and bucket length in seconds.
pub const TIERS: [(&str, i64); 3] = [
    ("rollups_day", 86_400),
    ("rollups_hour", 3_600),
    ("rollups_minute", 60),
];

/// The counter columns: requests per status class, failed requests per type, then these.
const TOKENS: [&str; 7] = [
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "estimated",
    "invalid_usage",
];

fn error_columns() -> Vec<String> {
    ERROR_TYPES.iter().map(|e| format!("errors_{e}")).collect()
}

fn counter_columns() -> Vec<String> {
    status_columns()
        .into_iter()
        .chain(error_columns())
        .chain(TOKENS.iter().map(|t| t.to_string()))
        .collect()
}

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
fn columns() -> &'static [String] {
    static COLUMNS: OnceLock<Vec<String>> = OnceLock::new();
    COLUMNS.get_or_init(|| {
        counter_columns()
            .into_iter()
            .chain(
                HISTOGRAMS
                    .iter()
                    .flat_map(|(name, n)| histogram_columns(name, *n)),
            )
            .collect()
    })
}

/// The upsert of each tier and marginal table, built once: every rollup row runs five.
fn upsert_of(table: &str) -> &'static str {
    static UPSERTS: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    UPSERTS
        .get_or_init(|| {
            let tiers = TIERS
                .iter()
                .map(|(t, _)| (*t, upsert(t, &["bucket", "series_id"], columns())));
            let marginals = MARGINALS
                .iter()
                .map(|(t, _)| (*t, upsert(t, &["bucket", "label", "value"], columns())));
            tiers.chain(marginals).collect()
        })
        .iter()
        .find(|(t, _)| *t == table)
        .map_or("", |(_, sql)| sql.as_str())
}

/// `requests_1xx` … `requests_none`, in the order of [`STATUS_CLASSES`].
fn status_columns() -> Vec<String> {
    STATUS_CLASSES
        .iter()
        .map(|c| format!("requests_{c}"))
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

/// The marginal tiers, coarsest first, with their bucket length.
pub const MARGINALS: [(&str, i64); 2] = [("marginals_day", 86_400), ("marginals_hour", 3_600)];

/// The tables of schema version 4 (added to version 3's).
pub fn marginal_schema() -> String {
    let cols: String = columns()
        .iter()
        .map(|c| format!(",\n    {c} INTEGER NOT NULL"))
        .collect();
    MARGINALS
        .iter()
        .map(|(table, _)| format!(
            "CREATE TABLE {table} (\n    bucket INTEGER NOT NULL,\n    label  TEXT NOT NULL,\n    value  TEXT NOT NULL{cols},\n    PRIMARY KEY (bucket, label, value)\n) WITHOUT ROWID;\n"
        ))
        .collect()
}

/// Fills the marginal tiers from the hour and day tiers (version 3 stores).
pub fn fill_marginals(conn: &Connection) -> Result<()> {
    let cols = columns();
    let sums: Vec<String> = cols.iter().map(|c| format!("sum(r.{c})")).collect();
    for ((marginal, _), tier) in MARGINALS.iter().zip(["rollups_day", "rollups_hour"]) {
        conn.execute_batch(&format!(
            "INSERT INTO {marginal} (bucket, label, value, {c})
               SELECT r.bucket, j.key, j.value, {s} FROM {tier} r
               JOIN series ON series.id = r.series_id, json_each(series.labels) j
               GROUP BY r.bucket, j.key, j.value;
             INSERT INTO {marginal} (bucket, label, value, {c})
               SELECT r.bucket, '', '', {s} FROM {tier} r GROUP BY r.bucket;",
            c = cols.join(", "),
            s = sums.join(", ")
        ))?;
    }
    Ok(())
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
/// `labels` are the series' `(label, value)` pairs, for the marginals.
pub fn add(conn: &Connection, series_id: i64, labels: &[(&str, &str)], row: &Row) -> Result<()> {
    add_marginals(conn, labels, row)?;
    add_tiers(conn, series_id, row)
}

/// An insert of `keys` then `cols` (bound in that order) that adds `cols` to a row already
/// there.
fn upsert(table: &str, keys: &[&str], cols: &[String]) -> String {
    let params: Vec<String> = (1..=keys.len() + cols.len())
        .map(|i| format!("?{i}"))
        .collect();
    let updates: Vec<String> = cols
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} ({}, {}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
        keys.join(", "),
        cols.join(", "),
        params.join(", "),
        keys.join(", "),
        updates.join(", ")
    )
}

fn add_marginals(conn: &Connection, labels: &[(&str, &str)], row: &Row) -> Result<()> {
    let vals = values(row);
    for (table, size) in MARGINALS {
        let sql = upsert_of(table);
        let bucket = row.minute - row.minute.rem_euclid(size);
        let mut stmt = conn.prepare_cached(sql)?;
        for (label, value) in labels.iter().copied().chain([("", "")]) {
            let mut args: Vec<rusqlite::types::Value> = vec![
                bucket.into(),
                label.to_string().into(),
                value.to_string().into(),
            ];
            args.extend(vals.iter().map(|v| rusqlite::types::Value::from(*v)));
            stmt.execute(params_from_iter(args))?;
        }
    }
    Ok(())
}

fn add_tiers(conn: &Connection, series_id: i64, row: &Row) -> Result<()> {
    let vals = values(row);
    for (table, size) in TIERS {
        let sql = upsert_of(table);
        let bucket = row.minute - row.minute.rem_euclid(size);
        let mut stmt = conn.prepare_cached(sql)?;
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
/// takes the rest (a minute belongs to the step its start is in). The one bucket that holds
/// the window's end is read whole when nothing was stored in it from the end on (the usual
/// case: a window that ends now); `stored_from(to, end)` tells whether the minute tier has
/// rows in `[to, end)`.
pub fn parts(
    from: i64,
    to: i64,
    step: i64,
    mut stored_from: impl FnMut(i64, i64) -> bool,
) -> Vec<(&'static str, i64, i64)> {
    let mut out = Vec::new();
    let mut cur = from;
    for (table, size) in TIERS {
        if cur >= to {
            break;
        }
        if size == 60 {
            out.push((table, cur, to));
            break;
        }
        if step % size != 0 || cur.rem_euclid(size) != 0 {
            continue;
        }
        let whole = cur + (to - cur).div_euclid(size) * size;
        if whole < to && !stored_from(to, whole + size) {
            out.push((table, cur, whole + size));
            break;
        }
        if whole > cur {
            out.push((table, cur, whole));
            cur = whole;
        }
    }
    out
}

/// Each series' group (the `group_by` label's value), indexed by series id (ids are dense:
/// SQLite numbers them from 1); `None` for series outside the scope. The groups are
/// numbered in the order of their first series.
/// Each series' group index by series id, and the groups' names.
type Groups = (Vec<Option<usize>>, Vec<Option<String>>);

/// Sums per step and group: `(step index, group, sums)`.
type StepSums = Vec<(i64, Option<String>, Vec<i64>)>;

fn groups(conn: &Connection, q: &Query) -> Result<Groups> {
    let group = match &q.group_by {
        // Label names are checked to be letters, digits and `_` when the query is read.
        Some(label) => format!("json_extract(labels, '$.\"{label}\"')"),
        None => "NULL".to_string(),
    };
    let scope = match &q.scope {
        Some((label, _)) => format!("json_extract(labels, '$.\"{label}\"') = ?1"),
        None => "?1 IS NULL".to_string(),
    };
    let mut stmt = conn.prepare(&format!("SELECT id, {group} FROM series WHERE {scope}"))?;
    let value = q.scope.as_ref().map(|(_, v)| v.clone());
    let rows = stmt.query_map([value], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    let mut by_id: Vec<Option<usize>> = Vec::new();
    let mut names: Vec<Option<String>> = Vec::new();
    let mut index: HashMap<Option<String>, usize> = HashMap::new();
    for row in rows {
        let (id, name) = row?;
        let Ok(id) = usize::try_from(id) else {
            continue;
        };
        let i = *index.entry(name.clone()).or_insert_with(|| {
            names.push(name);
            names.len() - 1
        });
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        if let Some(slot) = by_id.get_mut(id) {
            *slot = Some(i);
        }
    }
    Ok((by_id, names))
}

/// Sums the `values` expressions per step and group over each part of the window:
/// `(step index, group, sums)`, a step possibly in several rows (one per part it was read
/// from). SQL reads the rows of the window in key order and sums nothing; the grouping
/// happens here, a series' group one index away (an SQL `GROUP BY` over a join sorts every
/// row, several times slower over a fleet's series). Rows come in bucket order, so one
/// step's sums are open at a time.
fn per_step(conn: &Connection, q: &Query, values: &[String]) -> Result<StepSums> {
    let (by_id, names) = groups(conn, q)?;
    let width = values.len();
    let mut out = Vec::new();
    let mut open = vec![0i64; names.len() * width];
    let mut touched = vec![false; names.len()];
    let flush = |step: i64, open: &mut [i64], touched: &mut [bool], out: &mut Vec<_>| {
        for (g, t) in touched.iter_mut().enumerate() {
            if std::mem::take(t) {
                let sums = open.get_mut(g * width..(g + 1) * width).unwrap_or_default();
                out.push((step, names.get(g).cloned().flatten(), sums.to_vec()));
                sums.fill(0);
            }
        }
    };
    let mut exists = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM rollups_minute WHERE bucket >= ?1 AND bucket < ?2)",
    )?;
    let mut stored_from = |from: i64, to: i64| -> bool {
        // When unsure, read the finer tiers: always exact.
        exists.query_row([from, to], |r| r.get(0)).unwrap_or(true)
    };
    for (table, from, to) in parts(q.from, q.to, q.step, &mut stored_from) {
        let marginal = MARGINALS
            .iter()
            .zip(["rollups_day", "rollups_hour"])
            .find(|(_, tier)| *tier == table)
            .map(|((m, _), _)| *m);
        if let (Some(marginal), Some(plan)) = (marginal, Plan::of(q)) {
            out.extend(from_marginals(conn, q, marginal, from, to, &plan, values)?);
            continue;
        }
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT bucket, series_id, {} FROM {table} WHERE bucket >= ?1 AND bucket < ?2",
            values.join(", ")
        ))?;
        let mut rows = stmt.query([from, to])?;
        let mut current: Option<i64> = None;
        while let Some(r) = rows.next()? {
            let id = usize::try_from(r.get::<_, i64>(1)?).unwrap_or(usize::MAX);
            let Some(&Some(group)) = by_id.get(id) else {
                continue;
            };
            let step = (r.get::<_, i64>(0)? - q.from).div_euclid(q.step);
            if current != Some(step) {
                if let Some(done) = current {
                    flush(done, &mut open, &mut touched, &mut out);
                }
                current = Some(step);
            }
            if let Some(t) = touched.get_mut(group) {
                *t = true;
            }
            if let Some(sums) = open.get_mut(group * width..(group + 1) * width) {
                for (i, a) in sums.iter_mut().enumerate() {
                    *a = a.saturating_add(r.get::<_, i64>(i + 2)?);
                }
            }
        }
        if let Some(done) = current {
            flush(done, &mut open, &mut touched, &mut out);
        }
    }
    Ok(out)
}

/// How a query reads the marginals, when it can.
enum Plan {
    /// All series together.
    Total,
    /// One label's value (a scope); grouped under it when the query groups by that label.
    Value {
        label: String,
        value: String,
        group: Option<String>,
    },
    /// One label's values, and the rest (series without the label) as the `null` group.
    GroupBy(String),
}

impl Plan {
    fn of(q: &Query) -> Option<Plan> {
        match (&q.group_by, &q.scope) {
            (None, None) => Some(Plan::Total),
            (Some(label), None) => Some(Plan::GroupBy(label.clone())),
            (group, Some((label, value))) if group.is_none() || group.as_ref() == Some(label) => {
                Some(Plan::Value {
                    label: label.clone(),
                    value: value.clone(),
                    group: group.as_ref().map(|_| value.clone()),
                })
            }
            _ => None,
        }
    }
}

/// One part of the window from a marginal tier: `(step index, group, sums)`.
fn from_marginals(
    conn: &Connection,
    q: &Query,
    table: &str,
    from: i64,
    to: i64,
    plan: &Plan,
    values: &[String],
) -> Result<StepSums> {
    let read = |label: &str, value: Option<&str>| -> Result<Vec<(i64, String, Vec<i64>)>> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT bucket, value, {} FROM {table}
             WHERE bucket >= ?1 AND bucket < ?2 AND label = ?3 AND (?4 IS NULL OR value = ?4)",
            values.join(", ")
        ))?;
        let rows = stmt.query_map(params![from, to, label, value], |r| {
            let mut v = Vec::with_capacity(values.len());
            for i in 0..values.len() {
                v.push(r.get::<_, i64>(i + 2)?);
            }
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, v))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let step = |bucket: i64| (bucket - q.from).div_euclid(q.step);
    let mut sums: std::collections::BTreeMap<(i64, Option<String>), Vec<i64>> = Default::default();
    let mut add = |key: (i64, Option<String>), v: &[i64], sign: i64| {
        let acc = sums.entry(key).or_insert_with(|| vec![0; v.len()]);
        for (a, b) in acc.iter_mut().zip(v) {
            *a = a.saturating_add(sign.saturating_mul(*b));
        }
    };
    match plan {
        Plan::Total => {
            for (bucket, _, v) in read("", Some(""))? {
                add((step(bucket), None), &v, 1);
            }
        }
        Plan::Value {
            label,
            value,
            group,
        } => {
            for (bucket, _, v) in read(label, Some(value))? {
                add((step(bucket), group.clone()), &v, 1);
            }
        }
        Plan::GroupBy(label) => {
            // The series without the label: the total, less every value's sums.
            for (bucket, _, v) in read("", Some(""))? {
                add((step(bucket), None), &v, 1);
            }
            for (bucket, value, v) in read(label, None)? {
                add((step(bucket), None), &v, -1);
                add((step(bucket), Some(value)), &v, 1);
            }
        }
    }
    Ok(sums
        .into_iter()
        .filter(|((_, group), v)| group.is_some() || v.iter().any(|x| *x != 0))
        .map(|((step, group), v)| (step, group, v))
        .collect())
}

/// Usage per step and group: `(step index, group, sums)`.
pub fn usage(conn: &Connection, q: &Query) -> Result<Vec<(i64, Option<String>, Sums)>> {
    let statuses = status_columns();
    let mut values = vec![statuses.join(" + "), error_columns().join(" + ")];
    values.extend(TOKENS.iter().take(5).map(|t| t.to_string()));
    Ok(per_step(conn, q, &values)?
        .into_iter()
        .map(|(step, group, v)| {
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            (
                step,
                group,
                Sums {
                    requests: at(0),
                    errors: at(1),
                    prompt_tokens: at(2),
                    completion_tokens: at(3),
                    total_tokens: at(4),
                    cached_tokens: at(5),
                    reasoning_tokens: at(6),
                },
            )
        })
        .collect())
}

/// Requests, errors and the duration and TTFT histograms per step and group.
pub fn operations(conn: &Connection, q: &Query) -> Result<Vec<OperationsRow>> {
    let buckets = LATENCY_BOUNDS_MS.len() + 1;
    let statuses = status_columns();
    let mut values = vec![statuses.join(" + ")];
    values.extend(error_columns());
    values.extend(histogram_columns("duration_ms", buckets));
    values.extend(histogram_columns("ttft_ms", buckets));
    Ok(per_step(conn, q, &values)?
        .into_iter()
        .map(|(step, group, v)| {
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            let histogram = |first: usize| Histogram {
                buckets: (0..buckets).map(|i| at(first + i).max(0) as u64).collect(),
                sum: at(first + buckets).max(0) as u64,
                count: at(first + buckets + 1).max(0) as u64,
            };
            OperationsRow {
                step,
                group,
                requests: at(0),
                errors: [at(1), at(2), at(3), at(4), at(5), at(6)],
                duration: histogram(7),
                ttft: histogram(7 + buckets + 2),
            }
        })
        .collect())
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
        let counters = counter_columns();
        let mut stmt = conn.prepare(&format!(
            "SELECT minute, series, {}, duration_ms, ttft_ms, tpot_ms FROM rollups",
            counters.join(", ")
        ))?;
        let rows = stmt.query_map([], |r| {
            let mut values = Vec::with_capacity(counters.len());
            for i in 0..counters.len() {
                values.push(r.get::<_, i64>(2 + i)?);
            }
            let h = |i: usize| r.get::<_, String>(2 + counters.len() + i);
            Ok((r.get(0)?, r.get(1)?, values, [h(0)?, h(1)?, h(2)?]))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (minute, labels, c, [d, t, p]) in old {
        let u = |i: usize| c.get(i).copied().unwrap_or(0).max(0) as u64;
        let row = Row {
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
            ..Row::new(minute, Vec::new())
        };
        let id = series_id(conn, &labels)?;
        // The marginals come with version 4, filled from these tiers.
        add_tiers(conn, id, &row)?;
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
        let never = |_: i64, _: i64| true;
        assert_eq!(
            parts(0, to, day, never),
            [
                ("rollups_day", 0, 30 * day),
                ("rollups_hour", 30 * day, 30 * day + 5 * 3600),
                ("rollups_minute", 30 * day + 5 * 3600, to),
            ]
        );
        // Hourly steps never read days; 5-minute steps only minutes.
        assert_eq!(parts(0, 7200, 3600, never), [("rollups_hour", 0, 7200)]);
        assert_eq!(parts(0, 7200, 300, never), [("rollups_minute", 0, 7200)]);
        // A window shorter than a bucket of its step's tier reads minutes.
        assert_eq!(parts(0, 1800, 3600, never), [("rollups_minute", 0, 1800)]);
        // Nothing stored after the end: the bucket holding the end is read whole.
        let empty = |_: i64, _: i64| false;
        assert_eq!(parts(0, to, day, empty), [("rollups_day", 0, 31 * day)]);
        assert_eq!(parts(0, 1800, 3600, empty), [("rollups_hour", 0, 3600)]);
        // Asked about exactly the rest of that bucket.
        let mut asked = Vec::new();
        parts(0, to, day, |a, b| {
            asked.push((a, b));
            true
        });
        assert_eq!(asked[0], (to, 31 * day));
    }

    #[test]
    fn the_schema_has_one_column_per_value() {
        let row = Row::new(0, vec![]);
        assert_eq!(values(&row).len(), columns().len());
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&schema()).unwrap();
    }
}

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

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use anyhow::Result;
use tokenmeter_core::series::rollup::{
    Batch, Histogram, Row, ERROR_TYPES, LATENCY_BOUNDS_MS, STATUS_CLASSES, TPOT_BOUNDS_MS,
};

use crate::db::{params, Db, Dialect, Value};
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

/// The integer type of a value column.
fn int_type(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "INTEGER",
        Dialect::Postgres => "BIGINT",
    }
}

/// SQLite keeps these tables in their key's order (`WITHOUT ROWID`); PostgreSQL has no
/// such option and needs none.
fn table_options(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => " WITHOUT ROWID",
        Dialect::Postgres => "",
    }
}

/// The tables of schema version 4 (added to version 3's).
pub fn marginal_schema(dialect: Dialect) -> String {
    let int = int_type(dialect);
    let cols: String = columns()
        .iter()
        .map(|c| format!(",\n    {c} {int} NOT NULL"))
        .collect();
    let options = table_options(dialect);
    MARGINALS
        .iter()
        .map(|(table, _)| format!(
            "CREATE TABLE {table} (\n    bucket {int} NOT NULL,\n    label  TEXT NOT NULL,\n    value  TEXT NOT NULL{cols},\n    PRIMARY KEY (bucket, label, value)\n){options};\n"
        ))
        .collect()
}

/// Fills the marginal tiers from the hour and day tiers (SQLite stores of version 3).
pub fn fill_marginals(db: &Db) -> Result<()> {
    let cols = columns();
    let sums: Vec<String> = cols.iter().map(|c| format!("sum(r.{c})")).collect();
    for ((marginal, _), tier) in MARGINALS.iter().zip(["rollups_day", "rollups_hour"]) {
        db.batch(&format!(
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
pub fn schema(dialect: Dialect) -> String {
    let int = int_type(dialect);
    let cols: String = columns()
        .iter()
        .map(|c| format!(",\n    {c} {int} NOT NULL"))
        .collect();
    let id = match dialect {
        Dialect::Sqlite => "INTEGER PRIMARY KEY",
        Dialect::Postgres => "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    };
    let options = table_options(dialect);
    let mut sql =
        format!("CREATE TABLE series (\n    id     {id},\n    labels TEXT NOT NULL UNIQUE\n);\n");
    for (table, _) in TIERS {
        sql.push_str(&format!(
            "CREATE TABLE {table} (\n    bucket    {int} NOT NULL,\n    series_id {int} NOT NULL REFERENCES series (id){cols},\n    PRIMARY KEY (bucket, series_id)\n){options};\n"
        ));
    }
    sql
}

/// The id of a series, stored on first use. Looked up first: PostgreSQL spends an id on
/// every insert that finds the series already there.
pub fn series_id(db: &Db, labels: &str) -> Result<i64> {
    let find = |db: &Db| {
        db.query_one(
            "SELECT id FROM series WHERE labels = ?1",
            params![labels],
            |r| r.int(0),
        )
    };
    if let Some(id) = find(db)? {
        return Ok(id);
    }
    db.execute(
        "INSERT INTO series (labels) VALUES (?1) ON CONFLICT (labels) DO NOTHING",
        params![labels],
    )?;
    find(db)?.ok_or_else(|| anyhow::anyhow!("the series {labels} was not stored"))
}

/// A row's labels by name, sorted: as JSON, the same series always reads the same.
fn series_labels<'a>(labels: &'a [String], values: &'a [String]) -> BTreeMap<&'a str, &'a str> {
    labels
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect()
}

/// What a batch adds, summed per row of each table it touches, keyed in the order the rows
/// are written: every writer takes the rows' locks in that one order, so concurrent
/// collectors wait for each other but never deadlock.
#[derive(Default)]
struct Additions {
    /// `(tier, bucket, series id)`.
    tiers: BTreeMap<(&'static str, i64, i64), Vec<i64>>,
    /// `(marginal table, bucket, label, value)`; `("", "")` is every series together.
    marginals: BTreeMap<(&'static str, i64, String, String), Vec<i64>>,
}

fn add_into(acc: &mut Vec<i64>, v: &[i64]) {
    if acc.is_empty() {
        acc.resize(v.len(), 0);
    }
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.saturating_add(*b);
    }
}

impl Additions {
    fn add_tiers(&mut self, series_id: i64, minute: i64, vals: &[i64]) {
        for (table, size) in TIERS {
            let bucket = minute - minute.rem_euclid(size);
            add_into(
                self.tiers.entry((table, bucket, series_id)).or_default(),
                vals,
            );
        }
    }

    fn add_marginals(&mut self, labels: &[(&str, &str)], minute: i64, vals: &[i64]) {
        for (table, size) in MARGINALS {
            let bucket = minute - minute.rem_euclid(size);
            for (label, value) in labels.iter().copied().chain([("", "")]) {
                let key = (table, bucket, label.to_string(), value.to_string());
                add_into(self.marginals.entry(key).or_default(), vals);
            }
        }
    }

    fn write(&self, db: &Db) -> Result<()> {
        let tiers = self
            .tiers
            .iter()
            .map(|((t, bucket, id), v)| (*t, vec![Value::Int(*bucket), Value::Int(*id)], v));
        write_upserts(db, &["bucket", "series_id"], tiers)?;
        let marginals = self.marginals.iter().map(|((t, bucket, label, value), v)| {
            (
                *t,
                vec![Value::Int(*bucket), Value::from(label), Value::from(value)],
                v,
            )
        });
        write_upserts(db, &["bucket", "label", "value"], marginals)
    }
}

/// Rows per upsert statement: fewer round trips to a PostgreSQL server, well inside both
/// databases' limits on bound values.
const ROWS_PER_STATEMENT: usize = 32;

/// Upserts rows given in key order, several per statement, one table at a time.
fn write_upserts<'a>(
    db: &Db,
    keys: &[&str],
    rows: impl Iterator<Item = (&'static str, Vec<Value>, &'a Vec<i64>)>,
) -> Result<()> {
    let mut pending: Vec<Value> = Vec::new();
    let mut table = "";
    let mut count = 0;
    let flush = |table: &str, count: usize, pending: &mut Vec<Value>| -> Result<()> {
        if count > 0 {
            db.execute(&upsert(table, keys, columns(), count), pending)?;
            pending.clear();
        }
        Ok(())
    };
    for (t, key, vals) in rows {
        if t != table || count == ROWS_PER_STATEMENT {
            flush(table, count, &mut pending)?;
            table = t;
            count = 0;
        }
        pending.extend(key);
        pending.extend(vals.iter().map(|v| Value::Int(*v)));
        count += 1;
    }
    flush(table, count, &mut pending)
}

/// Series ids known to be committed, by their labels' JSON: a series is never deleted, so
/// its id holds for good, and most batches name only series seen before. Bounded: a
/// collector fed ever new label values starts the cache afresh.
#[derive(Default)]
pub struct SeriesIds {
    known: HashMap<String, i64>,
}

/// Most series ids a collector remembers.
const MAX_KNOWN_SERIES: usize = 100_000;

impl SeriesIds {
    /// Remembers ids stored by a transaction that has committed.
    pub fn committed(&mut self, new: Vec<(String, i64)>) {
        if self.known.len() + new.len() > MAX_KNOWN_SERIES {
            self.known.clear();
        }
        self.known.extend(new);
    }
}

/// A series' label pairs and its rows in a batch.
type SeriesRows<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a Row>);

/// Adds a batch's rows to every tier and marginal (the caller's transaction makes it all
/// or nothing). Returns the series ids it had to look up or store, for
/// [`SeriesIds::committed`] once the transaction has committed.
pub fn add_batch(db: &Db, batch: &Batch, ids: &SeriesIds) -> Result<Vec<(String, i64)>> {
    // Rows by series: its labels as JSON (the key it is stored under) and as pairs (for
    // the marginals), worked out once per series.
    let mut series: BTreeMap<String, SeriesRows<'_>> = BTreeMap::new();
    for row in &batch.rows {
        let labels = series_labels(&batch.labels, &row.values);
        let json = serde_json::to_string(&labels)?;
        series
            .entry(json)
            .or_insert_with(|| (labels.into_iter().collect(), Vec::new()))
            .1
            .push(row);
    }
    let mut adds = Additions::default();
    let mut looked_up = Vec::new();
    for (json, (labels, rows)) in &series {
        let id = match ids.known.get(json) {
            Some(id) => *id,
            None => {
                let id = series_id(db, json)?;
                looked_up.push((json.clone(), id));
                id
            }
        };
        for row in rows {
            let vals = values(row);
            adds.add_tiers(id, row.minute, &vals);
            adds.add_marginals(labels, row.minute, &vals);
        }
    }
    adds.write(db)?;
    Ok(looked_up)
}

/// An insert of `count` rows of `keys` then `cols` (bound in that order, row after row)
/// that adds `cols` to a row already there.
fn upsert(table: &str, keys: &[&str], cols: &[String], count: usize) -> String {
    let width = keys.len() + cols.len();
    let rows: Vec<String> = (0..count)
        .map(|r| {
            let params: Vec<String> = (1..=width).map(|i| format!("?{}", r * width + i)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    // Saturating (values are never negative): an absurd batch cannot make a stored sum
    // overflow, which PostgreSQL refuses and SQLite turns into a float.
    let updates: Vec<String> = cols
        .iter()
        .map(|c| {
            format!(
                "{c} = CASE WHEN excluded.{c} > {max} - {table}.{c} THEN {max} ELSE {table}.{c} + excluded.{c} END",
                max = i64::MAX
            )
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}, {}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {}",
        keys.join(", "),
        cols.join(", "),
        rows.join(", "),
        keys.join(", "),
        updates.join(", ")
    )
}

/// Where the finer tiers begin once retention has deleted their oldest buckets: the
/// minute tier holds every minute from `minute` on (a whole hour), the hour tier every
/// hour from `hour` on (a whole day). Before those, the coarser tiers hold the same sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizons {
    pub minute: i64,
    pub hour: i64,
}

impl Horizons {
    pub const NONE: Horizons = Horizons {
        minute: i64::MIN,
        hour: i64::MIN,
    };

    pub fn read(db: &Db) -> Result<Horizons> {
        let mut h = Horizons::NONE;
        db.query("SELECT tier, since FROM tier_horizons", &[], &mut |r| {
            match r.text(0)?.as_str() {
                "rollups_minute" => h.minute = r.int(1)?,
                "rollups_hour" => h.hour = r.int(1)?,
                _ => {}
            }
            Ok(())
        })?;
        // The hour tier never begins after the minute tier: what neither holds is gone.
        h.hour = h.hour.min(h.minute);
        Ok(h)
    }
}

/// The window split by tier: `(table, from, to)` in seconds, coarsest first. Before the
/// horizons, the window reads only the coarser tiers that still hold it, and where their
/// buckets do not fit the steps or the window, the finest of them: the buckets whose start
/// lies in the window, each in the step its start is in (so a step there may hold up to a
/// bucket's worth more or less than its exact span). From the minute horizon on, the split
/// is exact: whole buckets of the coarsest tier that fits, minutes for the ragged rest.
pub fn plan(
    from: i64,
    to: i64,
    step: i64,
    horizons: Horizons,
    mut stored_from: impl FnMut(i64, i64) -> bool,
) -> Vec<(&'static str, i64, i64)> {
    let mut out = Vec::new();
    let mut never = |_: i64, _: i64| true;
    let days_to = to.min(horizons.hour);
    if from < days_to {
        out.extend(split(&TIERS[..1], from, days_to, step, false, &mut never));
    }
    let (hours_from, hours_to) = (from.max(horizons.hour), to.min(horizons.minute));
    if hours_from < hours_to {
        out.extend(split(
            &TIERS[..2],
            hours_from,
            hours_to,
            step,
            false,
            &mut never,
        ));
    }
    let rest = from.max(horizons.minute);
    if rest < to {
        out.extend(split(&TIERS, rest, to, step, true, &mut stored_from));
    }
    out
}

/// The window split by tier: `(table, from, to)` in seconds, coarsest first. A tier is used
/// only where its buckets lie whole inside one step and inside the window; the minute tier
/// takes the rest (a minute belongs to the step its start is in). The one bucket that holds
/// the window's end is read whole when nothing was stored in it from the end on (the usual
/// case: a window that ends now); `stored_from(to, end)` tells whether the minute tier has
/// rows in `[to, end)`. (What [`plan`] does from the minute horizon on.)
#[cfg(test)]
fn parts(
    from: i64,
    to: i64,
    step: i64,
    mut stored_from: impl FnMut(i64, i64) -> bool,
) -> Vec<(&'static str, i64, i64)> {
    split(&TIERS, from, to, step, true, &mut stored_from)
}

/// The window split over `tiers` (coarsest first; the last takes whatever the others cannot).
/// `at_end`: `to` is the window's end, so the bucket holding it may be read whole.
fn split(
    tiers: &[(&'static str, i64)],
    from: i64,
    to: i64,
    step: i64,
    at_end: bool,
    stored_from: &mut dyn FnMut(i64, i64) -> bool,
) -> Vec<(&'static str, i64, i64)> {
    let (Some(&(table, size)), finer) = (tiers.first(), tiers.get(1..).unwrap_or_default()) else {
        return Vec::new();
    };
    if finer.is_empty() {
        return vec![(table, from, to)];
    }
    // Whole buckets from the first boundary on to the last one.
    let first = from + (size - from.rem_euclid(size)) % size;
    let last = to - to.rem_euclid(size);
    if step % size != 0 || first > last {
        return split(finer, from, to, step, at_end, stored_from);
    }
    let mut out = Vec::new();
    if from < first {
        out.extend(split(finer, from, first, step, false, stored_from));
    }
    let mut end = last;
    let mut tail = last < to;
    if tail && at_end && !stored_from(to, last + size) {
        end = last + size;
        tail = false;
    }
    if first < end {
        out.push((table, first, end));
    }
    if tail {
        out.extend(split(finer, last, to, step, at_end, stored_from));
    }
    out
}

/// Each series' group index by series id (`None` for series outside the scope), and the
/// groups' names, numbered in the order of their first series.
type Groups = (HashMap<i64, Option<usize>>, Vec<Option<String>>);

/// Sums per step and group: `(step index, group, sums)`.
type StepSums = Vec<(i64, Option<String>, Vec<i64>)>;

fn groups(db: &Db, q: &Query) -> Result<Groups> {
    let dialect = db.dialect();
    // Label names are checked to be letters, digits and `_` when the query is read; they
    // are bound, so that every label shares one statement.
    let mut params: Vec<Value> = Vec::new();
    let group = match &q.group_by {
        Some(label) => {
            params.push(Value::from(label));
            dialect.json_text_bound("labels", "?1")
        }
        None => "NULL".to_string(),
    };
    let scope = match &q.scope {
        Some((label, value)) => {
            let n = params.len();
            params.push(Value::from(label));
            params.push(Value::from(value));
            format!(
                " WHERE {} = ?{}",
                dialect.json_text_bound("labels", &format!("?{}", n + 1)),
                n + 2
            )
        }
        None => String::new(),
    };
    let mut by_id = HashMap::new();
    let mut names: Vec<Option<String>> = Vec::new();
    let mut index: HashMap<Option<String>, usize> = HashMap::new();
    db.query(
        &format!("SELECT id, CAST({group} AS TEXT) FROM series{scope}"),
        &params,
        &mut |r| {
            let (id, name) = (r.int(0)?, r.opt_text(1)?);
            let i = *index.entry(name.clone()).or_insert_with(|| {
                names.push(name);
                names.len() - 1
            });
            by_id.insert(id, Some(i));
            Ok(())
        },
    )?;
    Ok((by_id, names))
}

/// Sums the `values` expressions per step and group over each part of the window:
/// `(step index, group, sums)`, a step possibly in several rows (one per part it was read
/// from). SQL reads the rows of the window in key order and sums nothing; the grouping
/// happens here, a series' group one lookup away (an SQL `GROUP BY` over a join sorts every
/// row, several times slower over a fleet's series). Rows come in bucket order, so one
/// step's sums are open at a time.
fn per_step(db: &Db, q: &Query, values: &[String]) -> Result<StepSums> {
    let stored_from = |from: i64, to: i64| -> bool {
        // When unsure, read the finer tiers: always exact.
        db.query_one(
            "SELECT EXISTS (SELECT 1 FROM rollups_minute WHERE bucket >= ?1 AND bucket < ?2)",
            params![from, to],
            |r| r.bool(0),
        )
        .ok()
        .flatten()
        .unwrap_or(true)
    };
    let horizons = Horizons::read(db)?;
    let parts = plan(q.from, q.to, q.step, horizons, stored_from);
    let marginal_of = |table: &str| {
        MARGINALS
            .iter()
            .zip(["rollups_day", "rollups_hour"])
            .find(|(_, tier)| *tier == table)
            .map(|((m, _), _)| *m)
    };
    // The series and their groups only when some part reads the series (a fleet's table of
    // them is large, and the marginals answer most queries).
    let reads_series =
        Plan::of(q).is_none() || parts.iter().any(|(t, _, _)| marginal_of(t).is_none());
    let (by_id, names) = if reads_series {
        groups(db, q)?
    } else {
        Groups::default()
    };
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
    for (table, from, to) in parts {
        if let (Some(marginal), Some(plan)) = (marginal_of(table), Plan::of(q)) {
            out.extend(from_marginals(db, q, marginal, from, to, &plan, values)?);
            continue;
        }
        let mut current: Option<i64> = None;
        db.query(
            &format!(
                "SELECT bucket, series_id, {} FROM {table} WHERE bucket >= ?1 AND bucket < ?2 ORDER BY bucket",
                values.join(", ")
            ),
            params![from, to],
            &mut |r| {
                let Some(&Some(group)) = by_id.get(&r.int(1)?) else {
                    return Ok(());
                };
                let step = (r.int(0)? - q.from).div_euclid(q.step);
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
                        *a = a.saturating_add(r.int(i + 2)?);
                    }
                }
                Ok(())
            },
        )?;
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
    db: &Db,
    q: &Query,
    table: &str,
    from: i64,
    to: i64,
    plan: &Plan,
    values: &[String],
) -> Result<StepSums> {
    let read = |label: &str, value: Option<&str>| -> Result<Vec<(i64, String, Vec<i64>)>> {
        db.query_all(
            &format!(
                "SELECT bucket, value, {} FROM {table}
                 WHERE bucket >= ?1 AND bucket < ?2 AND label = ?3 AND (CAST(?4 AS TEXT) IS NULL OR value = ?4)",
                values.join(", ")
            ),
            params![from, to, label, value],
            |r| {
                let mut v = Vec::with_capacity(values.len());
                for i in 0..values.len() {
                    v.push(r.int(i + 2)?);
                }
                Ok((r.int(0)?, r.text(1)?, v))
            },
        )
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
pub fn usage(db: &Db, q: &Query) -> Result<Vec<(i64, Option<String>, Sums)>> {
    // Every column on its own, added here with saturation: SQL's `+` over the columns
    // would fail (PostgreSQL) or turn to a float (SQLite) on a store fed absurd counts.
    let mut values = status_columns();
    values.extend(error_columns());
    values.extend(TOKENS.iter().take(5).map(|t| t.to_string()));
    let (statuses, errors) = (STATUS_CLASSES.len(), ERROR_TYPES.len());
    Ok(per_step(db, q, &values)?
        .into_iter()
        .map(|(step, group, v)| {
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            let sum =
                |from: usize, n: usize| (from..from + n).fold(0i64, |a, i| a.saturating_add(at(i)));
            let t = statuses + errors;
            (
                step,
                group,
                Sums {
                    requests: sum(0, statuses),
                    errors: sum(statuses, errors),
                    prompt_tokens: at(t),
                    completion_tokens: at(t + 1),
                    total_tokens: at(t + 2),
                    cached_tokens: at(t + 3),
                    reasoning_tokens: at(t + 4),
                },
            )
        })
        .collect())
}

/// Requests, errors and the duration and TTFT histograms per step and group.
pub fn operations(db: &Db, q: &Query) -> Result<Vec<OperationsRow>> {
    let buckets = LATENCY_BOUNDS_MS.len() + 1;
    let mut values = status_columns();
    values.extend(error_columns());
    values.extend(histogram_columns("duration_ms", buckets));
    values.extend(histogram_columns("ttft_ms", buckets));
    let (statuses, errors) = (STATUS_CLASSES.len(), ERROR_TYPES.len());
    Ok(per_step(db, q, &values)?
        .into_iter()
        .map(|(step, group, v)| {
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            let histogram = |first: usize| Histogram {
                buckets: (0..buckets).map(|i| at(first + i).max(0) as u64).collect(),
                sum: at(first + buckets).max(0) as u64,
                count: at(first + buckets + 1).max(0) as u64,
            };
            let first = statuses + errors;
            OperationsRow {
                step,
                group,
                requests: (0..statuses).fold(0i64, |a, i| a.saturating_add(at(i))),
                errors: std::array::from_fn(|i| at(statuses + i)),
                duration: histogram(first),
                ttft: histogram(first + buckets + 2),
            }
        })
        .collect())
}

/// Moves the rollups of schema version 2 (one table, labels and JSON histograms per row)
/// into the tiers, then drops the old table (SQLite stores only: PostgreSQL begins later).
pub fn migrate_from_v2(db: &Db) -> Result<()> {
    let exists = db.query_one(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'rollups'",
        &[],
        |r| r.text(0),
    )?;
    if exists.is_none() {
        return Ok(());
    }
    let counters = counter_columns();
    let old = db.query_all(
        &format!(
            "SELECT minute, series, {}, duration_ms, ttft_ms, tpot_ms FROM rollups",
            counters.join(", ")
        ),
        &[],
        |r| {
            let mut values = Vec::with_capacity(counters.len());
            for i in 0..counters.len() {
                values.push(r.int(2 + i)?);
            }
            let h = |i: usize| r.text(2 + counters.len() + i);
            Ok((r.int(0)?, r.text(1)?, values, [h(0)?, h(1)?, h(2)?]))
        },
    )?;
    let mut adds = Additions::default();
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
        let id = series_id(db, &labels)?;
        // The marginals come with version 4, filled from these tiers.
        adds.add_tiers(id, row.minute, &values(&row));
    }
    adds.write(db)?;
    db.batch("DROP TABLE rollups")
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
    fn before_the_horizons_the_coarsest_tier_left_that_fits_is_read() {
        let day = 86_400;
        let never = |_: i64, _: i64| true;
        // Retention left minutes from 5 a.m. of day 20 on and hours from day 10 on.
        let horizons = Horizons {
            minute: 20 * day + 5 * 3600,
            hour: 10 * day,
        };
        assert_eq!(
            plan(0, 30 * day, day, horizons, never),
            [
                ("rollups_day", 0, 10 * day),
                ("rollups_day", 10 * day, 20 * day),
                ("rollups_hour", 20 * day, 20 * day + 5 * 3600),
                ("rollups_hour", 20 * day + 5 * 3600, 21 * day),
                ("rollups_day", 21 * day, 30 * day),
            ]
        );
        // Five-minute steps over deleted minutes read hours; over deleted hours, days.
        assert_eq!(
            plan(9 * day, 21 * day, 300, horizons, never),
            [
                ("rollups_day", 9 * day, 10 * day),
                ("rollups_hour", 10 * day, 20 * day + 5 * 3600),
                ("rollups_minute", 20 * day + 5 * 3600, 21 * day),
            ]
        );
        assert_eq!(
            plan(0, 7200, 3600, Horizons::NONE, never),
            parts(0, 7200, 3600, never)
        );
    }

    #[test]
    fn the_schema_has_one_column_per_value() {
        let row = Row::new(0, vec![]);
        assert_eq!(values(&row).len(), columns().len());
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(&schema(Dialect::Sqlite)).unwrap();
    }
}

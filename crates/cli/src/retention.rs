//! Retention: how long the store keeps each kind of data, and the job of `tokenmeter serve`
//! that deletes what is older, on SQLite and PostgreSQL alike.
//!
//! Rollups are added to the minute, hour and day tiers at once (see `tiers`), so deleting
//! the minutes older than their retention leaves those hours in the hour tier: that is the
//! merge into coarser buckets, and queries then read the hour tier for that time
//! (`tiers::Horizons`, moved in the same transaction as the delete). The same holds for
//! hours and days.
//!
//! Deletes go a span at a time, each span its own transaction, so that neither database
//! holds a long lock while a backlog goes. Several collectors may run the job at once:
//! deleting what another already deleted changes nothing.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::db::{params, Db, Location};
use crate::quality::duration::IsoDuration;
use crate::store::Store;

/// Ages in seconds; `None` keeps the kind forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub records: Option<i64>,
    pub minutes: Option<i64>,
    pub hours: Option<i64>,
    pub days: Option<i64>,
    pub runs: Option<i64>,
}

/// How long rollup batch ids are kept to refuse a retried batch: far longer than the
/// filter retries one.
const BATCH_IDS: i64 = 2 * 86_400;

/// How often `serve` runs the job.
const EVERY: Duration = Duration::from_secs(600);

impl Retention {
    /// Reads the settings `(flag, text)` of records, minutes, hours, days and runs, in that
    /// order.
    pub fn parse(flags: &[(&str, &String); 5]) -> Result<Retention> {
        let mut ages = [None; 5];
        for (age, (flag, text)) in ages.iter_mut().zip(flags) {
            if text.as_str() == "forever" {
                continue;
            }
            match IsoDuration::parse(text) {
                Ok(d) if d.seconds() > 0 => *age = Some(d.seconds()),
                _ => {
                    bail!("{flag}: {text:?} is not a duration such as P30D or PT12H, nor `forever`")
                }
            }
        }
        let [records, minutes, hours, days, runs] = ages;
        let r = Retention {
            records,
            minutes,
            hours,
            days,
            runs,
        };
        // A coarser tier must outlive the finer one: its buckets are what remains.
        let at_least = |finer: Option<i64>, coarser: Option<i64>| match (finer, coarser) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(f), Some(c)) => c >= f,
        };
        if !at_least(r.minutes, r.hours) {
            bail!("--retain-hours: must be at least --retain-minutes, since the hourly rollups are what is left of older minutes");
        }
        if !at_least(r.hours, r.days) {
            bail!("--retain-days: must be at least --retain-hours, since the daily rollups are what is left of older hours");
        }
        Ok(r)
    }
}

impl Retention {
    /// What is kept, for the start-up line: deleting is not something to do unannounced.
    pub fn describe(&self) -> String {
        let age = |a: Option<i64>| match a {
            Some(s) if s % 86_400 == 0 => format!("{} days", s / 86_400),
            Some(s) => format!("{s} s"),
            None => "forever".to_string(),
        };
        format!(
            "keeping records {}, minute rollups {}, hour rollups {}, day rollups {}, monitor runs {}; older ones are deleted",
            age(self.records),
            age(self.minutes),
            age(self.hours),
            age(self.days),
            age(self.runs)
        )
    }
}

/// What one pass deleted, per kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub records: u64,
    pub minutes: u64,
    pub hours: u64,
    pub days: u64,
    pub runs: u64,
}

/// Runs the job now and every ten minutes, for as long as `serve` runs; a failed pass is
/// logged and tried again at the next.
pub async fn run(db: Location, retention: Retention) {
    loop {
        let (db2, r) = (db.clone(), retention.clone());
        let pass = tokio::task::spawn_blocking(move || -> Result<Deleted> {
            let store = Store::open(&db2)?;
            enforce(store.db(), &r, chrono::Utc::now().timestamp())
        })
        .await;
        match pass {
            Ok(Ok(d)) if d != Deleted::default() => eprintln!(
                "retention: deleted {} records, {} minute, {} hour and {} day rollups, {} monitor runs",
                d.records, d.minutes, d.hours, d.days, d.runs
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("retention: {e:#}; trying again in ten minutes"),
            Err(e) => eprintln!("retention: {e}"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

fn floor(t: i64, size: i64) -> i64 {
    t - t.rem_euclid(size)
}

/// A tier's pass: its age, table, coarser bucket, span per transaction, marginal tables,
/// and where to count what went.
type TierPass<'a> = (
    Option<i64>,
    &'static str,
    i64,
    i64,
    &'static [&'static str],
    &'a mut u64,
);

/// Deletes what is older than its retention at `now` (Unix seconds).
pub fn enforce(db: &Db, r: &Retention, now: i64) -> Result<Deleted> {
    let mut d = Deleted::default();
    if let Some(age) = r.records {
        let cutoff = (now - age).saturating_mul(1_000_000);
        d.records = delete_spans(db, "records", "time_us", cutoff, 3_600_000_000, None)?;
        db.execute(
            "DELETE FROM judge_cache WHERE created_us < ?1",
            params![cutoff],
        )?;
    }
    // Finer tiers go in whole coarser buckets, so each horizon is a coarser bucket's start;
    // a span per transaction: a day of minutes, a month of hours, a year of days.
    let tiers: [TierPass<'_>; 3] = [
        (
            r.minutes,
            "rollups_minute",
            3_600,
            86_400,
            &[],
            &mut d.minutes,
        ),
        (
            r.hours,
            "rollups_hour",
            86_400,
            30 * 86_400,
            &["marginals_hour"],
            &mut d.hours,
        ),
        (
            r.days,
            "rollups_day",
            86_400,
            365 * 86_400,
            &["marginals_day"],
            &mut d.days,
        ),
    ];
    for (age, table, coarser, span, marginals, deleted) in tiers {
        if let Some(age) = age {
            let cutoff = floor(now - age, coarser);
            *deleted = delete_spans(db, table, "bucket", cutoff, span, Some((table, marginals)))?;
        }
    }
    if let Some(age) = r.runs {
        let cutoff = (now - age).saturating_mul(1_000_000);
        d.runs = db.transaction(|db| {
            db.execute(
                "DELETE FROM monitor_scores WHERE run_id IN (SELECT id FROM monitor_runs WHERE finished_us < ?1)",
                params![cutoff],
            )?;
            db.execute("DELETE FROM monitor_claims WHERE slot_us < ?1", params![cutoff])?;
            db.execute("DELETE FROM monitor_runs WHERE finished_us < ?1", params![cutoff])
        })?;
    }
    let batches = (now - BATCH_IDS).saturating_mul(1_000_000);
    db.execute(
        "DELETE FROM rollup_batches WHERE received_us < ?1",
        params![batches],
    )?;
    Ok(d)
}

/// Deletes the rows of `table` with `column < cutoff`, oldest first, `span` of `column` per
/// transaction. For a tier (`tier`: its name and its marginal tables), the same buckets of
/// the marginals go too, and the tier's horizon moves to the end of each span deleted.
fn delete_spans(
    db: &Db,
    table: &str,
    column: &str,
    cutoff: i64,
    span: i64,
    tier: Option<(&str, &[&str])>,
) -> Result<u64> {
    let mut deleted = 0;
    loop {
        let oldest = db
            .query_one(&format!("SELECT min({column}) FROM {table}"), &[], |r| {
                r.opt_int(0)
            })?
            .flatten();
        let Some(oldest) = oldest.filter(|o| *o < cutoff) else {
            break;
        };
        let end = span_end(oldest, cutoff, span);
        deleted += db.transaction(|db| {
            let n = db.execute(
                &format!("DELETE FROM {table} WHERE {column} < ?1"),
                params![end],
            )?;
            if let Some((name, marginals)) = tier {
                for m in marginals {
                    db.execute(&format!("DELETE FROM {m} WHERE bucket < ?1"), params![end])?;
                }
                move_horizon(db, name, end)?;
            }
            Ok(n)
        })?;
    }
    if let Some((name, _)) = tier {
        // Also when nothing was old enough to delete: a tier that holds nothing before the
        // cutoff begins there, and rows arriving late for that time are read from the
        // coarser tier, which has them too.
        move_horizon(db, name, cutoff)?;
    }
    Ok(deleted)
}

/// Where the span holding `oldest` ends: on a multiple of `span` (each a whole number of
/// the coarser tier's buckets), so that every horizon a pass leaves, even one it stops
/// partway, is a coarser bucket's start and no bucket is read from two tiers.
fn span_end(oldest: i64, cutoff: i64, span: i64) -> i64 {
    cutoff.min((oldest - oldest.rem_euclid(span)).saturating_add(span))
}

/// Moves a tier's horizon on to `since` (never back).
fn move_horizon(db: &Db, tier: &str, since: i64) -> Result<()> {
    db.execute(
        "INSERT INTO tier_horizons (tier, since) VALUES (?1, ?2)
         ON CONFLICT (tier) DO UPDATE SET since = excluded.since
         WHERE excluded.since > tier_horizons.since",
        params![tier, since],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_end_on_their_own_boundaries_whatever_the_oldest_row() {
        let day = 86_400;
        // Minutes from 05:07 on: the first span ends at the next midnight, an hour's start.
        assert_eq!(span_end(5 * 3600 + 7 * 60, 10 * day, day), day);
        assert_eq!(span_end(day, 10 * day, day), 2 * day);
        assert_eq!(span_end(9 * day + 60, 9 * day + 3600, day), 9 * day + 3600);
        // Hours in 30-day spans end on a day's start.
        let end = span_end(3 * day + 7 * 3600, 400 * day, 30 * day);
        assert_eq!(end % day, 0);
        assert_eq!(end, 30 * day);
    }

    #[test]
    fn settings_are_durations_or_forever_and_tiers_outlive_finer_ones() {
        let s = |v: [&str; 5]| {
            let v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            Retention::parse(&[
                ("--retain-records", &v[0]),
                ("--retain-minutes", &v[1]),
                ("--retain-hours", &v[2]),
                ("--retain-days", &v[3]),
                ("--retain-runs", &v[4]),
            ])
        };
        let r = s(["P30D", "P8D", "P90D", "forever", "P400D"]).unwrap();
        assert_eq!(
            (r.records, r.minutes, r.days),
            (Some(30 * 86_400), Some(8 * 86_400), None)
        );
        let e = s(["P30D", "P8D", "P1D", "forever", "P400D"]).err().unwrap();
        assert!(e.to_string().starts_with("--retain-hours"), "{e}");
        let e = s(["soon", "P8D", "P90D", "forever", "P400D"])
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("--retain-records"), "{e}");
        let e = s(["P30D", "forever", "P90D", "forever", "P400D"])
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("--retain-hours"), "{e}");
    }
}

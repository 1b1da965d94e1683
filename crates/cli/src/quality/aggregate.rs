//! Per-metric aggregation of record outcomes into the figures a monitor alerts on.

use serde::Serialize;

/// Default per-record score at or above which a record passes.
pub const DEFAULT_ACCEPTABLE_SCORE: u8 = 4;
/// Default lowest acceptable pass rate.
pub const DEFAULT_PASS_RATE_THRESHOLD: f64 = 0.7;
/// Default lowest acceptable average score.
pub const DEFAULT_AVERAGE_THRESHOLD: f64 = 4.0;

/// A metric's thresholds, as the monitor definition sets them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub acceptable_score: u8,
    pub pass_rate_threshold: f64,
    pub average_threshold: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            acceptable_score: DEFAULT_ACCEPTABLE_SCORE,
            pass_rate_threshold: DEFAULT_PASS_RATE_THRESHOLD,
            average_threshold: DEFAULT_AVERAGE_THRESHOLD,
        }
    }
}

/// What became of one record for one metric. Every sampled record ends in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scored,
    /// The judge answered but no score could be read.
    Unparsed,
    /// The judge call failed after its retries.
    Errored,
    /// The record lacks a column the metric needs, or the judge declined it.
    NotApplicable,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Scored => "scored",
            Status::Unparsed => "unparsed",
            Status::Errored => "errored",
            Status::NotApplicable => "not_applicable",
        }
    }
}

/// Outcome counts of one metric; scores kept as a histogram so nothing is rounded early.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// `histogram[s - 1]` = records scored `s`.
    pub histogram: [u64; 5],
    pub unparsed: u64,
    pub errored: u64,
    pub not_applicable: u64,
}

impl Tally {
    /// Counts one outcome; `score` is read only for `Status::Scored`.
    pub fn add(&mut self, status: Status, score: Option<u8>) {
        match (status, score) {
            (Status::Scored, Some(s)) => {
                match self.histogram.get_mut(usize::from(s).wrapping_sub(1)) {
                    Some(n) => *n += 1,
                    None => self.unparsed += 1,
                }
            }
            (Status::Scored, None) | (Status::Unparsed, _) => self.unparsed += 1,
            (Status::Errored, _) => self.errored += 1,
            (Status::NotApplicable, _) => self.not_applicable += 1,
        }
    }

    pub fn scored(&self) -> u64 {
        self.histogram.iter().sum()
    }

    /// Aggregates against the thresholds.
    pub fn summarize(&self, t: Thresholds) -> Summary {
        let scored = self.scored();
        let (mut total, mut passing, mut violations) = (0u64, 0u64, 0u64);
        for (score, n) in (1u64..).zip(self.histogram.iter()) {
            total += score * n;
            if score >= u64::from(t.acceptable_score) {
                passing += n;
            } else {
                violations += n;
            }
        }
        let (average_score, pass_rate) = if scored == 0 {
            (None, None)
        } else {
            (
                Some(total as f64 / scored as f64),
                Some(passing as f64 / scored as f64),
            )
        };
        // Nothing scored is a breach: a window the judge could not score at all must not
        // look healthy.
        let breached = match (pass_rate, average_score) {
            (Some(p), Some(a)) => p < t.pass_rate_threshold || a < t.average_threshold,
            _ => true,
        };
        Summary {
            average_score,
            pass_rate,
            violations,
            scored,
            unparsed: self.unparsed,
            errored: self.errored,
            not_applicable: self.not_applicable,
            acceptable_score: t.acceptable_score,
            pass_rate_threshold: t.pass_rate_threshold,
            average_threshold: t.average_threshold,
            breached,
        }
    }
}

/// One metric's figures in a report. Averages and pass rates are exact here; the report
/// rounds them for display only.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Summary {
    pub average_score: Option<f64>,
    pub pass_rate: Option<f64>,
    pub violations: u64,
    pub scored: u64,
    pub unparsed: u64,
    pub errored: u64,
    pub not_applicable: u64,
    pub acceptable_score: u8,
    pub pass_rate_threshold: f64,
    pub average_threshold: f64,
    pub breached: bool,
}

impl Summary {
    /// Why the metric breached, for alerts and the table; `None` when it did not.
    pub fn breach_reason(&self) -> Option<String> {
        if !self.breached {
            return None;
        }
        let mut reasons = Vec::new();
        match (self.pass_rate, self.average_score) {
            (Some(p), Some(a)) => {
                if p < self.pass_rate_threshold {
                    reasons.push(format!("pass rate {:.4} < {}", p, self.pass_rate_threshold));
                }
                if a < self.average_threshold {
                    reasons.push(format!("average {:.4} < {}", a, self.average_threshold));
                }
            }
            _ => reasons.push(format!(
                "no record could be scored ({} unparsed, {} errored, {} not applicable)",
                self.unparsed, self.errored, self.not_applicable
            )),
        }
        Some(reasons.join(", "))
    }
}

/// Rounds to 4 decimal places, the precision reports show.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(scores: &[(u8, u64)]) -> Tally {
        let mut t = Tally::default();
        for &(score, n) in scores {
            for _ in 0..n {
                t.add(Status::Scored, Some(score));
            }
        }
        t
    }

    fn round3(x: f64) -> f64 {
        (x * 1_000.0).round() / 1_000.0
    }

    // The reference histograms: per-row threshold 4, pass-rate threshold 0.7.
    #[test]
    fn reference_one_three_thirteen_fives() {
        let s = tally(&[(3, 1), (5, 13)]).summarize(Thresholds::default());
        assert_eq!(round4(s.pass_rate.unwrap()), 0.9286);
        assert_eq!(round3(s.average_score.unwrap()), 4.857);
        assert_eq!(s.violations, 1);
        assert_eq!(s.scored, 14);
        assert!(!s.breached);
    }

    #[test]
    fn reference_two_threes_twelve_fives() {
        let s = tally(&[(3, 2), (5, 12)]).summarize(Thresholds::default());
        assert_eq!(round4(s.pass_rate.unwrap()), 0.8571);
        assert_eq!(round3(s.average_score.unwrap()), 4.714);
        assert_eq!(s.violations, 2);
        assert!(!s.breached);
    }

    #[test]
    fn reference_fourteen_fives() {
        let s = tally(&[(5, 14)]).summarize(Thresholds::default());
        assert_eq!(s.pass_rate, Some(1.0));
        assert_eq!(s.average_score, Some(5.0));
        assert_eq!(s.violations, 0);
        assert!(!s.breached);
        assert_eq!(s.breach_reason(), None);
    }

    #[test]
    fn breach_on_pass_rate_or_average() {
        // 6 of 10 pass: pass rate 0.6 < 0.7, average 4.0 is not below 4.0.
        let s = tally(&[(3, 2), (2, 2), (5, 6)]).summarize(Thresholds::default());
        assert_eq!(s.pass_rate, Some(0.6));
        assert!(s.breached);
        assert_eq!(s.breach_reason().unwrap(), "pass rate 0.6000 < 0.7");
        // All pass at 4 but an average threshold of 4.5 is missed.
        let t = Thresholds {
            average_threshold: 4.5,
            ..Thresholds::default()
        };
        let s = tally(&[(4, 10)]).summarize(t);
        assert_eq!(s.pass_rate, Some(1.0));
        assert!(s.breached);
        assert!(s
            .breach_reason()
            .unwrap()
            .starts_with("average 4.0000 < 4.5"));
    }

    #[test]
    fn acceptable_score_moves_the_pass_line() {
        let t = Thresholds {
            acceptable_score: 3,
            ..Thresholds::default()
        };
        let s = tally(&[(3, 2), (5, 12)]).summarize(t);
        assert_eq!(s.pass_rate, Some(1.0));
        assert_eq!(s.violations, 0);
    }

    #[test]
    fn nothing_scored_is_a_breach_not_nan() {
        let mut t = Tally::default();
        t.add(Status::Errored, None);
        t.add(Status::Unparsed, None);
        t.add(Status::NotApplicable, None);
        let s = t.summarize(Thresholds::default());
        assert_eq!((s.average_score, s.pass_rate), (None, None));
        assert!(s.breached);
        assert_eq!(
            (s.errored, s.unparsed, s.not_applicable, s.scored),
            (1, 1, 1, 0)
        );
        assert!(s
            .breach_reason()
            .unwrap()
            .contains("no record could be scored"));
        assert!(Tally::default().summarize(Thresholds::default()).breached);
    }

    #[test]
    fn out_of_range_scores_count_as_unparsed() {
        let mut t = Tally::default();
        t.add(Status::Scored, Some(0));
        t.add(Status::Scored, Some(6));
        t.add(Status::Scored, None);
        assert_eq!((t.scored(), t.unparsed), (0, 3));
    }
}

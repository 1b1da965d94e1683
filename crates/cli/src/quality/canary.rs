//! The drift canary: a small calibration set shipped with tokenmeter (`canary.yaml`,
//! hand-written records, ours), each with the score band a sound judge gives it per
//! metric. Scored on every run of a monitor that asks for it, it tells a change in the
//! judge (a new model version behind the same name, a changed prompt, a quantised local
//! model) apart from a change in the app's quality: the app's scores may move, the
//! canary's should not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokenmeter_core::records::record::Record;

use super::metric::Metric;
use super::monitor::Columns;
use super::report::Row;

const SET: &str = include_str!("canary.yaml");

/// Default share of the canary's scores that must fall in their bands.
pub const DEFAULT_MIN_AGREEMENT: f64 = 0.8;

#[derive(Debug, Clone, Deserialize)]
struct Case {
    id: String,
    question: String,
    context: String,
    answer: String,
    expect: BTreeMap<Metric, [u8; 2]>,
}

fn cases() -> Vec<Case> {
    // The set is compiled in and checked by the tests: it cannot fail to parse here.
    serde_yaml_ng::from_str(SET).unwrap_or_default()
}

/// The canary's records, with their texts under the monitor's column names.
pub fn records(columns: &Columns) -> Vec<Record> {
    cases()
        .into_iter()
        .map(|c| {
            let mut r = Record {
                id: c.id,
                ..Record::default()
            };
            for (column, text) in [
                (&columns.question, c.question),
                (&columns.context, c.context),
                (&columns.answer, c.answer),
            ] {
                r.extra
                    .insert(column.clone(), serde_json::Value::String(text));
            }
            r
        })
        .collect()
}

/// How the judge did on the canary in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryReport {
    /// Scores with an expected band that the judge gave (others were not scored).
    pub scored: u64,
    /// Of those, the ones inside their band.
    pub agreed: u64,
    /// `agreed / scored`; `null` when nothing was scored.
    pub agreement: Option<f64>,
    pub min_agreement: f64,
    /// Agreement below `min_agreement`: the judge no longer scores as it should.
    pub drifted: bool,
    /// The scores outside their band.
    pub disagreements: Vec<Disagreement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disagreement {
    pub record_id: String,
    pub metric: Metric,
    pub score: u8,
    pub expected: [u8; 2],
}

/// Compares the judge's rows for the canary records with their bands (metrics the monitor
/// does not score are left out).
pub fn assess(rows: &[Row], min_agreement: f64) -> CanaryReport {
    let cases = cases();
    let mut scored = 0;
    let mut disagreements = Vec::new();
    for row in rows {
        let (Some(score), Some(band)) = (
            row.score,
            cases
                .iter()
                .find(|c| c.id == row.record_id)
                .and_then(|c| c.expect.get(&row.metric)),
        ) else {
            continue;
        };
        scored += 1;
        if !(band[0]..=band[1]).contains(&score) {
            disagreements.push(Disagreement {
                record_id: row.record_id.clone(),
                metric: row.metric,
                score,
                expected: *band,
            });
        }
    }
    let agreed = scored - disagreements.len() as u64;
    let agreement = (scored > 0).then(|| agreed as f64 / scored as f64);
    CanaryReport {
        scored,
        agreed,
        agreement,
        min_agreement,
        drifted: agreement.is_some_and(|a| a < min_agreement),
        disagreements,
    }
}

impl CanaryReport {
    pub fn describe(&self) -> String {
        match self.agreement {
            None => "not scored (every canary call failed or was unreadable)".to_string(),
            Some(a) => format!(
                "{} of {} scores in their bands (agreement {:.4} {} {}){}",
                self.agreed,
                self.scored,
                a,
                if self.drifted { "<" } else { ">=" },
                self.min_agreement,
                if self.drifted { ": JUDGE DRIFT" } else { "" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, metric: Metric, score: Option<u8>) -> Row {
        Row {
            record_id: id.into(),
            metric,
            status: if score.is_some() { "scored" } else { "errored" }.into(),
            score,
            reason: String::new(),
            judge_model: "j".into(),
            prompt_version: String::new(),
            cached: false,
            missing_input: false,
        }
    }

    #[test]
    fn the_shipped_set_parses_and_names_bands_for_every_metric() {
        let cases: Vec<Case> = serde_yaml_ng::from_str(SET).unwrap();
        assert!(cases.len() >= 6);
        for m in Metric::ALL {
            assert!(cases.iter().any(|c| c.expect.contains_key(&m)), "{m:?}");
            // Each metric has cases that should score low and one that should score high:
            // a judge that gives everything a 5 falls below the default agreement on any
            // one metric.
            let low = cases
                .iter()
                .filter(|c| c.expect.get(&m).is_some_and(|b| b[1] <= 3))
                .count();
            let all = cases.iter().filter(|c| c.expect.contains_key(&m)).count();
            assert!(low >= 2, "{m:?} low");
            assert!(
                ((all - low) as f64 / all as f64) < DEFAULT_MIN_AGREEMENT,
                "{m:?}: {low} of {all} low"
            );
            assert!(
                cases
                    .iter()
                    .any(|c| c.expect.get(&m).is_some_and(|b| b[0] >= 4)),
                "{m:?} high"
            );
        }
        for c in &cases {
            assert!(c.id.starts_with("canary-"));
            assert!(c
                .expect
                .values()
                .all(|b| 1 <= b[0] && b[0] <= b[1] && b[1] <= 5));
        }
        let columns = Columns {
            question: "q".into(),
            answer: "a".into(),
            context: "c".into(),
        };
        let r = records(&columns);
        assert_eq!(r.len(), cases.len());
        assert!(r[0].text("q").is_some() && r[0].text("a").is_some() && r[0].text("c").is_some());
    }

    #[test]
    fn agreement_counts_scores_in_their_bands() {
        let rows = [
            row("canary-grounded", Metric::Fluency, Some(5)),
            row("canary-invented", Metric::Groundedness, Some(5)),
            row("canary-invented", Metric::Fluency, Some(4)),
            row("canary-invented", Metric::Coherence, Some(1)), // no band: not counted
            row("canary-off-topic", Metric::Relevance, None),   // not scored
        ];
        let r = assess(&rows, 0.8);
        assert_eq!((r.scored, r.agreed), (3, 2));
        assert!(r.drifted);
        assert_eq!(r.disagreements[0].expected, [1, 2]);
        assert!(
            r.describe()
                .ends_with("(agreement 0.6667 < 0.8): JUDGE DRIFT"),
            "{}",
            r.describe()
        );
        assert!(!assess(&rows[..1], 0.8).drifted);
        assert_eq!(assess(&[], 0.8).agreement, None);
    }
}

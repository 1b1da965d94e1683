//! The four quality metrics and the record columns each one needs.

use serde::{Deserialize, Serialize};

/// A quality metric, scored 1–5 by the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Groundedness,
    Relevance,
    Coherence,
    Fluency,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 4] = [
        Metric::Groundedness,
        Metric::Relevance,
        Metric::Coherence,
        Metric::Fluency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Groundedness => "groundedness",
            Metric::Relevance => "relevance",
            Metric::Coherence => "coherence",
            Metric::Fluency => "fluency",
        }
    }

    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Groundedness and relevance are judged against the context the answer was given;
    /// coherence and fluency only need the exchange itself.
    pub fn needs_context(self) -> bool {
        matches!(self, Metric::Groundedness | Metric::Relevance)
    }

    /// Whether a record with these columns can be scored on this metric.
    pub fn applies_to(self, inputs: &Inputs<'_>) -> bool {
        inputs.question.is_some()
            && inputs.answer.is_some()
            && (!self.needs_context() || inputs.context.is_some())
    }
}

/// The text columns of one record, as the monitor's `columns` map them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inputs<'a> {
    pub question: Option<&'a str>,
    pub answer: Option<&'a str>,
    pub context: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_decide_which_metrics_apply() {
        let qa = Inputs {
            question: Some("q"),
            answer: Some("a"),
            context: None,
        };
        let qac = Inputs {
            context: Some("c"),
            ..qa
        };
        let a_only = Inputs {
            question: None,
            ..qac
        };
        let applies = |i: &Inputs<'_>| -> Vec<&str> {
            Metric::ALL
                .into_iter()
                .filter(|m| m.applies_to(i))
                .map(Metric::name)
                .collect()
        };
        assert_eq!(applies(&qa), ["coherence", "fluency"]);
        assert_eq!(
            applies(&qac),
            ["groundedness", "relevance", "coherence", "fluency"]
        );
        assert!(applies(&a_only).is_empty());
    }

    #[test]
    fn names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(Metric::from_name(m.name()), Some(m));
        }
        assert_eq!(Metric::from_name("toxicity"), None);
    }
}

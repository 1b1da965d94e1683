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

    /// The inputs its rubric judges, and only those are sent to the judge: groundedness
    /// and relevance weigh the answer against the context it was given (and the question),
    /// coherence follows the answer from the question, fluency reads the answer alone.
    /// Azure's relevance reads the question and the answer only.
    pub fn inputs(self, rubric: Rubric) -> &'static [Input] {
        match (self, rubric) {
            (Metric::Relevance, Rubric::Azure) => &[Input::Question, Input::Answer],
            (Metric::Groundedness | Metric::Relevance, _) => {
                &[Input::Question, Input::Context, Input::Answer]
            }
            (Metric::Coherence, _) => &[Input::Question, Input::Answer],
            (Metric::Fluency, _) => &[Input::Answer],
        }
    }

    /// Whether a record with these columns can be scored on this metric.
    pub fn applies_to(self, inputs: &Inputs<'_>, rubric: Rubric) -> bool {
        self.inputs(rubric).iter().all(|i| inputs.get(*i).is_some())
    }
}

/// Whose score levels the judge follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Rubric {
    /// tokenmeter's own rubrics.
    #[default]
    Tokenmeter,
    /// Levels that follow the definitions of Azure AI Foundry's current evaluators, so
    /// that teams moving from them get comparable scores.
    Azure,
}

impl Rubric {
    pub fn name(self) -> &'static str {
        match self {
            Rubric::Tokenmeter => "tokenmeter",
            Rubric::Azure => "azure",
        }
    }
}

/// One text column of a record, as the judge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    Question,
    Context,
    Answer,
}

impl Input {
    /// In the order the judge reads them.
    pub const ALL: [Input; 3] = [Input::Question, Input::Context, Input::Answer];

    /// Its heading in the judge prompt.
    pub fn heading(self) -> &'static str {
        match self {
            Input::Question => "QUESTION",
            Input::Context => "CONTEXT",
            Input::Answer => "ANSWER",
        }
    }
}

/// The text columns of one record, as the monitor's `columns` map them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inputs<'a> {
    pub question: Option<&'a str>,
    pub answer: Option<&'a str>,
    pub context: Option<&'a str>,
}

impl<'a> Inputs<'a> {
    pub fn get(&self, input: Input) -> Option<&'a str> {
        match input {
            Input::Question => self.question,
            Input::Context => self.context,
            Input::Answer => self.answer,
        }
    }
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
                .filter(|m| m.applies_to(i, Rubric::Tokenmeter))
                .map(Metric::name)
                .collect()
        };
        assert_eq!(applies(&qa), ["coherence", "fluency"]);
        assert_eq!(
            applies(&qac),
            ["groundedness", "relevance", "coherence", "fluency"]
        );
        // Fluency reads the answer alone.
        assert_eq!(applies(&a_only), ["fluency"]);
        // Azure's relevance does without the context.
        assert!(Metric::Relevance.applies_to(&qa, Rubric::Azure));
        assert!(!Metric::Groundedness.applies_to(&qa, Rubric::Azure));
    }

    #[test]
    fn names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(Metric::from_name(m.name()), Some(m));
        }
        assert_eq!(Metric::from_name("toxicity"), None);
    }
}

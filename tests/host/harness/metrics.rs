//! Metrics as Envoy keeps them: one store keyed by name, shared by every VM of a host (the
//! way Envoy's workers share stats), with ids handed out per VM.

use std::collections::BTreeMap;

use super::abi::MetricType;

/// One stat: its type and value (histograms keep every recorded sample).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: MetricType,
    /// Counters and gauges.
    pub value: i64,
    /// Histograms.
    pub samples: Vec<u64>,
}

/// The stats of a host, by full metric name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub stats: BTreeMap<String, Stat>,
}

impl Registry {
    /// Creates the stat when it is new; `false` when the name exists with another type.
    pub fn define(&mut self, kind: MetricType, name: &str) -> bool {
        let stat = self.stats.entry(name.to_string()).or_insert(Stat {
            kind,
            value: 0,
            samples: Vec::new(),
        });
        stat.kind == kind
    }
}

/// A series: a metric family and its labels, decoded from a name that carries them
/// (`family.label=.=value;.;...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub name: String,
    pub family: String,
    pub labels: Vec<(String, String)>,
    pub kind: MetricType,
    pub value: i64,
}

impl Series {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits an encoded name into its family and labels; `None` if the label part is malformed.
pub fn decode_name(name: &str) -> Option<(String, Vec<(String, String)>)> {
    let Some((family, mut rest)) = name.split_once('.') else {
        return Some((name.to_string(), Vec::new()));
    };
    let mut labels = Vec::new();
    while !rest.is_empty() {
        let (label, after) = rest.split_once("=.=")?;
        let (value, after) = after.split_once(";.;")?;
        labels.push((label.to_string(), value.to_string()));
        rest = after;
    }
    Some((family.to_string(), labels))
}

/// A snapshot of a host's metrics, for assertions.
#[derive(Debug, Clone)]
pub struct Metrics(pub Registry);

impl Metrics {
    /// Every series; panics on a name whose labels cannot be decoded.
    pub fn series(&self) -> Vec<Series> {
        self.0
            .stats
            .iter()
            .map(|(name, stat)| {
                let (family, labels) = decode_name(name)
                    .unwrap_or_else(|| panic!("metric name {name:?} has malformed labels"));
                Series {
                    name: name.clone(),
                    family,
                    labels,
                    kind: stat.kind,
                    value: stat.value,
                }
            })
            .collect()
    }

    /// Series of `family` having all of `labels`.
    pub fn find(&self, family: &str, labels: &[(&str, &str)]) -> Vec<Series> {
        self.series()
            .into_iter()
            .filter(|s| s.family == family)
            .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect()
    }

    /// The sum over series of `family` having all of `labels`.
    pub fn sum(&self, family: &str, labels: &[(&str, &str)]) -> i64 {
        self.find(family, labels).iter().map(|s| s.value).sum()
    }

    /// The value of the stat with exactly this name.
    pub fn value(&self, name: &str) -> Option<i64> {
        self.0.stats.get(name).map(|s| s.value)
    }

    /// `(name, value)` of every stat, for failure messages.
    pub fn dump(&self) -> String {
        self.0
            .stats
            .iter()
            .map(|(n, s)| format!("{n} {:?} {}\n", s.kind, s.value))
            .collect()
    }
}

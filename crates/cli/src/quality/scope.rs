//! Which records a monitor judges (`filter`) and how it breaks its verdicts down
//! (`group_by`): by the model, route or operation the gateway recorded, or by any of the
//! record's dimensions. One gateway serves many apps; each gets its own verdict.
//!
//! The number of groups is capped (`max_groups`): the largest groups keep their own
//! verdict and the rest are judged together as one `_other` group, so traffic with many
//! distinct values cannot multiply the report, the alerts or the metric series.

use std::collections::BTreeMap;

use tokenmeter_core::records::record::Record;

/// The value every field of the group of the records past `max_groups` takes.
pub const OTHER: &str = "_other";
/// The value of a field a record lacks: not empty, since an empty label is no label to
/// Prometheus and Alertmanager, which would merge the group with the monitor as a whole.
pub const NONE: &str = "_none";
pub const DEFAULT_MAX_GROUPS: usize = 20;

/// A record field a monitor can filter or group on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Model,
    Route,
    Operation,
    /// A dimension the gateway recorded, by its label.
    Dimension(String),
}

impl Field {
    /// `model`, `route`, `operation`; `dimensions.NAME` or any other name is a dimension.
    pub fn parse(name: &str) -> Field {
        match name {
            "model" => Field::Model,
            "route" => Field::Route,
            "operation" => Field::Operation,
            other => Field::Dimension(
                other
                    .strip_prefix("dimensions.")
                    .unwrap_or(other)
                    .to_string(),
            ),
        }
    }

    pub fn value<'a>(&self, r: &'a Record) -> Option<&'a str> {
        match self {
            Field::Model => r.model.as_deref(),
            Field::Route => r.route.as_deref(),
            Field::Operation => r.operation.as_deref(),
            Field::Dimension(d) => r.dimensions.get(d).map(String::as_str),
        }
    }

    /// Its label in reports, alerts and metrics: the name with every character other
    /// than a letter, digit or underscore replaced by `_` (`API ID` → `API_ID`).
    pub fn label(&self) -> String {
        let name = match self {
            Field::Model => "model",
            Field::Route => "route",
            Field::Operation => "operation",
            Field::Dimension(d) => d.as_str(),
        };
        let mut label: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if label.starts_with(|c: char| c.is_ascii_digit()) {
            label.insert(0, '_');
        }
        label
    }
}

/// A monitor's scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Every condition must hold: the record's value is one of the listed ones.
    pub filter: Vec<(Field, Vec<String>)>,
    pub group_by: Vec<Field>,
    pub max_groups: usize,
}

/// A group's labels (label → value), in `group_by` order.
pub type GroupKey = Vec<(String, String)>;

impl Scope {
    pub fn admits(&self, r: &Record) -> bool {
        self.filter
            .iter()
            .all(|(f, values)| f.value(r).is_some_and(|v| values.iter().any(|x| x == v)))
    }

    /// The group of a record: its value of each `group_by` field (`_none` when it has none
    /// or an empty one).
    pub fn group_of(&self, r: &Record) -> GroupKey {
        self.group_by
            .iter()
            .map(|f| {
                let v = f.value(r).filter(|v| !v.is_empty()).unwrap_or(NONE);
                (f.label(), v.to_string())
            })
            .collect()
    }

    /// Assigns each record (by index) its group: the `max_groups - 1` largest groups (ties
    /// by value) keep theirs, past that the rest share the `_other` group. `None` without
    /// `group_by`.
    pub fn assign(&self, records: &[Record]) -> Option<Vec<GroupKey>> {
        if self.group_by.is_empty() {
            return None;
        }
        let keys: Vec<GroupKey> = records.iter().map(|r| self.group_of(r)).collect();
        let mut counts: BTreeMap<&GroupKey, usize> = BTreeMap::new();
        for k in &keys {
            *counts.entry(k).or_default() += 1;
        }
        if counts.len() <= self.max_groups {
            return Some(keys);
        }
        let mut by_size: Vec<(&GroupKey, usize)> = counts.into_iter().collect();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let kept: Vec<GroupKey> = by_size
            .iter()
            .take(self.max_groups.saturating_sub(1))
            .map(|(k, _)| (*k).clone())
            .collect();
        let other: GroupKey = self
            .group_by
            .iter()
            .map(|f| (f.label(), OTHER.to_string()))
            .collect();
        Some(
            keys.into_iter()
                .map(|k| if kept.contains(&k) { k } else { other.clone() })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(model: &str, team: Option<&str>) -> Record {
        let mut r = Record {
            id: format!("{model}-{team:?}"),
            model: Some(model.to_string()),
            ..Record::default()
        };
        if let Some(t) = team {
            r.dimensions.insert("team".into(), t.into());
        }
        r
    }

    #[test]
    fn filters_need_every_condition() {
        let scope = Scope {
            filter: vec![
                (
                    Field::parse("model"),
                    vec!["gpt-4o".into(), "gpt-4o-mini".into()],
                ),
                (Field::parse("dimensions.team"), vec!["blue".into()]),
            ],
            ..Scope::default()
        };
        assert!(scope.admits(&rec("gpt-4o", Some("blue"))));
        assert!(!scope.admits(&rec("gpt-4o", Some("green"))));
        assert!(!scope.admits(&rec("gpt-4o", None)));
        assert!(!scope.admits(&rec("o3", Some("blue"))));
        assert!(Scope::default().admits(&rec("o3", None)));
    }

    #[test]
    fn groups_past_the_cap_are_judged_together() {
        let scope = Scope {
            group_by: vec![Field::parse("team")],
            max_groups: 3,
            ..Scope::default()
        };
        let records: Vec<Record> = [("a", 5), ("b", 4), ("c", 1), ("d", 1)]
            .iter()
            .flat_map(|(t, n)| (0..*n).map(|_| rec("m", Some(t))))
            .collect();
        let keys = scope.assign(&records).unwrap();
        let names: std::collections::BTreeSet<&str> =
            keys.iter().map(|k| k[0].1.as_str()).collect();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["_other", "a", "b"]);
        assert_eq!(keys.iter().filter(|k| k[0].1 == OTHER).count(), 2);
        assert_eq!(Field::parse("API ID").label(), "API_ID");
        assert_eq!(Field::parse("1x").label(), "_1x");
        assert_eq!(Scope::default().assign(&records), None);
        assert_eq!(
            scope.group_of(&rec("m", None)),
            [("team".to_string(), NONE.to_string())]
        );
    }
}

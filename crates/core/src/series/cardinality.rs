//! Bounded label values: every distinct value is a metric series the host keeps for its
//! lifetime, so values that clients control are capped per dimension.
//!
//! A value is reported when it is on the dimension's allow list, or, without a list, while
//! the dimension has seen fewer than `max_values` distinct values; otherwise it becomes
//! `other`. The count of distinct values lives in a [`Registry`]: the filter's registry is
//! the host's shared data, so the cap holds for the whole process and not per worker VM.
//! Values already admitted are remembered locally, so the registry is asked once per value
//! and VM.

use std::collections::HashSet;

use crate::config::{Config, DimensionConfig, OTHER};
use crate::series::labels::{self, UNKNOWN};

/// Where admitted values are counted.
pub trait Registry {
    /// Admits `value` for dimension `label` when it was admitted before or fewer than `cap`
    /// values are admitted so far; `false` folds it into `other`.
    fn admit(&mut self, label: &str, value: &str, cap: usize) -> bool;
}

/// A registry private to one process or VM (tests, the native binary).
#[derive(Debug, Default)]
pub struct LocalRegistry {
    admitted: std::collections::HashMap<String, HashSet<String>>,
}

impl Registry for LocalRegistry {
    fn admit(&mut self, label: &str, value: &str, cap: usize) -> bool {
        let set = self.admitted.entry(label.to_string()).or_default();
        if set.contains(value) {
            return true;
        }
        if set.len() < cap {
            set.insert(value.to_string());
            return true;
        }
        false
    }
}

/// A dimension value after capping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub value: String,
    /// True when the value became `other`.
    pub folded: bool,
}

/// The per-VM face of the cap: a cache of admitted values in front of the registry, and
/// the label combinations (series of each metric) this VM has produced.
pub struct Cardinality {
    known: Vec<HashSet<String>>,
    registry: Box<dyn Registry>,
    /// Hashes of the label combinations admitted so far, at most `max_series`.
    series: HashSet<u64>,
    max_series: usize,
}

impl Cardinality {
    pub fn new(config: &Config, registry: Box<dyn Registry>) -> Self {
        Cardinality {
            known: vec![HashSet::new(); config.dimensions.len()],
            registry,
            series: HashSet::new(),
            max_series: config.max_series,
        }
    }

    /// Bounds the series of every metric as a whole: per-dimension caps multiply (two capped
    /// dimensions of 100 values each make 10,000 combinations). A combination seen before
    /// passes; a new one passes while the VM has fewer than `max_series`; past that, the
    /// capped dimension with the most values becomes `other` (recorded in `folded`), and the
    /// folded combination passes while there are fewer than `max_series` and a quarter;
    /// past that too, folding goes on until the combination is a known one or nothing is
    /// left to fold.
    pub fn admit_series(
        &mut self,
        config: &Config,
        labels: &mut [String],
        folded: &mut Vec<usize>,
    ) {
        let mut key = series_key(labels);
        if self.series.contains(&key) {
            return;
        }
        if self.series.len() >= self.max_series {
            loop {
                let widest = config
                    .dimensions
                    .iter()
                    .enumerate()
                    .filter(|(i, d)| {
                        d.is_capped() && labels.get(*i).is_some_and(|v| v.as_str() != OTHER)
                    })
                    .max_by_key(|(i, _)| self.known.get(*i).map_or(0, HashSet::len));
                let Some((i, _)) = widest else {
                    // Only bounded values left (literals, built-ins with few values): this
                    // combination is one of a bounded set.
                    break;
                };
                if let Some(v) = labels.get_mut(i) {
                    *v = OTHER.to_string();
                }
                if !folded.contains(&i) {
                    folded.push(i);
                }
                key = series_key(labels);
                if self.series.contains(&key) {
                    return;
                }
                // Folded combinations have room of their own (a quarter more), so that the
                // other dimensions keep their values as long as they can.
                if self.series.len() < self.max_series + self.max_series.div_ceil(4) {
                    break;
                }
            }
        }
        self.series.insert(key);
    }

    /// The label value for dimension `index` given the raw value its source produced.
    pub fn admit(&mut self, index: usize, d: &DimensionConfig, raw: Option<String>) -> Admitted {
        let keep = |value: String| Admitted {
            value,
            folded: false,
        };
        let Some(raw) = raw else {
            return keep(UNKNOWN.to_string());
        };
        if !d.is_capped() {
            return keep(labels::sanitize_value(&raw));
        }
        let value = if d.hash {
            crate::series::dimensions::subscription_id(&raw)
        } else {
            labels::sanitize_value(&raw)
        };
        if let Some(allow) = &d.allow {
            if allow.contains(&value) {
                return keep(value);
            }
            return Admitted {
                value: OTHER.to_string(),
                folded: true,
            };
        }
        if value == UNKNOWN {
            return keep(value);
        }
        let Some(known) = self.known.get_mut(index) else {
            return keep(value);
        };
        if known.contains(&value) {
            return keep(value);
        }
        if self
            .registry
            .admit(&d.dimension.label, &value, d.max_values)
        {
            // The local cache is bounded by the cap: only admitted values enter it.
            known.insert(value.clone());
            keep(value)
        } else {
            Admitted {
                value: OTHER.to_string(),
                folded: true,
            }
        }
    }
}

fn series_key(labels: &[String]) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same combination hashes alike for the VM's lifetime.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dim: &str) -> Config {
        Config::parse(format!(r#"{{"dimensions":[{dim}]}}"#).as_bytes()).unwrap()
    }

    #[test]
    fn values_past_the_cap_become_other() {
        let c = config(r#"{"name":"user","value":"{request.header.x-user}","max_values":3}"#);
        let mut card = Cardinality::new(&c, Box::new(LocalRegistry::default()));
        let d = &c.dimensions[0];
        let mut values = Vec::new();
        for i in 0..10_000 {
            values.push(card.admit(0, d, Some(format!("user-{}", i % 50))).value);
        }
        let distinct: HashSet<_> = values.iter().collect();
        assert_eq!(distinct.len(), 4, "{distinct:?}");
        assert!(distinct.contains(&"other".to_string()));
        assert_eq!(card.admit(0, d, Some("user-1".into())).value, "user-1");
        assert_eq!(
            card.admit(0, d, Some("user-4".into())),
            Admitted {
                value: "other".into(),
                folded: true
            }
        );
        assert_eq!(card.admit(0, d, None).value, "unknown");
    }

    #[test]
    fn series_are_bounded_as_a_whole_not_only_per_dimension() {
        let c = Config::parse(
            br#"{"max_series": 50, "dimensions":[
              {"name":"user","value":"{request.header.x-user}"},
              {"name":"team","value":"{request.header.x-team}","max_values":20},
              {"name":"env","value":"prod"}]}"#,
        )
        .unwrap();
        let mut card = Cardinality::new(&c, Box::new(LocalRegistry::default()));
        let mut seen = HashSet::new();
        let mut folds = 0;
        for u in 0..100 {
            for t in 0..30 {
                let mut labels: Vec<String> = [format!("u{u}"), format!("t{t}"), "prod".into()]
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| card.admit(i, &c.dimensions[i], Some(v)).value)
                    .collect();
                let mut folded = Vec::new();
                card.admit_series(&c, &mut labels, &mut folded);
                folds += folded.len();
                seen.insert(labels);
            }
        }
        // 50 combinations, 13 more with the widest dimension (`team`, 20 values seen by
        // then, against 2 users) folded, then `user` too; the literal is never folded.
        assert!(seen.len() <= 50 + 13 + 1, "{}", seen.len());
        assert!(seen.iter().any(|l| l[1] == "other" && l[0] != "other"));
        assert!(folds > 0);
        assert!(seen.iter().all(|l| l[2] == "prod"));
        assert!(seen.contains(&vec!["other".to_string(), "other".into(), "prod".into()]));
        // A combination admitted early keeps its values.
        let mut first = vec!["u0".to_string(), "t0".into(), "prod".into()];
        let mut folded = Vec::new();
        card.admit_series(&c, &mut first, &mut folded);
        assert_eq!(first[0], "u0");
        assert!(folded.is_empty());
    }

    #[test]
    fn allow_list_and_hash() {
        let c = config(
            r#"{"name":"tier","value":"{request.header.x-tier}","allow":["gold","silver"]}"#,
        );
        let mut card = Cardinality::new(&c, Box::new(LocalRegistry::default()));
        let d = &c.dimensions[0];
        assert_eq!(card.admit(0, d, Some("gold".into())).value, "gold");
        assert!(card.admit(0, d, Some("bronze".into())).folded);

        let c = config(r#"{"name":"user","value":"{request.header.x-user}","hash":true}"#);
        let mut card = Cardinality::new(&c, Box::new(LocalRegistry::default()));
        let v = card
            .admit(0, &c.dimensions[0], Some("alice@example.com".into()))
            .value;
        assert_eq!(v.len(), 12);
        assert!(!v.contains("alice"));
    }

    #[test]
    fn literals_and_bounded_builtins_are_not_capped() {
        let c = config(r#"{"name":"env","value":"prod","max_values":1}"#);
        let mut card = Cardinality::new(&c, Box::new(LocalRegistry::default()));
        assert_eq!(
            card.admit(0, &c.dimensions[0], Some("prod".into())).value,
            "prod"
        );
        assert_eq!(
            card.admit(0, &c.dimensions[0], Some("prod".into())).value,
            "prod"
        );
    }
}

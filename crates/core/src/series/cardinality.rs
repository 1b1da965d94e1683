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

/// The per-VM face of the cap: a cache of admitted values in front of the registry.
pub struct Cardinality {
    known: Vec<HashSet<String>>,
    registry: Box<dyn Registry>,
}

impl Cardinality {
    pub fn new(config: &Config, registry: Box<dyn Registry>) -> Self {
        Cardinality {
            known: vec![HashSet::new(); config.dimensions.len()],
            registry,
        }
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

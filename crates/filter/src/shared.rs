//! The cardinality registry in the host's shared data, so that a dimension's cap holds for
//! the whole process rather than per worker VM.
//!
//! Per dimension, one counter entry holds how many values were admitted and one entry per
//! admitted value records it. A new value is admitted by bumping the counter with
//! compare-and-swap, so concurrent workers never admit more than the cap between them
//! (a race can spend a slot twice on the same value, which only errs on the safe side).

use super::host::{self, SetShared};
use tokenmeter_core::series::cardinality::Registry;

pub struct SharedRegistry {
    prefix: String,
}

/// Attempts at a compare-and-swap before giving up on a value (it is then folded).
const ATTEMPTS: usize = 16;

impl SharedRegistry {
    pub fn new(namespace: &str) -> Self {
        SharedRegistry {
            prefix: format!("tokenmeter/{namespace}/"),
        }
    }

    fn count_key(&self, label: &str) -> String {
        format!("{}{label}/count", self.prefix)
    }

    fn value_key(&self, label: &str, value: &str) -> String {
        format!("{}{label}/v/{value}", self.prefix)
    }
}

fn decode(bytes: &[u8]) -> usize {
    <[u8; 8]>::try_from(bytes).map_or(0, |b| u64::from_le_bytes(b) as usize)
}

impl Registry for SharedRegistry {
    fn admit(&mut self, label: &str, value: &str, cap: usize) -> bool {
        let value_key = self.value_key(label, value);
        if host::shared_data(&value_key).is_some() {
            return true;
        }
        let count_key = self.count_key(label);
        for _ in 0..ATTEMPTS {
            let (count, cas) = match host::shared_data(&count_key) {
                Some((bytes, cas)) => (decode(&bytes), cas),
                None => {
                    // First value of this dimension in the process: create the counter.
                    // Racing creators all write 0, after which CAS applies.
                    if host::set_shared_data(&count_key, &0u64.to_le_bytes(), 0)
                        == SetShared::Failed
                    {
                        return false;
                    }
                    continue;
                }
            };
            if count >= cap {
                return false;
            }
            match host::set_shared_data(&count_key, &(count as u64 + 1).to_le_bytes(), cas) {
                SetShared::Done => {
                    host::set_shared_data(&value_key, b"1", 0);
                    return true;
                }
                SetShared::Conflict => continue,
                SetShared::Failed => return false,
            }
        }
        false
    }
}

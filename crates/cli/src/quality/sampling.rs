//! Deterministic sampling: whether a record is evaluated depends only on its id, the
//! monitor's seed and the rate, so every run on every machine picks the same records.
//!
//! With seed 0 (the default) the draw is the gateway filter's own: the first 8 bytes of
//! SHA-256 of the id as a fraction of 2^64 (`tokenmeter_core::records::collect::draw`).
//! The filter kept the records whose draw is under its `collect.sample_rate`; the monitor
//! takes those whose draw is under its `sampling_rate`. Both rates are therefore shares of
//! all traffic and the monitor judges `min(sampling_rate, collect.sample_rate)` of it: a
//! filter at 10 % and a monitor at 10 % judge 10 %, not 1 %.
//!
//! Any other seed draws a sample independent of the filter's (for a second, disjoint
//! look): the first 8 bytes of SHA-256(`"{seed}:{id}"`), top 53 bits over 2^53. Its share
//! of traffic is then the product of the two rates. Reports say which, with the figure.
//! SHA-256 is fixed and documented, unlike a process-randomised hasher, and spreads even
//! sequential ids uniformly.

use sha2::{Digest, Sha256};
use tokenmeter_core::records::collect;

/// The record's draw in [0, 1).
pub fn draw(id: &str, seed: u64) -> f64 {
    if seed == 0 {
        return collect::draw(id);
    }
    let digest = Sha256::digest(format!("{seed}:{id}").as_bytes());
    let mut first = [0u8; 8];
    for (dst, src) in first.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    (u64::from_be_bytes(first) >> 11) as f64 / 9_007_199_254_740_992.0
}

/// Whether the record is in the sample at `rate` (0 < rate ≤ 1).
pub fn is_sampled(id: &str, seed: u64, rate: f64) -> bool {
    rate >= 1.0 || draw(id, seed) < rate
}

/// The share of all traffic a monitor judges, from its rate and seed and the rate the
/// gateway collected at (`None`: unknown, taken as every request).
pub fn share_of_traffic(rate: f64, seed: u64, collected: Option<f64>) -> f64 {
    let collected = collected.unwrap_or(1.0);
    if seed == 0 {
        rate.min(collected)
    } else {
        rate * collected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_same_draw() {
        assert_eq!(draw("req-1", 0), draw("req-1", 0));
        assert_ne!(draw("req-1", 0), draw("req-1", 1));
        assert_ne!(draw("req-1", 0), draw("req-2", 0));
    }

    #[test]
    fn draw_is_the_documented_hash() {
        // A change of hash or input format would silently change every monitor's sample,
        // so pin both: seed 0 is the filter's draw, SHA-256(id) over 2^64 ...
        let digest = Sha256::digest(b"req-1");
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        assert_eq!(
            draw("req-1", 0),
            u64::from_be_bytes(first) as f64 / 2f64.powi(64)
        );
        // ... other seeds SHA-256("{seed}:{id}"), top 53 bits over 2^53.
        let digest = Sha256::digest(b"7:req-1");
        first.copy_from_slice(&digest[..8]);
        let expected = (u64::from_be_bytes(first) >> 11) as f64 / 2f64.powi(53);
        assert_eq!(draw("req-1", 7), expected);
        assert!((0.0..1.0).contains(&expected));
    }

    #[test]
    fn with_seed_0_the_monitor_sample_nests_in_the_gateway_sample() {
        // Finding 6: the filter's 10 % and the monitor's 10 % used independent hashes, so
        // 1 % of traffic was judged. With the same draw, the monitor keeps every record the
        // filter kept at its rate, and 10 % of traffic is judged.
        let traffic: Vec<String> = (0..20_000).map(|i| format!("req-{i}")).collect();
        let collected: Vec<&String> = traffic
            .iter()
            .filter(|id| collect::sampled(id, 0.1))
            .collect();
        let judged = collected.iter().filter(|id| is_sampled(id, 0, 0.1)).count();
        assert_eq!(judged, collected.len());
        assert!((1_850..=2_150).contains(&judged), "{judged}");
        // A lower monitor rate is a share of all traffic too: 5 % of it, half the sample.
        let half = collected
            .iter()
            .filter(|id| is_sampled(id, 0, 0.05))
            .count();
        assert!((850..=1_150).contains(&half), "{half}");
        // Another seed draws independently: 10 % of the 10 %.
        let apart = collected.iter().filter(|id| is_sampled(id, 3, 0.1)).count();
        assert!((150..=250).contains(&apart), "{apart}");
        assert_eq!(share_of_traffic(0.1, 0, Some(0.1)), 0.1);
        assert_eq!(share_of_traffic(0.05, 0, Some(0.1)), 0.05);
        assert_eq!(share_of_traffic(0.5, 0, Some(0.1)), 0.1);
        assert!((share_of_traffic(0.1, 3, Some(0.1)) - 0.01).abs() < 1e-12);
        assert_eq!(share_of_traffic(0.2, 0, None), 0.2);
    }

    #[test]
    fn rate_is_respected_over_many_ids() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("req-{i}")).collect();
        for (rate, low, high) in [(0.1, 1_850, 2_150), (0.5, 9_700, 10_300)] {
            let n = ids.iter().filter(|id| is_sampled(id, 0, rate)).count();
            assert!((low..=high).contains(&n), "rate {rate}: {n} of 20000");
        }
        assert_eq!(
            ids.iter().filter(|id| is_sampled(id, 7, 1.0)).count(),
            20_000
        );
    }

    #[test]
    fn samples_nest_as_the_rate_grows() {
        // A record in the 10% sample is also in the 50% sample with the same seed.
        for i in 0..2_000 {
            let id = format!("r{i}");
            if is_sampled(&id, 3, 0.1) {
                assert!(is_sampled(&id, 3, 0.5));
            }
        }
    }
}

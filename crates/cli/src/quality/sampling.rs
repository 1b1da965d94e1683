//! Deterministic sampling: whether a record is evaluated depends only on its id, the
//! monitor's seed and the rate, so every run on every machine picks the same records.
//!
//! The draw is the first 8 bytes of SHA-256(`"{seed}:{id}"`) read as a big-endian
//! integer, whose top 53 bits divided by 2^53 give a number in [0, 1) exactly
//! representable as an f64; the record is in the sample when that number is below the
//! rate. SHA-256 is fixed and documented, unlike a
//! process-randomised hasher, and spreads even sequential ids uniformly.

use sha2::{Digest, Sha256};

/// The record's draw in [0, 1).
pub fn draw(id: &str, seed: u64) -> f64 {
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
        // SHA-256("0:req-1") starts with these 8 bytes; a change of hash or input format
        // would silently change every monitor's sample, so pin it.
        let digest = Sha256::digest(b"0:req-1");
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let expected = (u64::from_be_bytes(first) >> 11) as f64 / 2f64.powi(53);
        assert_eq!(draw("req-1", 0), expected);
        assert!((0.0..1.0).contains(&expected));
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

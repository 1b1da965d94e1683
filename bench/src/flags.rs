//! Command-line flags of the bench runners: every flag takes one value (`--rounds 5`).
//!
//! Three small runners share this instead of a parser crate: their flags are few, all of
//! the same form, and the runner must stay quick to build (see `Cargo.toml`).

use anyhow::{Context as _, Result};

/// `(flag, value)` pairs of the process's arguments; a flag without a value is an error
/// that shows `usage`.
pub fn pairs(usage: &'static str) -> impl Iterator<Item = Result<(String, String)>> {
    let mut it = std::env::args().skip(1);
    std::iter::from_fn(move || {
        let flag = it.next()?;
        Some(match it.next() {
            Some(value) => Ok((flag, value)),
            None => Err(anyhow::anyhow!("{flag} needs a value\n{usage}")),
        })
    })
}

/// A flag's value as a positive number.
pub fn positive(flag: &str, value: &str) -> Result<f64> {
    value
        .parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0)
        .with_context(|| format!("{flag}: {value:?} is not a positive number"))
}

/// A flag's value as a yes/no answer.
pub fn yes(value: &str) -> bool {
    matches!(value, "yes" | "true" | "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_must_be_positive() {
        assert_eq!(positive("--rounds", "3").ok(), Some(3.0));
        assert_eq!(positive("--seconds", "0.5").ok(), Some(0.5));
        for bad in ["0", "-1", "x", "", "NaN"] {
            let e = positive("--rounds", bad).err().map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.starts_with("--rounds:")), "{bad:?}");
        }
        assert!(yes("yes") && yes("1") && !yes("no") && !yes(""));
    }
}

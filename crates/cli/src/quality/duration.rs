//! ISO 8601 durations (`P7D`, `PT12H`, `P1W`) and the evaluation window they define.
//!
//! Only exact units are accepted (weeks, days, hours, minutes, seconds): a month or a year
//! has no fixed length, and a window that changed size with the calendar would make two
//! runs of the same monitor incomparable.

use chrono::{DateTime, TimeDelta, Utc};

/// A duration that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an ISO 8601 duration like P7D, PT12H or P1DT6H: {problem}")]
pub struct DurationError {
    pub text: String,
    pub problem: String,
}

/// A non-negative duration in whole seconds, keeping the text it was written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoDuration {
    seconds: i64,
    text: String,
}

impl IsoDuration {
    /// Parses `PnW`, `PnD`, `PTnHnMnS` and their combinations (`P1DT12H`).
    pub fn parse(text: &str) -> Result<IsoDuration, DurationError> {
        let fail = |problem: &str| DurationError {
            text: text.to_string(),
            problem: problem.to_string(),
        };
        let upper = text.trim().to_ascii_uppercase();
        let Some(body) = upper.strip_prefix('P') else {
            return Err(fail("it must start with P"));
        };
        if body.is_empty() {
            return Err(fail("it has no amount"));
        }
        let mut seconds: i64 = 0;
        let mut in_time = false;
        let mut number = String::new();
        let mut units = 0;
        let mut time_units = 0;
        for c in body.chars() {
            match c {
                '0'..='9' => number.push(c),
                'T' if !in_time && number.is_empty() => in_time = true,
                _ => {
                    if number.is_empty() {
                        return Err(fail("each unit needs a whole number before it"));
                    }
                    let unit: i64 = match (in_time, c) {
                        (false, 'W') => 7 * 86_400,
                        (false, 'D') => 86_400,
                        (true, 'H') => 3_600,
                        (true, 'M') => 60,
                        (true, 'S') => 1,
                        (false, 'Y') | (false, 'M') => {
                            return Err(fail(
                                "years and months have no fixed length; use days, e.g. P30D",
                            ))
                        }
                        _ => return Err(fail(&format!("unexpected {c:?}"))),
                    };
                    let n: i64 = number
                        .parse()
                        .map_err(|_| fail("the number is too large"))?;
                    seconds = n
                        .checked_mul(unit)
                        .and_then(|s| seconds.checked_add(s))
                        .ok_or_else(|| fail("the duration is too large"))?;
                    number.clear();
                    units += 1;
                    if in_time {
                        time_units += 1;
                    }
                }
            }
        }
        if !number.is_empty() {
            return Err(fail("a number has no unit after it"));
        }
        if units == 0 {
            return Err(fail("it has no amount"));
        }
        if in_time && time_units == 0 {
            return Err(fail("T must be followed by hours, minutes or seconds"));
        }
        // Keep every window computable as a time: 100 years is far beyond any use.
        if seconds > 100 * 366 * 86_400 {
            return Err(fail("the duration is too large"));
        }
        Ok(IsoDuration {
            seconds,
            text: text.trim().to_string(),
        })
    }

    pub fn seconds(&self) -> i64 {
        self.seconds
    }

    pub fn as_delta(&self) -> TimeDelta {
        TimeDelta::seconds(self.seconds)
    }

    /// The text the duration was written as.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A half-open time range `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Window {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to
    }
}

/// A window's definition: `size` long, ending `offset` before the evaluation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub size: IsoDuration,
    pub offset: IsoDuration,
}

impl WindowSpec {
    /// The window an evaluation at `now` covers: `[now - offset - size, now - offset)`.
    pub fn at(&self, now: DateTime<Utc>) -> Window {
        let to = now - self.offset.as_delta();
        Window {
            from: to - self.size.as_delta(),
            to,
        }
    }
}

/// Parses an RFC 3339 time and returns it in UTC.
pub fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Formats a time as RFC 3339 in UTC (`Z`), with sub-second digits only when present.
pub fn format_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> i64 {
        IsoDuration::parse(text).unwrap().seconds()
    }

    #[test]
    fn parses_exact_units() {
        assert_eq!(secs("P7D"), 7 * 86_400);
        assert_eq!(secs("P0D"), 0);
        assert_eq!(secs("P1W"), 7 * 86_400);
        assert_eq!(secs("PT12H"), 12 * 3_600);
        assert_eq!(secs("PT90M"), 5_400);
        assert_eq!(secs("PT30S"), 30);
        assert_eq!(secs("P1DT6H30M15S"), 86_400 + 6 * 3_600 + 30 * 60 + 15);
        assert_eq!(secs("p2d"), 2 * 86_400);
        assert_eq!(IsoDuration::parse(" P7D ").unwrap().as_str(), "P7D");
    }

    #[test]
    fn refuses_malformed_and_calendar_units() {
        for bad in [
            "", "7D", "P", "PT", "P7", "PD", "P1M", "P1Y", "PT1D", "P1H", "P-1D", "P1.5D", "P7DT",
            "P1DX",
        ] {
            assert!(IsoDuration::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = IsoDuration::parse("P1M").unwrap_err();
        assert!(e.to_string().contains("use days"), "{e}");
        assert!(IsoDuration::parse("P99999999999999999999D").is_err());
        assert!(IsoDuration::parse("P100000D").is_err());
    }

    #[test]
    fn window_ends_offset_before_now() {
        let now = parse_rfc3339("2026-11-26T10:15:00Z").unwrap();
        let spec = WindowSpec {
            size: IsoDuration::parse("P7D").unwrap(),
            offset: IsoDuration::parse("P1D").unwrap(),
        };
        let w = spec.at(now);
        assert_eq!(format_rfc3339(w.from), "2026-11-18T10:15:00Z");
        assert_eq!(format_rfc3339(w.to), "2026-11-25T10:15:00Z");
        assert!(w.contains(w.from));
        assert!(!w.contains(w.to));
    }

    #[test]
    fn rfc3339_is_normalised_to_utc() {
        let t = parse_rfc3339("2026-11-26T12:00:00+02:00").unwrap();
        assert_eq!(format_rfc3339(t), "2026-11-26T10:00:00Z");
        let t = parse_rfc3339("2026-11-26T10:00:00.250Z").unwrap();
        assert_eq!(format_rfc3339(t), "2026-11-26T10:00:00.250Z");
        assert!(parse_rfc3339("2026-11-26 10:00").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
    }
}

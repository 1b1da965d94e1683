//! Label names and values, and how both travel inside a proxy-wasm metric name.
//!
//! proxy-wasm metrics have no labels, so each series is its own metric whose name carries
//! its labels in the Istio form `base.label=.=value;.;label=.=value;.;`. The host turns
//! them back into labels with one regex per label, `(label=\.=(.*?);\.;)`
//! (Envoy `stats_tags`, Istio `extraStatTags`, Kong `label_patterns`).
//!
//! Values are sanitised so that they can never end a label early or forge another one:
//! only ASCII letters, digits and `-_.:/@+ ` are kept, every other character becomes `_`,
//! and values are cut to [`MAX_VALUE_CHARS`]. So `;` and `=` (the delimiters), quotes,
//! backslashes, control characters and non-ASCII text never reach the name. Envoy drops the
//! dots that end a tag value (`a.` would merge with `a`, `.` and `..` would be empty), so
//! trailing dots become `_` too.

/// Longest label value kept, in characters.
pub const MAX_VALUE_CHARS: usize = 64;

/// The value of a label whose source had nothing to offer and no default.
pub const UNKNOWN: &str = "unknown";

/// Labels some metrics carry besides the dimensions (the host needs a rule for each).
pub const FIXED_LABELS: &[&str] = &[
    "status_class",
    "error_type",
    "dimension",
    "gen_ai_token_type",
    "reason",
];

/// Turns a dimension's display name into a label name: lower-cased, every run of characters
/// other than `[a-z0-9]` becomes one `_`, and leading or trailing `_` are dropped
/// (`"API ID"` → `api_id`). `None` when nothing usable is left or it starts with a digit.
pub fn label_name(display: &str) -> Option<String> {
    let mut out = String::with_capacity(display.len());
    let mut gap = false;
    for c in display.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.push(c);
        } else {
            gap = true;
        }
    }
    let first = out.chars().next()?;
    first.is_ascii_lowercase().then_some(out)
}

fn keeps(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@' | '+' | ' ')
}

/// Whether `value` is already what [`sanitize_value`] would make of it.
pub fn is_clean_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_CHARS
        && !value.ends_with('.')
        && value.chars().all(keeps)
}

/// Makes a label value safe to embed in a metric name (see the module docs).
pub fn sanitize_value(raw: &str) -> String {
    if is_clean_value(raw) {
        return raw.to_string();
    }
    let mut out: String = raw
        .chars()
        .take(MAX_VALUE_CHARS)
        .map(|c| if keeps(c) { c } else { '_' })
        .collect();
    let kept = out.trim_end_matches('.').len();
    let dots = out.len() - kept;
    out.truncate(kept);
    out.extend(std::iter::repeat_n('_', dots));
    if out.is_empty() {
        UNKNOWN.to_string()
    } else {
        out
    }
}

/// The shortest a value becomes when a metric-name cap shortens it: `~` and a hash.
pub const SHORTENED_MIN_BYTES: usize = 1 + HASH_DIGITS;
const HASH_DIGITS: usize = 10;

/// Shortens a sanitised `value` to `len` bytes (at least [`SHORTENED_MIN_BYTES`]): its
/// first `len - 11` bytes, `~`, and ten hex digits of a hash of the whole value (FNV-1a,
/// 40 of its 64 bits). Two values that share the kept start differ in the hash (unless
/// they collide in 40 bits: about one chance in 10^12 for two given values; FNV is not made
/// to resist values chosen to collide), and no sanitised value contains `~`, so a shortened
/// value never equals a reported one.
pub fn shorten_value(value: &str, len: usize) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let keep = len.saturating_sub(SHORTENED_MIN_BYTES).min(value.len());
    // Sanitised values are ASCII, so any byte index is a character boundary.
    let mut out = String::with_capacity(keep + SHORTENED_MIN_BYTES);
    out.push_str(value.get(..keep).unwrap_or(""));
    out.push('~');
    let digits = format!("{:010x}", hash >> 24);
    out.push_str(&digits);
    out
}

/// Appends `.label=.=value;.;label=.=value;.;` for the pairs (nothing when there are none);
/// values must already be sanitised.
pub fn encode_labels<'a>(out: &mut String, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        if i == 0 {
            out.push('.');
        }
        // Pushed piece by piece: cheaper than `write!`, and this runs on every request.
        out.push_str(name);
        out.push_str("=.=");
        out.push_str(value);
        out.push_str(";.;");
    }
}

/// The host-side regex that extracts `label` from names built by [`encode_labels`].
pub fn extraction_regex(label: &str) -> String {
    format!(r"({label}=\.=(.*?);\.;)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortened_values_keep_their_start_and_differ_by_a_hash() {
        let a = "a".repeat(40) + "1";
        let b = "a".repeat(40) + "2";
        let (sa, sb) = (shorten_value(&a, 20), shorten_value(&b, 20));
        assert_eq!(sa.len(), 20);
        assert!(sa.starts_with("aaaaaaaaa~"), "{sa}");
        assert_ne!(sa, sb);
        assert_eq!(
            sa,
            shorten_value(&a, 20),
            "the same value shortens alike in every VM"
        );
        assert_eq!(shorten_value(&a, 3).len(), SHORTENED_MIN_BYTES);
        assert!(
            !is_clean_value(&sa),
            "no reported value can look like a shortened one"
        );
    }

    #[test]
    fn label_names_are_normalised() {
        assert_eq!(label_name("API ID").as_deref(), Some("api_id"));
        assert_eq!(label_name("model").as_deref(), Some("model"));
        assert_eq!(label_name("  Team--Name  ").as_deref(), Some("team_name"));
        assert_eq!(label_name("x.y/z").as_deref(), Some("x_y_z"));
        assert_eq!(label_name("Ünit 2").as_deref(), Some("nit_2"));
        assert_eq!(label_name("9lives"), None);
        assert_eq!(label_name("__"), None);
        assert_eq!(label_name(""), None);
    }

    #[test]
    fn values_cannot_break_or_forge_labels() {
        assert_eq!(sanitize_value("gpt-4o-2024-08-06"), "gpt-4o-2024-08-06");
        assert_eq!(sanitize_value("my api/v1.2"), "my api/v1.2");
        assert_eq!(sanitize_value("a;.;team=.=admin"), "a_._team_._admin");
        assert_eq!(
            sanitize_value("quote\"back\\slash\nnl"),
            "quote_back_slash_nl"
        );
        assert_eq!(sanitize_value("café"), "caf_");
        assert_eq!(sanitize_value(""), "unknown");
        assert_eq!(sanitize_value(&"x".repeat(100)).len(), MAX_VALUE_CHARS);
        // Trailing dots, which Envoy drops from tag values.
        assert_eq!(sanitize_value("."), "_");
        assert_eq!(sanitize_value(".."), "__");
        assert_eq!(sanitize_value("a."), "a_");
        assert_eq!(sanitize_value("a.b"), "a.b");
        assert_eq!(sanitize_value(".a"), ".a");
        assert_eq!(sanitize_value("v1.2.3"), "v1.2.3");
        for v in ["a;.;b", "=.=", ";", "="] {
            let s = sanitize_value(v);
            assert!(!s.contains(';') && !s.contains('='), "{v} -> {s}");
        }
    }

    #[test]
    fn encoding_matches_the_istio_form() {
        let mut name = String::from("llm_prompt_tokens_total");
        encode_labels(&mut name, [("model", "gpt-4"), ("api_id", "my api/v1.2")]);
        assert_eq!(
            name,
            "llm_prompt_tokens_total.model=.=gpt-4;.;api_id=.=my api/v1.2;.;"
        );
    }
}

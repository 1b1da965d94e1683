//! Reading rollup batches sent to the collector (`POST /v1/rollups`): the core's
//! [`Batch`], checked whole before any of it is stored.

use tokenmeter_core::series::rollup::{Batch, Histogram, LATENCY_BOUNDS_MS, TPOT_BOUNDS_MS};

use crate::ingest::MAX_ID_BYTES;

/// Most rows one batch may carry (a VM keeps at most 100,000).
pub const MAX_ROWS: usize = 100_000;

/// A refused batch; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RollupError(String);

/// The largest count a row may hold in any field: far above what one gateway VM adds up
/// in a minute (10^8 tokens per request), far below what would overflow the store's sums.
pub const MAX_COUNT: u64 = 1 << 45;

/// Every count of a row, by field name.
fn counts(row: &tokenmeter_core::series::rollup::Row) -> Vec<(&'static str, u64)> {
    let mut out: Vec<(&'static str, u64)> = Vec::new();
    out.extend(row.requests.iter().map(|v| ("requests", *v)));
    out.extend(row.errors.iter().map(|v| ("errors", *v)));
    out.extend([
        ("prompt_tokens", row.prompt_tokens),
        ("completion_tokens", row.completion_tokens),
        ("total_tokens", row.total_tokens),
        ("cached_tokens", row.cached_tokens),
        ("reasoning_tokens", row.reasoning_tokens),
        ("estimated", row.estimated),
        ("invalid_usage", row.invalid_usage),
    ]);
    for (name, h) in [
        ("duration_ms", &row.duration_ms),
        ("ttft_ms", &row.ttft_ms),
        ("tpot_ms", &row.tpot_ms),
    ] {
        out.extend(h.buckets.iter().map(|v| (name, *v)));
        out.extend([(name, h.sum), (name, h.count)]);
    }
    out
}

/// Parses and checks a batch.
pub fn parse(body: &[u8]) -> Result<Batch, RollupError> {
    let batch: Batch = serde_json::from_slice(body)
        .map_err(|e| RollupError(format!("body: not a rollup batch: {e}")))?;
    if batch.id.is_empty() || batch.id.len() > MAX_ID_BYTES || batch.id.contains('\0') {
        return Err(RollupError(format!(
            "id: must be 1 to {MAX_ID_BYTES} bytes, without NUL"
        )));
    }
    // Label names as Prometheus has them, each once: an empty name would read as the
    // marginals' total of all series.
    let mut seen = std::collections::HashSet::new();
    for (i, label) in batch.labels.iter().enumerate() {
        let mut chars = label.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || !seen.insert(label.as_str()) {
            return Err(RollupError(format!(
                "labels[{i}]: {label:?} is not a label name (letters, digits and _, not first a digit) used once"
            )));
        }
    }
    if batch.rows.len() > MAX_ROWS {
        return Err(RollupError(format!(
            "rows: {} rows; at most {MAX_ROWS} per batch",
            batch.rows.len()
        )));
    }
    let histogram = |h: &Histogram, bounds: &[u64], field: &str, i: usize| {
        let total = h.buckets.iter().try_fold(0u64, |a, b| a.checked_add(*b));
        if h.buckets.len() != bounds.len() + 1 || total != Some(h.count) {
            return Err(RollupError(format!(
                "rows[{i}].{field}: {} buckets adding up to the count expected",
                bounds.len() + 1
            )));
        }
        Ok(())
    };
    for (i, row) in batch.rows.iter().enumerate() {
        if row.values.len() != batch.labels.len() {
            return Err(RollupError(format!(
                "rows[{i}].values: {} values for {} labels",
                row.values.len(),
                batch.labels.len()
            )));
        }
        if row.minute % 60 != 0 {
            return Err(RollupError(format!(
                "rows[{i}].minute: {} is not the start of a minute",
                row.minute
            )));
        }
        if let Some((field, v)) = counts(row).into_iter().find(|(_, v)| *v > MAX_COUNT) {
            return Err(RollupError(format!(
                "rows[{i}].{field}: {v} is more than a gateway counts in a minute (at most {MAX_COUNT})"
            )));
        }
        if let Some(v) = row.values.iter().find(|v| v.contains('\0')) {
            return Err(RollupError(format!(
                "rows[{i}].values: {v:?} holds a NUL character"
            )));
        }
        histogram(&row.duration_ms, &LATENCY_BOUNDS_MS, "duration_ms", i)?;
        histogram(&row.ttft_ms, &LATENCY_BOUNDS_MS, "ttft_ms", i)?;
        histogram(&row.tpot_ms, &TPOT_BOUNDS_MS, "tpot_ms", i)?;
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenmeter_core::exchange::settlement::Settlement;
    use tokenmeter_core::series::rollup::Rollups;

    fn batch() -> Batch {
        let mut r = Rollups::new("vm".into(), vec!["team".into()], 10, 10);
        let s = Settlement {
            labels: vec!["red".into()],
            status: Some(200),
            duration_ms: 10,
            ..Settlement::default()
        };
        r.record(120_000, &s);
        r.seal();
        r.next().cloned().unwrap()
    }

    #[test]
    fn label_names_must_be_names_and_used_once() {
        for labels in [vec![""], vec!["team", "team"], vec!["9lives"], vec!["a-b"]] {
            let mut b = batch();
            b.labels = labels.iter().map(|l| l.to_string()).collect();
            for r in &mut b.rows {
                r.values = labels.iter().map(|_| "x".to_string()).collect();
            }
            let err = parse(&serde_json::to_vec(&b).unwrap()).unwrap_err();
            assert!(err.0.starts_with("labels["), "{labels:?}: {err}");
        }
    }

    #[test]
    fn batches_round_trip_and_bad_ones_name_their_field() {
        let good = batch();
        assert_eq!(parse(good.to_json().as_bytes()).unwrap(), good);
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["rows"][0]["values"] = serde_json::json!([]);
        let e = parse(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("rows[0].values"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["rows"][0]["minute"] = 61.into();
        let e = parse(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("rows[0].minute"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["rows"][0]["duration_ms"]["count"] = 5.into();
        let e = parse(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("rows[0].duration_ms"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["id"] = "".into();
        assert!(parse(v.to_string().as_bytes())
            .unwrap_err()
            .to_string()
            .starts_with("id"));
        assert!(parse(b"[]").unwrap_err().to_string().starts_with("body"));
    }

    #[test]
    fn absurd_counts_and_nul_characters_are_refused() {
        let good = batch();
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["rows"][0]["requests"][0] = serde_json::json!(u64::MAX);
        let e = parse(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(
            e.starts_with("rows[0].requests: 18446744073709551615 is more than"),
            "{e}"
        );
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["rows"][0]["duration_ms"]["sum"] = serde_json::json!(MAX_COUNT + 1);
        let e = parse(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("rows[0].duration_ms"), "{e}");
        // Buckets whose sum would overflow: refused, not a panic.
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["rows"][0]["ttft_ms"]["buckets"][0] = serde_json::json!(u64::MAX);
        v["rows"][0]["ttft_ms"]["buckets"][1] = serde_json::json!(u64::MAX);
        assert!(parse(v.to_string().as_bytes()).is_err());
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["rows"][0]["values"][0] = "re\u{0}d".into();
        let e = parse(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.contains("NUL"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
        v["id"] = "vm\u{0}-1".into();
        assert!(parse(v.to_string().as_bytes())
            .unwrap_err()
            .to_string()
            .starts_with("id"));
    }
}

//! A header map as proxy-wasm hosts hand it over whole (`proxy_get_header_map_pairs`).
//!
//! Reading a map in one call matters for cost: in Envoy's V8 every value the host returns is
//! written into the VM after a call back into the guest's allocator, and that re-entry costs
//! several times a plain host call (see `BENCHMARKS.md`). One map read replaces one such
//! round trip per header looked up.
//!
//! Wire format (proxy-wasm ABI): a little-endian `u32` count of pairs, then per pair the
//! `u32` lengths of name and value, then per pair the name, a NUL, the value and a NUL.
//! The SDK's own decoder panics on malformed input; this one refuses it.

/// The pairs of one header map, parsed once, looked up by name.
pub struct HeaderPairs {
    bytes: Vec<u8>,
    /// Per pair, (name start, name end, value start, value end) in `bytes`.
    spans: Vec<(usize, usize, usize, usize)>,
}

impl HeaderPairs {
    /// Parses the host's serialisation; `None` when it is malformed.
    pub fn parse(bytes: Vec<u8>) -> Option<HeaderPairs> {
        let word = |at: usize| -> Option<usize> {
            let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
            Some(u32::from_le_bytes(b) as usize)
        };
        let count = word(0)?;
        // Each pair takes at least 10 bytes (two lengths, two NULs): a count the buffer
        // cannot hold is refused before anything is allocated for it.
        if count > bytes.len() / 10 {
            return None;
        }
        let mut spans = Vec::with_capacity(count);
        let mut data = 4 + count * 8;
        for i in 0..count {
            let name_len = word(4 + i * 8)?;
            let value_len = word(8 + i * 8)?;
            let name_end = data.checked_add(name_len)?;
            let value_start = name_end.checked_add(1)?;
            let value_end = value_start.checked_add(value_len)?;
            if bytes.get(name_end) != Some(&0) || bytes.get(value_end) != Some(&0) {
                return None;
            }
            spans.push((data, name_end, value_start, value_end));
            data = value_end + 1;
        }
        Some(HeaderPairs { bytes, spans })
    }

    /// The first value of header `name` (names compare without regard to case); bytes that
    /// are not UTF-8 are replaced, never fatal.
    pub fn get(&self, name: &str) -> Option<String> {
        self.spans.iter().find_map(|&(ns, ne, vs, ve)| {
            let key = self.bytes.get(ns..ne)?;
            key.eq_ignore_ascii_case(name.as_bytes())
                .then(|| self.bytes.get(vs..ve))
                .flatten()
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn finds_the_first_value_by_name() {
        let h = HeaderPairs::parse(serialize(&[
            (":method", b"POST"),
            (":path", b"/v1/chat/completions"),
            ("x-team", b"a"),
            ("x-team", b"b"),
            ("empty", b""),
        ]))
        .expect("valid");
        assert_eq!(h.len(), 5);
        assert_eq!(h.get(":method").as_deref(), Some("POST"));
        assert_eq!(h.get(":path").as_deref(), Some("/v1/chat/completions"));
        assert_eq!(h.get("X-Team").as_deref(), Some("a"));
        assert_eq!(h.get("empty").as_deref(), Some(""));
        assert_eq!(h.get("absent"), None);
    }

    #[test]
    fn empty_maps_and_odd_bytes_are_fine() {
        let h = HeaderPairs::parse(serialize(&[])).expect("valid");
        assert!(h.is_empty());
        let h = HeaderPairs::parse(serialize(&[("x-bin", &[0xff, b'a'])])).expect("valid");
        assert_eq!(h.get("x-bin").as_deref(), Some("\u{fffd}a"));
    }

    #[test]
    fn malformed_maps_are_refused_at_every_cut() {
        let whole = serialize(&[(":status", b"200"), ("content-type", b"text/event-stream")]);
        for cut in 0..whole.len() {
            assert!(
                HeaderPairs::parse(whole[..cut].to_vec()).is_none(),
                "cut at {cut}"
            );
        }
        let mut bad_nul = whole.clone();
        let at = 4 + 16 + ":status".len();
        bad_nul[at] = b'x';
        assert!(HeaderPairs::parse(bad_nul).is_none());
        let mut huge_count = whole.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderPairs::parse(huge_count).is_none());
        let mut huge_len = whole;
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderPairs::parse(huge_len).is_none());
    }
}

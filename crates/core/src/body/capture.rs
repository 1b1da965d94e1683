//! A bounded copy of a body that passes through the filter.
//!
//! The filter never holds a body back; it copies what it sees. Up to `limit` bytes the copy
//! is whole and parsed exactly. Past it, only the first and last [`EDGE`] bytes are kept:
//! OpenAI-style bodies put `model` near the start and `usage` at the end, so a very large
//! embeddings or chat response is still counted (see [`crate::body::jsonscan`]).

/// Bytes kept from each end of a body that outgrew its limit.
pub const EDGE: usize = 8 * 1024;

#[derive(Debug)]
pub struct Capture {
    limit: usize,
    /// The whole body while it fits; after overflow, the first [`EDGE`] bytes.
    head: Vec<u8>,
    /// After overflow, the most recent bytes (between `EDGE` and `2 * EDGE` of them).
    tail: Vec<u8>,
    total: u64,
    overflowed: bool,
}

/// What a capture holds at the end of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captured<'a> {
    Whole(&'a [u8]),
    Edges { head: &'a [u8], tail: &'a [u8] },
}

impl Capture {
    pub fn new(limit: usize) -> Self {
        Capture {
            limit: limit.max(EDGE),
            head: Vec::new(),
            tail: Vec::new(),
            total: 0,
            overflowed: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.total = self.total.saturating_add(chunk.len() as u64);
        if !self.overflowed {
            if self.head.len() + chunk.len() <= self.limit {
                self.head.extend_from_slice(chunk);
                return;
            }
            self.overflowed = true;
            // The head keeps the body's first EDGE bytes; everything after them feeds the tail.
            self.tail = self.head.split_off(EDGE.min(self.head.len()));
            let (to_head, rest) = chunk.split_at((EDGE - self.head.len()).min(chunk.len()));
            self.head.extend_from_slice(to_head);
            self.head.shrink_to_fit();
            self.push_tail(rest);
            return;
        }
        self.push_tail(chunk);
    }

    fn push_tail(&mut self, chunk: &[u8]) {
        if chunk.len() >= EDGE {
            self.tail.clear();
            self.tail
                .extend_from_slice(chunk.get(chunk.len() - EDGE..).unwrap_or(chunk));
            return;
        }
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 2 * EDGE {
            let excess = self.tail.len() - EDGE;
            self.tail.drain(..excess);
        }
    }

    /// Bytes seen, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn captured(&self) -> Captured<'_> {
        if self.overflowed {
            let cut = self.tail.len().saturating_sub(EDGE);
            Captured::Edges {
                head: &self.head,
                tail: self.tail.get(cut..).unwrap_or_default(),
            }
        } else {
            Captured::Whole(&self.head)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_whole_body_within_limit() {
        let mut c = Capture::new(EDGE * 2);
        c.push(b"{\"a\":");
        c.push(b"1}");
        assert_eq!(c.captured(), Captured::Whole(b"{\"a\":1}"));
        assert_eq!(c.total(), 7);
    }

    #[test]
    fn keeps_edges_past_limit_for_any_split() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for step in [1usize, 7, 4096, 8192, 8193, 30_000, 100_000] {
            let mut c = Capture::new(EDGE * 3);
            for chunk in body.chunks(step) {
                c.push(chunk);
            }
            assert_eq!(c.total(), body.len() as u64);
            match c.captured() {
                Captured::Edges { head, tail } => {
                    assert_eq!(head, &body[..EDGE], "step {step}");
                    assert_eq!(tail, &body[body.len() - EDGE..], "step {step}");
                }
                Captured::Whole(_) => panic!("should have overflowed"),
            }
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut c = Capture::new(EDGE);
        let chunk = vec![b'x'; 1000];
        for _ in 0..10_000 {
            c.push(&chunk);
            assert!(c.head.capacity() + c.tail.capacity() <= 6 * EDGE);
        }
    }
}

//! A bounded copy of a body that passes through the filter.
//!
//! The filter never holds a body back; it copies what it sees. Up to `limit` bytes the copy
//! is whole and parsed exactly. Past it, only the first and last [`EDGE`] bytes are kept:
//! OpenAI-style bodies put `model` near the start and `usage` at the end, so a very large
//! embeddings or chat response is still counted (see [`crate::body::jsonscan`]).

use crate::body::budget::Lease;

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
    /// The VM's memory budget refused even the edges: nothing more is kept.
    blind: bool,
    lease: Lease,
}

/// What a capture holds at the end of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captured<'a> {
    Whole(&'a [u8]),
    Edges { head: &'a [u8], tail: &'a [u8] },
}

impl Capture {
    /// A capture outside any memory budget (tools and tests).
    pub fn new(limit: usize) -> Self {
        Capture::within(limit, Lease::unlimited())
    }

    /// A capture whose buffers grow only as far as `lease` allows: past it, the copy keeps
    /// the body's edges, and when even those are refused, nothing.
    pub fn within(limit: usize, lease: Lease) -> Self {
        Capture {
            limit: limit.max(EDGE),
            head: Vec::new(),
            tail: Vec::new(),
            total: 0,
            overflowed: false,
            blind: false,
            lease,
        }
    }

    /// Makes room for a whole body of `len` bytes up front; `false` when it cannot be kept
    /// whole (too long, or refused by the budget).
    pub fn reserve_whole(&mut self, len: usize) -> bool {
        len <= self.limit && !self.overflowed && self.lease.reserve(&mut self.head, len)
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.total = self.total.saturating_add(chunk.len() as u64);
        if self.blind {
            return;
        }
        if !self.overflowed {
            if self.head.len() + chunk.len() <= self.limit
                && self.lease.extend(&mut self.head, chunk)
            {
                return;
            }
            self.overflow(chunk);
            return;
        }
        self.push_tail(chunk);
    }

    /// The body outgrew the limit (or the budget): keep its first EDGE bytes and, from here
    /// on, its last ones, in buffers of fixed size.
    fn overflow(&mut self, chunk: &[u8]) {
        self.overflowed = true;
        // First give back what the whole copy took: only the head and the last EDGE bytes
        // after it stay, moved together.
        let len = self.head.len();
        let keep = len.saturating_sub(EDGE).min(EDGE);
        if len > EDGE {
            self.head.copy_within(len - keep..len, EDGE);
            self.head.truncate(EDGE + keep);
        }
        self.lease.shrink(&mut self.head, EDGE + keep);
        let mut tail = Vec::new();
        if !self.lease.reserve(&mut tail, 2 * EDGE) {
            // Not even the edges: the head stays, nothing more is kept.
            self.blind = true;
            self.head.truncate(EDGE);
            self.lease.shrink(&mut self.head, EDGE);
            return;
        }
        tail.extend_from_slice(self.head.get(EDGE..).unwrap_or_default());
        self.tail = tail;
        self.head.truncate(EDGE);
        let to_head = (EDGE - self.head.len()).min(chunk.len());
        let (first, rest) = chunk.split_at(to_head);
        // Within the head's capacity when it had reached EDGE; else a small growth.
        if !self.lease.extend(&mut self.head, first) {
            self.blind = true;
            return;
        }
        self.lease.shrink(&mut self.head, EDGE);
        self.push_tail(rest);
    }

    fn push_tail(&mut self, chunk: &[u8]) {
        if chunk.len() >= EDGE {
            self.tail.clear();
            self.tail
                .extend_from_slice(chunk.get(chunk.len() - EDGE..).unwrap_or(chunk));
            return;
        }
        // Never beyond the 2 * EDGE reserved: drop the oldest bytes first.
        let over = (self.tail.len() + chunk.len()).saturating_sub(2 * EDGE);
        if over > 0 {
            self.tail.drain(..over.min(self.tail.len()));
        }
        self.tail.extend_from_slice(chunk);
    }

    /// Bytes seen, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the VM's memory budget kept this copy short.
    pub fn was_refused(&self) -> bool {
        self.lease.was_refused()
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
    fn the_budget_bounds_what_is_kept() {
        use crate::body::budget::Budget;
        let budget = Budget::new(5 * EDGE);
        let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        // A first capture takes what the budget has: it keeps its edges.
        let mut a = Capture::within(1 << 20, Lease::new(&budget));
        for chunk in body.chunks(1000) {
            a.push(chunk);
        }
        assert!(budget.used() <= budget.limit());
        let Captured::Edges { head, tail } = a.captured() else {
            panic!("the budget keeps it short");
        };
        assert!(head == &body[..EDGE], "head");
        assert!(tail == &body[body.len() - EDGE..], "tail");
        assert!(a.was_refused());
        // A second one, while the first is alive, gets what is left: never more.
        let mut b = Capture::within(1 << 20, Lease::new(&budget));
        assert!(!b.reserve_whole(3 * EDGE));
        for chunk in body.chunks(1000) {
            b.push(chunk);
        }
        assert_eq!(b.total(), body.len() as u64);
        assert!(budget.used() <= budget.limit());
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
        // Reserved up front, a whole body fits exactly.
        let mut c = Capture::within(1 << 20, Lease::new(&budget));
        assert!(c.reserve_whole(2 * EDGE));
        c.push(&body[..2 * EDGE]);
        assert_eq!(c.captured(), Captured::Whole(&body[..2 * EDGE]));
        assert!(!c.reserve_whole(2 << 20));
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

//! The memory one VM may keep for all of its requests together.
//!
//! Each request's copies are bounded on their own (`max_body_bytes`, `max_event_bytes`), but
//! thousands of slow clients, each with a large body in flight, would add up to more than a
//! Wasm VM can allocate, and an allocation failure traps the VM: every request after it
//! would pass unmetered. So every buffer that keeps body bytes (request and response copies,
//! stream event buffers, kept stream chunks) grows only through a [`Lease`] on the VM's one
//! [`Budget`], and asks before it allocates. A lease that is refused leaves its buffer as it
//! is; the owner then keeps less (a capture keeps only the body's edges, or nothing; a stream
//! event is skipped) and the request is counted as over budget. Leases give their bytes back
//! when dropped, that is when the request ends.
//!
//! Request bodies may take only part of the budget ([`REQUEST_SHARE`]): slow uploads are
//! what a client controls, and if they could take all of it, no answer could be read while
//! they stall (the answers of every other request would go unmetered). The rest stays for
//! responses and streams.
//!
//! Proxy-wasm VMs are single-threaded, so the budget is shared with `Rc` and `Cell`.

use std::cell::Cell;
use std::rc::Rc;

/// Default budget per VM: room for about 250 bodies at the default `max_body_bytes` at once,
/// and far below what a Wasm VM can address.
pub const DEFAULT_VM_BYTES: usize = 64 * 1024 * 1024;

/// The part of the budget request bodies may take together: a half.
pub const REQUEST_SHARE: (usize, usize) = (1, 2);

/// The bytes one VM keeps, and its limit.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: Cell<usize>,
    /// Of `used`, what request bodies hold, and their limit.
    request_limit: usize,
    request_used: Cell<usize>,
}

impl Budget {
    pub fn new(limit: usize) -> Rc<Budget> {
        Rc::new(Budget {
            limit,
            used: Cell::new(0),
            request_limit: limit / REQUEST_SHARE.1 * REQUEST_SHARE.0,
            request_used: Cell::new(0),
        })
    }

    /// A budget nothing exhausts (tests and tools that read one body).
    pub fn unlimited() -> Rc<Budget> {
        Budget::new(usize::MAX)
    }

    /// Bytes leased now, across all requests.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes request bodies hold now.
    pub fn request_used(&self) -> usize {
        self.request_used.get()
    }

    /// Whether `bytes` more would fit now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.used.get().saturating_add(bytes) <= self.limit
    }

    fn room(&self, bytes: usize, request: bool) -> bool {
        self.has_room(bytes)
            && (!request || self.request_used.get().saturating_add(bytes) <= self.request_limit)
    }

    fn take(&self, bytes: usize, request: bool) -> bool {
        if !self.room(bytes, request) {
            return false;
        }
        self.add(bytes, request);
        true
    }

    fn add(&self, bytes: usize, request: bool) {
        self.used.set(self.used.get() + bytes);
        if request {
            self.request_used.set(self.request_used.get() + bytes);
        }
    }

    fn give(&self, bytes: usize, request: bool) {
        self.used.set(self.used.get().saturating_sub(bytes));
        if request {
            self.request_used
                .set(self.request_used.get().saturating_sub(bytes));
        }
    }
}

/// One owner's share of the budget. Leases made from one another with [`Lease::sibling`]
/// (the buffers of one request) share whether any of them was refused.
#[derive(Debug)]
pub struct Lease {
    /// `None`: unlimited (costs no allocation, for parsers used outside a VM).
    budget: Option<Rc<Budget>>,
    refused: Option<Rc<Cell<bool>>>,
    bytes: usize,
    /// Counts against the request share too.
    request: bool,
}

impl Lease {
    pub fn new(budget: &Rc<Budget>) -> Lease {
        Lease {
            budget: Some(Rc::clone(budget)),
            refused: Some(Rc::new(Cell::new(false))),
            bytes: 0,
            request: false,
        }
    }

    /// A lease that is never refused.
    pub fn unlimited() -> Lease {
        Lease {
            budget: None,
            refused: None,
            bytes: 0,
            request: false,
        }
    }

    /// Another lease on the same budget, sharing this one's refusal flag.
    pub fn sibling(&self) -> Lease {
        Lease {
            budget: self.budget.clone(),
            refused: self.refused.clone(),
            bytes: 0,
            request: self.request,
        }
    }

    /// A sibling for a request body: it also counts against the budget's request share.
    pub fn for_request(&self) -> Lease {
        let mut lease = self.sibling();
        lease.request = true;
        lease
    }

    /// Whether this lease or a sibling was ever refused.
    pub fn was_refused(&self) -> bool {
        self.refused.as_ref().is_some_and(|r| r.get())
    }

    /// Records that the budget had no room for something, without asking it for bytes.
    pub fn refuse(&self) {
        if let Some(r) = &self.refused {
            r.set(true);
        }
    }

    /// Whether `bytes` more would fit now (nothing is taken).
    pub fn has_room(&self, bytes: usize) -> bool {
        self.budget
            .as_ref()
            .is_none_or(|b| b.room(bytes, self.request))
    }

    /// Takes `bytes` more, if the budget has them.
    pub fn take(&mut self, bytes: usize) -> bool {
        if self
            .budget
            .as_ref()
            .is_none_or(|b| b.take(bytes, self.request))
        {
            self.bytes += bytes;
            true
        } else {
            self.refuse();
            false
        }
    }

    /// Gives back `bytes` (at most what is held).
    pub fn give(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        if let Some(b) = &self.budget {
            b.give(bytes, self.request);
        }
    }

    /// Bytes held by this lease.
    pub fn held(&self) -> usize {
        self.bytes
    }

    /// Makes room in `buf` for `extra` more bytes, within the budget and without the
    /// allocator's abort on failure: `false`, with `buf` unchanged, when either refuses.
    /// Growth is amortised (capacity doubles) when the budget allows, exact otherwise.
    pub fn reserve(&mut self, buf: &mut Vec<u8>, extra: usize) -> bool {
        let cap = buf.capacity();
        let Some(need) = buf.len().checked_add(extra) else {
            self.refuse();
            return false;
        };
        if need <= cap {
            return true;
        }
        let doubled = need.max(cap.saturating_mul(2));
        let target = if self.has_room(doubled - cap) {
            doubled
        } else {
            need
        };
        if !self.take(target - cap) {
            return false;
        }
        if buf.try_reserve_exact(target - buf.len()).is_err() {
            self.give(target - cap);
            self.refuse();
            return false;
        }
        // The allocator may round up; what it gave is what is held.
        let got = buf.capacity();
        if got > target {
            // Accounted as taken even if the budget is now slightly over: the bytes exist.
            self.bytes += got - target;
            if let Some(b) = &self.budget {
                b.add(got - target, self.request);
            }
        }
        true
    }

    /// `buf.extend_from_slice(bytes)` within the budget; `false`, with `buf` unchanged, when
    /// refused.
    pub fn extend(&mut self, buf: &mut Vec<u8>, bytes: &[u8]) -> bool {
        if !self.reserve(buf, bytes.len()) {
            return false;
        }
        buf.extend_from_slice(bytes);
        true
    }

    /// Frees `buf` and gives its bytes back.
    pub fn free(&mut self, buf: &mut Vec<u8>) {
        let cap = buf.capacity();
        *buf = Vec::new();
        self.give(cap);
    }

    /// Shrinks `buf`'s capacity to at most `max` (keeping its contents) and gives back what
    /// was freed.
    pub fn shrink(&mut self, buf: &mut Vec<u8>, max: usize) {
        let before = buf.capacity();
        buf.shrink_to(max.max(buf.len()));
        self.give(before.saturating_sub(buf.capacity()));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give(self.bytes, self.request);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_take_at_most_their_share() {
        let budget = Budget::new(1000);
        let general = Lease::new(&budget);
        let mut upload = general.for_request();
        let mut body = Vec::new();
        assert!(upload.extend(&mut body, &[1; 500]));
        assert!(!upload.for_request().take(1), "the request share is spent");
        assert!(general.was_refused());
        // The rest stays for answers.
        let mut answer = general.sibling();
        assert!(answer.take(500));
        assert_eq!((budget.used(), budget.request_used()), (1000, 500));
        drop(upload);
        assert_eq!((budget.used(), budget.request_used()), (500, 0));
    }

    #[test]
    fn leases_share_the_budget_and_give_back_on_drop() {
        let budget = Budget::new(1000);
        let mut a = Lease::new(&budget);
        let mut b = a.sibling();
        let mut x = Vec::new();
        assert!(a.extend(&mut x, &[1; 600]));
        assert!(budget.used() >= 600);
        let mut y = Vec::new();
        // 600 more do not fit: refused, nothing allocated, both leases know.
        assert!(!b.extend(&mut y, &[2; 600]));
        assert_eq!(y.capacity(), 0);
        assert!(a.was_refused() && b.was_refused());
        // A smaller one does.
        assert!(b.extend(&mut y, &[2; 300]));
        drop(b);
        assert_eq!(budget.used(), a.held());
        a.free(&mut x);
        assert_eq!(budget.used(), 0);
        // A new request's lease starts unrefused.
        let c = Lease::new(&budget);
        assert!(!c.was_refused());
    }

    #[test]
    fn growth_is_amortised_while_there_is_room_and_exact_near_the_limit() {
        let budget = Budget::new(100);
        let mut l = Lease::new(&budget);
        let mut v = Vec::new();
        for _ in 0..10 {
            assert!(l.extend(&mut v, &[0; 9]));
        }
        assert_eq!(v.len(), 90);
        assert!(v.capacity() <= 100 && budget.used() == v.capacity());
        assert!(l.extend(&mut v, &[0; 10]));
        assert!(!l.extend(&mut v, &[0; 1]));
        assert_eq!(v.len(), 100);
        l.shrink(&mut v, 0);
        assert_eq!(budget.used(), v.capacity());
    }

    #[test]
    fn absurd_sizes_are_refused_not_allocated() {
        let mut l = Lease::unlimited();
        let mut v = vec![0u8; 4];
        assert!(!l.reserve(&mut v, usize::MAX));
        assert!(!l.reserve(&mut v, isize::MAX as usize));
        assert_eq!(v.len(), 4);
    }
}

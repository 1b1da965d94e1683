//! What the core needs from a host, as two traits the glue implements: [`Properties`]
//! (read by the exchange at start and settlement) and [`Host`] (everything the
//! [`super::driver`] asks of a host during one callback). Hosts: the filter's, the test
//! host's native reference, the benchmark's replay.

use crate::series::metrics::Point;

/// Which half of the exchange a header map or body buffer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// A host property's raw bytes, `None` when the host has none (`["xds", "route_name"]`).
pub trait Properties {
    fn property(&self, path: &[String]) -> Option<Vec<u8>>;
}

/// What the driver needs from its host during one callback.
pub trait Host: Properties {
    /// The host clock, in milliseconds.
    fn now_ms(&self) -> u64;
    /// The first value of a header (lower-case name) in the current header map of `side`.
    fn header(&self, side: Side, name: &str) -> Option<String>;
    /// Replaces (or adds) a header; only effective in that side's header callback.
    fn set_header(&mut self, side: Side, name: &str, value: &str);
    fn remove_header(&mut self, side: Side, name: &str);
    /// `len` bytes of the host's current body buffer of `side` from `start`.
    fn body(&self, side: Side, start: usize, len: usize) -> Option<Vec<u8>>;
    /// Replaces the whole current body buffer of `side`, `len` bytes, with `bytes`; `false`
    /// if refused.
    fn replace_body(&mut self, side: Side, len: usize, bytes: &[u8]) -> bool;
    /// Sets a stream property (the access-log summary).
    fn set_property(&mut self, name: &str, value: &[u8]);
    /// Records a settlement's metric points.
    fn count(&mut self, points: &[Point]);
    /// Sends a sampled inference record (JSON) to the collector.
    fn collect(&mut self, record: String);
}

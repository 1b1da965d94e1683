//! Delivery of usage rollups to the collector. On the root context's timer, the rows kept so
//! far are sealed into a batch every `rollup_interval_ms`, and batches waiting are sent one
//! at a time, oldest first; a batch whose delivery fails waits for the next interval and is
//! sent again under the same id, which the collector adds only once.

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};

use super::{host, outbox};
use tokenmeter_core::config::collect::{CollectConfig, RollupConfig};
use tokenmeter_core::series::rollup::Rollups;

/// What a tick or an answer came to, for the glue's counters.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    pub failed: u64,
    /// Requests newly left out of the rollups since the last report.
    pub dropped: u64,
}

#[derive(Default)]
pub struct Sender {
    elapsed_ms: u32,
    /// The callout in flight: its token and batch id.
    in_flight: Option<(u32, String)>,
    reported_dropped: u64,
}

/// An id for this VM's batches, unique per VM start: 64 random bits (std's hasher keys come
/// from the host's random source) mixed with the start time.
pub fn vm_id() -> String {
    format!("{:016x}", RandomState::new().hash_one(host::now_ms()))
}

impl Sender {
    /// One tick of `tick_ms`: seals a batch when the interval is over, then sends the oldest
    /// waiting one if none is in flight.
    pub fn tick(
        &mut self,
        rollups: &RefCell<Rollups>,
        collect: &CollectConfig,
        config: &RollupConfig,
        tick_ms: u32,
    ) -> Outcome {
        let Ok(mut r) = rollups.try_borrow_mut() else {
            return Outcome::default();
        };
        self.elapsed_ms = self.elapsed_ms.saturating_add(tick_ms);
        let due = self.elapsed_ms >= config.interval_ms;
        let mut out = Outcome::default();
        if due {
            self.elapsed_ms = 0;
            r.seal();
            if self.in_flight.is_none() {
                out.failed += u64::from(!self.send(&r, collect, config));
            }
        }
        out.dropped = r.dropped.saturating_sub(self.reported_dropped);
        self.reported_dropped = r.dropped;
        out
    }

    /// Sends the oldest waiting batch; false when the host refused the callout.
    fn send(&mut self, r: &Rollups, collect: &CollectConfig, config: &RollupConfig) -> bool {
        let Some(batch) = r.next() else {
            return true;
        };
        match outbox::post(collect, &config.path, batch.to_json().as_bytes()) {
            Some(token) => {
                self.in_flight = Some((token, batch.id.clone()));
                true
            }
            None => false,
        }
    }

    /// A callout finished: `None` when it was not this sender's. A delivered batch is
    /// forgotten and the next waiting one, if any, goes at once.
    pub fn answered(
        &mut self,
        token: u32,
        num_headers: usize,
        rollups: &RefCell<Rollups>,
        collect: &CollectConfig,
        config: &RollupConfig,
    ) -> Option<Outcome> {
        if self.in_flight.as_ref().map(|(t, _)| *t) != Some(token) {
            return None;
        }
        let (_, id) = self.in_flight.take()?;
        let status = (num_headers > 0).then(outbox::callout_status).flatten();
        let mut out = Outcome::default();
        let Ok(mut r) = rollups.try_borrow_mut() else {
            return Some(out);
        };
        if matches!(status, Some(200..=299)) {
            r.delivered(&id);
            out.sent = 1;
            out.failed = u64::from(!self.send(&r, collect, config));
        } else {
            out.failed = 1;
        }
        Some(out)
    }
}

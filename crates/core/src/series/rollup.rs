//! Usage rollups: exact totals of all traffic per minute and per series, kept per VM and
//! sent to the collector in batches, so that the store holds what the counters hold.
//!
//! A series is a settlement's dimension values, after the cardinality caps folded them (the
//! same series the counters have, so the store's totals equal Envoy's). A row adds up one
//! series' requests in one minute: requests by status class, errors by type, tokens, and
//! fixed-bucket histograms of duration, time to first token and time per output token.
//!
//! Rows are kept in memory up to a bound (a request that would open a row past it is counted
//! in [`Rollups::dropped`], never stored partly) and taken out whole as a [`Batch`] with an
//! id unique per VM. A batch that was not delivered is sent again with the same id, and the
//! collector adds a batch only once: a retry never counts twice. Batches waiting for
//! delivery are bounded too; past the bound the oldest is dropped and counted.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::exchange::settlement::Settlement;
use crate::openai::usage::UsageSource;

/// Upper bounds (ms) of the duration and time-to-first-token buckets; a last bucket takes
/// the rest.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [
    50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000, 300_000,
];
/// Upper bounds (ms) of the time-per-output-token buckets.
pub const TPOT_BOUNDS_MS: [u64; 9] = [5, 10, 20, 35, 50, 75, 100, 250, 1000];

/// Status classes counted, in order (`none`: no response).
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// Error types counted, in order (see [`crate::exchange::settlement::error_type`]).
pub const ERROR_TYPES: [&str; 6] = [
    "timeout",
    "upstream_reset",
    "client_cancelled",
    "rate_limited",
    "client_error",
    "upstream_error",
];

/// Counts per bucket (not cumulative), their sum and number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum: u64,
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &[u64]) -> Histogram {
        Histogram {
            buckets: vec![0; bounds.len() + 1],
            sum: 0,
            count: 0,
        }
    }

    fn add(&mut self, bounds: &[u64], value: u64) {
        let i = bounds.partition_point(|&b| b < value);
        if let Some(slot) = self.buckets.get_mut(i) {
            *slot += 1;
        }
        self.sum = self.sum.saturating_add(value);
        self.count += 1;
    }
}

/// One series' traffic in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Unix time of the minute's start, in seconds.
    pub minute: i64,
    /// The series' dimension values, in the order of [`Batch::labels`].
    pub values: Vec<String>,
    /// Requests per status class, in the order of [`STATUS_CLASSES`].
    pub requests: [u64; 6],
    /// Failed requests per type, in the order of [`ERROR_TYPES`].
    pub errors: [u64; 6],
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Requests whose tokens were estimated, and whose reported usage was implausible.
    pub estimated: u64,
    pub invalid_usage: u64,
    pub duration_ms: Histogram,
    pub ttft_ms: Histogram,
    pub tpot_ms: Histogram,
}

impl Row {
    /// A row with nothing counted yet, for the minute starting at `minute` (Unix seconds).
    pub fn new(minute: i64, values: Vec<String>) -> Row {
        Row {
            minute,
            values,
            requests: [0; 6],
            errors: [0; 6],
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cached_tokens: 0,
            reasoning_tokens: 0,
            estimated: 0,
            invalid_usage: 0,
            duration_ms: Histogram::new(&LATENCY_BOUNDS_MS),
            ttft_ms: Histogram::new(&LATENCY_BOUNDS_MS),
            tpot_ms: Histogram::new(&TPOT_BOUNDS_MS),
        }
    }

    fn add(&mut self, s: &Settlement) {
        let class = match s.status {
            Some(status @ 100..=599) => usize::from(status / 100 - 1),
            _ => 5,
        };
        if let Some(n) = self.requests.get_mut(class) {
            *n += 1;
        }
        if let Some(i) = s
            .error_type
            .and_then(|e| ERROR_TYPES.iter().position(|&t| t == e))
        {
            if let Some(n) = self.errors.get_mut(i) {
                *n += 1;
            }
        }
        match s.usage {
            Some(u) if u.source == UsageSource::Invalid => self.invalid_usage += 1,
            Some(u) => {
                // Plausible usage is at most 10^8 per count: these sums cannot overflow in
                // any minute a VM can serve.
                self.prompt_tokens = self.prompt_tokens.saturating_add(u.prompt);
                self.completion_tokens = self.completion_tokens.saturating_add(u.completion);
                self.total_tokens = self.total_tokens.saturating_add(u.total);
                self.cached_tokens = self.cached_tokens.saturating_add(u.cached.unwrap_or(0));
                self.reasoning_tokens = self
                    .reasoning_tokens
                    .saturating_add(u.reasoning.unwrap_or(0));
                if u.source == UsageSource::Estimated {
                    self.estimated += 1;
                }
            }
            None => {}
        }
        self.duration_ms.add(&LATENCY_BOUNDS_MS, s.duration_ms);
        if let Some(first) = s.ttft_ms {
            self.ttft_ms.add(&LATENCY_BOUNDS_MS, first);
            // As the counters compute it (see `metrics::points`).
            let output = s.usage.map_or(0, |u| u.completion);
            if output > 1 {
                let per =
                    (s.duration_ms.saturating_sub(first) as f64 / (output - 1) as f64).round();
                self.tpot_ms.add(&TPOT_BOUNDS_MS, per as u64);
            }
        }
    }
}

/// Rows taken out for delivery, under one id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique per VM and batch: `<vm>-<sequence>`.
    pub id: String,
    /// The dimension label names, in the order of each row's values.
    pub labels: Vec<String>,
    pub rows: Vec<Row>,
}

impl Batch {
    /// The batch as the collector takes it (`POST /v1/rollups`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The rows of one VM, and its batches waiting for delivery.
#[derive(Debug)]
pub struct Rollups {
    vm: String,
    labels: Vec<String>,
    max_rows: usize,
    max_pending: usize,
    /// Rows by series, then minute (a series has one or two minutes between seals); looked
    /// up by the settlement's labels without copying them.
    rows: BTreeMap<Vec<String>, Vec<Row>>,
    row_count: usize,
    pending: VecDeque<Batch>,
    sequence: u64,
    /// Requests left out: no row was free, or their batch was dropped undelivered.
    pub dropped: u64,
}

impl Rollups {
    /// `vm` names the VM in batch ids (unique per VM start); at most `max_rows` rows are
    /// kept, and at most `max_pending` batches wait for delivery.
    pub fn new(vm: String, labels: Vec<String>, max_rows: usize, max_pending: usize) -> Rollups {
        Rollups {
            vm,
            labels,
            max_rows,
            max_pending,
            rows: BTreeMap::new(),
            row_count: 0,
            pending: VecDeque::new(),
            sequence: 0,
            dropped: 0,
        }
    }

    /// Names the VM in the ids of batches sealed from now on.
    pub fn name_vm(&mut self, vm: &str) {
        self.vm = vm.to_string();
    }

    /// Adds one settled exchange, at `now_ms` (Unix time); false when it had no row.
    pub fn record(&mut self, now_ms: u64, s: &Settlement) -> bool {
        let minute = i64::try_from(now_ms / 60_000 * 60).unwrap_or(i64::MAX);
        if let Some(rows) = self.rows.get_mut(s.labels.as_slice()) {
            if let Some(row) = rows.iter_mut().find(|r| r.minute == minute) {
                row.add(s);
                return true;
            }
        }
        if self.row_count >= self.max_rows {
            self.dropped += 1;
            return false;
        }
        let mut row = Row::new(minute, s.labels.clone());
        row.add(s);
        match self.rows.get_mut(s.labels.as_slice()) {
            Some(rows) => rows.push(row),
            None => {
                self.rows.insert(s.labels.clone(), vec![row]);
            }
        }
        self.row_count += 1;
        true
    }

    /// Rows kept now (not yet in a batch).
    pub fn rows(&self) -> usize {
        self.row_count
    }

    /// Moves the kept rows into a new batch waiting for delivery (nothing when none are
    /// kept); past `max_pending`, the oldest batch is dropped and its requests counted.
    pub fn seal(&mut self) {
        if self.row_count == 0 {
            return;
        }
        self.sequence += 1;
        self.row_count = 0;
        let mut rows: Vec<Row> = std::mem::take(&mut self.rows)
            .into_values()
            .flatten()
            .collect();
        rows.sort_by(|a, b| (a.minute, &a.values).cmp(&(b.minute, &b.values)));
        self.pending.push_back(Batch {
            id: format!("{}-{}", self.vm, self.sequence),
            labels: self.labels.clone(),
            rows,
        });
        while self.pending.len() > self.max_pending {
            if let Some(old) = self.pending.pop_front() {
                let requests: u64 = old.rows.iter().flat_map(|r| r.requests).sum();
                self.dropped += requests;
            }
        }
    }

    /// The oldest batch waiting for delivery, to send (it stays until [`Self::delivered`]).
    pub fn next(&self) -> Option<&Batch> {
        self.pending.front()
    }

    /// The batch with this id reached the collector.
    pub fn delivered(&mut self, id: &str) {
        self.pending.retain(|b| b.id != id);
    }

    /// Batches waiting for delivery.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::usage::Usage;

    fn settled(labels: &[&str], status: u16, prompt: u64, completion: u64) -> Settlement {
        Settlement {
            labels: labels.iter().map(|l| l.to_string()).collect(),
            status: Some(status),
            usage: Some(Usage {
                prompt,
                completion,
                total: prompt + completion,
                cached: Some(1),
                reasoning: None,
                audio_prompt: None,
                audio_completion: None,
                source: UsageSource::Reported,
            }),
            duration_ms: 700,
            ttft_ms: Some(120),
            ..Settlement::default()
        }
    }

    #[test]
    fn rows_add_up_per_minute_and_series() {
        let mut r = Rollups::new("vm1".into(), vec!["model".into()], 10, 4);
        let t = 1_767_225_600_000; // a minute's start
        assert!(r.record(t + 1_000, &settled(&["a"], 200, 10, 5)));
        assert!(r.record(t + 59_000, &settled(&["a"], 200, 3, 2)));
        assert!(r.record(t + 2_000, &settled(&["b"], 500, 0, 0)));
        assert!(r.record(t + 61_000, &settled(&["a"], 429, 7, 0)));
        assert_eq!(r.rows(), 3);
        r.seal();
        let b = r.next().unwrap().clone();
        assert_eq!(b.id, "vm1-1");
        let a = &b.rows[0];
        assert_eq!(
            (a.minute, a.values.as_slice()),
            (1_767_225_600, &["a".to_string()][..])
        );
        assert_eq!(a.requests, [0, 2, 0, 0, 0, 0]);
        assert_eq!(
            (a.prompt_tokens, a.completion_tokens, a.total_tokens),
            (13, 7, 20)
        );
        assert_eq!(a.cached_tokens, 2);
        assert_eq!(a.duration_ms.count, 2);
        assert_eq!(
            a.duration_ms.buckets[4], 2,
            "700 ms is in the 1000 ms bucket"
        );
        // (700 - 120) / (5 - 1) = 145 ms and 580 / 1 = 580 ms per token.
        assert_eq!(a.tpot_ms.sum, 145 + 580);
        let later = &b.rows[2];
        assert_eq!(later.minute, 1_767_225_660);
        assert_eq!(later.requests[3], 1);
        assert_eq!(later.errors, [0; 6], "no error type was settled");
        // The batch stays until delivered; a new one gets the next id.
        assert!(r.record(t, &settled(&["a"], 200, 1, 1)));
        r.seal();
        assert_eq!(r.pending(), 2);
        r.delivered("vm1-1");
        assert_eq!(r.next().map(|b| b.id.as_str()), Some("vm1-2"));
    }

    #[test]
    fn rows_and_batches_are_bounded() {
        let mut r = Rollups::new("vm".into(), vec!["user".into()], 2, 2);
        let t = 1_767_225_600_000;
        assert!(r.record(t, &settled(&["a"], 200, 1, 1)));
        assert!(r.record(t, &settled(&["b"], 200, 1, 1)));
        assert!(!r.record(t, &settled(&["c"], 200, 1, 1)));
        assert!(
            r.record(t, &settled(&["a"], 200, 1, 1)),
            "a kept row still adds"
        );
        assert_eq!(r.dropped, 1);
        for _ in 0..3 {
            r.seal();
            assert!(r.record(t, &settled(&["a"], 200, 1, 1)));
        }
        assert_eq!(r.pending(), 2);
        assert_eq!(
            r.dropped,
            1 + 3,
            "the first batch (three requests) was dropped"
        );
        assert_eq!(r.next().map(|b| b.id.as_str()), Some("vm-2"));
    }

    #[test]
    fn histograms_take_values_at_their_bounds_and_past_the_last() {
        let mut h = Histogram::new(&LATENCY_BOUNDS_MS);
        for v in [0, 50, 51, 300_000, 300_001, u64::MAX] {
            h.add(&LATENCY_BOUNDS_MS, v);
        }
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[11], 1);
        assert_eq!(h.buckets[12], 2);
        assert_eq!(h.count, 6);
        assert_eq!(h.sum, u64::MAX);
    }

    #[test]
    fn invalid_and_estimated_usage_are_counted_apart() {
        let mut r = Rollups::new("vm".into(), vec![], 4, 4);
        let mut s = settled(&[], 200, 0, 0);
        s.usage = Some(Usage::invalid());
        r.record(0, &s);
        let mut e = settled(&[], 200, 4, 4);
        if let Some(u) = e.usage.as_mut() {
            u.source = UsageSource::Estimated;
        }
        r.record(0, &e);
        r.seal();
        let row = &r.next().unwrap().rows[0];
        assert_eq!((row.invalid_usage, row.estimated), (1, 1));
        assert_eq!(row.total_tokens, 8);
        let json: serde_json::Value = serde_json::from_str(&r.next().unwrap().to_json()).unwrap();
        assert_eq!(json["rows"][0]["requests"][1], 2);
        assert_eq!(json["labels"], serde_json::json!([]));
    }
}

//! `stream::meter::StreamMeter`: usage, model and texts read from a stream as it passes.
//!
//! For the Responses API's reader and the others' (see [`operations`]):
//! - what the meter ends with (usage, model, whether the stream ended, unreadable and
//!   oversized events, whether content was seen) is the same for every chunking, at the
//!   filter's event size limit and ([`stream_meter_event_limit`]) at a small one;
//! - any usage is bounded (see [`crate::usage::bounded`]);
//! - putting events off while usage is expected (`expect_usage`) changes none of it;
//! - within a small memory budget, `used()` never exceeds `limit()` between calls, and is 0
//!   once the meter is dropped.
//!
//! [`stream_meter_estimate`] also compares the completion estimate (the tokenizer's count of
//! the streamed text), which loads the tokenizer: a target of its own, so that the main one
//! stays fast.

use tokenmeter_core::body::budget::{Budget, Lease};
use tokenmeter_core::openai::api::Operation;
use tokenmeter_core::openai::usage::Usage;
use tokenmeter_core::stream::meter::StreamMeter;
use tokenmeter_core::tokens::tokenizer::Encoding;

use crate::shown;
use crate::split::{self, Rng};
use crate::usage::bounded;

/// The meter reads chat completions, completions and embeddings streams alike, and the
/// Responses API's its own way: each input goes through the Responses reader and one of the
/// other three (drawn from the input).
fn operations(rng: &mut Rng) -> [Operation; 2] {
    let other = [
        Operation::ChatCompletions,
        Operation::Completions,
        Operation::Embeddings,
    ];
    [
        other
            .get(rng.below(3))
            .copied()
            .unwrap_or(Operation::ChatCompletions),
        Operation::Responses,
    ]
}
/// The filter's default `max_event_bytes`.
const MAX_EVENT_BYTES: usize = 1 << 20;
const ENC: Encoding = Encoding::O200kBase;

/// What a meter ends with.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    usage: Option<Usage>,
    model: Option<String>,
    done: bool,
    unreadable: u64,
    oversized: u64,
    saw_content: bool,
}

fn outcome(m: &StreamMeter) -> Outcome {
    Outcome {
        usage: m.usage,
        model: m.model.clone(),
        done: m.done,
        unreadable: m.unreadable,
        oversized: m.oversized(),
        saw_content: m.saw_content,
    }
}

fn feed_all(m: &mut StreamMeter, chunks: &[&[u8]]) {
    for c in chunks {
        m.feed(c, ENC);
    }
    m.finish(ENC);
}

fn run(op: Operation, max_event_bytes: usize, chunks: &[&[u8]]) -> Outcome {
    let mut m = StreamMeter::new(op, max_event_bytes);
    feed_all(&mut m, chunks);
    outcome(&m)
}

pub fn stream_meter(data: &[u8]) {
    let mut rng = Rng::new(data, 2);
    for op in operations(&mut rng) {
        let whole = run(op, MAX_EVENT_BYTES, &split::whole(data));
        if let Some(u) = &whole.usage {
            bounded(u, op.as_str(), data);
        }
        for (how, chunks) in split::chunkings(data) {
            let got = run(op, MAX_EVENT_BYTES, &chunks);
            assert_eq!(
                got,
                whole,
                "{}: fed {how} ({} chunks), the meter differs from the whole input's\n input: {}",
                op.as_str(),
                chunks.len(),
                shown(data)
            );
        }

        // Events put off while usage is expected: the same usage, model and end.
        let cap = rng.below(4096);
        let mut m = StreamMeter::new(op, MAX_EVENT_BYTES);
        m.expect_usage(cap);
        feed_all(&mut m, &split::cuts(data, &mut rng));
        let put_off = outcome(&m);
        assert_eq!(
            (
                &put_off.usage,
                &put_off.model,
                put_off.done,
                put_off.saw_content
            ),
            (&whole.usage, &whole.model, whole.done, whole.saw_content),
            "{}: expecting usage (cap {cap}) changed what the meter read\n input: {}",
            op.as_str(),
            shown(data)
        );

        // A small memory budget: never overdrawn, all given back.
        let budget = Budget::new(rng.below(2048));
        let mut m = StreamMeter::within(op, MAX_EVENT_BYTES, Lease::new(&budget));
        if rng.below(2) == 0 {
            m.expect_usage(rng.below(4096));
        }
        for c in split::cuts(data, &mut rng) {
            m.feed(c, ENC);
            assert!(
                budget.used() <= budget.limit(),
                "{}: the meter took {} bytes of a budget of {}\n input: {}",
                op.as_str(),
                budget.used(),
                budget.limit(),
                shown(data)
            );
        }
        m.finish(ENC);
        assert!(
            budget.used() <= budget.limit(),
            "{}: the meter took {} bytes of a budget of {} at its end\n input: {}",
            op.as_str(),
            budget.used(),
            budget.limit(),
            shown(data)
        );
        if let Some(u) = &m.usage {
            bounded(u, op.as_str(), data);
        }
        drop(m);
        assert_eq!(
            budget.used(),
            0,
            "{}: a dropped meter kept part of a budget of {}\n input: {}",
            op.as_str(),
            budget.limit(),
            shown(data)
        );
    }
}

/// At a small event size limit (events over it are dropped and counted), the meter ends
/// with the same for every chunking.
pub fn stream_meter_event_limit(data: &[u8]) {
    let mut rng = Rng::new(data, 6);
    for op in operations(&mut rng) {
        let max = rng.below(512);
        let whole = run(op, max, &split::whole(data));
        if let Some(u) = &whole.usage {
            bounded(u, op.as_str(), data);
        }
        for (how, chunks) in split::chunkings(data) {
            assert_eq!(
                run(op, max, &chunks),
                whole,
                "{}: with max_event_bytes {max}, fed {how} ({} chunks), the meter differs from the whole input's\n input: {}",
                op.as_str(),
                chunks.len(),
                shown(data)
            );
        }
    }
}

/// The completion estimate and everything else, for every chunking and with events put off.
pub fn stream_meter_estimate(data: &[u8]) {
    let mut rng = Rng::new(data, 4);
    for op in operations(&mut rng) {
        let estimate = |chunks: &[&[u8]], cap: Option<usize>| {
            let mut m = StreamMeter::new(op, MAX_EVENT_BYTES);
            if let Some(cap) = cap {
                m.expect_usage(cap);
            }
            feed_all(&mut m, chunks);
            let tokens = m.estimated_completion(ENC);
            (tokens, outcome(&m))
        };
        let whole = estimate(&split::whole(data), None);
        for (how, chunks) in split::chunkings(data) {
            assert_eq!(
                estimate(&chunks, None),
                whole,
                "{}: fed {how} ({} chunks), the estimate differs from the whole input's\n input: {}",
                op.as_str(),
                chunks.len(),
                shown(data)
            );
        }
        let cap = rng.below(4096);
        let chunks = split::cuts(data, &mut rng);
        assert_eq!(
            estimate(&chunks, Some(cap)),
            whole,
            "{}: expecting usage (cap {cap}) changed the estimate or what the meter read\n input: {}",
            op.as_str(),
            shown(data)
        );
    }
}

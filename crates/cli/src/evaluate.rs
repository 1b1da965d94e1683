//! One evaluation of a monitor's window: sample the records, ask the judge (or the
//! cache), and aggregate every outcome into a report and a per-record table.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::ingest;
use crate::quality::aggregate::Summary;
use crate::quality::aggregate::{Conclusion, Status, Tally};
use crate::quality::canary;
use crate::quality::duration::{format_rfc3339, Window};
use crate::quality::metric::{Inputs, Metric};
use crate::quality::monitor::Monitor;
use crate::quality::prompt::{self, Prompt};
use crate::quality::report::{
    GroupReport, JudgeReport, Mode, Report, Row, SamplingReport, WindowReport,
};
use crate::quality::sampling;
use crate::quality::scope::{GroupKey, Scope};
use crate::quality::score::{self, Verdict};
use tokenmeter_core::records::record::Record;

use crate::judge::{CallError, Judge};
use crate::store::Store;

/// The breaker looks at this many finished calls (or all, if fewer are planned) before
/// it may open.
const BREAKER_MIN_CALLS: u64 = 5;

/// A finished evaluation.
pub struct Evaluation {
    pub report: Report,
    pub rows: Vec<Row>,
}

/// The records of the window from the store.
pub fn records_from_store(store: &Store, window: Window) -> Result<Vec<Record>> {
    store
        .records_between(window.from.timestamp_micros(), window.to.timestamp_micros())?
        .into_iter()
        .map(|json| serde_json::from_str(&json).context("a stored record is unreadable"))
        .collect()
}

/// The records of the window from a JSONL file. A record without `time` cannot be placed
/// in time, so it is taken to be in the window.
pub fn records_from_file(path: &Path, window: Window) -> Result<Vec<Record>> {
    let body = std::fs::read(path)
        .with_context(|| format!("cannot read records from {}", path.display()))?;
    let batch =
        ingest::parse_batch(&body, window.from).with_context(|| format!("{}", path.display()))?;
    Ok(batch
        .into_iter()
        .filter(|i| {
            window.from.timestamp_micros() <= i.time_us && i.time_us < window.to.timestamp_micros()
        })
        .map(|i| i.record)
        .collect())
}

/// One judge request: a record and the metrics its answer scores.
struct Task {
    record: usize,
    metrics: Vec<Metric>,
    prompt: Prompt,
    key: String,
}

/// Stops the run when most judge outcomes are failures: a misconfigured or unreachable
/// judge must not be reported as a window of errored records. Cached outcomes count as
/// finished (a rerun is judged on all its records, not on the one left to retry), and a
/// refusal is an outcome of its record, not a failure of the judge.
struct Breaker {
    planned: u64,
    finished: AtomicU64,
    failed: AtomicU64,
    open: AtomicBool,
    last_error: Mutex<String>,
}

impl Breaker {
    fn record(&self, result: &Result<String, CallError>) {
        let finished = self.finished.fetch_add(1, Ordering::SeqCst) + 1;
        let failed = match result {
            Err(e) if !e.refusal => {
                if let Ok(mut last) = self.last_error.lock() {
                    last.clone_from(&e.message);
                }
                self.failed.fetch_add(1, Ordering::SeqCst) + 1
            }
            _ => self.failed.load(Ordering::SeqCst),
        };
        if finished >= BREAKER_MIN_CALLS.min(self.planned) && failed * 2 > finished {
            self.open.store(true, Ordering::SeqCst);
        }
    }
}

pub struct Options {
    pub combined: bool,
    /// Show a progress bar on stderr when it is a terminal.
    pub progress: bool,
}

/// Evaluates the window's records. `store` is the judge-result cache, if any. With
/// `canary`, the judge first scores the calibration set (from the cache when nothing
/// changed), and the report says how it agreed; its calls count in the run's.
pub async fn evaluate(
    monitor: &Monitor,
    judge: Arc<Judge>,
    records: Vec<Record>,
    window: Window,
    store: Option<Arc<Mutex<Store>>>,
    previous: Option<&Report>,
    options: &Options,
) -> Result<Evaluation> {
    let canary = match monitor.canary {
        Some(min_agreement) => {
            let mut m = monitor.clone();
            m.canary = None;
            m.scope = Scope::default();
            m.sampling_rate = 1.0;
            let set = canary::records(&monitor.columns);
            let eval = judged(&m, judge.clone(), set, window, store.clone(), None, options)
                .await
                .context("scoring the drift canary")?;
            Some(canary::assess(&eval.rows, min_agreement))
        }
        None => None,
    };
    let mut evaluation = judged(monitor, judge, records, window, store, previous, options).await?;
    evaluation.report.canary = canary;
    Ok(evaluation)
}

async fn judged(
    monitor: &Monitor,
    judge: Arc<Judge>,
    records: Vec<Record>,
    window: Window,
    store: Option<Arc<Mutex<Store>>>,
    previous: Option<&Report>,
    options: &Options,
) -> Result<Evaluation> {
    let mode = if options.combined {
        Mode::Combined
    } else {
        Mode::PerMetric
    };
    let model = monitor.judge.model.clone();
    let decoding = Judge::decoding(&monitor.judge);
    let records: Vec<Record> = records
        .into_iter()
        .filter(|r| monitor.scope.admits(r))
        .collect();
    let in_window = records.len() as u64;
    let sampling = SamplingReport::new(
        monitor.sampling_rate,
        monitor.seed,
        records.iter().map(|r| r.sample_rate),
    );
    let sample: Vec<Record> = records
        .into_iter()
        .filter(|r| sampling::is_sampled(&r.id, monitor.seed, monitor.sampling_rate))
        .collect();

    // Rows start as not applicable where a column is missing; tasks fill the rest.
    let mut rows: Vec<Row> = Vec::new();
    let mut row_index: BTreeMap<(usize, Metric), usize> = BTreeMap::new();
    let mut tasks: Vec<Task> = Vec::new();
    for (i, record) in sample.iter().enumerate() {
        let inputs = Inputs {
            question: record.text(&monitor.columns.question),
            answer: record.text(&monitor.columns.answer),
            context: record.text(&monitor.columns.context),
        };
        let mut applicable = Vec::new();
        for (metric, _) in &monitor.metrics {
            let metric = *metric;
            row_index.insert((i, metric), rows.len());
            if metric.applies_to(&inputs, monitor.rubric) {
                applicable.push(metric);
                rows.push(row(
                    record,
                    metric,
                    Status::Errored,
                    None,
                    String::new(),
                    &model,
                    "",
                ));
            } else {
                let missing = missing_columns(monitor, metric, &inputs);
                let mut r = row(
                    record,
                    metric,
                    Status::NotApplicable,
                    None,
                    format!("the record has no {missing}"),
                    "",
                    "",
                );
                r.missing_input = true;
                rows.push(r);
            }
        }
        if applicable.is_empty() {
            continue;
        }
        if options.combined {
            let prompt = prompt::combined(&applicable, &inputs, monitor.rubric);
            let names: Vec<&str> = applicable.iter().map(|m| m.name()).collect();
            let key = prompt::cache_key(
                &prompt,
                &model,
                &format!("combined:{}|{decoding}", names.join(",")),
            );
            tasks.push(Task {
                record: i,
                metrics: applicable,
                prompt,
                key,
            });
        } else {
            for metric in applicable {
                let prompt = prompt::for_metric(metric, &inputs, monitor.rubric);
                let key =
                    prompt::cache_key(&prompt, &model, &format!("{}|{decoding}", metric.name()));
                tasks.push(Task {
                    record: i,
                    metrics: vec![metric],
                    prompt,
                    key,
                });
            }
        }
    }

    let bar = progress_bar(tasks.len() as u64, options.progress);
    let mut answers: Vec<Option<(Result<String, CallError>, bool)>> = vec![None; tasks.len()];
    let mut pending = Vec::new();
    for (t, task) in tasks.iter().enumerate() {
        let cached = match &store {
            Some(s) => lock(s)?.cache_get(&task.key)?,
            None => None,
        };
        match cached {
            Some((content, refusal)) => {
                let outcome = if refusal {
                    Err(CallError {
                        message: content,
                        refusal: true,
                    })
                } else {
                    Ok(content)
                };
                if let Some(slot) = answers.get_mut(t) {
                    *slot = Some((outcome, true));
                }
                bar.inc(1);
            }
            None => pending.push(t),
        }
    }

    let breaker = Arc::new(Breaker {
        planned: tasks.len() as u64,
        finished: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        open: AtomicBool::new(false),
        last_error: Mutex::new(String::new()),
    });
    for (outcome, _) in answers.iter().flatten() {
        breaker.record(outcome);
    }
    let permits = Arc::new(Semaphore::new(monitor.judge.max_concurrency));
    let mut calls = JoinSet::new();
    let repair = monitor.judge.repair;
    for t in pending {
        let Some(task) = tasks.get(t) else { continue };
        let (judge, permits, breaker) = (judge.clone(), permits.clone(), breaker.clone());
        let prompt = task.prompt.clone();
        let metrics = task.metrics.clone();
        let combined = options.combined;
        calls.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return (t, None);
            };
            if breaker.open.load(Ordering::SeqCst) {
                return (t, None);
            }
            let mut result = judge.ask(&prompt).await;
            if let Ok(content) = &result {
                if repair && unreadable(content, &metrics, combined) {
                    if let Ok(again) = judge.repair(&prompt, content).await {
                        if !unreadable(&again, &metrics, combined) {
                            result = Ok(again);
                        }
                    }
                }
            }
            breaker.record(&result);
            (t, Some(result))
        });
    }
    while let Some(joined) = calls.join_next().await {
        let (t, result) = joined.context("a judge call task failed")?;
        bar.inc(1);
        let Some(result) = result else { continue };
        let outcome = match &result {
            Ok(content) => Some((content.as_str(), false)),
            Err(e) if e.refusal => Some((e.message.as_str(), true)),
            Err(_) => None,
        };
        if let (Some(outcome), Some(s), Some(task)) = (outcome, &store, tasks.get(t)) {
            lock(s)?.cache_put(
                &task.key,
                &task.prompt.version,
                &model,
                outcome,
                Utc::now().timestamp_micros(),
            )?;
        }
        if let Some(slot) = answers.get_mut(t) {
            *slot = Some((result, false));
        }
    }
    bar.finish_and_clear();
    if breaker.open.load(Ordering::SeqCst) {
        let last = breaker
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        bail!(
            "judge circuit breaker opened: {} of {} judge calls failed after retries (last error: {last}); check judge.url, judge.model and the API key, then rerun (answers already received are cached)",
            breaker.failed.load(Ordering::SeqCst),
            breaker.finished.load(Ordering::SeqCst),
        );
    }

    let mut cached = 0;
    for (task, answer) in tasks.iter().zip(answers) {
        let Some((result, from_cache)) = answer else {
            return Err(anyhow!("a judge call was not made"));
        };
        cached += u64::from(from_cache);
        let verdicts: Vec<(Metric, Result<Verdict, String>)> = match &result {
            Ok(content) if options.combined => score::parse_combined(content, &task.metrics)
                .into_iter()
                .map(|(m, v)| (m, Ok(v)))
                .collect(),
            Ok(content) => task
                .metrics
                .iter()
                .map(|&m| (m, Ok(score::parse(content, m))))
                .collect(),
            Err(e) if e.refusal => task
                .metrics
                .iter()
                .map(|&m| {
                    (
                        m,
                        Err(format!("the judge refused the record: {}", e.message)),
                    )
                })
                .collect(),
            Err(e) => task
                .metrics
                .iter()
                .map(|&m| (m, Err(e.message.clone())))
                .collect(),
        };
        for (metric, verdict) in verdicts {
            let Some(r) = row_index
                .get(&(task.record, metric))
                .and_then(|&i| rows.get_mut(i))
            else {
                continue;
            };
            r.prompt_version.clone_from(&task.prompt.version);
            r.cached = from_cache;
            (r.status, r.score, r.reason) = match verdict {
                Ok(Verdict::Scored { score, reason }) => {
                    (Status::Scored.name().into(), Some(score), reason)
                }
                Ok(Verdict::NotApplicable { reason }) => {
                    (Status::NotApplicable.name().into(), None, reason)
                }
                Ok(Verdict::Unparsed { answer }) => (Status::Unparsed.name().into(), None, answer),
                Err(e) => (Status::Errored.name().into(), None, e),
            };
        }
    }

    let count = |tally: &mut Tally, r: &Row| {
        if r.missing_input {
            tally.add_missing_input();
        } else if let Some(status) = r.status() {
            tally.add(status, r.score);
        }
    };
    let mut tallies: BTreeMap<Metric, Tally> = BTreeMap::new();
    for r in &rows {
        count(tallies.entry(r.metric).or_default(), r);
    }
    let summarize = |tallies: &BTreeMap<Metric, Tally>, before: Option<&Vec<(Metric, Summary)>>| {
        monitor
            .metrics
            .iter()
            .map(|(m, t)| {
                // How many runs in a row before this one failed the metric's rule.
                let streak = before
                    .and_then(|b| b.iter().find(|(x, _)| x == m))
                    .map_or(0, |(_, s)| s.streak);
                (
                    *m,
                    tallies
                        .get(m)
                        .cloned()
                        .unwrap_or_default()
                        .summarize(*t, streak),
                )
            })
            .collect::<Vec<_>>()
    };
    let metrics = summarize(&tallies, previous.map(|p| &p.metrics));
    let mut groups = Vec::new();
    if let Some(keys) = monitor.scope.assign(&sample) {
        let mut by_group: BTreeMap<&GroupKey, (u64, BTreeMap<Metric, Tally>)> = BTreeMap::new();
        for k in &keys {
            by_group.entry(k).or_default().0 += 1;
        }
        for (&(i, _), &ri) in &row_index {
            if let (Some(k), Some(r)) = (keys.get(i), rows.get(ri)) {
                count(
                    by_group
                        .entry(k)
                        .or_default()
                        .1
                        .entry(r.metric)
                        .or_default(),
                    r,
                );
            }
        }
        for (key, (sampled, tallies)) in by_group {
            let labels: BTreeMap<String, String> = key.iter().cloned().collect();
            let before = previous
                .and_then(|p| p.groups.iter().find(|g| g.labels == labels))
                .map(|g| &g.metrics);
            let metrics = summarize(&tallies, before);
            let status = Conclusion::of_report(metrics.iter().map(|(_, s)| s));
            groups.push(GroupReport {
                labels,
                sampled,
                metrics,
                status,
                breached: status == Conclusion::Breached,
            });
        }
    }
    // A group that breaches breaches the report; a small group that cannot be decided
    // does not make the whole report inconclusive.
    let status = match Conclusion::of_report(metrics.iter().map(|(_, s)| s)) {
        _ if groups.iter().any(|g| g.breached) => Conclusion::Breached,
        overall => overall,
    };
    let breached = status == Conclusion::Breached;
    let prompt_versions = if options.combined {
        BTreeMap::from([(
            "combined".to_string(),
            prompt::combined_version(monitor.rubric),
        )])
    } else {
        monitor
            .metrics
            .iter()
            .map(|(m, _)| (m.name().to_string(), prompt::version(*m, monitor.rubric)))
            .collect()
    };
    let usage = judge.usage();
    let report = Report {
        monitor: monitor.name.clone(),
        mode,
        window: WindowReport {
            from: format_rfc3339(window.from),
            to: format_rfc3339(window.to),
        },
        records: in_window,
        sampled: sample.len() as u64,
        sampling: Some(sampling),
        judge: JudgeReport {
            kind: monitor.judge.kind_name().to_string(),
            model,
            rubric: monitor.rubric.name().to_string(),
            prompt_versions,
            calls: judge.requests(),
            cached,
            repairs: judge.repairs(),
            response_format: judge.response_format().name().to_string(),
            usage,
            cost_usd: monitor.judge.price.map(|p| {
                (usage.prompt_tokens as f64 * p.input_per_million
                    + usage.completion_tokens as f64 * p.output_per_million)
                    / 1e6
            }),
        },
        metrics,
        groups,
        canary: None,
        status,
        breached,
    };
    Ok(Evaluation { report, rows })
}

/// Whether an answer leaves some of its metrics unparsed (worth one repair request).
fn unreadable(content: &str, metrics: &[Metric], combined: bool) -> bool {
    if combined {
        score::parse_combined(content, metrics)
            .values()
            .any(Verdict::is_unparsed)
    } else {
        metrics
            .iter()
            .any(|&m| score::parse(content, m).is_unparsed())
    }
}

fn row(
    record: &Record,
    metric: Metric,
    status: Status,
    score: Option<u8>,
    reason: String,
    model: &str,
    version: &str,
) -> Row {
    Row {
        record_id: record.id.clone(),
        metric,
        status: status.name().to_string(),
        score,
        reason,
        judge_model: model.to_string(),
        prompt_version: version.to_string(),
        cached: false,
        missing_input: false,
    }
}

fn missing_columns(monitor: &Monitor, metric: Metric, inputs: &Inputs<'_>) -> String {
    let missing: Vec<&str> = metric
        .inputs(monitor.rubric)
        .iter()
        .filter(|i| inputs.get(**i).is_none())
        .map(|i| monitor.columns.of(*i))
        .collect();
    let quoted: Vec<String> = missing.iter().map(|c| format!("{c:?}")).collect();
    format!("{} text", quoted.join(" or "))
}

fn lock(store: &Mutex<Store>) -> Result<std::sync::MutexGuard<'_, Store>> {
    store
        .lock()
        .map_err(|_| anyhow!("the store is unusable after an earlier failure"))
}

fn progress_bar(len: u64, wanted: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if !wanted || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) =
        ProgressStyle::with_template("judging {bar:40} {pos}/{len} [{elapsed_precise}, eta {eta}]")
    {
        bar.set_style(style);
    }
    bar
}

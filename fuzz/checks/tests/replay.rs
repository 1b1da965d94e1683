//! Replays the fuzz campaign's committed inputs through their checks, without libFuzzer:
//! `fuzz/corpus/<target>/` (the minimised corpus, which must pass) and
//! `fuzz/findings/<target>/` (reproducers of broken invariants, which pass once the core is
//! fixed).

// A test: a missing folder or file is a failure.
#![allow(clippy::expect_used)]

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tokenmeter_fuzz_checks::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/checks has a parent")
        .to_path_buf()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `folder/<target>/` through the target's check; returns the failures.
fn replay(target: &str, folder: &str) -> (usize, Vec<String>) {
    let check = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .expect("a known target");
    let files = files(&fuzz_dir().join(folder).join(target));
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("a readable input");
        if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{folder}/{target}/{}: {message}", file_name(file)));
        }
    }
    (files.len(), failures)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn replay_target(target: &str) {
    let (corpus, mut failures) = replay(target, "corpus");
    assert!(corpus > 0, "fuzz/corpus/{target}/ holds no input");
    let (_, findings) = replay(target, "findings");
    failures.extend(findings);
    assert!(
        failures.is_empty(),
        "{} of the committed inputs break an invariant:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

macro_rules! replays {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay_target(stringify!($target));
            }
        )*

        #[test]
        fn every_target_is_replayed() {
            let replayed = [$(stringify!($target)),*];
            for (name, _) in TARGETS {
                assert!(replayed.contains(name), "{name} has no replay test");
            }
        }
    };
}

replays!(
    request_usage,
    stream_editor,
    stream_meter,
    stream_meter_estimate,
    stream_meter_event_limit,
    usage,
    decode,
);

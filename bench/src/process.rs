//! A process's own accounting, read from `/proc`: CPU time and resident memory.
//!
//! CPU time is `utime + stime` of `/proc/PID/stat`, which covers every thread of the
//! process (Envoy's workers and main thread). The kernel keeps that sum equal to the
//! threads' exact run time, in clock ticks, so a measurement of a few seconds is accurate
//! to a fraction of a percent.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, ensure, Context as _, Result};

/// Clock ticks per second (`getconf CLK_TCK`), 100 on Linux unless told otherwise.
fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// The fields of `/proc/PID/stat` after the command name, from field 3 (the state) on.
/// The name (field 2) may hold spaces and parentheses, so they are counted from the last ')'.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(
        stat.get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect(),
    )
}

/// The sum of the numbers in fields `from..to` of `/proc/PID/stat` (numbered as in proc(5)).
fn stat_sum(fields: &[&str], from: usize, to: usize) -> Option<u64> {
    // Field 3 is the first after the name.
    (from..to).try_fold(0u64, |sum, f| {
        Some(sum + fields.get(f.checked_sub(3)?)?.parse::<u64>().ok()?)
    })
}

/// `utime + stime` (fields 14 and 15) in ticks from the text of `/proc/PID/stat`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    stat_sum(&stat_fields(stat)?, 14, 16)
}

/// CPU time the process has used so far, in microseconds.
pub fn cpu_micros(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| anyhow!("unreadable stat: {stat}"))?;
    Ok(ticks * 1_000_000 / ticks_per_second())
}

/// A `kB` field of the text of `/proc/PID/status`, in kB.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Resident memory of the process, in kB.
pub fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_status_kb(&status, "VmRSS").ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Puts this runner, and so what it starts from now on, on `cpus`.
pub fn pin_self(cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    ensure!(status.success(), "taskset -p -c {cpus}: {status}");
    Ok(())
}

/// The parent pid and `utime + stime + cutime + cstime` in ticks, from the text of
/// `/proc/PID/stat`. The children's fields hold the processes a process has reaped, so
/// over a live tree the sum counts every process that ever ran in it exactly once.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let fields = stat_fields(stat)?;
    // ppid is field 4; utime, stime, cutime, cstime are 14 to 17.
    let ppid = fields.get(1)?.parse().ok()?;
    Some((ppid, stat_sum(&fields, 14, 18)?))
}

/// `root` and all its descendants, from `(pid, parent pid)` of every process.
fn tree(parents: &[(u32, u32)], root: u32) -> Vec<u32> {
    let mut tree = vec![root];
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        tree.extend(
            parents
                .iter()
                .filter(|(pid, ppid)| *ppid == p && *pid != p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    tree
}

/// Ticks of `root` and all its descendants, from `(pid, stat text)` of every process.
fn tree_ticks(stats: &[(u32, String)], root: u32) -> Option<u64> {
    let parsed: Vec<(u32, u32, u64)> = stats
        .iter()
        .filter_map(|(pid, s)| parse_stat(s).map(|(ppid, t)| (*pid, ppid, t)))
        .collect();
    parsed.iter().find(|(pid, _, _)| *pid == root)?;
    let parents: Vec<(u32, u32)> = parsed.iter().map(|(pid, ppid, _)| (*pid, *ppid)).collect();
    let members = tree(&parents, root);
    Some(
        parsed
            .iter()
            .filter(|(pid, _, _)| members.contains(pid))
            .map(|(_, _, t)| t)
            .sum(),
    )
}

/// Every process's stat text (a process may end while it is read: it is left out).
fn all_stats() -> Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(s) = std::fs::read_to_string(entry.path().join("stat")) {
            out.push((pid, s));
        }
    }
    Ok(out)
}

/// CPU time of `root`'s process tree so far, in microseconds.
pub fn tree_cpu_micros(root: u32) -> Result<u64> {
    let ticks =
        tree_ticks(&all_stats()?, root).with_context(|| format!("process {root} is gone"))?;
    Ok(ticks * 1_000_000 / ticks_per_second())
}

/// The pids of `root`'s descendants.
pub fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_stats()
        .unwrap_or_default()
        .iter()
        .filter_map(|(pid, s)| parse_stat(s).map(|(ppid, _)| (*pid, ppid)))
        .collect();
    tree(&parents, root).into_iter().skip(1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_command_name() {
        let stat = "4242 (envoy (main) x) S 1 4242 4242 0 -1 4194560 9073 0 0 0 1234 567 0 0 20 0 18 0 123 0";
        assert_eq!(parse_stat_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn status_fields_in_kb() {
        let status = "Name:\tenvoy\nVmPeak:\t 2000 kB\nVmRSS:\t   51234 kB\nThreads:\t18\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(51234));
        assert_eq!(parse_status_kb(status, "VmHWM"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(rss_kb(pid).unwrap() > 0);
        cpu_micros(pid).unwrap();
    }

    #[test]
    fn a_process_tree_sums_its_members_only() {
        let stat = |pid: u32, name: &str, ppid: u32, ticks: [u64; 4]| {
            let [u, s, cu, cs] = ticks;
            (pid, format!("{pid} ({name}) S {ppid} {pid} {pid} 0 -1 4194560 9073 0 0 0 {u} {s} {cu} {cs} 20 0 18 0 123 0"))
        };
        let stats = vec![
            stat(1, "init", 0, [5, 5, 0, 0]),
            stat(10, "python (x) y", 1, [100, 20, 7, 3]),
            stat(11, "worker", 10, [40, 10, 0, 0]),
            stat(12, "helper", 11, [1, 1, 0, 0]),
            stat(20, "other", 1, [900, 0, 0, 0]),
        ];
        assert_eq!(parse_stat(&stats[1].1), Some((1, 130)));
        assert_eq!(tree_ticks(&stats, 10), Some(130 + 50 + 2));
        assert_eq!(tree_ticks(&stats, 12), Some(2));
        assert_eq!(tree_ticks(&stats, 99), None);
        assert_eq!(parse_stat("garbage"), None);
    }
}

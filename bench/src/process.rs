//! A process's own accounting, read from `/proc`: CPU time and resident memory.
//!
//! CPU time is `utime + stime` of `/proc/PID/stat`, which covers every thread of the
//! process (Envoy's workers and main thread). The kernel keeps that sum equal to the
//! threads' exact run time, in clock ticks, so a measurement of a few seconds is accurate
//! to a fraction of a percent.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _, Result};

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

/// `utime + stime` in ticks from the text of `/proc/PID/stat`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields are counted from
    // the last ')'. utime and stime are fields 14 and 15, so the 12th and 13th after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
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
}

//! What the servers and the load generator cost the machine: memory and CPU
//! time from `/proc` and `getrusage`.

use std::time::Duration;

use anyhow::Context as _;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which Linux fixes
/// at 100 per second for user space whatever the kernel's own HZ.
const USER_HZ: f64 = 100.0;

/// A process's memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS: resident now, in KiB.
    pub rss_kib: u64,
    /// VmHWM: the most it has been resident, in KiB.
    pub hwm_kib: u64,
}

/// The memory of process `pid`.
pub fn memory(pid: i32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .with_context(|| format!("{path}: no {name} line"))?;
        let kib = line.trim().trim_end_matches("kB").trim();
        kib.parse().with_context(|| format!("{path}: {name} {kib:?}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// User plus system CPU time process `pid` has used, its exited threads
/// included.
pub fn cpu_time(pid: i32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields that follow are counted from its closing parenthesis, so
    // utime and stime (fields 14 and 15) are the 12th and 13th after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    let mut fields = after_name.split_whitespace().skip(11);
    let mut ticks = || -> anyhow::Result<f64> {
        let field = fields.next().with_context(|| format!("{path}: too few fields"))?;
        Ok(field
            .parse::<u64>()
            .with_context(|| format!("{path}: {field:?}"))? as f64)
    };
    let total = ticks()? + ticks()?;
    Ok(Duration::from_secs_f64(total / USER_HZ))
}

/// User plus system CPU time this process (the load generator) has used.
pub fn own_cpu_time() -> anyhow::Result<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeVal;
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let duration = |time: TimeVal| {
        Duration::from_secs(time.tv_sec().unsigned_abs())
            + Duration::from_micros(time.tv_usec().unsigned_abs())
    };
    Ok(duration(usage.user_time()) + duration(usage.system_time()))
}

/// The state letter of process `pid` (`R`, `S`, `Z`...), from
/// `/proc/<pid>/stat`.
pub fn state(pid: i32) -> anyhow::Result<char> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .with_context(|| format!("{path}: no state"))
}

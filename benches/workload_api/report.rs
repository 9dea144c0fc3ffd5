//! The tables: each figure the median of a target's rounds, and its ratio
//! to the floor's median in the same run (the floor is the first target).

use crate::cli::{Mode, Plan};
use crate::load::Round;
use crate::procfs;
use crate::stats::median;
use crate::streams::Held;
use crate::targets::Target;

/// Above this busy fraction, the load generator rather than the server
/// may have set a throughput figure.
const CLIENT_BOUND: f64 = 0.9;

/// A request mode's table.
pub fn requests(mode: Mode, plan: &Plan, targets: &[Target], results: &[Vec<Round>]) {
    let what = match mode {
        Mode::SameConn => "FetchX509SVID first message on an open connection",
        Mode::Jwt => "FetchJWTSVID on an open connection",
        _ => "new connection + first FetchX509SVID message",
    };
    let shape = match (mode, plan.one_connection) {
        (Mode::NewConn, _) => "a connection per call",
        (_, true) => "one shared connection (concurrent streams)",
        (_, false) => "a connection per client, reused",
    };
    println!("\n== {}: {what}", mode.name());
    println!(
        "   medians of {} rounds; latency: {} calls, 1 client; throughput: {} clients for {}, {shape}",
        plan.rounds,
        plan.calls,
        plan.clients,
        humantime::format_duration(plan.window)
    );
    println!(
        "   {:<16} {:>9} {:>9} {:>9} {:>7} {:>15} {:>9} {:>7} {:>12} {:>7} {:>7}",
        "target",
        "p50",
        "p90",
        "p99",
        "p50/fl",
        "p50 rounds",
        "calls/s",
        "tput/fl",
        "server CPU",
        "CPU/fl",
        "client"
    );
    let floor_p50 = median(results[0].iter().map(|r| r.p50_us)).unwrap_or(f64::NAN);
    let floor_rate = median(results[0].iter().map(|r| r.calls_per_s)).unwrap_or(f64::NAN);
    let floor_cpu = median(results[0].iter().filter_map(|r| r.server_cpu_us));
    let mut client_bound = false;
    for (target, rounds) in targets.iter().zip(results) {
        let of = |f: fn(&Round) -> f64| median(rounds.iter().map(f)).unwrap_or(f64::NAN);
        let (p50, rate, busy) = (of(|r| r.p50_us), of(|r| r.calls_per_s), of(|r| r.client_busy));
        let lo = rounds.iter().map(|r| r.p50_us).fold(f64::INFINITY, f64::min);
        let hi = rounds.iter().map(|r| r.p50_us).fold(0.0, f64::max);
        let cpu = median(rounds.iter().filter_map(|r| r.server_cpu_us));
        let server = cpu.map_or_else(|| "-".to_owned(), |us| format!("{}/call", micros(us)));
        let cpu_ratio = match (cpu, floor_cpu) {
            (Some(own), Some(floor)) => format!("{:.2}x", own / floor),
            _ => "-".to_owned(),
        };
        client_bound |= busy > CLIENT_BOUND;
        println!(
            "   {:<16} {:>9} {:>9} {:>9} {:>6.2}x {:>15} {:>9} {:>6.2}x {:>12} {:>7} {:>6.0}%{}",
            target.name,
            micros(p50),
            micros(of(|r| r.p90_us)),
            micros(of(|r| r.p99_us)),
            p50 / floor_p50,
            format!("{:.0}..{:.0}", lo, hi),
            rate_text(rate),
            rate / floor_rate,
            server,
            cpu_ratio,
            busy * 100.0,
            if busy > CLIENT_BOUND { " *" } else { "" },
        );
    }
    println!(
        "   (p50/fl, tput/fl, CPU/fl: ratio to the floor; server CPU: the server's CPU time per call \
         in the throughput phase; client: the load generator's busy fraction then)"
    );
    if client_bound {
        println!(
            "   * the load generator was busy over {:.0}% of the time: that throughput is a lower \
             bound of what the server can serve (compare server CPU per call instead)",
            CLIENT_BOUND * 100.0
        );
    }
}

/// The streams mode's table.
pub fn streams(plan: &Plan, targets: &[Target], results: &[Held]) {
    println!(
        "\n== streams: {} open FetchX509SVID streams, {} per connection (attestd's SVIDs live {}; \
         pushes awaited up to {})",
        plan.streams,
        plan.streams_per_connection,
        humantime::format_duration(plan.x509_ttl),
        humantime::format_duration(plan.push_deadline),
    );
    println!(
        "   {:<16} {:>7} {:>8} {:>11} {:>11} {:>11} {:>7} {:>14} {:>10} {:>10}",
        "target",
        "opened",
        "in",
        "RSS before",
        "RSS after",
        "per stream",
        "vs fl",
        "missed pushes",
        "push wait",
        "CPU/push"
    );
    let floor = results[0].kib_per_stream();
    for (target, held) in targets.iter().zip(results) {
        let per_stream = held.kib_per_stream();
        let ratio = match (per_stream, floor) {
            (Some(own), Some(floor)) => format!("{:.2}x", own / floor),
            _ => "-".to_owned(),
        };
        println!(
            "   {:<16} {:>7} {:>7.1}s {:>11} {:>11} {:>11} {:>7} {:>14} {:>9.1}s {:>10}",
            target.name,
            held.opened,
            held.open_time.as_secs_f64(),
            held.rss_before_kib.map_or_else(|| "-".into(), mebibytes),
            held.rss_after_kib.map_or_else(|| "-".into(), mebibytes),
            per_stream.map_or_else(|| "-".into(), |kib| format!("{kib:.1} KiB")),
            ratio,
            held.missed_pushes
                .map_or_else(|| "n/a".into(), |missed| missed.to_string()),
            held.push_wait.as_secs_f64(),
            held.cpu_per_push_us.map_or_else(|| "-".into(), micros),
        );
        if held.failed > 0 {
            println!(
                "     {} streams could not be opened; the first: {}",
                held.failed,
                held.first_error.as_deref().unwrap_or("?")
            );
        }
        if held.ended_early > 0 {
            println!(
                "     {} streams were ended by the server while held",
                held.ended_early
            );
        }
    }
    println!(
        "   (per stream: RSS growth over streams opened; missed pushes: streams with no message from \
         the moment all were open until the deadline, n/a for the floor, which never rotates; \
         CPU/push: the server's CPU time meanwhile per message pushed)"
    );
}

/// Each server's memory as the mode ends.
pub fn memory(mode: Mode, targets: &[Target]) {
    let figures: Vec<String> = targets
        .iter()
        .filter_map(|target| {
            let memory = procfs::memory(target.pid?).ok()?;
            Some(format!(
                "{} {} (peak {})",
                target.name,
                mebibytes(memory.rss_kib),
                mebibytes(memory.hwm_kib)
            ))
        })
        .collect();
    if !figures.is_empty() {
        println!("   server RSS after {}: {}", mode.name(), figures.join(", "));
    }
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn rate_text(per_s: f64) -> String {
    if per_s >= 1000.0 {
        format!("{:.1}k", per_s / 1000.0)
    } else {
        format!("{per_s:.0}")
    }
}

fn mebibytes(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

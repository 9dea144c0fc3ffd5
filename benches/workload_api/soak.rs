//! The soak modes: attestd held under load over time, checked for what an
//! operator is promised rather than timed.
//!
//! - `soak`: `--streams` FetchX509SVID streams held through `--rotations`
//!   rotations, every client reading: every rotation must reach every
//!   stream before the SVID it replaces expires; VmRSS must stay within
//!   5% after warm-up (the first two rotations) and the daemon's open
//!   descriptors must not grow. Then `--stalled` streams on connections
//!   that stop reading are opened beside them and `--stalled-rotations`
//!   more rotations are measured: the reading clients' push delays with
//!   and without the stalled ones.
//! - `mixed` (see [`mixed`]): fetches, JWTs, streams opening and closing
//!   and policy edits for `--duration`, beside streams held throughout.
//!
//! Either exits non-zero on a missed or late push, a message without the
//! identity, a stream the server ended, descriptor growth, the daemon's
//! death, or (in a full run) memory drift beyond 5%.

pub mod mixed;
mod sampler;
mod stall;
mod tracker;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::task::JoinSet;

use attestd::client;

use crate::cli::Plan;
use crate::streams::{self, OPENING_AT_ONCE};
use crate::targets::{self, Setup, Target};
use sampler::{Drift, Sample, Sampler};
use tracker::{Totals, Tracker};

/// The identity attestd's generated entry serves.
const SPIFFE_ID: &str = "spiffe://bench.example/agent";
/// Rotations that count as warm-up for the memory figure.
const WARM_ROTATIONS: usize = 2;
/// The most VmRSS may grow after warm-up.
const MAX_DRIFT: f64 = 0.05;
/// Descriptors the daemon may hold beyond its count at warm-up at a quiet
/// moment (an attestation or audit write in flight); a leak grows by one
/// or more per connection or rotation, thousands here.
const DESCRIPTOR_SLACK: usize = 8;
/// Streams on each stalled connection (attestd's default per-connection
/// limit): the more messages queue per socket, the sooner it fills.
const STALLED_PER_CONNECTION: usize = 16;

/// Runs the soak mode.
pub fn run(plan: &Plan, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let stalled_connections = plan.stalled.div_ceil(STALLED_PER_CONNECTION);
    let connections = plan.stream_connections() + stalled_connections;
    need_descriptors(connections)?;
    let dir = tempfile::tempdir()?;
    let setup = Setup::Soak {
        connections,
        x509_ttl: plan.x509_ttl,
    };
    let target = targets::start_alone(dir.path(), setup)?;
    let outcome = runtime.block_on(soak(&target, plan));
    let outcome = outcome.and_then(|soak| {
        soak.print(plan);
        soak.verdict(plan)
    });
    outcome.with_context(|| {
        format!(
            "soak (attestd's log: {})",
            dir.path().join("attestd/attestd.log").display()
        )
    })
}

/// Fails unless the descriptor limit, raised as far as this process may,
/// holds `connections` (the soak must hold every stream it is asked for).
fn need_descriptors(connections: usize) -> anyhow::Result<()> {
    let wanted = targets::descriptors_for(connections);
    let limit = targets::raise_descriptor_limit(wanted)?;
    anyhow::ensure!(
        limit >= wanted,
        "{connections} connections need a descriptor limit of {wanted}; RLIMIT_NOFILE is {limit} and \
         cannot be raised without CAP_SYS_RESOURCE: give a larger --streams-per-connection"
    );
    Ok(())
}

/// What a soak run showed.
struct Soak {
    readers: usize,
    open_time: Duration,
    stalled: usize,
    totals: Totals,
    /// Memory after warm-up, to the end of the reading phase.
    drift: Option<Drift>,
    /// Descriptors at quiet moments (each rotation delivered everywhere),
    /// reading phase only: at warm-up, and the most since.
    descriptors_warm: usize,
    descriptors_max: usize,
    /// VmRSS at the end of the reading phase and of the stalled one.
    rss_reading_end: u64,
    rss_stalled_end: Option<u64>,
    /// Bytes lying unread in the stalled connections' sockets at the end:
    /// the most on one, and the total.
    stalled_unread: (usize, usize),
    samples: Vec<Sample>,
    alive: bool,
}

async fn soak(target: &Target, plan: &Plan) -> anyhow::Result<Soak> {
    let pid = target.pid.context("attestd without a pid")?;
    warm(&target.socket).await?;
    let sampler = Sampler::start(pid, Duration::from_secs(1))?;
    let tracker = Tracker::new(SPIFFE_ID, plan.x509_ttl);
    let mut readers = JoinSet::new();
    let started = Instant::now();
    let opened = open_readers(target, plan, &tracker, &mut readers).await?;
    let open_time = started.elapsed();

    tracker.begin_phase("all reading");
    let mut quiet = Vec::new();
    let warm_at = rotations(&tracker, &sampler, plan, plan.rotations, &mut quiet).await?;
    let reading_end = sampler.elapsed();
    let rss_reading_end = sampler.sample()?.rss_kib;
    let descriptors_warm = quiet.get(WARM_ROTATIONS - 1).copied().unwrap_or(0);
    let descriptors_max = quiet
        .iter()
        .skip(WARM_ROTATIONS)
        .copied()
        .max()
        .unwrap_or(descriptors_warm);

    let mut stalled = Vec::new();
    let mut rss_stalled_end = None;
    if plan.stalled > 0 {
        stalled = open_stalled(&target.socket, plan.stalled).await?;
        tracker.begin_phase("beside stalled clients");
        rotations(&tracker, &sampler, plan, plan.stalled_rotations, &mut Vec::new()).await?;
        rss_stalled_end = Some(sampler.sample()?.rss_kib);
    }
    let unread: Vec<usize> = stalled.iter().map(stall::Stalled::unread).collect();
    let stalled_unread = (unread.iter().copied().max().unwrap_or(0), unread.iter().sum());
    let totals = tracker.settle(plan.x509_ttl / 2).await;
    let samples = sampler.samples();
    let alive = sampler.alive();
    drop(stalled);
    readers.shutdown().await;
    Ok(Soak {
        readers: opened,
        open_time,
        stalled: plan.stalled,
        drift: warm_at.and_then(|warm| Drift::of(&samples, warm, reading_end)),
        totals,
        descriptors_warm,
        descriptors_max,
        rss_reading_end,
        rss_stalled_end,
        stalled_unread,
        samples,
        alive,
    })
}

/// Three calls: the SVID minted and the caches filled before anything is
/// measured.
async fn warm(socket: &Path) -> anyhow::Result<()> {
    for _ in 0..3 {
        let mut client = client::connect(socket).await?;
        client::fetch_x509(&mut client).await?;
    }
    Ok(())
}

/// Opens `plan.streams` reading streams, `plan.streams_per_connection` per
/// connection, each followed by a task in `readers`; fails if any cannot
/// be opened (the daemon is configured to hold them all).
async fn open_readers(
    target: &Target,
    plan: &Plan,
    tracker: &Arc<Tracker>,
    readers: &mut JoinSet<()>,
) -> anyhow::Result<usize> {
    let per_connection = plan.streams_per_connection;
    let mut opening = futures::stream::iter(0..plan.stream_connections())
        .map(|i| {
            streams::open(
                &target.socket,
                per_connection.min(plan.streams - i * per_connection),
            )
        })
        .buffer_unordered(OPENING_AT_ONCE);
    let mut opened = 0;
    while let Some(result) = opening.next().await {
        let (connection, streams) = result.context("opening the reading streams")?;
        for (stream, first) in streams {
            let index = tracker.add_reader(&first)?;
            readers.spawn(Arc::clone(tracker).follow(index, connection.clone(), stream, first));
            opened += 1;
        }
    }
    Ok(opened)
}

/// Opens `count` streams on connections that then stop reading.
async fn open_stalled(socket: &Path, count: usize) -> anyhow::Result<Vec<stall::Stalled>> {
    let sizes = (0..count.div_ceil(STALLED_PER_CONNECTION))
        .map(|i| STALLED_PER_CONNECTION.min(count - i * STALLED_PER_CONNECTION));
    futures::stream::iter(sizes)
        .map(|size| stall::open(socket, size))
        .buffer_unordered(OPENING_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("opening the stalled streams")
}

/// Waits for `count` rotations in the current phase, each delivered to
/// every reading stream (or the next one begun), sampling the daemon's
/// descriptors into `quiet` when one is delivered everywhere. Returns when
/// warm-up ended (the [`WARM_ROTATIONS`]th delivered), if it did.
async fn rotations(
    tracker: &Tracker,
    sampler: &Sampler,
    plan: &Plan,
    count: usize,
    quiet: &mut Vec<usize>,
) -> anyhow::Result<Option<Duration>> {
    // A rotation every half TTL or so: allow each twice that, and more.
    let deadline = Instant::now() + plan.x509_ttl * (count as u32 + 2);
    let mut warm_at = None;
    let mut delivered = 0;
    loop {
        let (seen, done) = tracker.progress();
        if done && seen > delivered {
            delivered = seen;
            quiet.push(sampler.sample()?.descriptors);
            if delivered == WARM_ROTATIONS {
                warm_at = Some(sampler.elapsed());
            }
        }
        if delivered >= count || seen > count {
            return Ok(warm_at);
        }
        anyhow::ensure!(sampler.alive(), "attestd is no longer running");
        if Instant::now() >= deadline {
            eprintln!(
                "warning: only {seen} of {count} rotations within {:?}",
                plan.x509_ttl * (count as u32 + 2)
            );
            return Ok(warm_at);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Soak {
    fn print(&self, plan: &Plan) {
        println!(
            "\n== soak: {} reading streams ({} per connection), SVIDs living {}",
            self.readers,
            plan.streams_per_connection,
            humantime::format_duration(plan.x509_ttl)
        );
        println!("   opened in {:.1} s", self.open_time.as_secs_f64());
        print_pushes(&self.totals);
        match &self.drift {
            Some(drift) => print_drift(drift),
            None => println!("   VmRSS drift: too few samples after warm-up"),
        }
        println!(
            "   descriptors at quiet moments: {} at warm-up, at most {} after (growth {})",
            self.descriptors_warm,
            self.descriptors_max,
            self.descriptors_max as i64 - self.descriptors_warm as i64
        );
        if let (Some(end), [reading, stalled]) = (self.rss_stalled_end, self.totals.phases.as_slice()) {
            let [r50, r99, rmax] = reading.delay_figures();
            let [s50, s99, smax] = stalled.delay_figures();
            println!(
                "   {} stalled streams ({} per connection): reading clients' push delay p50/p99/max \
                 {r50:.0}/{r99:.0}/{rmax:.0} ms without, {s50:.0}/{s99:.0}/{smax:.0} ms beside them; \
                 VmRSS {} -> {} KiB; unread in their sockets at the end: {} KiB in all, at most {} KiB on one",
                self.stalled,
                STALLED_PER_CONNECTION,
                self.rss_reading_end,
                end,
                self.stalled_unread.1 / 1024,
                self.stalled_unread.0 / 1024
            );
        }
        print_timeline(&self.samples);
        println!("   attestd {}", if self.alive { "still running" } else { "DIED" });
    }

    fn verdict(&self, plan: &Plan) -> anyhow::Result<()> {
        let mut failures = push_failures(&self.totals);
        if !self.alive {
            failures.push("attestd died".to_owned());
        }
        if self.descriptors_max > self.descriptors_warm + DESCRIPTOR_SLACK {
            failures.push(format!(
                "descriptors grew from {} to {}",
                self.descriptors_warm, self.descriptors_max
            ));
        }
        if let Some(drift) = self.drift.filter(|d| !plan.short && d.fraction() > MAX_DRIFT) {
            failures.push(format!(
                "VmRSS grew {:.1}% after warm-up",
                drift.fraction() * 100.0
            ));
        }
        anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
        Ok(())
    }
}

/// Push figures, per phase.
fn print_pushes(totals: &Totals) {
    for phase in &totals.phases {
        let [p50, p99, max] = phase.delay_figures();
        println!(
            "   {}: {} rotations, pushes expected {} received {} missed {}; push delay after the first \
             stream p50/p99/max {p50:.0}/{p99:.0}/{max:.0} ms; at most {} s after issue",
            phase.name,
            phase.rotations,
            phase.expected,
            phase.received,
            phase.missed(),
            phase.max_since_issue.as_secs()
        );
    }
    println!(
        "   late pushes {} (arrived after the previous SVID's expiry), stale at the end {}, \
         messages without the identity {}, streams ended by the server {}, repeats {}",
        totals.late, totals.stale, totals.lost, totals.ended, totals.repeats
    );
}

fn print_drift(drift: &Drift) {
    println!(
        "   VmRSS after warm-up ({} samples): {:.0} -> {:.0} KiB ({:+.2}%), min {} max {} KiB",
        drift.samples,
        drift.start_kib,
        drift.end_kib,
        drift.fraction() * 100.0,
        drift.min_kib,
        drift.max_kib
    );
}

/// About a dozen samples spread over the run: time, VmRSS, descriptors.
fn print_timeline(samples: &[Sample]) {
    let step = (samples.len() / 12).max(1);
    let line: Vec<String> = samples
        .iter()
        .step_by(step)
        .chain(samples.last())
        .map(|s| format!("{}s {}MiB {}fd", s.at.as_secs(), s.rss_kib / 1024, s.descriptors))
        .collect();
    println!("   over time: {}", line.join(", "));
}

/// The failures push figures show.
fn push_failures(totals: &Totals) -> Vec<String> {
    let mut failures = Vec::new();
    for (count, what) in [
        (totals.missed(), "missed pushes"),
        (totals.late, "late pushes"),
        (totals.stale, "streams holding an expired SVID at the end"),
        (totals.lost, "messages without the identity"),
        (totals.ended, "streams ended by the server"),
    ] {
        if count > 0 {
            failures.push(format!("{count} {what}"));
        }
    }
    if totals.phases.iter().any(|p| p.rotations == 0) {
        failures.push("a phase saw no rotation".to_owned());
    }
    failures
}

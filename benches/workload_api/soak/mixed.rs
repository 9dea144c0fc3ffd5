//! The mixed mode: for `--duration`, beside `--streams` streams held
//! throughout and checked for every rotation push, a steady load of every
//! kind of call a host sees (fixed rates, so that an hour's run measures
//! the same load from start to end):
//! - FetchX509SVID on a new connection per call, and on an open one;
//! - FetchJWTSVID on an open connection;
//! - streams opened, read once, held 0 to 10 s and closed;
//! - policy edits: an entries file rewritten in `entries_dir`, alternately
//!   giving the load generator a second identity and taking it away (every
//!   held stream then gets a message) beside entries for other uids.
//!
//! Descriptors are counted after warm-up with only the held streams open,
//! and again after the load has stopped: any growth fails the run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use attestd::client;

use super::sampler::{self, Drift, Sample, Sampler};
use super::tracker::{Totals, Tracker};
use super::{DESCRIPTOR_SLACK, MAX_DRIFT, SPIFFE_ID};
use crate::cli::Plan;
use crate::streams;
use crate::targets::{self, JWT_AUDIENCE, Setup, Target};

/// Calls per second of each kind, and how often the policy changes.
const NEW_CONNECTION_PER_S: u32 = 20;
const OPEN_CONNECTION_PER_S: u32 = 20;
const JWT_PER_S: u32 = 10;
const STREAM_OPENS_PER_S: u32 = 5;
const LONGEST_SHORT_STREAM: Duration = Duration::from_secs(10);
const POLICY_EDIT_EVERY: Duration = Duration::from_secs(20);
/// Entries for other uids in the edited file.
const OTHER_ENTRIES: usize = 20;
/// The identity a policy edit gives the load generator and takes away.
const EXTRA_ID: &str = "spiffe://bench.example/extra";

/// The kinds of load, in the order reported.
const KINDS: [&str; 5] = [
    "FetchX509SVID, new connection",
    "FetchX509SVID, open connection",
    "FetchJWTSVID",
    "short streams",
    "policy edits",
];

/// Calls made and failed, per kind.
#[derive(Default)]
struct Counters {
    done: [AtomicUsize; KINDS.len()],
    failed: [AtomicUsize; KINDS.len()],
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn count(&self, kind: usize, result: anyhow::Result<()>) {
        match result {
            Ok(()) => self.done[kind].fetch_add(1, Ordering::Relaxed),
            Err(error) => {
                self.first_error
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .get_or_insert_with(|| format!("{}: {error:#}", KINDS[kind]));
                self.failed[kind].fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn failed(&self) -> usize {
        self.failed.iter().map(|f| f.load(Ordering::Relaxed)).sum()
    }
}

/// Runs the mixed mode.
pub fn run(plan: &Plan, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    // The short streams (at most STREAM_OPENS_PER_S for
    // LONGEST_SHORT_STREAM) and calls fit in the daemon's spare connections.
    let connections = plan.stream_connections();
    super::need_descriptors(connections)?;
    let dir = tempfile::tempdir()?;
    let setup = Setup::Soak {
        connections,
        x509_ttl: plan.x509_ttl,
    };
    let target = targets::start_alone(dir.path(), setup)?;
    let entries = targets::entries_dir(dir.path());
    let outcome = runtime.block_on(mixed(&target, &entries, plan));
    let outcome = outcome.and_then(|mixed| {
        mixed.print(plan);
        mixed.verdict(plan)
    });
    outcome.with_context(|| {
        format!(
            "mixed (attestd's log: {})",
            dir.path().join("attestd/attestd.log").display()
        )
    })
}

/// What a mixed run showed.
struct Mixed {
    readers: usize,
    elapsed: Duration,
    counters: Arc<Counters>,
    totals: Totals,
    drift: Option<Drift>,
    descriptors_before: usize,
    descriptors_after: usize,
    samples: Vec<Sample>,
    alive: bool,
}

async fn mixed(target: &Target, entries: &Path, plan: &Plan) -> anyhow::Result<Mixed> {
    let pid = target.pid.context("attestd without a pid")?;
    super::warm(&target.socket).await?;
    let every = if plan.short {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let sampler = Sampler::start(pid, every)?;
    let tracker = Tracker::new(SPIFFE_ID, plan.x509_ttl);
    let mut readers = JoinSet::new();
    let readers_opened = super::open_readers(target, plan, &tracker, &mut readers).await?;
    tracker.begin_phase("mixed load");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let descriptors_before = sampler::descriptors(pid)?;

    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let mut load = JoinSet::new();
    spawn_load(&mut load, &target.socket, entries, &counters, &stopped).await?;
    let started = Instant::now();
    let mut reported = Instant::now();
    while started.elapsed() < plan.duration {
        anyhow::ensure!(sampler.alive(), "attestd died after {:?}", started.elapsed());
        if reported.elapsed() >= Duration::from_secs(300) {
            reported = Instant::now();
            progress(started.elapsed(), &counters, &sampler);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let load_end = sampler.elapsed();
    let elapsed = started.elapsed();
    stop.send_replace(true);
    while load.join_next().await.is_some() {}
    let totals = tracker.settle(plan.x509_ttl / 2).await;
    // The closed connections' descriptors released.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let descriptors_after = sampler::descriptors(pid)?;
    let warm = (plan.duration / 10).max(plan.x509_ttl * 2);
    let samples = sampler.samples();
    let alive = sampler.alive();
    readers.shutdown().await;
    Ok(Mixed {
        readers: readers_opened,
        elapsed,
        counters,
        totals,
        drift: Drift::of(&samples, load_end - plan.duration + warm, load_end),
        descriptors_before,
        descriptors_after,
        samples,
        alive,
    })
}

fn progress(elapsed: Duration, counters: &Counters, sampler: &Sampler) {
    let done: usize = counters.done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
    let last = sampler.samples().last().copied();
    eprintln!(
        "mixed: {} min, {done} calls, {} failed, VmRSS {} KiB, {} descriptors",
        elapsed.as_secs() / 60,
        counters.failed(),
        last.map_or(0, |s| s.rss_kib),
        last.map_or(0, |s| s.descriptors)
    );
}

/// Starts every kind of load in `load`, until `stopped` changes.
async fn spawn_load(
    load: &mut JoinSet<()>,
    socket: &Path,
    entries: &Path,
    counters: &Arc<Counters>,
    stopped: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let per_second = |n: u32| Duration::from_secs(1) / n;
    let socket = socket.to_owned();
    let open = client::connect(&socket).await?;
    let every = [
        per_second(NEW_CONNECTION_PER_S),
        per_second(OPEN_CONNECTION_PER_S),
        per_second(JWT_PER_S),
        per_second(STREAM_OPENS_PER_S),
        POLICY_EDIT_EVERY,
    ];
    for (kind, period) in every.into_iter().enumerate() {
        let (counters, mut stopped) = (Arc::clone(counters), stopped.clone());
        let (socket, open, entries) = (socket.clone(), open.clone(), entries.to_owned());
        load.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut short_streams = JoinSet::new();
            let mut edits = 0usize;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => break,
                }
                let result = match kind {
                    0 => new_connection_fetch(&socket).await,
                    1 => client::fetch_x509(&mut open.clone())
                        .await
                        .map(drop)
                        .map_err(Into::into),
                    2 => jwt(&mut open.clone()).await,
                    3 => short_stream(&socket, &mut short_streams).await,
                    _ => {
                        edits += 1;
                        edit_policy(&entries, edits)
                    }
                };
                counters.count(kind, result);
                while short_streams.try_join_next().is_some() {}
            }
            short_streams.shutdown().await;
        });
    }
    Ok(())
}

async fn new_connection_fetch(socket: &Path) -> anyhow::Result<()> {
    let mut client = client::connect(socket).await?;
    let answer = client::fetch_x509(&mut client).await?;
    anyhow::ensure!(!answer.svids.is_empty(), "an answer without an SVID");
    Ok(())
}

async fn jwt(client: &mut client::Client) -> anyhow::Result<()> {
    let answer = client::fetch_jwt(client, vec![JWT_AUDIENCE.to_owned()], Some(SPIFFE_ID.to_owned())).await?;
    anyhow::ensure!(!answer.svids.is_empty(), "an answer without a JWT-SVID");
    Ok(())
}

/// Opens a stream on a new connection, reads its first message and holds
/// it (in `held`) for a random time up to [`LONGEST_SHORT_STREAM`].
async fn short_stream(socket: &Path, held: &mut JoinSet<()>) -> anyhow::Result<()> {
    let (connection, opened) = streams::open(socket, 1).await?;
    let hold = rand::rng().random_range(Duration::ZERO..LONGEST_SHORT_STREAM);
    held.spawn(async move {
        tokio::time::sleep(hold).await;
        drop((connection, opened));
    });
    Ok(())
}

/// Rewrites the edited entries file (atomically: written beside it under a
/// name attestd ignores, then renamed): odd edits give the load generator
/// [`EXTRA_ID`] as well, even ones take it away.
fn edit_policy(entries: &Path, edit: usize) -> anyhow::Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    let mut text = String::new();
    if edit % 2 == 1 {
        text.push_str(&format!(
            "[[entry]]\nspiffe_id = \"{EXTRA_ID}\"\nselectors = [\"unix:uid:{uid}\"]\nowner = \"bench@example.org\"\n\n"
        ));
    }
    for other in 0..OTHER_ENTRIES {
        text.push_str(&format!(
            "[[entry]]\nspiffe_id = \"spiffe://bench.example/other/{other}\"\n\
             selectors = [\"unix:uid:{}\"]\nowner = \"bench@example.org\"\ndescription = \"edit {edit}\"\n\n",
            100_000 + other
        ));
    }
    let file: PathBuf = entries.join("edited.toml");
    let temporary = entries.join(".edited.toml.new");
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &file).with_context(|| format!("renaming to {}", file.display()))?;
    Ok(())
}

impl Mixed {
    fn print(&self, plan: &Plan) {
        println!(
            "\n== mixed: {} of load beside {} held streams ({} per connection), SVIDs living {}",
            humantime::format_duration(Duration::from_secs(self.elapsed.as_secs())),
            self.readers,
            plan.streams_per_connection,
            humantime::format_duration(plan.x509_ttl)
        );
        for (kind, name) in KINDS.iter().enumerate() {
            println!(
                "   {name}: {} done, {} failed",
                self.counters.done[kind].load(Ordering::Relaxed),
                self.counters.failed[kind].load(Ordering::Relaxed)
            );
        }
        if let Some(error) = self.counters.first_error.lock().ok().and_then(|e| e.clone()) {
            println!("   first failure: {error}");
        }
        super::print_pushes(&self.totals);
        match &self.drift {
            Some(drift) => super::print_drift(drift),
            None => println!("   VmRSS drift: too few samples after warm-up"),
        }
        println!(
            "   descriptors with only the held streams open: {} before the load, {} after (growth {})",
            self.descriptors_before,
            self.descriptors_after,
            self.descriptors_after as i64 - self.descriptors_before as i64
        );
        super::print_timeline(&self.samples);
        println!("   attestd {}", if self.alive { "still running" } else { "DIED" });
    }

    fn verdict(&self, plan: &Plan) -> anyhow::Result<()> {
        let mut failures = super::push_failures(&self.totals);
        if !self.alive {
            failures.push("attestd died".to_owned());
        }
        if self.counters.failed() > 0 {
            failures.push(format!("{} calls failed", self.counters.failed()));
        }
        if self.descriptors_after > self.descriptors_before + DESCRIPTOR_SLACK {
            failures.push(format!(
                "descriptors grew from {} to {}",
                self.descriptors_before, self.descriptors_after
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

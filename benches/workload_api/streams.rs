//! The streams mode: hold many FetchX509SVID streams open, one connection
//! each by default (as many workloads each watching its identity would),
//! and read what they cost the server; then, with every stream open, wait
//! for each to get a message (the rotation push), reading what the server
//! spends per message pushed.
//!
//! One round per target, on a server started for this mode: memory freed
//! when streams close stays with the allocator, so a second round on the
//! same server would measure reuse, not growth.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use tokio::task::JoinSet;
use tonic::Streaming;

use attestd::client::{self, Client};
use attestd::proto::{X509svidRequest, X509svidResponse};

use crate::cli::Plan;
use crate::procfs;
use crate::targets::{Kind, Target};

/// Connections being opened at once.
pub const OPENING_AT_ONCE: usize = 32;
/// Let the server finish what opening set off before reading its memory.
const SETTLE: Duration = Duration::from_millis(500);

/// What holding the streams showed for one target.
#[derive(Debug)]
pub struct Held {
    pub opened: usize,
    /// Streams that could not be opened, and the first reason.
    pub failed: usize,
    pub first_error: Option<String>,
    /// How long opening them all took.
    pub open_time: Duration,
    /// Server VmRSS before the first stream and with all of them open, KiB.
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// Streams that got no message between the moment all were open and
    /// the deadline (`None`: the floor never rotates, nothing to wait for).
    pub missed_pushes: Option<usize>,
    /// From the moment all were open until every stream had its push (or
    /// the deadline).
    pub push_wait: Duration,
    /// The server's CPU time per message pushed meanwhile, in microseconds.
    pub cpu_per_push_us: Option<f64>,
    /// Streams the server ended while they were held.
    pub ended_early: usize,
}

impl Held {
    /// Server memory per open stream, in KiB.
    pub fn kib_per_stream(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        (self.opened > 0).then(|| (after as f64 - before as f64) / self.opened as f64)
    }
}

/// Holds `plan.streams` streams on each target in turn.
pub async fn measure(targets: &[Target], plan: &Plan) -> anyhow::Result<Vec<Held>> {
    let mut results = Vec::with_capacity(targets.len());
    for target in targets {
        let held = hold(target, plan)
            .await
            .with_context(|| format!("streams: {}", target.name))?;
        results.push(held);
    }
    Ok(results)
}

async fn hold(target: &Target, plan: &Plan) -> anyhow::Result<Held> {
    // The identity minted and the caches filled before the baseline.
    for _ in 0..3 {
        let mut client = client::connect(&target.socket).await?;
        client::fetch_x509(&mut client).await?;
    }
    tokio::time::sleep(SETTLE).await;
    let rss = || target.pid.map(procfs::memory).transpose();
    let rss_before_kib = rss()?.map(|m| m.rss_kib);

    let counts = Arc::new(Counts::default());
    let mut holders = JoinSet::new();
    let (mut opened, mut failed, mut first_error) = (0, 0, None);
    let started = Instant::now();
    let per_connection = plan.streams_per_connection;
    let mut opening = futures::stream::iter(0..plan.stream_connections())
        .map(|i| {
            let streams = per_connection.min(plan.streams - i * per_connection);
            async move { (streams, open(&target.socket, streams).await) }
        })
        .buffer_unordered(OPENING_AT_ONCE);
    while let Some((wanted, result)) = opening.next().await {
        match result {
            Ok((connection, streams)) => {
                opened += streams.len();
                for (stream, _first) in streams {
                    holders.spawn(watch(connection.clone(), stream, Arc::clone(&counts)));
                }
            }
            Err(error) => {
                failed += wanted;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    let open_time = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss()?.map(|m| m.rss_kib);

    let pushes = match target.kind {
        Kind::Floor => None,
        Kind::Attestd | Kind::External => {
            Some(await_pushes(target, &counts, opened, plan.push_deadline).await?)
        }
    };
    holders.shutdown().await;
    Ok(Held {
        opened,
        failed,
        first_error,
        open_time,
        rss_before_kib,
        rss_after_kib,
        missed_pushes: pushes.as_ref().map(|p| p.missed),
        push_wait: pushes.as_ref().map_or(Duration::ZERO, |p| p.wait),
        cpu_per_push_us: pushes.and_then(|p| p.cpu_per_push_us),
        ended_early: counts.ended.load(Ordering::Relaxed),
    })
}

/// What waiting for a push on every open stream showed.
struct Pushes {
    missed: usize,
    wait: Duration,
    cpu_per_push_us: Option<f64>,
}

/// Counts, from now, the streams that get a message, until all `opened`
/// have or `deadline` passes; and the server's CPU time per message pushed
/// meanwhile (about one rotation delivered to every stream).
async fn await_pushes(
    target: &Target,
    counts: &Counts,
    opened: usize,
    deadline: Duration,
) -> anyhow::Result<Pushes> {
    let cpu_before = target.pid.map(procfs::cpu_time).transpose()?;
    let messages_before = counts.messages.load(Ordering::Relaxed);
    let started = Instant::now();
    counts.armed.store(true, Ordering::Relaxed);
    while counts.pushed.load(Ordering::Relaxed) < opened && started.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wait = started.elapsed();
    let messages = counts.messages.load(Ordering::Relaxed) - messages_before;
    let cpu_per_push_us = match (target.pid, cpu_before) {
        (Some(pid), Some(before)) if messages > 0 => {
            Some((procfs::cpu_time(pid)? - before).as_secs_f64() * 1e6 / messages as f64)
        }
        _ => None,
    };
    Ok(Pushes {
        missed: opened - counts.pushed.load(Ordering::Relaxed).min(opened),
        wait,
        cpu_per_push_us,
    })
}

/// A stream open on a connection, and the first message it got.
pub type Opened = (Streaming<X509svidResponse>, X509svidResponse);

/// A new connection with `streams` FetchX509SVID streams on it, each of
/// which has had its first message.
pub async fn open(socket: &Path, streams: usize) -> anyhow::Result<(Client, Vec<Opened>)> {
    open_on(client::connect(socket).await?, streams).await
}

/// `streams` FetchX509SVID streams on `connection`, each with its first
/// message.
pub async fn open_on(connection: Client, streams: usize) -> anyhow::Result<(Client, Vec<Opened>)> {
    let opening = (0..streams).map(|_| {
        let mut connection = connection.clone();
        async move {
            let mut stream = connection.fetch_x509svid(X509svidRequest {}).await?.into_inner();
            let first = stream
                .message()
                .await?
                .context("the stream ended before its first message")?;
            anyhow::ensure!(!first.svids.is_empty(), "a first message without an SVID");
            Ok((stream, first))
        }
    });
    let streams = futures::future::try_join_all(opening).await?;
    Ok((connection, streams))
}

#[derive(Debug, Default)]
struct Counts {
    /// Set once every stream is open: pushes count from then on.
    armed: AtomicBool,
    /// Streams that got a message since `armed` was set.
    pushed: AtomicUsize,
    /// Messages after the first, on all streams.
    messages: AtomicUsize,
    /// Streams the server ended.
    ended: AtomicUsize,
}

/// Reads a stream until it ends (or the task is aborted), counting its
/// messages and, once armed, its first push. Holds the connection: the
/// stream lives on it.
async fn watch(_connection: Client, mut stream: Streaming<X509svidResponse>, counts: Arc<Counts>) {
    let mut pushed = false;
    while let Ok(Some(_)) = stream.message().await {
        counts.messages.fetch_add(1, Ordering::Relaxed);
        if !pushed && counts.armed.load(Ordering::Relaxed) {
            pushed = true;
            counts.pushed.fetch_add(1, Ordering::Relaxed);
        }
    }
    counts.ended.fetch_add(1, Ordering::Relaxed);
}

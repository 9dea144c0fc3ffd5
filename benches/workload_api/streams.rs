//! The streams mode: hold many FetchX509SVID streams open, one connection
//! each (as many workloads each watching its identity would), and read
//! what they cost the server; then wait for every stream to get a message
//! after its first (the rotation push).
//!
//! One round per target, on a server started for this mode: memory freed
//! when streams close stays with the allocator, so a second round on the
//! same server would measure reuse, not growth.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Streams being opened at once.
const OPENING_AT_ONCE: usize = 32;
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
    /// Streams that got no message after their first within the deadline
    /// (`None`: the floor never rotates, nothing to wait for).
    pub missed_pushes: Option<usize>,
    /// From the last stream open until every stream had its push (or the
    /// deadline).
    pub push_wait: Duration,
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
    let mut opening = futures::stream::iter(0..plan.streams)
        .map(|_| open(&target.socket))
        .buffer_unordered(OPENING_AT_ONCE);
    while let Some(result) = opening.next().await {
        match result {
            Ok((connection, stream)) => {
                opened += 1;
                holders.spawn(watch(connection, stream, Arc::clone(&counts)));
            }
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    let open_time = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss()?.map(|m| m.rss_kib);

    let waiting = Instant::now();
    let missed_pushes = match target.kind {
        Kind::Floor => None,
        Kind::Attestd | Kind::External => {
            let deadline = waiting + plan.push_deadline;
            while counts.pushed.load(Ordering::Relaxed) < opened && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(opened - counts.pushed.load(Ordering::Relaxed).min(opened))
        }
    };
    let push_wait = waiting.elapsed();
    holders.shutdown().await;
    Ok(Held {
        opened,
        failed,
        first_error,
        open_time,
        rss_before_kib,
        rss_after_kib,
        missed_pushes,
        push_wait,
        ended_early: counts.ended.load(Ordering::Relaxed),
    })
}

/// A new connection with a FetchX509SVID stream that has had its first
/// message.
async fn open(socket: &Path) -> anyhow::Result<(Client, Streaming<X509svidResponse>)> {
    let mut connection = client::connect(socket).await?;
    let mut stream = connection.fetch_x509svid(X509svidRequest {}).await?.into_inner();
    let first = stream
        .message()
        .await?
        .context("the stream ended before its first message")?;
    anyhow::ensure!(!first.svids.is_empty(), "a first message without an SVID");
    Ok((connection, stream))
}

#[derive(Debug, Default)]
struct Counts {
    /// Streams that got a message after their first.
    pushed: AtomicUsize,
    /// Streams the server ended.
    ended: AtomicUsize,
}

/// Reads a stream until it ends (or the task is aborted), counting its
/// first push. Holds the connection: the stream lives on it.
async fn watch(_connection: Client, mut stream: Streaming<X509svidResponse>, counts: Arc<Counts>) {
    let mut pushed = false;
    while let Ok(Some(_)) = stream.message().await {
        if !pushed {
            pushed = true;
            counts.pushed.fetch_add(1, Ordering::Relaxed);
        }
    }
    counts.ended.fetch_add(1, Ordering::Relaxed);
}

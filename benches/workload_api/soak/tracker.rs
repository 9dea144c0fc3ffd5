//! Push tracking: every reading stream's SVIDs, checked as they arrive.
//!
//! A rotation is a new SVID (a new serial) of the tracked identity; all
//! streams of one caller get the same one (attestd caches SVIDs per
//! template). From the moment the tracker is armed, each rotation is
//! expected on every reading stream: **missed** counts the streams it did
//! not reach (by the end of the wait [`Tracker::settle`] allows), **late**
//! the arrivals after the expiry of the SVID the stream held before (the
//! client was left with an expired SVID; also a stream still holding an
//! expired SVID when the run ends). **Push delay** is how long after the
//! first reading stream a stream got a rotation: what the fan-out to the
//! others took.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tonic::Streaming;
use x509_parser::prelude::{FromDer, X509Certificate};

use attestd::client::Client;
use attestd::proto::X509svidResponse;

use crate::stats::percentile;

/// What the tracked identity's SVID in one message says.
struct Svid {
    serial: Vec<u8>,
    not_after: SystemTime,
}

/// A rotation seen by at least one reading stream.
struct Generation {
    /// When the first reading stream got it.
    first: Instant,
    not_after: SystemTime,
    /// Reading streams that got it.
    received: usize,
    /// The phase it was first seen in; `None` before the tracker was armed.
    phase: Option<usize>,
}

/// Figures of one phase.
#[derive(Debug, Default, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub rotations: usize,
    pub expected: usize,
    pub received: usize,
    /// Push delays (from the first reading stream's arrival), in ms.
    pub delays_ms: Vec<f64>,
    /// The longest time from an SVID's issue (its not-after less the TTL,
    /// to the second) to its arrival.
    pub max_since_issue: Duration,
}

impl Phase {
    pub fn missed(&self) -> usize {
        self.expected.saturating_sub(self.received)
    }

    /// p50, p99 and the maximum push delay, in ms.
    pub fn delay_figures(&self) -> [f64; 3] {
        let mut delays = self.delays_ms.clone();
        let max = delays.iter().copied().fold(0.0, f64::max);
        let mut at = |q| percentile(&mut delays, q).unwrap_or(f64::NAN);
        [at(0.5), at(0.99), max]
    }
}

#[derive(Default)]
struct State {
    generations: HashMap<Vec<u8>, Generation>,
    /// The SVID each reading stream holds: its expiry.
    holding: Vec<SystemTime>,
    phases: Vec<Phase>,
    /// Arrivals after the previous SVID expired (any time, armed or not).
    late: usize,
    /// Messages without the tracked identity.
    lost: usize,
    /// Reading streams the server ended, or that failed.
    ended: usize,
    /// Messages that carried the SVID the stream already held (bundle or
    /// policy changes).
    repeats: usize,
}

/// Shared by every reading stream's task.
pub struct Tracker {
    spiffe_id: String,
    ttl: Duration,
    state: Mutex<State>,
}

/// The run's totals, once settled.
#[derive(Debug, Clone)]
pub struct Totals {
    pub phases: Vec<Phase>,
    pub late: usize,
    pub lost: usize,
    pub ended: usize,
    pub repeats: usize,
    /// Reading streams holding an expired SVID at the end.
    pub stale: usize,
}

impl Totals {
    pub fn missed(&self) -> usize {
        self.phases.iter().map(Phase::missed).sum()
    }
}

impl Tracker {
    /// Tracks `spiffe_id`, whose SVIDs live `ttl`.
    pub fn new(spiffe_id: &str, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            spiffe_id: spiffe_id.to_owned(),
            ttl,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts phase `name`: rotations first seen from now on are expected
    /// on every reading stream, and counted in it.
    pub fn begin_phase(&self, name: &'static str) {
        self.state().phases.push(Phase {
            name,
            ..Phase::default()
        });
    }

    /// Rotations first seen in the current phase, and whether the newest of
    /// them has reached every reading stream.
    pub fn progress(&self) -> (usize, bool) {
        let state = self.state();
        let Some(current) = state.phases.len().checked_sub(1) else {
            return (0, false);
        };
        let readers = state.holding.len() - state.ended;
        let mut newest: Option<&Generation> = None;
        let mut count = 0;
        for generation in state.generations.values().filter(|g| g.phase == Some(current)) {
            count += 1;
            if newest.is_none_or(|n| generation.first > n.first) {
                newest = Some(generation);
            }
        }
        (count, newest.is_some_and(|g| g.received >= readers))
    }

    /// Waits until every rotation first seen so far has reached every
    /// reading stream, or `limit` passes; then counts. Rotations first seen
    /// later are not counted (they are in flight at the end).
    pub async fn settle(&self, limit: Duration) -> Totals {
        let stop = Instant::now();
        let deadline = stop + limit;
        loop {
            let done = {
                let state = self.state();
                let readers = state.holding.len() - state.ended;
                state
                    .generations
                    .values()
                    .filter(|g| g.phase.is_some() && g.first <= stop)
                    .all(|g| g.received >= readers)
            };
            if done || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let state = self.state();
        let readers = state.holding.len() - state.ended;
        let mut phases = state.phases.clone();
        for generation in state.generations.values().filter(|g| g.first <= stop) {
            if let Some(phase) = generation.phase.and_then(|p| phases.get_mut(p)) {
                phase.rotations += 1;
                phase.expected += readers;
                phase.received += generation.received.min(readers);
            }
        }
        let now = SystemTime::now();
        Totals {
            phases,
            late: state.late,
            lost: state.lost,
            ended: state.ended,
            repeats: state.repeats,
            stale: state.holding.iter().filter(|&&expiry| expiry < now).count(),
        }
    }

    /// Registers a reading stream that got `first`; its index for
    /// [`Tracker::follow`].
    pub fn add_reader(&self, first: &X509svidResponse) -> anyhow::Result<usize> {
        let svid = self.tracked(first)?;
        let mut state = self.state();
        state.holding.push(svid.not_after);
        Ok(state.holding.len() - 1)
    }

    /// Reads reading stream `index` until it ends (or the task is aborted),
    /// checking every message. Holds the connection: the stream lives on it.
    pub async fn follow(
        self: Arc<Self>,
        index: usize,
        _connection: Client,
        mut stream: Streaming<X509svidResponse>,
        first: X509svidResponse,
    ) {
        let mut held = match self.tracked(&first) {
            Ok(svid) => svid.serial,
            Err(_) => Vec::new(),
        };
        while let Ok(Some(message)) = stream.message().await {
            self.arrived(index, &mut held, &message);
        }
        self.state().ended += 1;
    }

    fn arrived(&self, index: usize, held: &mut Vec<u8>, message: &X509svidResponse) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let Ok(svid) = self.tracked(message) else {
            self.state().lost += 1;
            return;
        };
        let mut state = self.state();
        if svid.serial == *held {
            state.repeats += 1;
            return;
        }
        if wall > state.holding[index] {
            state.late += 1;
        }
        state.holding[index] = svid.not_after;
        let phase = state.phases.len().checked_sub(1);
        let generation = state
            .generations
            .entry(svid.serial.clone())
            .or_insert(Generation {
                first: now,
                not_after: svid.not_after,
                received: 0,
                phase,
            });
        generation.received += 1;
        let (first, not_after, of) = (generation.first, generation.not_after, generation.phase);
        if let Some(phase) = of.and_then(|p| state.phases.get_mut(p)) {
            phase
                .delays_ms
                .push(now.duration_since(first).as_secs_f64() * 1e3);
            let issued = not_after.checked_sub(self.ttl).unwrap_or(not_after);
            let since_issue = wall.duration_since(issued).unwrap_or_default();
            phase.max_since_issue = phase.max_since_issue.max(since_issue);
        }
        *held = svid.serial;
    }

    /// The tracked identity's SVID in `message`.
    fn tracked(&self, message: &X509svidResponse) -> anyhow::Result<Svid> {
        let svid = message
            .svids
            .iter()
            .find(|svid| svid.spiffe_id == self.spiffe_id)
            .with_context(|| format!("no SVID for {}", self.spiffe_id))?;
        let (_, cert) = X509Certificate::from_der(&svid.x509_svid).context("parsing the SVID")?;
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().max(0).unsigned_abs());
        Ok(Svid {
            serial: cert.raw_serial().to_vec(),
            not_after,
        })
    }
}

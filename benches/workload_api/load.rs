//! The request modes (new-conn, same-conn, jwt). Each round of each target
//! has two phases:
//! - latency: one client, one call at a time, `calls` calls, after a
//!   warm-up of a tenth as many (first calls pay for cache fills: hashing,
//!   minting);
//! - throughput: `clients` clients calling back to back for a fixed
//!   window; calls completed over time elapsed, with the CPU time the
//!   server and the load generator spent meanwhile.
//!
//! The load generator runs on a current-thread runtime: it has one CPU to
//! itself, and a second runtime thread would only share it. Its own busy
//! fraction is reported beside every throughput figure: near 100% it, not
//! the server, set the pace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;

use attestd::client::{self, Client};

use crate::cli::{Mode, Plan};
use crate::procfs;
use crate::stats::percentile;
use crate::targets::{JWT_AUDIENCE, Target};

/// What one call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Connect, FetchX509SVID, read its first message, disconnect.
    NewConnection,
    /// FetchX509SVID's first message on an open connection (the stream is
    /// then cancelled).
    X509,
    /// FetchJWTSVID on an open connection.
    Jwt,
}

impl Call {
    fn of(mode: Mode) -> Self {
        match mode {
            Mode::SameConn => Self::X509,
            Mode::Jwt => Self::Jwt,
            _ => Self::NewConnection,
        }
    }
}

/// One target's figures from one round.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Latency phase percentiles, in microseconds.
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// Throughput phase: calls per second.
    pub calls_per_s: f64,
    /// Throughput phase: the load generator's CPU time over wall time.
    pub client_busy: f64,
    /// Throughput phase: the server's CPU time per call, in microseconds
    /// (when its pid is known).
    pub server_cpu_us: Option<f64>,
}

/// Measures every target in `plan.rounds` alternating rounds; the result
/// holds each target's rounds, in the targets' order.
pub async fn measure(targets: &[Target], mode: Mode, plan: &Plan) -> anyhow::Result<Vec<Vec<Round>>> {
    let call = Call::of(mode);
    let mut results = vec![Vec::with_capacity(plan.rounds); targets.len()];
    for _ in 0..plan.rounds {
        for (target, rounds) in targets.iter().zip(&mut results) {
            let round = measure_round(target, call, plan)
                .await
                .with_context(|| format!("{}: {}", mode.name(), target.name))?;
            rounds.push(round);
        }
    }
    Ok(results)
}

async fn measure_round(target: &Target, call: Call, plan: &Plan) -> anyhow::Result<Round> {
    let [p50_us, p90_us, p99_us] = latency(target, call, plan.calls).await?;
    let load = throughput(target, call, plan).await?;
    Ok(Round {
        p50_us,
        p90_us,
        p99_us,
        calls_per_s: load.calls as f64 / load.elapsed.as_secs_f64(),
        client_busy: load.client_cpu.as_secs_f64() / load.elapsed.as_secs_f64(),
        server_cpu_us: load
            .server_cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / load.calls.max(1) as f64),
    })
}

/// p50, p90 and p99 of `calls` calls made one at a time, in microseconds.
async fn latency(target: &Target, call: Call, calls: usize) -> anyhow::Result<[f64; 3]> {
    let mut caller = Caller::open(call, &target.socket, None).await?;
    for _ in 0..calls / 10 + 1 {
        caller.call().await?;
    }
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        caller.call().await?;
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let mut at = |q| percentile(&mut latencies, q).unwrap_or(f64::NAN);
    Ok([at(0.5), at(0.9), at(0.99)])
}

/// What a throughput phase did and cost.
struct Load {
    calls: u64,
    elapsed: Duration,
    client_cpu: Duration,
    server_cpu: Option<Duration>,
}

/// `plan.clients` clients calling back to back for `plan.window`. Their
/// connections (for calls on open connections) are made and used once
/// before the window opens.
async fn throughput(target: &Target, call: Call, plan: &Plan) -> anyhow::Result<Load> {
    let shared = match (plan.one_connection, call) {
        (true, Call::X509 | Call::Jwt) => Some(client::connect(&target.socket).await?),
        _ => None,
    };
    let mut callers = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        let mut caller = Caller::open(call, &target.socket, shared.as_ref()).await?;
        caller.call().await?;
        callers.push(caller);
    }
    let server_before = target.pid.map(procfs::cpu_time).transpose()?;
    let client_before = procfs::own_cpu_time()?;
    let started = Instant::now();
    let deadline = started + plan.window;
    let mut clients = JoinSet::new();
    for mut caller in callers {
        clients.spawn(async move {
            let mut calls = 0u64;
            while Instant::now() < deadline {
                caller.call().await?;
                calls += 1;
            }
            anyhow::Ok(calls)
        });
    }
    let mut calls = 0;
    while let Some(done) = clients.join_next().await {
        calls += done??;
    }
    let elapsed = started.elapsed();
    let client_cpu = procfs::own_cpu_time()? - client_before;
    let server_cpu = match (target.pid, server_before) {
        (Some(pid), Some(before)) => Some(procfs::cpu_time(pid)? - before),
        _ => None,
    };
    Ok(Load {
        calls,
        elapsed,
        client_cpu,
        server_cpu,
    })
}

/// One client of a target.
enum Caller {
    /// Connects for every call.
    NewConnection(PathBuf),
    /// Calls FetchX509SVID on its open connection.
    X509(Client),
    /// Calls FetchJWTSVID on its open connection.
    Jwt(Client),
}

impl Caller {
    /// A client making `call`s: on `shared` if given, else on a connection
    /// of its own (made per call for new-connection calls).
    async fn open(call: Call, socket: &Path, shared: Option<&Client>) -> anyhow::Result<Self> {
        let connection = async {
            match shared {
                Some(shared) => anyhow::Ok(shared.clone()),
                None => Ok(client::connect(socket).await?),
            }
        };
        Ok(match call {
            Call::NewConnection => Self::NewConnection(socket.to_owned()),
            Call::X509 => Self::X509(connection.await?),
            Call::Jwt => Self::Jwt(connection.await?),
        })
    }

    /// One call; an answer without an SVID is an error.
    async fn call(&mut self) -> anyhow::Result<()> {
        let svids = match self {
            Self::NewConnection(socket) => {
                let mut client = client::connect(socket).await?;
                client::fetch_x509(&mut client).await?.svids.len()
            }
            Self::X509(client) => client::fetch_x509(client).await?.svids.len(),
            Self::Jwt(client) => {
                let audience = vec![JWT_AUDIENCE.to_owned()];
                client::fetch_jwt(client, audience, None).await?.svids.len()
            }
        };
        anyhow::ensure!(svids > 0, "an answer without an SVID");
        Ok(())
    }
}

//! The Workload API benchmark: what a caller pays for one identity, measured
//! against the floor of the same gRPC stack with nothing behind it. See
//! benches/README.md for every mode and figure.
//!
//! Modes (`--mode`, default all):
//! - `new-conn`: a new connection per call, FetchX509SVID, its first
//!   message (as an agent does when it starts);
//! - `same-conn`: FetchX509SVID's first message on open connections;
//! - `jwt`: FetchJWTSVID on open connections;
//! - `streams`: many open FetchX509SVID streams: server memory per stream,
//!   and whether each gets the rotation push;
//! - `soak` and `mixed` (not part of `all`): attestd over time, see
//!   [`soak`].
//!
//! The request modes measure, per round, latency (p50/p90/p99, one client)
//! and throughput (`--clients` clients for a fixed window). Targets are
//! measured in alternating rounds within one run (so a busy machine slows
//! them all alike), each reported as the median of its rounds and as a
//! ratio to the floor measured in the same run:
//! - `floor`: a bare tonic server on the same kind of socket, answering
//!   with fixed copies of attestd's own responses (no attestation, no
//!   policy, no audit); `floor-tuned` (`--floor-tuned`): the same with
//!   attestd's HTTP/2 settings, served from a runtime worker as attestd is;
//! - `attestd`: this checkout's build (release under `cargo bench`), with
//!   a policy of uid entries;
//! - `attestd-exe`: the same binary with an entry bound to the caller's
//!   executable (`unix:sha256`, so connection binding is on too);
//! - any `--baseline NAME=PATH` binaries (an older build, to show what a
//!   change costs; `benches/compare.sh REV` builds one from a git revision),
//!   with both policies (`NAME` and `NAME-exe`);
//! - any `--external NAME=SOCKET[:PID]` server (SPIRE agent, say).
//!
//! Every mode starts its servers afresh. Servers are pinned to CPU 0 and
//! the load generator to CPU 1.
//!
//! ```text
//! cargo bench --bench workload_api                          # every mode, 9 rounds
//! cargo bench --bench workload_api -- --mode streams --streams 10000
//! cargo bench --bench workload_api -- --quick               # what the test command runs
//! cargo bench --bench workload_api -- --baseline main=/path/to/attestd
//! ```

mod cli;
mod floor;
mod load;
mod procfs;
mod report;
mod soak;
mod stats;
mod streams;
mod targets;

use clap::Parser;
use tokio::runtime::Runtime;

use cli::{Args, Mode, Plan};
use targets::{Kind, Setup};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let [socket, dir] = args.floor_server.as_slice() {
        return floor::serve(socket, dir, args.floor_tuned);
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "note: an unoptimised build (--profile dev, as the test command's smoke runs are): \
             its figures say nothing about speed; measure with `cargo bench`"
        );
    }
    let mut plan = Plan::new(&args);
    targets::pin_to(targets::CLIENT_CPU);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for mode in plan.modes.clone() {
        match mode {
            Mode::Streams => run_streams(&args, &mut plan, &runtime)?,
            Mode::Soak => soak::run(&plan, &runtime)?,
            Mode::Mixed => soak::mixed::run(&plan, &runtime)?,
            mode => run_requests(mode, &args, &plan, &runtime)?,
        }
    }
    Ok(())
}

fn run_requests(mode: Mode, args: &Args, plan: &Plan, runtime: &Runtime) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let targets = targets::start(dir.path(), args, Setup::Requests, runtime)?;
    let results = runtime.block_on(load::measure(&targets, mode, plan))?;
    report::requests(mode, plan, &targets, &results);
    report::memory(mode, &targets);
    Ok(())
}

fn run_streams(args: &Args, plan: &mut Plan, runtime: &Runtime) -> anyhow::Result<()> {
    fit_descriptors(plan)?;
    let dir = tempfile::tempdir()?;
    let setup = Setup::Streams {
        connections: plan.stream_connections(),
        x509_ttl: plan.x509_ttl,
    };
    let targets = targets::start(dir.path(), args, setup, runtime)?;
    let held = runtime.block_on(streams::measure(&targets, plan))?;
    report::streams(plan, &targets, &held);
    report::memory(Mode::Streams, &targets);
    // A server started here is configured to hold every stream: one it
    // refused is a failure, not a figure (missed pushes depend on timing
    // and are only reported).
    for (target, held) in targets.iter().zip(&held) {
        anyhow::ensure!(
            target.kind == Kind::External || held.failed == 0,
            "streams: {} refused {} of {} streams",
            target.name,
            held.failed,
            plan.streams
        );
    }
    Ok(())
}

/// Raises the descriptor limit the servers inherit to what the streams
/// need, or lowers the stream count to what the limit allows (with a
/// warning: a run never fails for it).
fn fit_descriptors(plan: &mut Plan) -> anyhow::Result<()> {
    let wanted = targets::descriptors_for(plan.stream_connections());
    let limit = targets::raise_descriptor_limit(wanted)?;
    if limit < wanted {
        let fitting = targets::connections_within(limit) * plan.streams_per_connection;
        eprintln!(
            "warning: {} streams on {} connections need a descriptor limit of {wanted} (RLIMIT_NOFILE \
             is {limit} and cannot be raised without CAP_SYS_RESOURCE); holding {fitting} \
             (--streams-per-connection holds more)",
            plan.streams,
            plan.stream_connections()
        );
        plan.streams = fitting;
    }
    Ok(())
}

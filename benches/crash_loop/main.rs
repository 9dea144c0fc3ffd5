//! The crash loop: the release attestd under load (X.509 and JWT fetches,
//! open FetchX509SVID streams, policy edits; the CA rotating every 12 s and
//! the JWT keys every 10 s) SIGKILLed at random moments and restarted, over
//! and over. After every kill:
//! - `data_dir` parses whole: `ca.json` (certificates and their keys),
//!   `jwt_keys.json`, `bundle.json`, every audit record; no root or JWT
//!   key is gone before its expiry;
//! - every SVID and token a client ever received has its `issued` audit
//!   record (fail closed means record first);
//! - each restart starts and serves an X.509-SVID;
//! - every SVID received verified as it arrived against the bundle its
//!   client held (see clients.rs): publish-before-use survives crashes;
//! - every `--verify-every` kills and at the end, `attestd audit verify`
//!   passes over the whole trail.
//!
//! About one kill in ten lands during start-up (within 150 ms of the
//! spawn), the rest up to `--max-up` after the restart served.
//!
//! ```text
//! cargo bench --bench crash_loop                      # 1,000 kills
//! cargo bench --bench crash_loop -- --seconds 90      # what the test command runs
//! nice -n 19 cargo bench --bench crash_loop -- --kills 1000 --seed 7
//! ```
//!
//! It prints kills survived out of kills made and exits non-zero on a lost
//! record, a corrupt file, a failed verification or a restart that does not
//! serve, keeping its directory for inspection.

mod audit_trail;
mod clients;
mod daemon;
mod state_files;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{Rng as _, SeedableRng as _};

use audit_trail::AuditReader;
use clients::Shared;
use daemon::{Daemon, Layout};
use state_files::StateCheck;

#[derive(Parser, Debug)]
#[command(about = "SIGKILL attestd under load, restart it, check its state after every kill")]
struct Args {
    /// Kills to make.
    #[arg(long, default_value_t = 1000)]
    kills: u64,
    /// Stop after this many seconds instead (the short mode), whichever
    /// comes first.
    #[arg(long)]
    seconds: Option<u64>,
    /// Longest time attestd serves before a kill, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    max_up: u64,
    /// `attestd audit verify` over the whole trail every this many kills.
    #[arg(long, default_value_t = 50)]
    verify_every: u64,
    /// Seed of the kill moments (random if not given; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to run (default: a fresh temporary directory, removed on
    /// success).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Passed by `cargo bench`. Without it the binary was started by
    /// `cargo test --all-targets`, which runs every bench target once: a
    /// check that the harness works, [`TEST_MODE_KILLS`] kills.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Kills made when started by `cargo test` rather than `cargo bench`.
const TEST_MODE_KILLS: u64 = 3;

/// What the loop counts.
#[derive(Default)]
struct Tally {
    kills: u64,
    survived: u64,
    during_startup: u64,
    verifications: u64,
    slowest_start: Duration,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if !args.bench {
        args.kills = args.kills.min(TEST_MODE_KILLS);
    }
    let temp = tempfile::tempdir()?;
    let home = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&home)?;
    // A copy: a build during a long run would otherwise swap the binary
    // under test between two restarts (or remove it for a moment).
    let binary = home.join("attestd");
    std::fs::copy(env!("CARGO_BIN_EXE_attestd"), &binary)?;
    let layout = Layout { home };
    layout.write_config()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "crash loop: {} kills{}, seed {seed}, in {}",
        args.kills,
        args.seconds.map(|s| format!(" or {s} s")).unwrap_or_default(),
        layout.home.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tally, failures) = runtime.block_on(run(&args, &binary, &layout, seed));
    if failures.is_empty() {
        println!("crash loop passed");
        Ok(())
    } else {
        // Kept for inspection.
        let _ = temp.keep();
        eprintln!("crash loop FAILED (state kept in {}):", layout.home.display());
        for failure in failures.iter().take(20) {
            eprintln!("  {failure}");
        }
        anyhow::bail!(
            "{} of {} kills survived; {} failures",
            tally.survived,
            tally.kills,
            failures.len()
        )
    }
}

async fn run(args: &Args, binary: &std::path::Path, layout: &Layout, seed: u64) -> (Tally, Vec<String>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let shared: Shared = Arc::new(Mutex::new(clients::Observed::default()));
    let clients = clients::start(layout, &shared);
    let deadline = args.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let mut state = StateCheck::default();
    let mut audit = AuditReader::default();
    let began = Instant::now();
    while tally.kills < args.kills && deadline.is_none_or(|d| Instant::now() < d) && failures.is_empty() {
        let mut attestd = match Daemon::start(binary, layout) {
            Ok(daemon) => daemon,
            Err(error) => {
                failures.push(format!("{error:#}"));
                break;
            }
        };
        let during_startup = rng.random_bool(0.1);
        if during_startup {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        } else {
            match attestd.wait_serving(layout).await {
                Ok(took) => tally.slowest_start = tally.slowest_start.max(took),
                Err(error) => {
                    failures.push(format!("restart {}: {error:#}", tally.kills));
                    let _ = attestd.kill();
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..=args.max_up))).await;
        }
        if let Err(error) = attestd.kill() {
            failures.push(format!("kill {}: {error:#}", tally.kills + 1));
            break;
        }
        tally.kills += 1;
        tally.during_startup += u64::from(during_startup);
        let verify = tally.kills % args.verify_every == 0;
        let problems = check(binary, layout, &shared, &mut state, &mut audit, verify);
        tally.verifications += u64::from(verify);
        if problems.is_empty() {
            // The restart's serving is checked at the top of the next
            // round (or below, after the last kill).
            tally.survived += 1;
        }
        failures.extend(
            problems
                .into_iter()
                .map(|p| format!("after kill {}: {p}", tally.kills)),
        );
        if tally.kills % 50 == 0 {
            report(&tally, &shared, &audit, &state, began);
        }
    }
    // The last kill's restart must serve too; then the final checks.
    if failures.is_empty() {
        match Daemon::start(binary, layout) {
            Ok(mut attestd) => {
                if let Err(error) = attestd.wait_serving(layout).await {
                    failures.push(format!("final restart: {error:#}"));
                    tally.survived = tally.survived.saturating_sub(1);
                }
                // Let the clients get their answers from it.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = attestd.kill();
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    drop(clients);
    failures.extend(check(binary, layout, &shared, &mut state, &mut audit, true));
    tally.verifications += 1;
    report(&tally, &shared, &audit, &state, began);
    println!(
        "kills survived: {} of {} ({} during start-up); slowest start to first SVID {:?}",
        tally.survived, tally.kills, tally.during_startup, tally.slowest_start
    );
    (tally, failures)
}

/// The checks after a kill (attestd is down).
fn check(
    binary: &std::path::Path,
    layout: &Layout,
    shared: &Shared,
    state: &mut StateCheck,
    audit: &mut AuditReader,
    verify_chain: bool,
) -> Vec<String> {
    let (_, mut problems) = clients::snapshot(shared);
    problems.extend(state.check(&layout.data_dir()));
    let files = match layout.audit_files() {
        Ok(files) => files,
        Err(error) => {
            problems.push(format!("listing the audit trail: {error}"));
            return problems;
        }
    };
    problems.extend(audit.read_new(&files));
    // Every serial and token id received so far must be recorded by now.
    clients::with(shared, |observed| {
        observed.unaudited_serials.retain(|s| !audit.serials.contains(s));
        observed.unaudited_jtis.retain(|j| !audit.jtis.contains(j));
        for serial in observed.unaudited_serials.iter().take(5) {
            problems.push(format!(
                "X.509-SVID serial {serial} was received but has no audit record"
            ));
        }
        for jti in observed.unaudited_jtis.iter().take(5) {
            problems.push(format!("JWT-SVID jti {jti} was received but has no audit record"));
        }
    });
    if verify_chain && let Err(problem) = audit_trail::verify(binary, &files) {
        problems.push(problem);
    }
    problems
}

fn report(tally: &Tally, shared: &Shared, audit: &AuditReader, state: &StateCheck, began: Instant) {
    let (counts, _) = clients::with(shared, |o| (o.counts.clone(), ()));
    println!(
        "[{:>6.0} s] kills {} survived {}; X.509-SVIDs {} JWT-SVIDs {} stream messages {} \
         held-bundle checks {} (JWTs expired before their bundle came {}) policy edits {} \
         refused calls {}; audit records {} (torn tails cut {}), \
         chain verifications {}; leftover temp files {}",
        began.elapsed().as_secs_f64(),
        tally.kills,
        tally.survived,
        counts.x509_svids,
        counts.jwt_svids,
        counts.stream_messages,
        counts.held_bundle_checks,
        counts.expired_before_check,
        counts.policy_edits,
        counts.client_errors,
        audit.records,
        audit.torn_tails,
        tally.verifications,
        state.leftover_temps,
    );
}

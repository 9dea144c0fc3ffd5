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
//! With `--power-loss`, `data_dir` (the audit trail in it) lives on a FUSE
//! file system that keeps only what was fsynced ([`power_cut_fs`], with
//! Linux's default writeback: a change is made durable 30 to 35 s after
//! it), and every kill is followed by a power cut of that file system.
//! After each cut, besides the checks above: the bundle document that
//! survived still holds every root of the bundles clients hold and trusts
//! every SVID and token they hold (publish-before-use survives a power
//! loss). Records of SVIDs and tokens that clients received and the cut
//! lost are counted, not failed (the trail is not fsynced per record, see
//! the README), unless one is older than the writeback bound. The second
//! round and every fifth after it serve from that bound to
//! `--max-up-long`.
//!
//! ```text
//! cargo bench --bench crash_loop                      # 1,000 kills
//! cargo bench --bench crash_loop -- --seconds 90      # what the test command runs
//! nice -n 19 cargo bench --bench crash_loop -- --kills 1000 --seed 7
//! cargo bench --bench crash_loop -- --power-loss --kills 100
//! ```
//!
//! It prints kills survived out of kills made and exits non-zero on a lost
//! record, a corrupt file, a failed verification or a restart that does not
//! serve, keeping its directory for inspection (in power-loss mode, a copy
//! of `data_dir` as the cut left it, in `data-after-cut/`).

mod audit_trail;
mod clients;
mod daemon;
mod power_cut_fs;
mod state_files;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{Rng as _, SeedableRng as _};

use audit_trail::AuditReader;
use clients::Shared;
use daemon::{Daemon, Layout};
use power_cut_fs::{PowerCutFs, Writeback};
use state_files::StateCheck;

/// The writeback the power-cut file system emulates (Linux's defaults).
const WRITEBACK: Writeback = Writeback::LINUX;

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
    /// Cut the power of `data_dir`'s file system after every kill.
    #[arg(long)]
    power_loss: bool,
    /// In power-loss mode, the longest serving time of the second round
    /// and every fifth after it, in milliseconds. They serve at least the
    /// writeback bound (35 s), so that some records are durable by
    /// writeback when the power goes.
    #[arg(long, default_value_t = 45_000)]
    max_up_long: u64,
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
    /// Power cuts made and survived (power-loss mode): every check after
    /// the cut passed.
    cuts: u64,
    cuts_survived: u64,
    /// Roots, SVIDs and tokens clients held, checked against the bundle
    /// that survived a cut.
    held_checked: u64,
    losses: Losses,
}

/// The records a power cut lost: SVIDs and tokens clients received whose
/// `issued` record was not durable.
#[derive(Default)]
struct Losses {
    total: u64,
    most_in_one_cut: u64,
    cuts_that_lost: u64,
    /// The oldest lost record's age at its cut (from when its SVID or
    /// token was received, which is after the record was written).
    oldest: Duration,
    /// When the last cut was made.
    cut_at: Option<Instant>,
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
    let layout = Layout {
        home,
        power_loss: args.power_loss,
    };
    layout.write_config()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "crash loop: {} kills{}{}, seed {seed}, in {}",
        args.kills,
        args.seconds.map(|s| format!(" or {s} s")).unwrap_or_default(),
        match args.power_loss {
            true => ", each followed by a power cut",
            false => "",
        },
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
    let mut disk = match args.power_loss {
        true => match PowerCutFs::mount(&layout.disk(), Some(WRITEBACK)) {
            Ok(disk) => Some(disk),
            Err(error) => {
                let problem = format!(
                    "mounting the power-cut file system on {}: {error}",
                    layout.disk().display()
                );
                return (tally, vec![problem]);
            }
        },
        false => None,
    };
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
            // In power-loss mode the second round and every fifth after it
            // (when the run's time allows) serve past the writeback bound:
            // records older than it must then survive the cut.
            let long = disk.is_some()
                && tally.kills % 5 == 1
                && deadline.is_none_or(|d| {
                    d.saturating_duration_since(Instant::now()) > Duration::from_millis(args.max_up_long)
                });
            let up = match long {
                true => {
                    let bound = WRITEBACK.bound().as_millis() as u64;
                    rng.random_range(bound..=args.max_up_long.max(bound))
                }
                false => rng.random_range(0..=args.max_up),
            };
            tokio::time::sleep(Duration::from_millis(up)).await;
        }
        if let Err(error) = attestd.kill() {
            failures.push(format!("kill {}: {error:#}", tally.kills + 1));
            break;
        }
        tally.kills += 1;
        tally.during_startup += u64::from(during_startup);
        if let Err(problem) = cut_power(&mut disk, &mut tally).await {
            failures.push(problem);
            break;
        }
        let verify = tally.kills % args.verify_every == 0;
        let problems = check(
            binary, layout, &shared, &mut state, &mut audit, verify, &mut tally,
        );
        tally.cuts_survived += u64::from(disk.is_some() && problems.is_empty());
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
                if let Err(problem) = cut_power(&mut disk, &mut tally).await {
                    failures.push(problem);
                }
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    drop(clients);
    let problems = check(binary, layout, &shared, &mut state, &mut audit, true, &mut tally);
    // The last cut (after the final restart) is checked here.
    tally.cuts_survived += u64::from(disk.is_some() && failures.is_empty() && problems.is_empty());
    failures.extend(problems);
    tally.verifications += 1;
    report(&tally, &shared, &audit, &state, began);
    println!(
        "kills survived: {} of {} ({} during start-up); slowest start to first SVID {:?}",
        tally.survived, tally.kills, tally.during_startup, tally.slowest_start
    );
    if disk.is_some() {
        let losses = &tally.losses;
        println!(
            "power cuts survived: {} of {}; held roots, SVIDs and tokens checked against the \
             surviving bundle: {}; records lost: {} in {} cuts, at most {} in one cut; \
             oldest lost record {:.1} s old (bound {:?})",
            tally.cuts_survived,
            tally.cuts,
            tally.held_checked,
            losses.total,
            losses.cuts_that_lost,
            losses.most_in_one_cut,
            losses.oldest.as_secs_f64(),
            WRITEBACK.bound()
        );
        if !failures.is_empty() {
            // The file system lives in this process: keep what the cut left.
            keep_copy(&layout.data_dir(), &layout.home.join("data-after-cut"));
        }
    }
    (tally, failures)
}

/// In power-loss mode, the power cut after a kill (attestd is down).
async fn cut_power(disk: &mut Option<PowerCutFs>, tally: &mut Tally) -> Result<(), String> {
    let Some(disk) = disk else {
        return Ok(());
    };
    // The clients share this thread: let them take in the answers the
    // killed attestd sent, so that each SVID is counted against this cut.
    // (Taken in after the checks, an SVID whose record this cut lost
    // would be counted at the next cut, as if lost a whole round later.)
    // Nothing writes to the file system meanwhile: the cut is as at the
    // kill.
    tokio::time::sleep(CLIENT_DRAIN).await;
    tally.losses.cut_at = Some(Instant::now());
    disk.power_cut()
        .map_err(|error| format!("power cut {}: {error}", tally.cuts + 1))?;
    tally.cuts += 1;
    Ok(())
}

/// Copies the files of `from` (one level) into `to`, for inspection.
fn keep_copy(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::create_dir_all(to);
    for entry in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
    }
}

/// The checks after a kill (attestd is down), or after its power cut.
fn check(
    binary: &std::path::Path,
    layout: &Layout,
    shared: &Shared,
    state: &mut StateCheck,
    audit: &mut AuditReader,
    verify_chain: bool,
    tally: &mut Tally,
) -> Vec<String> {
    let (_, mut problems) = clients::snapshot(shared);
    problems.extend(state.check(&layout.data_dir()));
    if layout.power_loss {
        // A missing bundle.json trusts nothing: every credential held fails.
        let no_keys = spiffe::JwtBundleSet::new();
        let jwt_keys = state.bundle_jwt_keys.as_ref().unwrap_or(&no_keys);
        let (checked, held) = clients::check_held(shared, &state.bundle_roots, jwt_keys, HELD_GRACE);
        tally.held_checked += checked;
        problems.extend(held);
    }
    let files = match layout.audit_files() {
        Ok(files) => files,
        Err(error) => {
            problems.push(format!("listing the audit trail: {error}"));
            return problems;
        }
    };
    if layout.power_loss {
        // A cut takes back what was not durable: read the trail anew.
        *audit = AuditReader::default();
    }
    problems.extend(audit.read_new(&files));
    if layout.power_loss {
        problems.extend(count_losses(shared, audit, &mut tally.losses));
    }
    // Every serial and token id received so far must be recorded by now.
    clients::with(shared, |observed| {
        observed
            .unaudited_serials
            .retain(|s, _| !audit.serials.contains(s));
        observed.unaudited_jtis.retain(|j, _| !audit.jtis.contains(j));
        for serial in observed.unaudited_serials.keys().take(5) {
            problems.push(format!(
                "X.509-SVID serial {serial} was received but has no audit record"
            ));
        }
        for jti in observed.unaudited_jtis.keys().take(5) {
            problems.push(format!("JWT-SVID jti {jti} was received but has no audit record"));
        }
    });
    if verify_chain && let Err(problem) = audit_trail::verify(binary, &files) {
        problems.push(problem);
    }
    problems
}

/// SVIDs and tokens held within this of their expiry are not checked
/// against the bundle that survived a cut (they may expire meanwhile).
const HELD_GRACE: Duration = Duration::from_secs(1);

/// How long the clients get to take in the killed attestd's last answers
/// before the power cut.
const CLIENT_DRAIN: Duration = Duration::from_millis(300);

/// How late the emulated flusher may run on a busy machine (it sleeps its
/// interval between passes, then waits for the file system's lock).
const FLUSHER_LATENESS: Duration = Duration::from_secs(1);

/// After a power cut: the SVIDs and tokens received whose `issued` record
/// the trail no longer has were lost by the cut. They are counted (and
/// forgotten); one older than the writeback bound is a failure.
fn count_losses(shared: &Shared, audit: &AuditReader, losses: &mut Losses) -> Vec<String> {
    let now = losses.cut_at.unwrap_or_else(Instant::now);
    let lost: Vec<(String, Duration)> = clients::with(shared, |observed| {
        let serials = observed
            .unaudited_serials
            .extract_if(|s, _| !audit.serials.contains(s))
            .map(|(s, at)| {
                (
                    format!("X.509-SVID serial {s}"),
                    now.saturating_duration_since(at),
                )
            });
        let jtis = observed
            .unaudited_jtis
            .extract_if(|j, _| !audit.jtis.contains(j))
            .map(|(j, at)| (format!("JWT-SVID jti {j}"), now.saturating_duration_since(at)));
        serials.chain(jtis).collect()
    });
    if !lost.is_empty() {
        losses.cuts_that_lost += 1;
    }
    losses.total += lost.len() as u64;
    losses.most_in_one_cut = losses.most_in_one_cut.max(lost.len() as u64);
    let mut problems = Vec::new();
    for (what, age) in lost {
        losses.oldest = losses.oldest.max(age);
        if age > WRITEBACK.bound() + FLUSHER_LATENESS && problems.len() < 5 {
            problems.push(format!(
                "{what}: its record was lost by the power cut {:.1} s after it was received, \
                 beyond the writeback bound of {:?} (and {FLUSHER_LATENESS:?} for a late flusher)",
                age.as_secs_f64(),
                WRITEBACK.bound()
            ));
        }
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

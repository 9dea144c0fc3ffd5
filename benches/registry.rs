//! The registry benchmark (divan): matching a caller's selectors against
//! 10, 1,000 and 100,000 registration entries, and loading a policy from
//! its files, in-process through the library (`attestd::registry`).
//!
//! Two policy shapes (see `registry/gen_policy.rs`): `uid`, one entry per
//! uid; `exe`, every entry bound to uid 1000 and an executable digest of
//! its own (all entries share the uid selector). Each caller has the dozen
//! selectors attestation produces for a real process (uid, gid, user,
//! group, supplementary groups, path, digest, systemd unit and slice,
//! cgroup), and the callers cycle over entries spread across the whole
//! policy, so a large policy's index is not all in the CPU cache.
//!
//! ```text
//! cargo bench --bench registry                  # full run
//! cargo bench --bench registry -- --quick       # what the test command runs
//! cargo bench --bench registry -- --write-policy DIR [--entries N] [--files F] [--exe]
//!     # writes DIR/attestd.toml and DIR/entries.d/ (for `attestd run`, `entry check`)
//! ```

#[path = "registry/gen_policy.rs"]
mod gen_policy;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use attestd::config::Config;
use attestd::registry::Policy;
use attestd::selector::{Selector, SelectorSet};

use gen_policy::Shape;

/// Callers each matching benchmark cycles over.
const CALLERS: usize = 1024;
/// Entries per file in generated policies, as an operator might split them.
const PER_FILE: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--write-policy") {
        if let Err(error) = write_policy(&args) {
            eprintln!("registry bench: {error}");
            std::process::exit(2);
        }
        return;
    }
    // divan's own arguments do not include --quick: a short run that
    // checks every benchmark works (its figures are noisy).
    if args.iter().any(|a| a == "--quick") {
        divan::Divan::default()
            .sample_count(5)
            .sample_size(1)
            .max_time(Duration::from_millis(300))
            .run_benches();
        return;
    }
    divan::main();
}

/// `--write-policy DIR [--entries N] [--files F] [--exe]`.
fn write_policy(args: &[String]) -> Result<(), String> {
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let number = |flag: &str, default: usize| -> Result<usize, String> {
        value(flag).map_or(Ok(default), |v| v.parse().map_err(|e| format!("{flag} {v}: {e}")))
    };
    let dir = value("--write-policy").ok_or("--write-policy needs a directory")?;
    let shape = Shape {
        entries: number("--entries", 100_000)?,
        files: number("--files", 100)?,
        exe_bound: args.iter().any(|a| a == "--exe"),
    };
    let config = gen_policy::write(Path::new(dir), shape).map_err(|e| format!("{dir}: {e}"))?;
    println!("{}", config.display());
    Ok(())
}

/// A generated policy, written to a temporary directory and loaded.
struct Loaded {
    _dir: tempfile::TempDir,
    config: Config,
    policy: Policy,
    shape: Shape,
}

fn shape(entries: usize, exe_bound: bool) -> Shape {
    Shape {
        entries,
        files: entries.div_ceil(PER_FILE),
        exe_bound,
    }
}

fn generate(shape: Shape) -> Loaded {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = gen_policy::write(dir.path(), shape).expect("policy written");
    let config = Config::load(&path).expect("generated config is valid");
    let policy = Policy::load(&config).expect("generated policy is valid");
    assert_eq!(policy.entries().len(), shape.entries);
    Loaded {
        _dir: dir,
        config,
        policy,
        shape,
    }
}

/// Each (size, shape) policy is generated once per run.
fn loaded(entries: usize, exe_bound: bool) -> &'static Loaded {
    static CACHE: [[OnceLock<Loaded>; 2]; 3] = [const { [const { OnceLock::new() }; 2] }; 3];
    let slot = match entries {
        10 => 0,
        1_000 => 1,
        _ => 2,
    };
    CACHE[slot][usize::from(exe_bound)].get_or_init(|| generate(shape(entries, exe_bound)))
}

/// What attestation reports for a process of entry `i`'s workload.
fn caller(i: usize, exe_bound: bool) -> SelectorSet {
    let uid = match exe_bound {
        true => 1000,
        false => gen_policy::uid(i),
    };
    let mut selectors = vec![
        format!("unix:uid:{uid}"),
        format!("unix:gid:{uid}"),
        format!("unix:user:agent{i}"),
        format!("unix:group:agent{i}"),
        "unix:supplementary_gid:27".into(),
        "unix:supplementary_gid:100".into(),
        "unix:supplementary_group:users".into(),
        "unix:path:/usr/local/bin/agent".into(),
        format!("systemd:id:agent-{i}.service"),
        "systemd:slice:system.slice".into(),
        format!("cgroup:path:/system.slice/agent-{i}.service"),
    ];
    // attestd hashes executables only when the policy names a digest.
    if exe_bound {
        selectors.push(format!("unix:sha256:{}", gen_policy::digest(i)));
    }
    selectors
        .iter()
        .map(|s| Selector::parse(s).expect("generated selector is valid"))
        .collect()
}

/// Callers of entries spread evenly over a policy of `entries`.
fn callers(entries: usize, exe_bound: bool) -> Vec<SelectorSet> {
    (0..CALLERS)
        .map(|k| caller(k * entries / CALLERS, exe_bound))
        .collect()
}

fn bench_matching(bencher: divan::Bencher, entries: usize, exe_bound: bool) {
    let loaded = loaded(entries, exe_bound);
    let callers = callers(entries, exe_bound);
    let now = SystemTime::now();
    let mut next = 0;
    bencher.bench_local(|| {
        next = (next + 1) % callers.len();
        let matches = loaded.policy.matches(&callers[next], now);
        debug_assert_eq!(matches.entries.len(), 1);
        matches
    });
}

/// A caller of one uid entry among `entries` (its uid only named once).
#[divan::bench(args = [10, 1_000, 100_000])]
fn match_uid(bencher: divan::Bencher, entries: usize) {
    bench_matching(bencher, entries, false);
}

/// A caller of one executable-bound entry among `entries`, all of which
/// name the caller's uid.
#[divan::bench(args = [10, 1_000, 100_000])]
fn match_exe(bencher: divan::Bencher, entries: usize) {
    bench_matching(bencher, entries, true);
}

/// Loading (parsing, validating, indexing) a policy from its files.
#[divan::bench(args = [1_000, 100_000], sample_count = 5, sample_size = 1)]
fn load_uid(bencher: divan::Bencher, entries: usize) {
    let loaded = loaded(entries, false);
    bencher.bench(|| Policy::load(&loaded.config).expect("valid policy"));
    let _ = loaded.shape;
}

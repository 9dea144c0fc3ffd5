//! The registry benchmark (divan): matching a caller's selectors against
//! 10, 1,000 and 100,000 registration entries, loading a policy from its
//! files, and reloading it after one of its files changed, in-process
//! through the library (`attestd::registry`). `benches/registry_daemon.sh`
//! measures the same policies in a running daemon (start-up, memory,
//! reload after a file change).
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
//! cargo bench --bench registry                  # full run (divan's options apply)
//! cargo bench --bench registry -- --quick       # what the test command runs
//! cargo bench --bench registry -- --write-policy DIR [--entries N] [--files F] [--exe]
//!     # writes DIR/attestd.toml and DIR/entries.d/ (for `attestd run`, `entry check`)
//! ```

#[path = "registry/gen_policy.rs"]
mod gen_policy;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use attestd::config::Config;
use attestd::registry::{EntryFiles, Policy, Registry, reload};
use attestd::selector::{Selector, SelectorSet};
use attestd::telemetry::ReloadOutcome;

use gen_policy::Shape;

/// Callers each matching benchmark cycles over.
const CALLERS: usize = 1024;
/// Entries per file in generated policies, as an operator might split them.
const PER_FILE: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--write-policy") {
        if let Err(error) = write_policy(&args) {
            eprintln!("registry bench: {error}");
            std::process::exit(2);
        }
        return;
    }
    if !has("--bench") {
        // Started by `cargo test --all-targets` (a debug build): check that
        // each benchmark runs, on the small policies only.
        divan::Divan::default().skip_regex("::100000$").test_benches();
    } else if has("--quick") {
        // Not one of divan's own options: a short run of every benchmark,
        // for the test command (its figures are noisy).
        divan::Divan::default()
            .sample_count(5)
            .sample_size(1)
            .max_time(Duration::from_millis(300))
            .run_benches();
    } else {
        divan::main();
    }
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

/// A caller of one uid entry among `entries`, the same caller every time:
/// what the policy's size costs when its lines are in the CPU cache.
#[divan::bench(args = [10, 1_000, 100_000])]
fn match_uid_same_caller(bencher: divan::Bencher, entries: usize) {
    let loaded = loaded(entries, false);
    let caller = caller(entries / 2, false);
    let now = SystemTime::now();
    bencher.bench_local(|| loaded.policy.matches(&caller, now));
}

/// The floor under matching: one lookup of a caller's uid selector in a
/// hash map of `entries` selectors, the callers cycling as in `match_uid`.
/// Matching does this lookup and then reads the entry found, so the time
/// this takes to grow with the map bounds how flat matching can be.
#[divan::bench(args = [10, 1_000, 100_000])]
fn floor_one_lookup(bencher: divan::Bencher, entries: usize) {
    let map: HashMap<Selector, usize> = (0..entries).map(|i| (uid_selector(i), i)).collect();
    let callers: Vec<Selector> = (0..CALLERS)
        .map(|k| uid_selector(k * entries / CALLERS))
        .collect();
    let mut next = 0;
    bencher.bench_local(|| {
        next = (next + 1) % callers.len();
        map.get(&callers[next]).copied()
    });
}

fn uid_selector(i: usize) -> Selector {
    Selector::parse(&format!("unix:uid:{}", gen_policy::uid(i))).expect("generated selector is valid")
}

/// Loading (parsing, validating, indexing) a policy from its files.
#[divan::bench(args = [1_000, 100_000], sample_count = 5, sample_size = 1)]
fn load_uid(bencher: divan::Bencher, entries: usize) {
    let loaded = loaded(entries, false);
    bencher.bench(|| Policy::load(&loaded.config).expect("valid policy"));
}

/// A reload after one file of a policy of `entries` (in files of 1,000)
/// changed: the changed file is parsed, the policy rebuilt and swapped in.
#[divan::bench(args = [1_000, 100_000], sample_count = 10, sample_size = 1)]
fn reload_one_file(bencher: divan::Bencher, entries: usize) {
    let loaded = loaded(entries, false);
    // Files written this recently are read again on each reload (their
    // stamps are not trusted yet): wait, as for a policy edited later on.
    std::thread::sleep(Duration::from_millis(2100));
    let mut files = EntryFiles::default();
    let registry = Registry::new(Policy::load_with(&loaded.config, &mut files).expect("valid policy"));
    let entries_dir = loaded
        .config
        .entries_dir
        .clone()
        .expect("generated with entries_dir");
    let changed = gen_policy::file_path(&entries_dir, 0);
    let mut revision = 0;
    bencher
        .with_inputs(|| {
            revision += 1;
            std::fs::write(&changed, gen_policy::file_text(loaded.shape, 0, revision)).expect("file written");
        })
        .bench_local_values(|()| {
            let outcome = reload(&loaded.config, &mut files, &registry);
            assert_eq!(outcome, ReloadOutcome::Applied);
            assert_eq!(files.parsed(), 1);
        });
}

//! Executable and cgroup facts forged through namespaces and file systems
//! (issue 9, class 1), attempted for real against the daemon by
//! unprivileged uids, and the legitimate identities that must survive the
//! defences: a system unit by `systemd:id`, a host binary by `unix:path`
//! and by `unix:sha256`.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::attestation::{NAMES_SHA256, hashes_of};
use crate::harness::{
    Daemon, assert_success, attestd_bin, cli_fetch_as, client_fetch_as, has_selector, printed_ids, run_as,
    shared_tempdir, shell, unified_hierarchy, wait_for,
};

const USER: u32 = 1000;
const NOBODY: u32 = 65534;

/// Cgroups a test made, removed leaves first when dropped; directories that
/// already existed (another test's `system.slice`, say) are left alone.
struct Cgroups {
    made: Vec<PathBuf>,
}

impl Cgroups {
    /// Creates each missing directory of `relative` under the v2 hierarchy.
    fn create(relative: &str) -> Self {
        let mut made = Vec::new();
        let mut path = unified_hierarchy();
        for part in relative.split('/') {
            path.push(part);
            match std::fs::create_dir(&path) {
                Ok(()) => made.push(path.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!(
                    "cannot create cgroup {} (root and a writable cgroup v2 hierarchy are needed): {e}",
                    path.display()
                ),
            }
        }
        Self { made }
    }

    /// Removes `dir` too, before the ones made so far (another uid made it
    /// inside them).
    fn adopt(&mut self, dir: PathBuf) {
        self.made.push(dir);
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Runs `attestd api fetch x509` as `uid` from inside the cgroup `leaf`:
/// the client waits on its stdin while root moves it in (as a user manager
/// or container runtime would), then connects.
fn fetch_placed_in(daemon: &Daemon, leaf: &Path, uid: u32) -> Output {
    let script = format!(
        "read _ && exec {} api fetch x509 --socket {}",
        attestd_bin(),
        daemon.endpoint()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child.wait_with_output().unwrap()
}

/// Copies the attestd CLI to `path` (through a child shell: ETXTBSY).
fn copy_client(path: &Path) {
    shell(&format!(
        "cp {} {p} && chmod 0755 {p}",
        attestd_bin(),
        p = path.display()
    ));
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Audit records of `rpc` calls by `uid`.
fn records_of(daemon: &Daemon, uid: u32) -> Vec<Value> {
    daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["uid"] == uid)
        .collect()
}

fn assert_denied(output: &Output) {
    assert!(
        !output.status.success() && printed_ids(output).is_empty(),
        "an identity was issued: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Positive, every defence on: a process in a root-owned system unit
/// cgroup gets its `systemd:id` entry, confirmed by the kernel's evidence
/// (no note that the unit names were taken on trust).
#[test]
fn a_process_in_a_system_unit_gets_its_systemd_id_entry() {
    let unit = format!("attestd-e2e-{}.service", std::process::id());
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/system-unit"
selectors = ["systemd:id:{unit}", "systemd:slice:system.slice"]
owner = "platform@example.org"
"#
    ));
    let _cgroups = Cgroups::create(&format!("system.slice/{unit}"));
    let leaf = unified_hierarchy().join("system.slice").join(&unit);
    let output = fetch_placed_in(&daemon, &leaf, USER);
    assert_success(&output);
    assert_eq!(printed_ids(&output), ["spiffe://example.org/system-unit"]);
    let record = &records_of(&daemon, USER)[0];
    assert!(has_selector(record, &format!("systemd:id:{unit}")), "{record}");
    assert!(
        record["attestation_notes"].as_array().is_none_or(Vec::is_empty),
        "{record}"
    );
}

/// Positive, every defence on: a binary at a host path gets its entries by
/// `unix:path` and by `unix:sha256`.
#[test]
fn a_host_binary_gets_its_entries_by_path_and_by_hash() {
    let dir = shared_tempdir();
    let agent = dir.path().join("agent");
    copy_client(&agent);
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/by-path"
selectors = ["unix:uid:{USER}", "unix:path:{}"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/by-hash"
selectors = ["unix:uid:{USER}", "unix:sha256:{}"]
owner = "platform@example.org"
"#,
        agent.display(),
        sha256_of(&agent)
    ));
    let output = client_fetch_as(&daemon, &agent, USER);
    assert_success(&output);
    let mut ids = printed_ids(&output);
    ids.sort();
    assert_eq!(
        ids,
        ["spiffe://example.org/by-hash", "spiffe://example.org/by-path"]
    );
}

/// The attack: in a user namespace of its own (`unshare -Urm`), nobody
/// bind-mounts its own program (a copy of the attestd CLI) over the path
/// an entry trusts and execs it. In its namespace, `/proc/<pid>/exe` reads
/// as the trusted path; in the host's, that path is another file.
///
/// While the attack repeats, a legitimate caller of another uid is served
/// within a second, the daemon's memory stays under 128 MB (VmHWM; about
/// 24 MB measured), and
/// each hostile call adds at most one audit record of at most 4 KB.
#[test]
fn a_program_bind_mounted_over_a_trusted_path_in_a_user_namespace_gets_nothing() {
    const TRUSTED: &str = "/usr/bin/true";
    const HOSTILE_CALLS: usize = 20;
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/trusted-true"
selectors = ["unix:uid:{NOBODY}", "unix:path:{TRUSTED}"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/legitimate"
selectors = ["unix:uid:{USER}"]
owner = "platform@example.org"
"#
    ));
    let forged = daemon.dir.path().join("forged");
    copy_client(&forged);
    let attack = |calls: usize| {
        let script = format!(
            "mount --bind {} {TRUSTED} && for i in $(seq {calls}); do {TRUSTED} api fetch x509 --socket {}; done",
            forged.display(),
            daemon.endpoint()
        );
        let mut command = Command::new("unshare");
        command
            .args(["-Urm", "sh", "-c", &script])
            .uid(NOBODY)
            .gid(NOBODY);
        command
    };

    let first = run_as(NOBODY, NOBODY, &mut attack(1));
    assert_denied(&first);
    let denied = records_of(&daemon, NOBODY);
    assert_eq!(denied.len(), 1, "{denied:#?}");
    // The attack was real: the caller's exe link named the trusted path...
    assert_eq!(denied[0]["exe_path"], TRUSTED, "{:#}", denied[0]);
    // ...and attestd said why it did not believe it.
    let notes = denied[0]["attestation_notes"].to_string();
    assert!(
        notes.contains("unix:path withheld") && notes.contains("another file"),
        "{notes}"
    );
    assert!(!has_selector(&denied[0], &format!("unix:path:{TRUSTED}")));

    let audit_before = std::fs::metadata(daemon.audit_path()).unwrap().len();
    let mut hostile = attack(HOSTILE_CALLS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the repeated attack to start", || {
        (records_of(&daemon, NOBODY).len() > 1).then_some(())
    });
    let started = Instant::now();
    let legitimate = cli_fetch_as(&daemon, USER);
    let served_in = started.elapsed();
    // The loop's status is that of its last (refused) fetch.
    hostile.wait().unwrap();
    assert_eq!(printed_ids(&legitimate), ["spiffe://example.org/legitimate"]);
    assert!(
        served_in < Duration::from_secs(1),
        "legitimate caller waited {served_in:?}"
    );

    let hostile_records = records_of(&daemon, NOBODY);
    assert!(
        hostile_records.iter().all(|r| r["outcome"] == "denied"),
        "{hostile_records:#?}"
    );
    assert!(hostile_records.len() <= 1 + HOSTILE_CALLS);
    let grown = std::fs::metadata(daemon.audit_path()).unwrap().len() - audit_before;
    // One legitimate issuance record is in there too.
    assert!(
        grown <= (HOSTILE_CALLS as u64 + 1) * 4096,
        "audit grew {grown} bytes"
    );
    let hwm_kb = daemon.vm_kb("VmHWM:");
    assert!(hwm_kb < 128 * 1024, "attestd's VmHWM is {hwm_kb} kB");
}

/// Unmounts a FUSE mount when dropped.
struct FuseMount(PathBuf);

impl Drop for FuseMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The attack: a binary on a FUSE file system (bindfs, mounted by root over
/// a directory holding a copy of the attestd CLI). Its server could serve
/// one content to the exec and another to attestd's read, so an entry by
/// its `unix:sha256` must not issue, and the audit record says why.
#[test]
fn a_binary_on_fuse_gets_no_identity_by_hash_or_path() {
    let dir = shared_tempdir();
    let (source, mount) = (dir.path().join("source"), dir.path().join("fuse"));
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&mount).unwrap();
    copy_client(&source.join("agent"));
    let status = Command::new("bindfs")
        .args(["-o", "allow_other"])
        .arg(&source)
        .arg(&mount)
        .status()
        .expect("bindfs (Debian package bindfs; tests/run-all.sh installs it)");
    assert!(status.success(), "bindfs failed");
    let _mounted = FuseMount(mount.clone());
    let agent = mount.join("agent");
    let digest = sha256_of(&agent);
    assert_ne!(
        std::fs::metadata(&agent).unwrap().dev(),
        std::fs::metadata(&source).unwrap().dev()
    );

    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/by-hash"
selectors = ["unix:uid:{USER}", "unix:sha256:{digest}"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/by-path"
selectors = ["unix:uid:{USER}", "unix:path:{}"]
owner = "platform@example.org"
"#,
        agent.display()
    ));
    let output = client_fetch_as(&daemon, &agent, USER);
    assert_denied(&output);
    let records = records_of(&daemon, USER);
    let record = records.first().expect("an audit record of the denial");
    assert_eq!(record["outcome"], "denied", "{record}");
    assert_eq!(record["exe_path"], agent.display().to_string(), "{record}");
    assert!(record["sha256"].is_null(), "{record}");
    let notes = record["attestation_notes"].to_string();
    assert!(notes.contains("FUSE") && notes.contains("withheld"), "{notes}");
}

/// The attack: uid 1000 was delegated a cgroup subtree (a directory root
/// chowned to it, as systemd's `Delegate=` does, with no `user@` name to
/// give it away) and names a "system" unit inside it. An entry for that
/// `systemd:id` must not issue; the delegated-facts selector carrying the
/// uid does.
#[test]
fn a_unit_named_in_a_delegated_cgroup_subtree_is_not_the_systems() {
    let tag = std::process::id();
    let unit = format!("nginx-{tag}.service");
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/system-nginx"
selectors = ["unix:uid:{USER}", "systemd:id:{unit}"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/users-nginx"
selectors = ["unix:uid:{USER}", "systemd:user_unit:{USER}:{unit}"]
owner = "platform@example.org"
"#
    ));
    let delegated = format!("attestd-e2e-{tag}.slice/delegate-{tag}.service");
    let mut cgroups = Cgroups::create(&delegated);
    let root = unified_hierarchy().join(&delegated);
    // What systemd chowns for Delegate=yes with User=.
    for file in ["", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
        nix::unistd::chown(&root.join(file), Some(nix::unistd::Uid::from_raw(USER)), None).unwrap();
    }
    let forged = root.join("system.slice").join(&unit);
    let made = run_as(USER, USER, Command::new("mkdir").arg("-p").arg(&forged));
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    cgroups.adopt(root.join("system.slice"));
    cgroups.adopt(forged.clone());

    let output = fetch_placed_in(&daemon, &forged, USER);
    assert_success(&output);
    assert_eq!(printed_ids(&output), ["spiffe://example.org/users-nginx"]);
    let record = &records_of(&daemon, USER)[0];
    for selector in [
        format!("systemd:user_unit:{USER}:{unit}"),
        format!("systemd:user_slice:{USER}:system.slice"),
        format!("systemd:id:delegate-{tag}.service"),
        format!("systemd:slice:attestd-e2e-{tag}.slice"),
        format!("cgroup:path:/{delegated}/system.slice/{unit}"),
    ] {
        assert!(has_selector(record, &selector), "no {selector} in {record}");
    }
    assert!(!has_selector(record, &format!("systemd:id:{unit}")), "{record}");
    assert!(!has_selector(record, "systemd:slice:system.slice"), "{record}");
}

/// Hashing costs CPU any caller can make attestd spend (one new binary per
/// call): a policy that names no `unix:sha256` hashes nothing, and one that
/// does hashes each binary once.
#[test]
fn executables_are_hashed_only_while_the_policy_names_unix_sha256() {
    const ROOT_ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/root"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;
    for (policy, hashes) in [
        (ROOT_ENTRY.to_owned(), 0),
        (format!("{ROOT_ENTRY}{NAMES_SHA256}"), 1),
    ] {
        let daemon = Daemon::start(&policy);
        let client = daemon.dir.path().join("client");
        copy_client(&client);
        let output = Command::new(&client)
            .args(["api", "fetch", "x509", "--socket", &daemon.endpoint()])
            .output()
            .unwrap();
        assert_success(&output);
        assert_eq!(hashes_of(&daemon, &client), hashes, "{policy}");
        let record = &daemon.audit_records()[0];
        assert_eq!(record["sha256"].is_string(), hashes == 1, "{record}");
    }
}

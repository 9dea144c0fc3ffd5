//! Faults of the host, against the real daemon: a full or read-only
//! `data_dir` or audit trail, at start and while running (the trail on an
//! ext4 that remounts itself read-only on an error, as a failing disk's
//! does); a corrupt `ca.json` or key file; upstream CA files replaced by a
//! broken or mismatched pair. Each time: a clear error naming the path,
//! issuance failing closed and said so (health, metrics), no half-written
//! file, no unsaved root in the bundle, and recovery once the fault is
//! gone. The wall clock stepping is in `clock_steps.rs`.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::ca::{OrgCa, fetch, upstream_config};
use crate::harness::{
    Daemon, assert_success, attestd_bin, cli_fetch_as, free_loopback_port, http_get, shared_tempdir, shell,
    verify_chain, wait_for, write_config,
};

const ROOT_ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/faults"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;

/// Long enough for a rotation retried every 5 s, or a file re-read every 5 s.
const PATIENCE: Duration = Duration::from_secs(40);

/// A file system mounted for one test, unmounted on drop.
struct Mount {
    path: PathBuf,
    bind: bool,
}

impl Mount {
    /// A tmpfs of `size` bytes (`"256k"`) at `path`.
    fn tmpfs(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        shell(&format!(
            "mount -t tmpfs -o size={size},mode=0700 tmpfs '{}'",
            path.display()
        ));
        Self {
            path: path.to_owned(),
            bind: false,
        }
    }

    /// `path` bound onto itself, so that it alone can be made read-only.
    fn bind(path: &Path) -> Self {
        std::fs::create_dir_all(path).unwrap();
        shell(&format!("mount --bind '{0}' '{0}'", path.display()));
        Self {
            path: path.to_owned(),
            bind: true,
        }
    }

    /// An 8 MiB ext4 file system in `image`, loop-mounted at `path` with
    /// `errors=remount-ro`, as a failing disk's file system is.
    fn ext4(path: &Path, image: &Path) -> Self {
        std::fs::create_dir_all(path).unwrap();
        shell(&format!(
            "truncate -s 8M '{0}' && mkfs.ext4 -q '{0}' && mount -o loop,errors=remount-ro '{0}' '{1}'",
            image.display(),
            path.display()
        ));
        Self {
            path: path.to_owned(),
            bind: false,
        }
    }

    /// Has the ext4 file system meet an error (its sysfs test trigger): it
    /// remounts itself read-only at once, under files held open for
    /// writing, which a remount from outside refuses (`EBUSY`).
    fn ext4_error(&self) {
        shell(&format!(
            "echo attestd-test > /sys/fs/ext4/$(basename $(findmnt -no SOURCE '{}'))/trigger_fs_error",
            self.path.display()
        ));
    }

    /// Remounts read-only or read-write; false if the kernel refuses.
    fn read_only(&self, read_only: bool) -> bool {
        let mode = if read_only { "ro" } else { "rw" };
        let bind = if self.bind { "bind," } else { "" };
        Command::new("mount")
            .args(["-o", &format!("remount,{bind}{mode}")])
            .arg(&self.path)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system holding `dir` with a file `filler`, returned (its
/// removal frees the space).
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    path
}

/// Runs `attestd run` on `config`, which must fail: its stderr.
fn start_fails(config: &Path) -> String {
    let mut child = Command::new(attestd_bin())
        .args(["run", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(20), "attestd to refuse to start", || {
        child.try_wait().unwrap()
    });
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "attestd started:\n{stderr}");
    stderr
}

/// The file names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The roots (DER) in `ca.json`.
fn saved_roots(data: &Path) -> Vec<Vec<u8>> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("ca.json")).unwrap()).unwrap();
    json["cas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ca| {
            pem::parse(ca["certificate"].as_str().unwrap())
                .unwrap()
                .into_contents()
        })
        .collect()
}

fn sorted(mut roots: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    roots.sort();
    roots
}

fn audit_verifies(path: &Path) {
    let output = Command::new(attestd_bin())
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .unwrap();
    assert_success(&output);
}

#[tokio::test]
async fn a_corrupt_ca_or_key_file_stops_the_start_naming_it_and_no_new_ca_is_made() {
    let daemon = Daemon::start(ROOT_ENTRY);
    let (_, roots) = fetch(&daemon).await;
    let config = daemon.config_path();
    let dir = daemon.crash();
    let data = dir.path().join("data");
    let before = names(&data);
    for (file, corrupt) in [
        // A write torn in half, plain garbage, a key that is no key.
        ("ca.json", None),
        ("ca.json", Some("garbage".to_owned())),
        ("jwt_keys.json", None),
        ("jwt_keys.json", Some(r#"{"keys":[{"kid":"k","created":0,"activate_at":0,"not_after":99999999999,"pkcs8":"AAAA"}]}"#.to_owned())),
    ] {
        let path = data.join(file);
        let original = std::fs::read(&path).unwrap();
        let corrupt = corrupt.map_or_else(|| original[..original.len() / 2].to_vec(), String::into_bytes);
        std::fs::write(&path, &corrupt).unwrap();
        let stderr = start_fails(&config);
        assert!(stderr.contains(&path.display().to_string()), "{file}: {stderr}");
        assert_eq!(std::fs::read(&path).unwrap(), corrupt, "{file} left as it was");
        assert_eq!(names(&data), before, "no file made");
        std::fs::write(&path, original).unwrap();
    }
    // Repaired: the same CA as before.
    let daemon = Daemon::start_in(dir, ROOT_ENTRY);
    let (chain, roots_after) = fetch(&daemon).await;
    assert_eq!(roots_after, roots);
    verify_chain(&chain, &roots);
}

#[test]
fn a_read_only_data_dir_at_start_is_named() {
    let dir = shared_tempdir();
    let config = write_config(dir.path(), ROOT_ENTRY);
    let data = dir.path().join("data");
    let mount = Mount::bind(&data);
    // First start: the CA cannot be created.
    assert!(mount.read_only(true));
    let stderr = start_fails(&config);
    assert!(
        stderr.contains(&data.join("ca.json").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(names(&data).is_empty(), "no file made");
    // With a CA made: the audit trail cannot be opened.
    assert!(mount.read_only(false));
    let daemon = Daemon::start_in(dir, ROOT_ENTRY);
    let dir = daemon.crash();
    assert!(mount.read_only(true));
    let stderr = start_fails(&config);
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(mount.read_only(false));
    drop(dir);
}

#[test]
fn a_full_data_dir_at_start_is_named_and_leaves_no_half_file() {
    let dir = shared_tempdir();
    let config = write_config(dir.path(), ROOT_ENTRY);
    let data = dir.path().join("data");
    let _fs = Mount::tmpfs(&data, "256k");
    fill(&data);
    let stderr = start_fails(&config);
    assert!(
        stderr.contains(&data.join("ca.json").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(names(&data), ["filler"], "no half-written file");
}

#[test]
fn a_full_audit_trail_at_start_fails_closed_until_space_returns() {
    let dir = shared_tempdir();
    let audit = Mount::tmpfs(&dir.path().join("audit"), "256k");
    let filler = fill(&audit.path);
    let trail = audit.path.join("audit.jsonl");
    let body = format!("[audit]\npath = \"{}\"\n{ROOT_ENTRY}", trail.display());
    // It starts (the trail opens; nothing is written yet) but issues nothing.
    let daemon = Daemon::start_in(dir, &body);
    let refused = cli_fetch_as(&daemon, 0);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unavailable"));
    assert!(
        daemon.log().contains("No space left on device"),
        "{}",
        daemon.log()
    );
    wait_for(PATIENCE, "not serving reported", || {
        (!healthcheck(&daemon)).then_some(())
    });

    std::fs::remove_file(filler).unwrap();
    assert_success(&cli_fetch_as(&daemon, 0));
    wait_for(PATIENCE, "serving reported", || {
        healthcheck(&daemon).then_some(())
    });
    audit_verifies(&trail);
}

/// The data_dir and the audit trail on small file systems of their own,
/// the CA rotating every 8 s.
fn small_disks(dir: &Path) -> (Mount, Mount, String) {
    let data = Mount::tmpfs(&dir.join("data"), "1m");
    let audit = Mount::tmpfs(&dir.join("audit"), "1m");
    let body = format!(
        "[ca]\nttl = \"16s\"\n\n[audit]\npath = \"{}/audit.jsonl\"\n{ROOT_ENTRY}",
        audit.path.display()
    );
    (data, audit, body)
}

#[tokio::test]
async fn a_full_disk_at_run_time_keeps_the_ca_whole_fails_closed_and_recovers() {
    let dir = shared_tempdir();
    let (data_fs, audit_fs, body) = small_disks(dir.path());
    let daemon = Daemon::start_in(dir, &body);
    let (data, audit) = (data_fs.path.clone(), audit_fs.path.clone());
    let (_, roots) = fetch(&daemon).await;
    let saved = std::fs::read(data.join("ca.json")).unwrap();

    // data_dir full: the next root (due at 8 s) cannot be saved, so it is
    // not made; the current root keeps signing.
    let filler = fill(&data);
    daemon.wait_for_log(PATIENCE, "CA rotation failed");
    assert!(daemon.log().contains("No space left on device"));
    assert_eq!(
        std::fs::read(data.join("ca.json")).unwrap(),
        saved,
        "ca.json whole and unchanged"
    );
    assert!(
        !names(&data).iter().any(|n| n.ends_with(".tmp")),
        "no temporary file left"
    );
    let (chain, roots_now) = fetch(&daemon).await;
    assert_eq!(roots_now, roots, "no unsaved root in the bundle");
    verify_chain(&chain, &roots);

    // The audit trail full too: issuance fails closed, nothing torn.
    let audit_filler = fill(&audit);
    let refused = wait_for(PATIENCE, "a refused fetch", || {
        let output = cli_fetch_as(&daemon, 0);
        (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned())
    });
    assert!(refused.contains("Unavailable"), "{refused}");
    audit_verifies(&audit.join("audit.jsonl"));

    // Space again: issuance resumes, the rotation is made, and the bundle
    // is what ca.json holds.
    std::fs::remove_file(filler).unwrap();
    std::fs::remove_file(audit_filler).unwrap();
    wait_for(PATIENCE, "the postponed rotation", || {
        (saved_roots(&data).len() == 2).then_some(())
    });
    wait_for(PATIENCE, "an SVID again", || {
        cli_fetch_as(&daemon, 0).status.success().then_some(())
    });
    let (chain, roots_now) = fetch(&daemon).await;
    assert_eq!(sorted(roots_now.clone()), sorted(saved_roots(&data)));
    verify_chain(&chain, &roots_now);
    audit_verifies(&audit.join("audit.jsonl"));
}

#[tokio::test]
async fn a_read_only_data_dir_at_run_time_keeps_the_ca_whole_and_recovers() {
    let dir = shared_tempdir();
    let data = dir.path().join("data");
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let mount = Mount::bind(&data);
    let body = format!(
        "[ca]\nttl = \"16s\"\n\n[audit]\npath = \"{}/audit.jsonl\"\n{ROOT_ENTRY}",
        audit.display()
    );
    let daemon = Daemon::start_in(dir, &body);
    let (_, roots) = fetch(&daemon).await;
    let saved = std::fs::read(data.join("ca.json")).unwrap();
    assert!(
        mount.read_only(true),
        "nothing in data_dir is held open for writing"
    );
    daemon.wait_for_log(PATIENCE, "CA rotation failed");
    assert!(daemon.log().contains("Read-only file system"));
    assert_eq!(std::fs::read(data.join("ca.json")).unwrap(), saved);
    let (chain, roots_now) = fetch(&daemon).await;
    assert_eq!(roots_now, roots, "no unsaved root in the bundle");
    verify_chain(&chain, &roots);

    assert!(mount.read_only(false));
    wait_for(PATIENCE, "the postponed rotation", || {
        (saved_roots(&data).len() == 2).then_some(())
    });
    let (chain, roots_now) = fetch(&daemon).await;
    assert_eq!(sorted(roots_now.clone()), sorted(saved_roots(&data)));
    verify_chain(&chain, &roots_now);
}

#[test]
fn an_audit_trail_turned_read_only_at_run_time_fails_closed_and_reports_not_serving() {
    let dir = shared_tempdir();
    let image = tempfile::tempdir().unwrap();
    let audit = Mount::ext4(&dir.path().join("audit"), &image.path().join("audit.img"));
    let trail = audit.path.join("audit.jsonl");
    let health = free_loopback_port();
    let body = format!(
        "[health]\nlisten = \"{health}\"\n\n[audit]\npath = \"{}\"\n{ROOT_ENTRY}",
        trail.display()
    );
    let daemon = Daemon::start_in(dir, &body);
    assert_success(&cli_fetch_as(&daemon, 0));
    assert!(healthcheck(&daemon));

    // The disk fails: its file system turns read-only under the open trail
    // (and its journal is aborted: what was not yet on disk is lost, so
    // the records so far are synced first, to be checked after repair).
    shell(&format!("sync -f '{}'", trail.display()));
    audit.ext4_error();
    let refused = wait_for(PATIENCE, "a refused fetch", || {
        let output = cli_fetch_as(&daemon, 0);
        (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned())
    });
    assert!(refused.contains("Unavailable"), "{refused}");
    let log = daemon.log();
    assert!(log.contains("Read-only file system"), "{log}");
    assert!(
        log.contains(&trail.display().to_string()),
        "the trail named: {log}"
    );
    assert!(log.contains("reported not serving"), "{log}");
    assert!(!healthcheck(&daemon), "grpc.health.v1 reports not serving");
    assert_eq!(http_get(&health, "/ready").0, 503);
    let metrics = http_get(&health, "/metrics").1;
    assert!(metrics.contains("attestd_audit_trail_failing 1"), "{metrics}");
    assert!(daemon.log().contains("audit trail opened"), "still running");

    // The operator stops attestd, repairs the file system and starts it:
    // the records written before the failure verify, and it serves.
    let dir = daemon.stop();
    shell(&format!(
        "umount '{0}' && e2fsck -fy '{1}' >/dev/null; mount -o loop,errors=remount-ro '{1}' '{0}'",
        audit.path.display(),
        image.path().join("audit.img").display()
    ));
    audit_verifies(&trail);
    let daemon = Daemon::start_in(dir, &body);
    assert_success(&cli_fetch_as(&daemon, 0));
    assert!(healthcheck(&daemon));
    audit_verifies(&trail);
}

/// Whether `attestd healthcheck` (grpc.health.v1) reports serving.
fn healthcheck(daemon: &Daemon) -> bool {
    daemon.healthcheck().status.success()
}

#[tokio::test]
async fn upstream_files_replaced_by_a_mismatched_or_broken_pair_keep_the_old_ca_signing() {
    let org = OrgCa::new();
    let dir = shared_tempdir();
    let files = dir.path().join("upstream");
    let intermediate = org.issue(&files, "host-a");
    let health = free_loopback_port();
    let body = format!(
        "[health]\nlisten = \"{health}\"\n{}",
        upstream_config(&files, "spiffe://example.org/faults")
    );
    let daemon = Daemon::start_in(dir, &body);
    let (chain, roots) = fetch(&daemon).await;
    assert_eq!(chain[1], intermediate);
    let failures = |daemon: &Daemon| daemon.log().matches("CA rotation failed").count();
    let failing = |value: u8| {
        let metrics = http_get(&health, "/metrics").1;
        metrics
            .contains(&format!(
                "attestd_authority_rotation_failing{{credential=\"X509Ca\"}} {value}"
            ))
            .then_some(metrics)
    };
    failing(0).expect("not failing at first");

    // A mismatched pair: another intermediate's key.
    let other = tempfile::tempdir().unwrap();
    OrgCa::new().issue(other.path(), "intruder");
    let key = std::fs::read(files.join("intermediate.key")).unwrap();
    std::fs::rename(
        other.path().join("intermediate.key"),
        files.join("intermediate.key"),
    )
    .unwrap();
    wait_for(PATIENCE, "the mismatch logged", || {
        (failures(&daemon) > 0).then_some(())
    });
    assert!(
        daemon
            .log()
            .contains("the private key does not match the certificate"),
        "{}",
        daemon.log()
    );
    let metrics = failing(1).expect("the failure in the metrics");
    assert!(
        !metrics.contains("attestd_authority_rotation_failures_total{credential=\"X509Ca\"} 0"),
        "{metrics}"
    );
    let (chain, roots_now) = fetch(&daemon).await;
    assert_eq!(
        (&chain[1], &roots_now),
        (&intermediate, &roots),
        "the old CA signs"
    );
    verify_chain(&chain, &roots);

    // A broken certificate file (the right key back).
    let certificate = std::fs::read(files.join("intermediate.pem")).unwrap();
    std::fs::write(files.join("intermediate.key"), key).unwrap();
    let seen = failures(&daemon);
    std::fs::write(
        files.join("intermediate.pem.new"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n",
    )
    .unwrap();
    std::fs::rename(files.join("intermediate.pem.new"), files.join("intermediate.pem")).unwrap();
    wait_for(PATIENCE, "the broken file logged", || {
        (failures(&daemon) > seen).then_some(())
    });
    let (chain, roots_now) = fetch(&daemon).await;
    assert_eq!(
        (&chain[1], &roots_now),
        (&intermediate, &roots),
        "the old CA signs"
    );
    verify_chain(&chain, &roots);

    // The pair whole again: the alert clears.
    std::fs::write(files.join("intermediate.pem.new"), certificate).unwrap();
    std::fs::rename(files.join("intermediate.pem.new"), files.join("intermediate.pem")).unwrap();
    wait_for(PATIENCE, "the metric cleared", || failing(0));
}

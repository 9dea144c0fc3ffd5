//! `attestd helper` against the real daemon: files appear, verify with
//! openssl and rotate; the child and the pid-file process get the renew
//! signal after each rotation; readers racing the rotations never get a
//! certificate and key that do not match; one-shot mode; reconnecting.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{
    Daemon, attestd_bin, free_loopback_port, http_get, key_matches, openssl_verify, pem_certificates,
    serial_of, wait_for,
};

const SPIFFE_ID: &str = "spiffe://example.org/helper/workload";

/// An entry for root (the test and the helper it starts), with short
/// lifetimes so rotations come every few seconds.
fn short_lived_entry() -> String {
    format!(
        r#"
[svid]
x509_ttl = "6s"
jwt_ttl = "6s"

[[entry]]
spiffe_id = "{SPIFFE_ID}"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#
    )
}

/// A helper config: the spiffe-helper file names in `cert_dir`, plus
/// `extra` top-level keys.
fn helper_config(daemon: &Daemon, cert_dir: &Path, extra: &str) -> String {
    format!(
        r#"agent_address = "{}"
cert_dir = "{}"
svid_file_name = "svid.pem"
svid_key_file_name = "svid_key.pem"
svid_bundle_file_name = "svid_bundle.pem"
jwt_bundle_file_name = "jwt_bundle.json"
{extra}
[[jwt_svids]]
jwt_audience = "svc-a"
jwt_svid_file_name = "svc-a.token"
"#,
        daemon.endpoint(),
        cert_dir.display()
    )
}

/// A running `attestd helper`; killed on drop.
struct Helper {
    child: Option<Child>,
    log: PathBuf,
}

impl Helper {
    fn start(work: &Path, config: &str) -> Self {
        let config_path = work.join("helper.toml");
        std::fs::write(&config_path, config).unwrap();
        Self::spawn(work, &["-c", config_path.to_str().unwrap()])
    }

    /// Runs `attestd helper ARGS` in `work`; stderr to `work/helper.log`.
    fn spawn(work: &Path, args: &[&str]) -> Self {
        let log = work.join("helper.log");
        let child = Command::new(attestd_bin())
            .arg("helper")
            .args(args)
            .current_dir(work)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the helper to exit.
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("helper running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Helper {
    /// SIGTERM first, so the helper stops its own child even when a test
    /// fails; SIGKILL if it does not exit.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        for _ in 0..100 {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A shell script that logs its start and each SIGHUP, with the serial of
/// the certificate it would load at that moment: `cmd` for the helper, and
/// the process behind `pid_file_name`.
const RECORDER: &str = r#"#!/bin/sh
log=$1; certs=$2
serial() { openssl x509 -noout -serial -in "$certs/svid.pem" 2>/dev/null | cut -d= -f2; }
trap 'echo "hup $(serial)" >> "$log"' HUP
echo "start $$ $(serial)" >> "$log"
while :; do sleep 0.1; done
"#;

/// Lines of a recorder's log.
fn recorded(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The serials a recorder logged on SIGHUP.
fn hups(log: &Path) -> Vec<String> {
    recorded(log)
        .iter()
        .filter_map(|line| line.strip_prefix("hup "))
        .map(normalize_serial)
        .collect()
}

/// Serials as openssl prints them (uppercase, no leading zero byte) and as
/// DER holds them compare equal after this.
fn normalize_serial(serial: &str) -> String {
    serial
        .trim()
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_owned()
}

fn leaf_serial(cert_pem: &[u8]) -> Option<String> {
    pem_certificates(cert_pem)
        .first()
        .map(|leaf| normalize_serial(&serial_of(leaf)))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Checks the X.509 files: the chain verifies against the bundle with
/// openssl, the key is PKCS#8 and matches; returns the leaf's serial.
fn check_x509_files(cert_dir: &Path) -> String {
    openssl_verify(&cert_dir.join("svid_bundle.pem"), &cert_dir.join("svid.pem"));
    let cert = std::fs::read(cert_dir.join("svid.pem")).unwrap();
    let key = pem::parse(std::fs::read(cert_dir.join("svid_key.pem")).unwrap()).unwrap();
    assert_eq!(key.tag(), "PRIVATE KEY", "PKCS#8, as spiffe-helper writes it");
    let leaf = &pem_certificates(&cert)[0];
    assert!(key_matches(leaf, key.contents()));
    normalize_serial(&serial_of(leaf))
}

/// Checks the JWT files: the token is ours for `svc-a`; the bundle file is
/// spiffe-helper's map of trust domain to base64 JWKS. Returns the token.
fn check_jwt_files(cert_dir: &Path) -> String {
    let token = std::fs::read_to_string(cert_dir.join("svc-a.token")).unwrap();
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
    assert_eq!(claims["sub"], SPIFFE_ID);
    assert_eq!(claims["aud"], serde_json::json!(["svc-a"]));
    let bundles: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cert_dir.join("jwt_bundle.json")).unwrap()).unwrap();
    let jwks = base64::engine::general_purpose::STANDARD
        .decode(bundles["example.org"].as_str().expect("example.org's JWKS"))
        .unwrap();
    let jwks: serde_json::Value = serde_json::from_slice(&jwks).unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["use"] == "jwt-svid")
    );
    token
}

/// What a racing reader saw.
#[derive(Debug, Default)]
struct ReaderStats {
    /// Certificate + key pairs read.
    reads: u64,
    /// Reads by name where the certificate changed between the two reads
    /// of it (a rotation happened in between; the pair is discarded).
    straddled: u64,
    /// Reads by name where the key did not match the certificate read just
    /// before it: what a reader that does not re-check would have used.
    naive_mismatches: u64,
    /// Reads through `..data` whose generation was removed meanwhile.
    gone: u64,
}

/// Loops until `stop`, reading `svid.pem`, `svid_key.pem`, then `svid.pem`
/// again by name: when the certificate is unchanged, the key must match it.
fn read_by_name(cert_dir: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<ReaderStats> {
    std::thread::spawn(move || {
        let mut stats = ReaderStats::default();
        while !stop.load(Ordering::Relaxed) {
            let cert = std::fs::read(cert_dir.join("svid.pem")).unwrap();
            let key = std::fs::read(cert_dir.join("svid_key.pem")).unwrap();
            let again = std::fs::read(cert_dir.join("svid.pem")).unwrap();
            let matches = pair_matches(&cert, &key);
            stats.reads += 1;
            stats.naive_mismatches += u64::from(!matches);
            if cert == again {
                assert!(matches, "key does not match an unchanged certificate");
            } else {
                stats.straddled += 1;
            }
        }
        stats
    })
}

/// Loops until `stop`, resolving `..data` once per read and reading both
/// files of that generation: they must always match.
fn read_through_current(cert_dir: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<ReaderStats> {
    std::thread::spawn(move || {
        let mut stats = ReaderStats::default();
        while !stop.load(Ordering::Relaxed) {
            let generation = cert_dir.join(std::fs::read_link(cert_dir.join("..data")).unwrap());
            let (Ok(cert), Ok(key)) = (
                std::fs::read(generation.join("svid.pem")),
                std::fs::read(generation.join("svid_key.pem")),
            ) else {
                stats.gone += 1;
                continue;
            };
            stats.reads += 1;
            assert!(
                pair_matches(&cert, &key),
                "one generation holds a mismatched pair"
            );
        }
        stats
    })
}

fn pair_matches(cert_pem: &[u8], key_pem: &[u8]) -> bool {
    let leaf = &pem_certificates(cert_pem)[0];
    let key = pem::parse(key_pem).unwrap();
    key_matches(leaf, key.contents())
}

#[test]
fn helper_rotates_files_signals_child_and_never_mismatches() {
    let daemon = Daemon::start(&short_lived_entry());
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    let script = work.path().join("recorder.sh");
    std::fs::write(&script, RECORDER).unwrap();
    let child_log = work.path().join("child.log");
    let pid_log = work.path().join("pid-process.log");

    // Another process, told through pid_file_name.
    let pid_process = KillOnDrop(
        Command::new("/bin/sh")
            .arg(&script)
            .arg(&pid_log)
            .arg(&certs)
            .spawn()
            .unwrap(),
    );
    std::fs::write(work.path().join("app.pid"), format!("{}\n", pid_process.0.id())).unwrap();
    wait_for(Duration::from_secs(5), "the pid-file process", || {
        recorded(&pid_log).first().cloned()
    });

    let extra = format!(
        "cmd = \"/bin/sh\"\ncmd_args = \"{} {} {}\"\nrenew_signal = \"SIGHUP\"\npid_file_name = \"{}\"\n",
        script.display(),
        child_log.display(),
        certs.display(),
        work.path().join("app.pid").display()
    );
    let mut helper = Helper::start(work.path(), &helper_config(&daemon, &certs, &extra));

    // Files appear, all of them before the child starts.
    let start = wait_for(Duration::from_secs(15), "the child to start", || {
        recorded(&child_log).first().cloned()
    });
    let first_serial = check_x509_files(&certs);
    let first_token = check_jwt_files(&certs);
    let child_pid: i32 = start.split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(
        normalize_serial(start.split(' ').nth(2).unwrap_or_default()),
        first_serial,
        "the child started after the files were written: {start}"
    );
    assert_eq!(mode_of(&certs.join("svid_key.pem")), 0o600);
    assert_eq!(mode_of(&certs.join("svid.pem")), 0o644);
    assert_eq!(mode_of(&certs.join("svid_bundle.pem")), 0o644);
    assert_eq!(mode_of(&certs.join("svc-a.token")), 0o600);
    assert_eq!(mode_of(&certs.join("jwt_bundle.json")), 0o600);

    // Readers race the rotations while we watch three of them happen.
    let stop = Arc::new(AtomicBool::new(false));
    let by_name = read_by_name(certs.clone(), Arc::clone(&stop));
    let through_current = read_through_current(certs.clone(), Arc::clone(&stop));
    let mut serials = vec![first_serial];
    while serials.len() < 4 {
        let serial = wait_for(Duration::from_secs(15), "a rotation", || {
            let cert = std::fs::read(certs.join("svid.pem")).ok()?;
            leaf_serial(&cert).filter(|s| Some(s) != serials.last())
        });
        assert_eq!(check_x509_files(&certs), serial, "rotated files verify");
        serials.push(serial);
    }
    stop.store(true, Ordering::Relaxed);
    let by_name = by_name.join().expect("reader by name saw a mismatched pair");
    let through_current = through_current
        .join()
        .expect("reader through ..data saw a mismatched pair");
    eprintln!("reader by name: {by_name:?}\nreader through ..data: {through_current:?}");
    assert!(by_name.reads > 0 && through_current.reads > 0);

    // The JWT-SVID was refreshed at half its 6 s life meanwhile.
    assert_ne!(check_jwt_files(&certs), first_token, "the JWT-SVID was refreshed");

    // The child got SIGHUP after each rotation, each time with the new
    // certificate already in place; it was started once.
    let rotations = &serials[1..];
    let child_hups = wait_for(Duration::from_secs(5), "the child's SIGHUPs", || {
        Some(hups(&child_log)).filter(|h| h.len() >= rotations.len())
    });
    assert_eq!(&child_hups[..rotations.len()], rotations, "{}", helper.log());
    let starts = recorded(&child_log)
        .iter()
        .filter(|l| l.starts_with("start"))
        .count();
    assert_eq!(starts, 1, "the child was started once");

    // The pid-file process got it on every update, the first one included.
    let pid_hups = wait_for(Duration::from_secs(5), "the pid-file process's SIGHUPs", || {
        Some(hups(&pid_log)).filter(|h| h.len() >= serials.len())
    });
    assert_eq!(&pid_hups[..serials.len()], &serials[..]);

    // SIGTERM stops the helper and its child.
    let status = helper.stop();
    assert!(status.success(), "helper exit: {status}\n{}", helper.log());
    assert!(
        kill(Pid::from_raw(child_pid), None).is_err(),
        "the child was stopped with the helper"
    );
    drop(pid_process);
}

/// A process the test started, killed when the test ends, even by a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn helper_one_shot_writes_valid_files_and_exits_zero() {
    let daemon = Daemon::start(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/helper/workload"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
    );
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    let marker = work.path().join("cmd-ran");
    let extra = format!(
        "daemon_mode = false\ncert_file_mode = 0o640\nkey_file_mode = \"0400\"\n\
         cmd = \"/bin/touch\"\ncmd_args = \"{}\"\n",
        marker.display()
    );
    let mut helper = Helper::start(work.path(), &helper_config(&daemon, &certs, &extra));
    let status = wait_for(Duration::from_secs(20), "the one-shot helper to exit", || {
        helper.child.as_mut().unwrap().try_wait().unwrap()
    });
    assert!(status.success(), "one-shot exit: {status}\n{}", helper.log());
    check_x509_files(&certs);
    check_jwt_files(&certs);
    assert_eq!(mode_of(&certs.join("svid.pem")), 0o640);
    assert_eq!(mode_of(&certs.join("svid_bundle.pem")), 0o640);
    assert_eq!(mode_of(&certs.join("svid_key.pem")), 0o400);
    assert!(
        !marker.exists(),
        "one-shot mode does not run cmd (as spiffe-helper)"
    );
}

#[test]
fn helper_reconnects_after_attestd_restarts() {
    let entry = r#"
[[entry]]
spiffe_id = "spiffe://example.org/helper/workload"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;
    let daemon = Daemon::start(entry);
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    let _helper = Helper::start(work.path(), &helper_config(&daemon, &certs, ""));
    wait_for(Duration::from_secs(15), "the first files", || {
        certs.join("svid_bundle.pem").exists().then_some(())
    });
    let before = check_x509_files(&certs);

    // The restarted daemon keeps its CA and mints a new SVID, which the
    // helper fetches once it has reconnected.
    let daemon = Daemon::start_in(daemon.crash(), entry);
    let after = wait_for(Duration::from_secs(30), "files from the restarted daemon", || {
        let cert = std::fs::read(certs.join("svid.pem")).ok()?;
        leaf_serial(&cert).filter(|s| *s != before)
    });
    assert_eq!(check_x509_files(&certs), after);
    drop(daemon);
}

#[test]
fn helper_config_errors_name_file_line_and_key() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("helper.toml");
    std::fs::write(
        &path,
        "svid_file_name = \"svid.pem\"\nsvid_key_file_name = \"svid_key.pem\"\n\
         svid_bundle_file_name = \"svid_bundle.pem\"\nrenew_signal = \"SIGNOPE\"\n",
    )
    .unwrap();
    let output = Command::new(attestd_bin())
        .args(["helper", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:4: renew_signal:", path.display())),
        "{stderr}"
    );
}

/// A `helper.conf` written as spiffe-helper's README shows it (HCL, octal
/// modes without `0o`, a list of JWT objects, a `health_checks` block),
/// pointed at `agent_address`, with the health listener on `port`.
fn spiffe_helper_conf(agent_address: &str, port: &str) -> String {
    format!(
        r#"agent_address = "{agent_address}"
cert_dir = "certs"
renew_signal = "SIGUSR1"
svid_file_name = "svid.pem"
svid_key_file_name = "svid_key.pem"
svid_bundle_file_name = "svid_bundle.pem"
jwt_svids = [{{jwt_audience="svc-a", jwt_svid_file_name="svc-a.token"}}]
jwt_bundle_file_name = "jwt_bundle.json"
cert_file_mode = 0444
key_file_mode = 0400
jwt_bundle_file_mode = 0444
jwt_svid_file_mode = 0440
omit_expired = true

health_checks {{
  listener_enabled = true
  bind_port = {port}
  liveness_path = "/live"
  readiness_path = "/ready"
}}
"#
    )
}

/// The health answer: status code and spiffe-helper's JSON body.
fn health(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_get(addr, path);
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

#[test]
fn helper_takes_spiffe_helpers_own_conf_flags_and_health_checks() {
    let daemon = Daemon::start(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/helper/workload"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
    );
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    let addr = free_loopback_port();
    let port = addr.rsplit_once(':').unwrap().1;

    // Before anything is written (no agent at that address): live, not ready.
    let nowhere = work.path().join("no-agent.sock");
    std::fs::write(
        work.path().join("helper.conf"),
        spiffe_helper_conf(&nowhere.display().to_string(), port),
    )
    .unwrap();
    let mut waiting = Helper::spawn(work.path(), &[]);
    let (code, body) = wait_for(Duration::from_secs(15), "the health listener", || {
        std::net::TcpStream::connect(&addr)
            .ok()
            .map(|_| health(&addr, "/ready"))
    });
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body["health"]["file_write_statuses"]["x509_write_status"],
        "unwritten"
    );
    let (code, body) = health(&addr, "/live");
    assert_eq!((code, body["status"].as_str()), (200, Some("OK")), "{body}");
    waiting.stop();
    assert!(
        waiting.log().contains("No such file or directory (os error 2)"),
        "the OS's reason is logged, not just \"transport error\": {}",
        waiting.log()
    );

    // The default -config is helper.conf in the working directory; the
    // single-dash flag works as spiffe-helper spells it.
    std::fs::write(
        work.path().join("helper.conf"),
        spiffe_helper_conf(&daemon.endpoint(), port),
    )
    .unwrap();
    let helper = Helper::spawn(work.path(), &["-config", "helper.conf"]);
    let (code, body) = wait_for(Duration::from_secs(20), "readiness", || {
        let answer = std::net::TcpStream::connect(&addr)
            .ok()
            .map(|_| health(&addr, "/ready"))?;
        (answer.0 == 200).then_some(answer)
    });
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("OK")),
        "{}",
        helper.log()
    );
    let statuses = &body["health"]["file_write_statuses"];
    assert_eq!(statuses["x509_write_status"], "written");
    let jwt = statuses["jwt_write_status"].as_object().unwrap();
    assert_eq!(jwt.len(), 2, "{statuses}");
    assert!(jwt.values().all(|s| s == "written"), "{statuses}");
    assert!(
        jwt.contains_key(
            &certs
                .strip_prefix(work.path())
                .unwrap()
                .join("svc-a.token")
                .display()
                .to_string()
        )
    );

    check_x509_files(&certs);
    check_jwt_files(&certs);
    assert_eq!(
        mode_of(&certs.join("svid.pem")),
        0o444,
        "0444 is octal, as in spiffe-helper"
    );
    assert_eq!(mode_of(&certs.join("svid_key.pem")), 0o400);
    assert_eq!(mode_of(&certs.join("svc-a.token")), 0o440);
    drop(helper);

    // -daemon-mode=false: write once and exit 0 (health_checks does not apply).
    std::fs::remove_dir_all(&certs).unwrap();
    let mut once = Helper::spawn(work.path(), &["-config", "helper.conf", "-daemon-mode=false"]);
    let status = wait_for(Duration::from_secs(20), "the one-shot helper to exit", || {
        once.child.as_mut().unwrap().try_wait().unwrap()
    });
    assert!(status.success(), "{status}\n{}", once.log());
    check_x509_files(&certs);
}

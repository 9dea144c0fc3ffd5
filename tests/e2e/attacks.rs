//! The attacks on attestation, performed for real against the daemon: each
//! passes because attestd refuses. The attacker runs as uid 1002 and hands
//! its Workload API connection to another process (child or unrelated
//! binary) to borrow an identity that is not its own.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::go_interop::go_client;
use crate::harness::{Daemon, run_as, shell};

const ATTACKER: u32 = 1002;

/// Starts the Go client as the attacker uid with `args`, stdout piped.
fn attacker(daemon: &Daemon, args: &[&str]) -> Child {
    Command::new(go_client())
        .args(["-addr", &daemon.endpoint()])
        .args(args)
        .uid(ATTACKER)
        .gid(ATTACKER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// JSON lines from a child's stdout (the receiver inherits it, so this reads
/// both processes' reports).
fn reports(child: &mut Child) -> impl Iterator<Item = Value> + use<> {
    BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
}

/// Ends the attacker, then checks that the receiver's `report` shows no
/// identity at all, refused with `code`, and that a denial in the audit
/// trail mentions `evidence` in the field `field`.
fn assert_refused(
    mut attack: Child,
    report: &Value,
    code: &str,
    daemon: &Daemon,
    field: &str,
    evidence: &str,
) {
    let _ = attack.kill();
    attack.wait().unwrap();
    assert_eq!(report["ok"], false, "the receiver got an identity: {report}");
    assert!(report["spiffe_ids"].is_null(), "{report}");
    assert_eq!(report["code"], code, "{report}");
    let denied: Vec<Value> = daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["outcome"] == "denied")
        .collect();
    assert!(
        denied.iter().any(|r| r[field].to_string().contains(evidence)),
        "no denial with {evidence:?} in {field}: {denied:#?}"
    );
}

/// The connecting process exec's a trusted binary after handing its
/// connection to a child, which then asks: the pid now runs the binary an
/// entry trusts by path, but the process that connected was something else,
/// and the connection is held by the child.
#[test]
fn exec_after_connect_does_not_lend_the_new_binary_its_identity() {
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/trusted-sleep"
selectors = ["unix:uid:{ATTACKER}", "unix:path:/usr/bin/sleep"]
owner = "platform@example.org"
"#
    ));
    let mut attack = attacker(
        &daemon,
        &[
            "-mode",
            "handoff",
            "-linger",
            "100ms",
            "-exec",
            "/usr/bin/sleep",
            "-child-delay",
            "800ms",
        ],
    );
    let mut reports = reports(&mut attack);
    let parent = reports.next().unwrap()["parent_pid"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // The attack is real: the connecting pid now runs the trusted binary.
    let exe = std::fs::read_link(format!("/proc/{parent}/exe")).unwrap();
    assert_eq!(exe, std::path::Path::new("/usr/bin/sleep"));

    let report = reports.next().unwrap();
    assert_refused(
        attack,
        &report,
        "PermissionDenied",
        &daemon,
        "attestation_notes",
        "withheld",
    );
}

/// A process running the trusted binary connects and passes the connection
/// to an untrusted binary (same uid) while it stays alive: attestation of the
/// connecting pid finds the trusted binary, but it is not the only holder of
/// the connection.
#[test]
fn a_passed_connection_does_not_carry_an_executable_identity() {
    let trusted = std::fs::read(go_client()).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&trusted));
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/trusted-client"
selectors = ["unix:uid:{ATTACKER}", "unix:sha256:{digest}"]
owner = "platform@example.org"
"#
    ));
    // Control: the trusted binary asking for itself is served.
    let mut control = Command::new(go_client());
    control.args(["-addr", &daemon.endpoint()]);
    let output = run_as(ATTACKER, ATTACKER, &mut control);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("spiffe://example.org/trusted-client"));

    // The untrusted receiver: the same program with one byte more, so
    // another sha256.
    let untrusted = daemon.dir.path().join("untrusted-client");
    shell(&format!(
        "cp {} {u} && printf '\\0' >> {u} && chmod 755 {u}",
        go_client().display(),
        u = untrusted.display()
    ));

    let mut attack = attacker(
        &daemon,
        &[
            "-mode",
            "handoff",
            "-linger",
            "5s",
            "-child-binary",
            untrusted.to_str().unwrap(),
            "-child-delay",
            "200ms",
        ],
    );
    let mut reports = reports(&mut attack);
    reports.next().unwrap();
    let report = reports.next().unwrap();
    assert_refused(
        attack,
        &report,
        "PermissionDenied",
        &daemon,
        "attestation_notes",
        "held by processes",
    );
}

/// A root process with an open stream drops to another uid: at the next
/// rotation attestd finds it no longer has the credentials it connected
/// with, and ends the stream.
#[test]
fn a_stream_ends_when_its_caller_drops_privileges() {
    let daemon = Daemon::start(
        r#"
[svid]
x509_ttl = "6s"

[[entry]]
spiffe_id = "spiffe://example.org/root-only"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
    );
    let mut watcher = Command::new(go_client())
        .args([
            "-addr",
            &daemon.endpoint(),
            "-mode",
            "watch-setuid",
            "-setuid",
            "1002",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let events: Vec<Value> = reports(&mut watcher).collect();
    watcher.wait().unwrap();
    assert_eq!(
        events[0]["spiffe_ids"][0], "spiffe://example.org/root-only",
        "{events:?}"
    );
    assert_eq!(events[1]["event"], "setuid");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "end", "{events:?}");
    assert_eq!(last["code"], "PermissionDenied", "{events:?}");
    assert!(
        events.iter().skip(2).all(|e| e["event"] != "svid"),
        "no SVID after the setuid: {events:?}"
    );
}

/// The connecting process exits while attestd is mid-attestation (a test
/// hook delays it), and its pid is handed to a root process matching a root
/// entry. The receiver of the connection must get nothing: attestd reads
/// only through the pinned process, which is gone.
#[cfg(feature = "test-hooks")]
#[test]
fn a_caller_that_exits_mid_attestation_never_lends_its_pid() {
    let daemon = Daemon::start_with_env(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/root-only"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
        &[("ATTESTD_TEST_ATTEST_DELAY_MS", "2000")],
    );
    let mut attack = attacker(&daemon, &["-mode", "handoff", "-linger", "300ms"]);
    let mut reports = reports(&mut attack);
    let parent = reports.next().unwrap()["parent_pid"].as_i64().unwrap() as i32;
    // Reap the connecting process so its pid is free, then take the pid.
    attack.wait().unwrap();
    let mut squatter = take_pid(parent);
    let report = reports.next().unwrap();
    squatter.kill().unwrap();
    squatter.wait().unwrap();
    assert_refused(attack, &report, "Unavailable", &daemon, "reason", "exited");
}

/// Starts a root `sleep` with exactly `pid`, steering the kernel's pid
/// allocator through ns_last_pid (root only).
#[cfg(feature = "test-hooks")]
fn take_pid(pid: i32) -> Child {
    for _ in 0..100 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        if child.id() as i32 == pid {
            return child;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    panic!("could not reuse pid {pid}");
}

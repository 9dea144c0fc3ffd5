//! go-spiffe v2 (the reference client) fetches, checks and verifies SVIDs.
//! The program lives in tests/interop/go; the test command downloads its
//! modules, and this test builds it once.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::harness::{Daemon, run_as};

/// The go-spiffe client program, built once per test run.
pub fn go_client() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spiffeclient");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/go"))
            .status()
            .expect("go toolchain on PATH (the test command installs the modules)");
        assert!(status.success(), "building the go-spiffe client failed");
        out
    })
}

/// Runs the Go client as `uid` with `args`; returns success, its JSON
/// lines and its stderr.
fn go_as(daemon: &Daemon, uid: u32, args: &[&str]) -> (bool, Vec<Value>, String) {
    let mut command = Command::new(go_client());
    command
        .args(["-addr", &daemon.endpoint(), "-timeout", "10s"])
        .args(args);
    let output = run_as(uid, uid, &mut command);
    let svids = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (
        output.status.success(),
        svids,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn go_spiffe_fetches_and_verifies() {
    let daemon = Daemon::start(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/go/root"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
hint = "root"

[[entry]]
spiffe_id = "spiffe://example.org/go/agent"
selectors = ["unix:uid:1000"]
owner = "team-a@example.org"
dns_names = ["agent.local"]
"#,
    );

    let (ok, svids, stderr) = go_as(&daemon, 0, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0]["spiffe_id"], "spiffe://example.org/go/root");
    assert_eq!(svids[0]["hint"], "root");
    assert_eq!(svids[0]["verified"], true);

    let (ok, svids, stderr) = go_as(&daemon, 1000, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0]["spiffe_id"], "spiffe://example.org/go/agent");

    let (ok, svids, stderr) = go_as(&daemon, 1002, &[]);
    assert!(!ok && svids.is_empty());
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("no identity issued"),
        "{stderr}"
    );
}

#[tokio::test]
async fn go_spiffe_fetches_and_validates_jwt_svids_online_and_offline() {
    let daemon = Daemon::start(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/go/jwt"
selectors = ["unix:uid:1000"]
owner = "team-a@example.org"
"#,
    );
    let (ok, results, stderr) = go_as(&daemon, 1000, &["-mode", "jwt", "-audience", "svc-a,svc-b"]);
    assert!(ok, "{stderr}");
    let result = &results[0];
    assert_eq!(result["spiffe_id"], "spiffe://example.org/go/jwt");
    assert_eq!(result["audience"], serde_json::json!(["svc-a", "svc-b"]));
    assert_eq!(result["online_subject"], "spiffe://example.org/go/jwt");
    assert_eq!(result["offline_subject"], "spiffe://example.org/go/jwt");
}

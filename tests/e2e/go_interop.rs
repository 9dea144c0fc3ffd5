//! go-spiffe v2 (the reference client) fetches, checks and verifies SVIDs.
//! The program lives in tests/interop/go; the test command downloads its
//! modules, and this test builds it once.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::harness::{Daemon, run_as};

fn go_client() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("x509fetch");
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

fn fetch_as(daemon: &Daemon, uid: u32) -> (bool, Vec<Value>, String) {
    let output = run_as(
        uid,
        uid,
        Command::new(go_client()).args(["-addr", &daemon.endpoint(), "-timeout", "10s"]),
    );
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

    let (ok, svids, stderr) = fetch_as(&daemon, 0);
    assert!(ok, "{stderr}");
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0]["spiffe_id"], "spiffe://example.org/go/root");
    assert_eq!(svids[0]["hint"], "root");
    assert_eq!(svids[0]["verified"], true);

    let (ok, svids, stderr) = fetch_as(&daemon, 1000);
    assert!(ok, "{stderr}");
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0]["spiffe_id"], "spiffe://example.org/go/agent");

    let (ok, svids, stderr) = fetch_as(&daemon, 1002);
    assert!(!ok && svids.is_empty());
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("no identity issued"),
        "{stderr}"
    );
}

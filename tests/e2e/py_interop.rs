//! py-spiffe (the Python client) fetches X.509 and JWT SVIDs, and validates
//! a token online and offline. The test command installs py-spiffe into
//! target/interop-venv (tests/interop/python/requirements.txt).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::Daemon;

pub fn python() -> PathBuf {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/interop-venv/bin/python"
    ));
    assert!(
        path.exists(),
        "{} is missing: run tests/run-all.sh (it creates the venv with py-spiffe)",
        path.display()
    );
    path
}

#[test]
fn py_spiffe_fetches_and_validates() {
    let daemon = Daemon::start(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/py/agent"
selectors = ["unix:uid:0"]
owner = "team-a@example.org"
hint = "py"
"#,
    );
    // As root: the interpreter the venv links to may live under /root.
    let output = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/client.py"
        ))
        .args([&daemon.endpoint(), "svc-a", "svc-b"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["x509"][0]["spiffe_id"], "spiffe://example.org/py/agent",
        "{report}"
    );
    assert_eq!(report["x509"][0]["verified"], true, "{report}");
    assert_eq!(report["jwt_subject"], "spiffe://example.org/py/agent");
    assert_eq!(report["jwt_audience"], serde_json::json!(["svc-a", "svc-b"]));
    assert_eq!(report["online_subject"], "spiffe://example.org/py/agent");
    assert_eq!(report["offline_subject"], "spiffe://example.org/py/agent");
}

//! go-spiffe v2 (the reference client) fetches, checks and verifies SVIDs,
//! and stands in for spiffe-helper (which the Go module proxy here does not
//! serve) to write rotating certificate files. The program lives in
//! tests/interop/go; the test command downloads its modules, and this test
//! builds it once.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::harness::{Daemon, key_matches, openssl_verify, pem_certificates, run_as};

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
pub fn go_as(daemon: &Daemon, uid: u32, args: &[&str]) -> (bool, Vec<Value>, String) {
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

/// spiffe-helper's job done by go-spiffe's X509Source: as another uid, it
/// writes svid.pem, svid_key.pem and svid_bundle.pem on every rotation; each
/// set verifies with openssl and holds a matching key, and the files change.
#[test]
fn helper_interop_go_x509_source_writes_files_that_verify_and_rotate() {
    let daemon = Daemon::start(
        r#"
[svid]
x509_ttl = "6s"

[[entry]]
spiffe_id = "spiffe://example.org/go/sidecar"
selectors = ["unix:uid:1000"]
owner = "team-a@example.org"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let user = Some(nix::unistd::Uid::from_raw(1000));
    nix::unistd::chown(&certs, user, Some(nix::unistd::Gid::from_raw(1000))).unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let mut child = Command::new(go_client())
        .args([
            "-addr",
            &daemon.endpoint(),
            "-mode",
            "files",
            "-updates",
            "3",
            "-timeout",
            "40s",
        ])
        .arg("-dir")
        .arg(&certs)
        .uid(1000)
        .gid(1000)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut serials = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let written: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(written["spiffe_id"], "spiffe://example.org/go/sidecar");
        openssl_verify(&certs.join("svid_bundle.pem"), &certs.join("svid.pem"));
        let chain = pem_certificates(&std::fs::read(certs.join("svid.pem")).unwrap());
        let key = pem::parse(std::fs::read(certs.join("svid_key.pem")).unwrap()).unwrap();
        assert_eq!(key.tag(), "PRIVATE KEY");
        assert!(key_matches(&chain[0], key.contents()));
        serials.push(written["serial"].as_str().unwrap().to_owned());
    }
    assert!(child.wait().unwrap().success(), "go client failed");
    assert_eq!(serials.len(), 3, "three SVIDs written: {serials:?}");
    serials.dedup();
    assert_eq!(serials.len(), 3, "the files changed on every rotation");
}

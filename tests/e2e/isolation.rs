//! Identities never cross uids: each caller gets exactly its own entries.

use spiffe::{WorkloadApiClient, WorkloadApiError};

use std::process::Command;

use crate::harness::{Daemon, attestd_bin, cli_fetch_as, printed_ids, run_as};

const PER_UID_ENTRIES: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/agent/a"
selectors = ["unix:uid:1000"]
owner = "team-a@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/agent/b"
selectors = ["unix:uid:1001"]
owner = "team-b@example.org"
"#;

#[tokio::test]
async fn each_uid_gets_only_its_own_identity() {
    let daemon = Daemon::start(PER_UID_ENTRIES);

    let a = cli_fetch_as(&daemon, 1000);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(printed_ids(&a), ["spiffe://example.org/agent/a"]);

    // Without --socket the CLI finds the daemon through SPIFFE_ENDPOINT_SOCKET.
    let mut from_env = Command::new(attestd_bin());
    from_env
        .args(["api", "fetch", "x509"])
        .env("SPIFFE_ENDPOINT_SOCKET", daemon.endpoint());
    let a_again = run_as(1000, 1000, &mut from_env);
    assert!(
        a_again.status.success(),
        "{}",
        String::from_utf8_lossy(&a_again.stderr)
    );
    assert_eq!(printed_ids(&a_again), ["spiffe://example.org/agent/a"]);

    let b = cli_fetch_as(&daemon, 1001);
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(printed_ids(&b), ["spiffe://example.org/agent/b"]);

    let stranger = cli_fetch_as(&daemon, 1002);
    assert!(!stranger.status.success());
    assert!(printed_ids(&stranger).is_empty());
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        stderr.contains("PermissionDenied: no identity issued"),
        "{stderr}"
    );
}

#[tokio::test]
async fn rust_client_sees_no_identity_issued() {
    // Root matches nothing in this policy.
    let daemon = Daemon::start(PER_UID_ENTRIES);
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let error = client.fetch_x509_context().await.unwrap_err();
    assert!(matches!(error, WorkloadApiError::NoIdentityIssued), "{error:?}");
    let error = client.fetch_x509_bundles().await.unwrap_err();
    assert!(matches!(error, WorkloadApiError::NoIdentityIssued), "{error:?}");
}

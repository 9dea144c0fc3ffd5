//! Identities never cross uids: each caller gets exactly its own entries.

use spiffe::{WorkloadApiClient, WorkloadApiError};

use crate::harness::{Daemon, cli_fetch_as, printed_ids};

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

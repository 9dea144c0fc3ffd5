//! A crash and restart keeps the trust bundle: relying parties need not be
//! told anything, and new SVIDs chain to the bundle they already hold.

use spiffe::WorkloadApiClient;

use crate::harness::{Daemon, assert_key_matches, trust_bundle, verify_chain};

const ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/survivor"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;

async fn fetch(daemon: &Daemon) -> (Vec<Vec<u8>>, Vec<u8>, Vec<u8>) {
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let context = client.fetch_x509_context().await.unwrap();
    let roots = trust_bundle(&context);
    let svid = context.default_svid().unwrap();
    (
        roots,
        svid.leaf().as_bytes().to_vec(),
        svid.private_key().as_bytes().to_vec(),
    )
}

#[tokio::test]
async fn sigkill_and_restart_keeps_the_bundle() {
    let daemon = Daemon::start(ENTRY);
    let (roots_before, leaf_before, _) = fetch(&daemon).await;

    // SIGKILL leaves the socket file behind: the restart must replace it.
    let dir = daemon.crash();
    assert!(dir.path().join("run/api.sock").exists());
    let daemon = Daemon::start_in(dir, ENTRY);
    let (roots_after, leaf_after, key_after) = fetch(&daemon).await;

    assert_eq!(roots_before, roots_after, "a restart never changes the bundle");
    assert_ne!(leaf_before, leaf_after, "a fresh SVID after restart");
    verify_chain(std::slice::from_ref(&leaf_after), &roots_before);
    assert_key_matches(&leaf_after, &key_after);
}

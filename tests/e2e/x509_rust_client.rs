//! The Rust `spiffe` crate, in-process as root, against the real daemon.

use spiffe::{TrustDomain, WorkloadApiClient};

use crate::harness::{Daemon, assert_key_matches, trust_bundle, verify_chain};

const ROOT_ENTRIES: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/root-workload"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
hint = "primary"

[[entry]]
spiffe_id = "spiffe://example.org/root-by-gid"
selectors = ["unix:gid:0"]
owner = "platform@example.org"
hint = "secondary"

[[entry]]
spiffe_id = "spiffe://example.org/never"
selectors = ["unix:uid:0", "unix:gid:4242"]
owner = "platform@example.org"
"#;

#[tokio::test]
async fn root_gets_verifiable_svids_for_every_matching_entry() {
    let daemon = Daemon::start(ROOT_ENTRIES);
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let context = client.fetch_x509_context().await.unwrap();

    let ids: Vec<String> = context
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    // Both matching entries, in policy order; the entry needing gid 4242 as well does not match.
    assert_eq!(
        ids,
        [
            "spiffe://example.org/root-workload",
            "spiffe://example.org/root-by-gid"
        ]
    );
    let hints: Vec<_> = context
        .svids()
        .iter()
        .map(|s| s.hint().map(str::to_owned))
        .collect();
    assert_eq!(hints, [Some("primary".to_owned()), Some("secondary".to_owned())]);

    let roots = trust_bundle(&context);
    assert_eq!(roots.len(), 1);
    for svid in context.svids() {
        let chain: Vec<Vec<u8>> = svid.cert_chain().iter().map(|c| c.as_bytes().to_vec()).collect();
        verify_chain(&chain, &roots);
        assert_key_matches(&chain[0], svid.private_key().as_bytes());
    }

    // FetchX509Bundles serves the same bundle.
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let fetched = bundles.get(&td).expect("bundle from FetchX509Bundles");
    let fetched: Vec<Vec<u8>> = fetched
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(fetched, roots);
}

#[tokio::test]
async fn one_svid_per_entry_is_shared_by_its_callers() {
    let daemon = Daemon::start(ROOT_ENTRIES);
    let first = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let second = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let a = first.fetch_x509_svid().await.unwrap();
    let b = second.fetch_x509_svid().await.unwrap();
    assert_eq!(
        a.leaf().as_bytes(),
        b.leaf().as_bytes(),
        "callers of one entry share its SVID"
    );
}

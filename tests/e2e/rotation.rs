//! With a 6 s TTL, an open stream receives each renewed SVID before the one
//! it replaces expires, rotation after rotation.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use spiffe::WorkloadApiClient;

use crate::harness::{Daemon, assert_key_matches, serial_of, trust_bundle, verify_chain};

#[tokio::test]
async fn open_stream_receives_three_rotations_before_expiry() {
    let daemon = Daemon::start(
        r#"
[svid]
x509_ttl = "6s"

[[entry]]
spiffe_id = "spiffe://example.org/short-lived"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
    );
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();

    let mut previous: Option<(String, SystemTime)> = None;
    let mut rotations = 0;
    while rotations < 3 {
        let context = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .expect("a rotation within 15 s")
            .expect("stream stays open")
            .expect("valid update");
        let received_at = SystemTime::now();
        let svid = context.default_svid().unwrap();
        let leaf = svid.leaf().as_bytes();
        let serial = serial_of(leaf);
        let not_after = not_after_of(leaf);

        let roots = trust_bundle(&context);
        verify_chain(&[leaf.to_vec()], &roots);
        assert_key_matches(leaf, svid.private_key().as_bytes());

        if let Some((old_serial, old_not_after)) = &previous {
            assert_ne!(&serial, old_serial, "each update carries a new SVID");
            assert!(
                received_at < *old_not_after,
                "renewed SVID arrived after the old one expired"
            );
            rotations += 1;
        }
        previous = Some((serial, not_after));
    }
}

fn not_after_of(der: &[u8]) -> SystemTime {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp() as u64)
}

//! The SPIFFE bundle document the daemon keeps in <data_dir>/bundle.json and
//! `attestd bundle show` prints: both kinds of authority, kept current.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use spiffe::WorkloadApiClient;

use crate::harness::{Daemon, attestd_bin, trust_bundle};

fn show(daemon: &Daemon, format: &str) -> String {
    let output = Command::new(attestd_bin())
        .args(["bundle", "show", "--format", format, "-c"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn bundle_show_prints_current_spiffe_bundle_and_pem() {
    let daemon = Daemon::start(
        r#"
[ca]
jwt_key_ttl = "6s"

[[entry]]
spiffe_id = "spiffe://example.org/bundle-reader"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
    );
    let document: Value = serde_json::from_str(&show(&daemon, "spiffe")).unwrap();
    let keys = document["keys"].as_array().unwrap();
    let x509: Vec<_> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<_> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!(x509.len(), 1);
    assert!(x509[0]["x5c"].as_array().unwrap().len() == 1 && x509[0].get("kid").is_none());
    assert!(!jwt.is_empty() && jwt.iter().all(|k| k["kid"].is_string() && k["kty"] == "EC"));
    assert!(
        keys.iter().all(|k| k.get("d").is_none()),
        "no private key material"
    );

    // The PEM form is the X.509 bundle the Workload API serves.
    let pem_text = show(&daemon, "pem");
    let from_file: Vec<Vec<u8>> = pem::parse_many(&pem_text)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect();
    let context = WorkloadApiClient::connect_to(daemon.endpoint())
        .await
        .unwrap()
        .fetch_x509_context()
        .await
        .unwrap();
    assert_eq!(from_file, trust_bundle(&context));

    // A JWT key rotation rewrites the document with a higher sequence.
    let first_sequence = document["spiffe_sequence"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: Value = serde_json::from_str(&show(&daemon, "spiffe")).unwrap();
        if now["spiffe_sequence"].as_u64().unwrap() > first_sequence {
            let kids = |d: &Value| -> Vec<String> {
                d["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                    .collect()
            };
            assert_ne!(kids(&now), kids(&document));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bundle.json was not updated on key rotation"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

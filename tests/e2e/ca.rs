//! Certificate authorities against the real daemon: embedded roots that
//! rotate (published before they sign, kept until what they signed has
//! expired), and an upstream intermediate shared by two "hosts" whose
//! workloads then trust each other.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use spiffe::WorkloadApiClient;

use crate::examples::{Server, client};
use crate::harness::{Daemon, assert_key_matches, trust_bundle, verify_chain};

/// Which of `roots` signed `chain` (leaf first).
fn signing_root(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Option<Vec<u8>> {
    roots
        .iter()
        .find(|root| std::panic::catch_unwind(|| verify_chain(chain, std::slice::from_ref(root))).is_ok())
        .cloned()
}

#[tokio::test]
async fn embedded_roots_rotate_published_before_signing_and_retired_after_expiry() {
    let daemon = Daemon::start(
        r#"
[ca]
ttl = "12s"

[svid]
x509_ttl = "5s"

[[entry]]
spiffe_id = "spiffe://example.org/rotating"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
    );
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let start = Instant::now();
    let mut first_published: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut first_signing: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut bundle_sizes = Vec::new();
    let mut first_root_retired = false;
    let mut message = 0;
    while start.elapsed() < Duration::from_secs(17) && !first_root_retired {
        let context = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an update")
            .unwrap()
            .unwrap();
        message += 1;
        let roots = trust_bundle(&context);
        for root in &roots {
            first_published.entry(root.clone()).or_insert(message);
        }
        bundle_sizes.push(roots.len());
        let svid = context.default_svid().unwrap();
        let chain: Vec<Vec<u8>> = svid.cert_chain().iter().map(|c| c.as_bytes().to_vec()).collect();
        // Every SVID verifies against the bundle sent with it.
        verify_chain(&chain, &roots);
        assert_key_matches(&chain[0], svid.private_key().as_bytes());
        let signer = signing_root(&chain, &roots).unwrap();
        first_signing.entry(signer).or_insert(message);
        let first_root = first_published
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(root, _)| root.clone())
            .unwrap();
        first_root_retired = first_signing.len() > 1 && !roots.contains(&first_root);
    }
    assert!(
        first_signing.len() >= 2,
        "a second root signed SVIDs ({message} updates, sizes {bundle_sizes:?})"
    );
    for (root, signed_at) in &first_signing {
        let published_at = first_published[root];
        if *signed_at > 1 {
            assert!(
                published_at < *signed_at,
                "a new root was in an earlier bundle than its first SVID"
            );
        }
    }
    assert!(bundle_sizes.contains(&2), "the bundle grew: {bundle_sizes:?}");
    assert!(
        first_root_retired,
        "the first root left the bundle after expiring: {bundle_sizes:?}"
    );
}

/// An organisation root and intermediates it issues, in PEM files.
pub struct OrgCa {
    root_key: KeyPair,
    root_params: CertificateParams,
    root_pem: String,
}

impl OrgCa {
    pub fn new() -> Self {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::default();
        root_params
            .distinguished_name
            .push(DnType::CommonName, "Example Org Root");
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_pem = root_params.self_signed(&root_key).unwrap().pem();
        Self {
            root_key,
            root_params,
            root_pem,
        }
    }

    /// Issues an intermediate for one host and writes cert, key and bundle
    /// files into `dir`; returns the intermediate's DER.
    pub fn issue(&self, dir: &std::path::Path, host: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("attestd {host}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![rcgen::SanType::URI("spiffe://example.org".try_into().unwrap())];
        let issuer = Issuer::from_params(&self.root_params, &self.root_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        // Replace atomically, as an operator's tooling would.
        for (name, text) in [
            ("intermediate.pem", cert.pem()),
            ("intermediate.key", key.serialize_pem()),
            ("root.pem", self.root_pem.clone()),
        ] {
            std::fs::write(dir.join(format!("{name}.new")), text).unwrap();
            std::fs::rename(dir.join(format!("{name}.new")), dir.join(name)).unwrap();
        }
        cert.der().to_vec()
    }
}

pub fn upstream_config(dir: &std::path::Path, spiffe_id: &str) -> String {
    format!(
        r#"
[ca]
cert_file = "{0}/intermediate.pem"
key_file = "{0}/intermediate.key"
bundle_file = "{0}/root.pem"

[svid]
x509_ttl = "6s"

[[entry]]
spiffe_id = "{spiffe_id}"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
        dir.display()
    )
}

pub async fn fetch(daemon: &Daemon) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let context = client.fetch_x509_context().await.unwrap();
    let svid = context.default_svid().unwrap();
    let chain = svid.cert_chain().iter().map(|c| c.as_bytes().to_vec()).collect();
    (chain, trust_bundle(&context))
}

const HOST_A_AGENT: &str = "spiffe://example.org/host-a/agent";
const HOST_B_AGENT: &str = "spiffe://example.org/host-b/agent";

#[tokio::test]
async fn two_hosts_with_intermediates_of_one_root_trust_each_other() {
    let org = OrgCa::new();
    let files = tempfile::tempdir().unwrap();
    let intermediate_a = org.issue(&files.path().join("a"), "host-a");
    let intermediate_b = org.issue(&files.path().join("b"), "host-b");
    let host_a = Daemon::start(&upstream_config(
        &files.path().join("a"),
        "spiffe://example.org/host-a/agent",
    ));
    let host_b = Daemon::start(&upstream_config(
        &files.path().join("b"),
        "spiffe://example.org/host-b/agent",
    ));

    let (chain_a, bundle_a) = fetch(&host_a).await;
    let (chain_b, bundle_b) = fetch(&host_b).await;
    let root = pem::parse(&org.root_pem).unwrap().into_contents();
    assert_eq!(
        bundle_a,
        std::slice::from_ref(&root),
        "the bundle holds the organisation root"
    );
    assert_eq!(bundle_b, [root]);
    assert_eq!(
        chain_a[1], intermediate_a,
        "the SVID chain carries the intermediate"
    );
    assert_eq!(chain_b[1], intermediate_b);
    // Each host's workload verifies the other's SVID with its own bundle...
    verify_chain(&chain_a, &bundle_b);
    verify_chain(&chain_b, &bundle_a);
    // ...and they complete mutual TLS, each authorizing the other by SPIFFE ID.
    let server = Server::start(&host_a, 0, HOST_A_AGENT, HOST_B_AGENT);
    let (ok, stdout, stderr) = client(&host_b, &server, 0, HOST_A_AGENT, 2);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("server {HOST_A_AGENT} ")), "{stdout}");
    let served = server.wait_for_line(&format!("served {HOST_B_AGENT} "), Duration::from_secs(5));
    assert!(served.is_some(), "the server authorized host B's agent");
    drop(server);

    // Replacing host A's files switches it to the new intermediate.
    let replacement = org.issue(&files.path().join("a"), "host-a-2");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (chain, _) = fetch(&host_a).await;
        if chain[1] == replacement {
            verify_chain(&chain, &bundle_b);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new intermediate not in use:\n{}",
            host_a.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

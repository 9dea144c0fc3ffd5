//! SPIFFE Federation between two real daemons of different trust domains
//! (example.org and partner.example), each serving its bundle endpoint and
//! fetching the other's: partner.example serves with a certificate of a
//! test CA (`https_web`), example.org with its own SVID (`https_spiffe`,
//! bootstrapped from a copy of its bundle). Their workloads fetch SVIDs and
//! federated bundles with the Rust `spiffe` crate and complete mTLS across
//! the trust domains with the mtls example.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use spiffe::{TrustDomain, WorkloadApiClient};

use crate::examples::{Server, client};
use crate::harness::{Daemon, attestd_bin, free_loopback_port, run_as, shared_tempdir, write_config};

const PARTNER: &str = "partner.example";
const OWN: &str = "example.org";
const ENDPOINT_ID: &str = "spiffe://example.org/attestd/bundle-endpoint";
const MTLS_SERVER: &str = "spiffe://partner.example/mtls/server";
const MTLS_CLIENT: &str = "spiffe://example.org/mtls/client";
const DEADLINE: Duration = Duration::from_secs(60);

/// Writes a test CA (`ca.pem`) and a server certificate for `localhost`
/// and 127.0.0.1 it signed (`server.pem`, `server.key`) into `dir`.
fn web_pki(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "federation test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = server
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// The X.509 authorities (DER) of a SPIFFE bundle document.
fn document_authorities(json: &[u8]) -> Vec<Vec<u8>> {
    let document: serde_json::Value = serde_json::from_slice(json).unwrap();
    document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["use"] == "x509-svid")
        .map(|key| {
            base64::engine::general_purpose::STANDARD
                .decode(key["x5c"][0].as_str().unwrap())
                .unwrap()
        })
        .collect()
}

/// The authorities of a daemon's own trust domain, from its bundle.json.
fn own_authorities(daemon: &Daemon) -> Vec<Vec<u8>> {
    document_authorities(&std::fs::read(daemon.dir.path().join("data/bundle.json")).unwrap())
}

/// The X.509 authorities of `td` in the X.509 context a caller (this
/// process, uid 0) gets from `daemon`, if it gets a bundle of `td`.
async fn context_authorities(daemon: &Daemon, td: &str) -> Option<Vec<Vec<u8>>> {
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.ok()?;
    let context = client.fetch_x509_context().await.ok()?;
    let bundle = context.bundle_set().get(&TrustDomain::new(td).unwrap())?;
    Some(
        bundle
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect(),
    )
}

/// Polls `check` until it gives a value (or fails after [`DEADLINE`]).
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_trust_domains_federate_through_bundle_endpoints_and_complete_mtls() {
    let pki = tempfile::tempdir().unwrap();
    web_pki(pki.path());
    let (port_a, port_b) = (free_loopback_port(), free_loopback_port());

    let a = Daemon::start(&format!(
        r#"
[bundle_endpoint]
listen = "{port_a}"
refresh_hint = "5s"

[[federation]]
trust_domain = "{PARTNER}"
endpoint_url = "https://localhost:{port_b_port}/"
endpoint_profile = "https_web"
endpoint_ca_file = "{pki}/ca.pem"

[[entry]]
spiffe_id = "spiffe://example.org/agent"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
federates_with = ["{PARTNER}"]

[[entry]]
spiffe_id = "{MTLS_CLIENT}"
selectors = ["unix:uid:1001"]
owner = "platform@example.org"
federates_with = ["spiffe://{PARTNER}"]

[[entry]]
spiffe_id = "spiffe://example.org/mtls/local-only"
selectors = ["unix:uid:1002"]
owner = "platform@example.org"
"#,
        port_b_port = port_b.rsplit(':').next().unwrap(),
        pki = pki.path().display(),
    ));
    // partner.example bootstraps from a copy of example.org's bundle, then
    // follows its endpoint.
    let bootstrap = pki.path().join("example.org.json");
    std::fs::copy(a.dir.path().join("data/bundle.json"), &bootstrap).unwrap();
    let b = Daemon::start_for(
        PARTNER,
        &format!(
            r#"
[bundle_endpoint]
listen = "{port_b}"
cert_file = "{pki}/server.pem"
key_file = "{pki}/server.key"
refresh_hint = "5s"

[[federation]]
trust_domain = "{OWN}"
bundle_file = "{bootstrap}"
endpoint_url = "https://{port_a}/"
endpoint_profile = "https_spiffe"
endpoint_spiffe_id = "{ENDPOINT_ID}"

[[entry]]
spiffe_id = "spiffe://{PARTNER}/agent"
selectors = ["unix:uid:0"]
owner = "partners@partner.example"
federates_with = ["{OWN}"]

[[entry]]
spiffe_id = "{MTLS_SERVER}"
selectors = ["unix:uid:1000"]
owner = "partners@partner.example"
federates_with = ["{OWN}"]
"#,
            pki = pki.path().display(),
            bootstrap = bootstrap.display(),
        ),
    );

    // Each side's workload gets the other's bundle, as the other publishes it.
    let partner_roots = own_authorities(&b);
    let fetched = eventually("example.org's workload to get partner.example's bundle", || {
        context_authorities(&a, PARTNER)
    })
    .await;
    assert_eq!(fetched, partner_roots);
    assert_eq!(context_authorities(&b, OWN).await.unwrap(), own_authorities(&a));
    assert_eq!(
        context_authorities(&a, OWN).await.unwrap(),
        own_authorities(&a),
        "the own bundle is still ours"
    );
    // partner.example fetched over https_spiffe (the bootstrap file alone
    // would not leave a fetched copy).
    let stored = b.dir.path().join("data/federation/example.org.json");
    let fetched_copy = eventually("partner.example to fetch example.org's endpoint", || {
        let stored = stored.clone();
        async move { std::fs::read(stored).ok() }
    })
    .await;
    assert_eq!(document_authorities(&fetched_copy), own_authorities(&a));
    let served: serde_json::Value = serde_json::from_slice(&fetched_copy).unwrap();
    assert_eq!(served["spiffe_refresh_hint"], 5, "{served}");
    assert!(served["spiffe_sequence"].as_u64().unwrap() > 0, "{served}");

    // FetchX509Bundles and FetchJWTBundles carry own and federated bundles.
    let client_a = WorkloadApiClient::connect_to(a.endpoint()).await.unwrap();
    let x509_bundles = client_a.fetch_x509_bundles().await.unwrap();
    let partner_td = TrustDomain::new(PARTNER).unwrap();
    assert!(x509_bundles.get(&partner_td).is_some());
    assert!(x509_bundles.get(&TrustDomain::new(OWN).unwrap()).is_some());
    let jwt_bundles = client_a.fetch_jwt_bundles().await.unwrap();
    let partner_jwt = jwt_bundles.get(&partner_td).expect("partner.example's JWT keys");

    // A JWT-SVID of partner.example validates at example.org for a caller
    // that federates with it, and for no other.
    let client_b = WorkloadApiClient::connect_to(b.endpoint()).await.unwrap();
    let audience = "spiffe://example.org/agent";
    let token = client_b.fetch_jwt_token(&[audience], None).await.unwrap();
    let validated = client_a.validate_jwt_token(audience, &token).await.unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://partner.example/agent"
    );
    let kid = validated.key_id().to_owned();
    assert!(partner_jwt.find_jwt_authority(&kid).is_some());
    let refused = run_as(
        1002,
        1002,
        Command::new(attestd_bin())
            .args([
                "api",
                "validate",
                "jwt",
                "--socket",
                &a.endpoint(),
                "--audience",
                audience,
                "--svid",
            ])
            .arg(&token),
    );
    assert!(
        !refused.status.success(),
        "a caller whose entries do not federate cannot validate partner.example's tokens"
    );

    // mTLS across the trust domains: each side verifies the other with its
    // federated bundle and authorizes it by SPIFFE ID.
    let server = Server::start(&b, 1000, MTLS_SERVER, MTLS_CLIENT);
    let (ok, stdout, stderr) = client(&a, &server, 1001, MTLS_SERVER, 1);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("server {MTLS_SERVER}")), "{stdout}");
    assert!(
        server
            .wait_for_line(&format!("served {MTLS_CLIENT}"), Duration::from_secs(15))
            .is_some(),
        "{:?}",
        server.printed()
    );
    // An entry without federates_with gets no federated bundle: its
    // workload cannot authenticate partner.example's server.
    let (ok, stdout, stderr) = client(&a, &server, 1002, MTLS_SERVER, 1);
    assert!(!ok, "{stdout}{stderr}");
    drop(server);

    // partner.example goes away: example.org keeps its last good bundle.
    let failures_before = count(&a.log(), "federated bundle refresh failed");
    drop(b);
    eventually("a failed refresh of partner.example's bundle", || {
        let failed = count(&a.log(), "federated bundle refresh failed") > failures_before;
        async move { failed.then_some(()) }
    })
    .await;
    assert_eq!(context_authorities(&a, PARTNER).await.unwrap(), partner_roots);
}

/// A bundle document of one X.509 authority and one JWT authority.
fn bundle_document(ca_der: &[u8], ca_key: &KeyPair, kid: &str, jwt_key: &KeyPair) -> String {
    let b64url = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let point = |key: &KeyPair| {
        let raw = key.public_key_raw().to_vec();
        (b64url(&raw[1..33]), b64url(&raw[33..65]))
    };
    let (cx, cy) = point(ca_key);
    let (jx, jy) = point(jwt_key);
    serde_json::json!({
        "spiffe_sequence": 1,
        "keys": [
            {"kty": "EC", "crv": "P-256", "x": cx, "y": cy, "use": "x509-svid",
             "x5c": [base64::engine::general_purpose::STANDARD.encode(ca_der)]},
            {"kty": "EC", "crv": "P-256", "x": jx, "y": jy, "use": "jwt-svid", "kid": kid},
        ]
    })
    .to_string()
}

/// A self-signed CA of partner.example: its DER and key.
fn partner_ca() -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "partner.example");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI("spiffe://partner.example".try_into().unwrap())];
    (params.self_signed(&key).unwrap().der().to_vec(), key)
}

/// Replaces `path` by renaming, as configuration management does.
fn replace(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_bundle_file_is_pushed_to_open_streams_and_a_broken_one_is_ignored() {
    let files = tempfile::tempdir().unwrap();
    let partner_file = files.path().join("partner.json");
    let (ca1, ca1_key) = partner_ca();
    let jwt1 = KeyPair::generate().unwrap();
    std::fs::write(&partner_file, bundle_document(&ca1, &ca1_key, "k1", &jwt1)).unwrap();
    let daemon = Daemon::start(&format!(
        r#"
[[federation]]
trust_domain = "{PARTNER}"
bundle_file = "{}"

[[entry]]
spiffe_id = "spiffe://example.org/agent"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
federates_with = ["{PARTNER}"]
"#,
        partner_file.display()
    ));
    let partner = TrustDomain::new(PARTNER).unwrap();
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let mut contexts = client.stream_x509_contexts().await.unwrap();
    let mut x509_bundles = client.stream_x509_bundles().await.unwrap();
    let mut jwt_bundles = client.stream_jwt_bundles().await.unwrap();
    let authorities = |bundle: &spiffe::X509Bundle| -> Vec<Vec<u8>> {
        bundle
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect()
    };

    let first = contexts.next().await.unwrap().unwrap();
    assert_eq!(
        authorities(&first.bundle_set().get(&partner).unwrap()),
        std::slice::from_ref(&ca1)
    );
    let first = x509_bundles.next().await.unwrap().unwrap();
    assert_eq!(
        authorities(&first.get(&partner).unwrap()),
        std::slice::from_ref(&ca1)
    );
    let first = jwt_bundles.next().await.unwrap().unwrap();
    assert!(first.get(&partner).unwrap().find_jwt_authority("k1").is_some());

    // The partner rotates: the file is replaced, and every open stream
    // gets the new bundle with no restart.
    let (ca2, ca2_key) = partner_ca();
    let jwt2 = KeyPair::generate().unwrap();
    replace(&partner_file, &bundle_document(&ca2, &ca2_key, "k2", &jwt2));
    let pushed = tokio::time::timeout(DEADLINE, contexts.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        authorities(&pushed.bundle_set().get(&partner).unwrap()),
        std::slice::from_ref(&ca2)
    );
    let pushed = tokio::time::timeout(DEADLINE, x509_bundles.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        authorities(&pushed.get(&partner).unwrap()),
        std::slice::from_ref(&ca2)
    );
    let pushed = tokio::time::timeout(DEADLINE, jwt_bundles.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let keys = pushed.get(&partner).unwrap();
    assert!(keys.find_jwt_authority("k2").is_some() && keys.find_jwt_authority("k1").is_none());

    // A broken file is logged and ignored: the last good bundle stays.
    replace(&partner_file, "{\"keys\": [");
    let log_line = "invalid bundle file; keeping the bundle in effect";
    eventually("the broken bundle file to be read", || {
        let seen = daemon.log().contains(log_line);
        async move { seen.then_some(()) }
    })
    .await;
    assert_eq!(context_authorities(&daemon, PARTNER).await.unwrap(), [ca2]);
}

/// Runs `attestd run` on `body` (after the trust domain, socket and data
/// directory lines, so the body starts on line 4) and returns its stderr.
fn start_failure(body: &str) -> String {
    let dir = shared_tempdir();
    let path = write_config(dir.path(), body);
    let output = Command::new(attestd_bin())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success(), "attestd accepted:\n{body}");
    String::from_utf8_lossy(&output.stderr).replace(&path.display().to_string(), "FILE")
}

#[test]
fn federation_mistakes_stop_the_start_with_file_line_and_key() {
    let cases = [
        (
            "[[federation]]\ntrust_domain = \"partner.example\"\nendpoint_url = \"https://p.example/\"\n",
            "FILE:6: federation[0].endpoint_profile: endpoint_url needs endpoint_profile",
        ),
        (
            "[[federation]]\ntrust_domain = \"partner.example\"\nendpoint_url = \"https://p.example/\"\nendpoint_profile = \"https_spiffe\"\n",
            "FILE:7: federation[0].endpoint_spiffe_id: https_spiffe needs the endpoint server's SPIFFE ID",
        ),
        (
            "[[federation]]\ntrust_domain = \"example.org\"\nbundle_file = \"x.json\"\n",
            "FILE:5: federation[0].trust_domain: example.org is attestd's own trust domain",
        ),
        (
            "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\nowner = \"o\"\nfederates_with = [\"partner.example\"]\n",
            "FILE:8: entry[0].federates_with[0]: partner.example is not a [[federation]] trust domain",
        ),
        (
            "[bundle_endpoint]\nlisten = \"127.0.0.1:1\"\nspiffe_id = \"spiffe://other.org/x\"\n",
            "FILE:6: bundle_endpoint.spiffe_id: spiffe://other.org/x is outside the trust domain example.org",
        ),
        (
            "[bundle_endpoint]\nlisten = \"127.0.0.1:1\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/attestd/bundle-endpoint\"\nselectors = [\"unix:uid:1\"]\nowner = \"o\"\n",
            "FILE:6: spiffe_id: spiffe://example.org/attestd/bundle-endpoint is the bundle endpoint's own identity",
        ),
    ];
    for (body, expected) in cases {
        let stderr = start_failure(body);
        assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
    }
    // A bundle file that is not a bundle document fails the start too.
    let files = tempfile::tempdir().unwrap();
    let broken = files.path().join("partner.json");
    std::fs::write(&broken, "{\"keys\": 1}").unwrap();
    let stderr = start_failure(&format!(
        "[[federation]]\ntrust_domain = \"partner.example\"\nbundle_file = \"{}\"\n",
        broken.display()
    ));
    assert!(
        stderr.contains("[[federation]] partner.example: bundle_file")
            && stderr.contains("not a SPIFFE bundle document"),
        "{stderr}"
    );
}

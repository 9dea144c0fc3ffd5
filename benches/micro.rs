//! Micro-benchmarks of the parts of a Workload API call, in-process through
//! the library (divan): attestation, X.509-SVID and JWT-SVID minting (with
//! the P-256 key generation and the ES256 signature inside them measured
//! apart), and one audit write. Matching entries is `benches/registry.rs`;
//! what a whole call costs over the socket is `benches/workload_api`.
//!
//! ```text
//! cargo bench --bench micro                      # divan's defaults (100 samples each)
//! cargo bench --bench micro -- --max-time 0.5    # short: what the test command runs
//! cargo bench --bench micro -- attest            # only names matching "attest"
//! ```
//!
//! Under `cargo test --all-targets` (no `--bench`) divan runs each once.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use divan::Bencher;

use attestd::attest::{Attestor, ExeBinding, ExeFacts, Hashing, PeerIdentity, Workload};
use attestd::audit::{AuditLog, OnAuditFailure, Outcome, Record, Rotation, rfc3339};
use attestd::authority::{Authority, JwtSettings, SvidTemplate};
use attestd::spiffe_id::{SpiffeId, TrustDomain};

fn main() {
    divan::main();
}

const SPIFFE_ID: &str = "spiffe://bench.example/agent";
const AUDIENCE: &str = "spiffe://bench.example/relying-party";

/// A connection from this process to itself: the peer attested is this
/// process, pinned as attestd pins a caller at accept. The other end must
/// stay open for the binding check to find its holder.
fn connected_peer() -> (PeerIdentity, UnixStream, UnixStream) {
    let (ours, theirs) = UnixStream::pair().expect("a socket pair");
    let peer = PeerIdentity::from_socket(&ours).expect("this process's credentials and pidfd");
    (peer, ours, theirs)
}

/// An authority as attestd runs it: an embedded CA and JWT keys in a
/// fresh data directory (kept alive with it).
fn authority() -> (tempfile::TempDir, Authority) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let trust_domain = TrustDomain::new("bench.example").expect("a valid trust domain");
    let day = Duration::from_secs(86_400);
    let authority = Authority::embedded(
        trust_domain,
        &dir.path().join("data"),
        7 * day,
        JwtSettings::without_issuer(day),
    )
    .expect("an embedded authority");
    (dir, authority)
}

fn spiffe_id() -> SpiffeId {
    SpiffeId::new(SPIFFE_ID).expect("a valid SPIFFE ID")
}

mod attest {
    use super::*;

    /// A policy of uid entries, as attestd runs it on a runtime thread:
    /// `/proc` facts, the `exe` link, names remembered.
    #[divan::bench]
    fn uid_policy(bencher: Bencher) {
        let (peer, _ours, _theirs) = connected_peer();
        let attestor = Attestor::default();
        attestor
            .attest(&peer, ExeFacts::PathOnly)
            .expect("remembering the names");
        bencher.bench_local(|| {
            attestor
                .attest_in_place(&peer)
                .expect("the names are remembered")
                .expect("attesting this process")
        });
    }

    /// The same with `unix:path` proven (the executable's file system
    /// judged, the path resolved in the host's mount namespace): what a
    /// uid policy cost before it stopped reaching the executable.
    #[divan::bench]
    fn uid_policy_with_path(bencher: Bencher) {
        let (peer, _ours, _theirs) = connected_peer();
        let attestor = Attestor::default();
        bencher.bench_local(|| {
            attestor
                .attest(&peer, ExeFacts::Selectors(ExeBinding::Trust, Hashing::Skip))
                .expect("attesting this process")
        });
    }

    /// A policy naming executables: the digest (cached per file version
    /// after the first call, as in attestd) and the connection binding
    /// check (no other process holds the caller's end), which scans every
    /// process's descriptors.
    #[divan::bench]
    fn exe_bound_policy(bencher: Bencher) {
        let (peer, _ours, _theirs) = connected_peer();
        let attestor = Attestor::default();
        bencher.bench_local(|| {
            let workload = attestor
                .attest(&peer, ExeFacts::Selectors(ExeBinding::Verify, Hashing::Hash))
                .expect("attesting this process");
            assert!(workload.sha256.is_some(), "{:?}", workload.notes);
            workload
        });
    }
}

mod x509 {
    use super::*;

    /// One X.509-SVID: a fresh P-256 key, the certificate signed by the CA.
    #[divan::bench]
    fn mint(bencher: Bencher) {
        let (_dir, authority) = authority();
        let template = SvidTemplate {
            spiffe_id: spiffe_id(),
            dns_names: Vec::new(),
            ttl: Duration::from_secs(3600),
            valid_until: None,
            remote_entry: None,
        };
        bencher.bench_local(|| authority.mint_x509(&template).expect("minting"));
    }

    /// The key generation inside [`mint`], alone.
    #[divan::bench]
    fn p256_key(bencher: Bencher) {
        bencher.bench(|| rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key"));
    }
}

mod jwt {
    use super::*;

    use jsonwebtoken::{Algorithm, EncodingKey};
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::DecodePrivateKey as _;

    /// One JWT-SVID as FetchJWTSVID mints it (one audience, 5 minutes).
    #[divan::bench]
    fn mint(bencher: Bencher) {
        let (_dir, authority) = authority();
        let (id, audience) = (spiffe_id(), vec![AUDIENCE.to_owned()]);
        bencher.bench_local(|| {
            authority
                .jwt()
                .mint(&id, &audience, Duration::from_secs(300))
                .expect("minting")
        });
    }

    /// A minted token's signing input (header and claims), and a P-256 key
    /// made as attestd makes its JWT keys (PKCS#8 DER).
    fn signing_input() -> (String, Vec<u8>) {
        let (_dir, authority) = authority();
        let token = authority
            .jwt()
            .mint(&spiffe_id(), &[AUDIENCE.to_owned()], Duration::from_secs(300))
            .expect("minting")
            .token;
        let (message, _signature) = token.rsplit_once('.').expect("a JWS compact token");
        let pkcs8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("a key")
            .serialize_der();
        (message.to_owned(), pkcs8)
    }

    /// The ES256 signature of the same message through jsonwebtoken, as
    /// minting signs: attestd's provider (`src/authority/jwt_crypto.rs`,
    /// installed when the authority is built) decodes the PKCS#8 key with
    /// ring on every call, then signs.
    #[divan::bench]
    fn es256_sign(bencher: Bencher) {
        let (message, pkcs8) = signing_input();
        let key = EncodingKey::from_ec_der(&pkcs8);
        bencher.bench_local(|| {
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).expect("signing")
        });
    }

    /// The signature alone, by ring, its key decoded once.
    #[divan::bench]
    fn es256_sign_ring_prepared_key(bencher: Bencher) {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let (message, pkcs8) = signing_input();
        let rng = ring::rand::SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).expect("a P-256 key");
        bencher.bench_local(|| key.sign(&rng, message.as_bytes()).expect("signing"));
    }

    /// The signature by the pure-Rust P-256 of jsonwebtoken's own
    /// provider, its key decoded once: what attestd signed with before
    /// (that provider also decoded the key, another scalar multiplication,
    /// on every call).
    #[divan::bench]
    fn es256_sign_rustcrypto_prepared_key(bencher: Bencher) {
        let (message, pkcs8) = signing_input();
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(&pkcs8).expect("a P-256 key");
        bencher.bench_local(|| -> p256::ecdsa::Signature { key.sign(message.as_bytes()) });
    }
}

mod audit {
    use super::*;

    /// One issuance record (this process attested, an entry, a serial)
    /// appended to the hash-chained trail, as a FetchX509SVID answer
    /// writes it.
    #[divan::bench]
    fn issuance_record(bencher: Bencher) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let rotation = Rotation {
            max_bytes: 64 << 20,
            keep: 1,
        };
        let log = AuditLog::open(&dir.path().join("audit.jsonl"), rotation, OnAuditFailure::Refuse)
            .expect("opening the audit trail");
        let record = issuance(&this_process());
        // The record is built outside the timing: the trail takes it.
        bencher
            .with_inputs(|| record.clone())
            .bench_local_values(|record| log.write([record]).expect("writing"));
    }

    fn this_process() -> Workload {
        let (peer, _ours, _theirs) = connected_peer();
        Attestor::default()
            .attest(&peer, ExeFacts::PathOnly)
            .expect("attesting this process")
    }

    fn issuance(workload: &Workload) -> Record {
        let mut record = Record::new("FetchX509SVID", Outcome::Issued, "issued", Some(workload));
        record.entry = Some("entry-0".into());
        record.entry_location = Some("/etc/attestd/entries.d/agents.toml:12".into());
        record.owner = Some("ml-platform@example.org".into());
        record.description = Some("code-review agent".into());
        record.labels = [("agent", "reviewer"), ("version", "2.3.1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        record.spiffe_id = Some(SPIFFE_ID.into());
        record.serial = Some("5f1e0c8a9b7d6e4f3a2b1c0d9e8f7a6b".into());
        record.not_after = Some(rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600)));
        record
    }
}

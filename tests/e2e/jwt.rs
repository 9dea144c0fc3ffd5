//! JWT-SVIDs against the real daemon: the Rust client fetches, validates
//! through the API and offline; forged and broken tokens are refused, each
//! for its own reason; the audience allow-list holds; keys rotate with the
//! new key published before it signs.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use spiffe::{JwtSvid, TrustDomain, WorkloadApiClient};
use tonic::Code;

use attestd::proto::ValidateJwtsvidRequest;

use crate::harness::Daemon;

const ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/jwt/agent"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;

const SUB: &str = "spiffe://example.org/jwt/agent";

/// Claims of a token, read without verification (the test inspects what
/// attestd minted).
fn claims(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode_claims(token).unwrap()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn client(daemon: &Daemon) -> WorkloadApiClient {
    WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap()
}

/// A fresh JWT-SVID for audience `svc-a`.
async fn fetch_token(daemon: &Daemon) -> JwtSvid {
    client(daemon)
        .await
        .fetch_jwt_svid(["svc-a"], None)
        .await
        .unwrap()
}

/// ValidateJWTSVID through attestd; the status message on refusal.
async fn refusal(daemon: &Daemon, token: &str, audience: &str) -> String {
    let mut api = attestd::client::connect(&daemon.socket()).await.unwrap();
    let request = ValidateJwtsvidRequest {
        audience: audience.into(),
        svid: token.into(),
    };
    let status = api
        .validate_jwtsvid(request)
        .await
        .expect_err("token must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status.message().to_owned()
}

/// The daemon's current signing key (tests forge tokens with it to reach
/// checks that come after the signature).
fn daemon_key(daemon: &Daemon) -> (String, EncodingKey) {
    let text = std::fs::read_to_string(daemon.dir.path().join("data/jwt_keys.json")).unwrap();
    let stored: Value = serde_json::from_str(&text).unwrap();
    let key = &stored["keys"][0];
    let der = base64::engine::general_purpose::STANDARD
        .decode(key["pkcs8"].as_str().unwrap())
        .unwrap();
    (
        key["kid"].as_str().unwrap().to_owned(),
        EncodingKey::from_ec_der(&der),
    )
}

fn now_secs() -> u64 {
    attestd::wall_clock::unix_seconds(SystemTime::now())
}

fn forge(kid: &str, alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    let header = Header {
        alg,
        kid: Some(kid.into()),
        ..Header::default()
    };
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[tokio::test]
async fn rust_client_fetches_and_validates_online_and_offline() {
    let daemon = Daemon::start(ENTRY);
    let client = client(&daemon).await;
    let svid = client.fetch_jwt_svid(["svc-a", "svc-b"], None).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), SUB);
    assert_eq!(svid.audience(), ["svc-a", "svc-b"]);

    let header = jsonwebtoken::decode_header(svid.token()).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let raw_header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(svid.token().split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut fields: Vec<_> = raw_header.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(fields, ["alg", "kid", "typ"], "no other header fields");
    let minted = claims(svid.token());
    assert!(
        minted["exp"].is_u64() && minted["iat"].is_u64(),
        "integer exp and iat: {minted}"
    );
    let ttl = minted["exp"].as_u64().unwrap() - minted["iat"].as_u64().unwrap();
    assert_eq!(ttl, 300, "default jwt_ttl of 5m");
    assert_eq!(minted["jti"].as_str().unwrap().len(), 32, "128-bit jti");

    // Online validation through attestd.
    let validated = client.validate_jwt_token("svc-b", svid.token()).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), SUB);
    // Offline validation against the JWT bundle fetched from attestd.
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let bundle = bundles.get(&td).expect("JWT bundle of our trust domain");
    assert!(bundle.find_jwt_authority(&kid_of(svid.token())).is_some());
    let offline = JwtSvid::parse_and_validate(svid.token(), &bundles, &["svc-a"]).unwrap();
    assert_eq!(offline.spiffe_id().to_string(), SUB);

    // A fresh token on every call.
    let again = client.fetch_jwt_svid(["svc-a", "svc-b"], None).await.unwrap();
    assert_ne!(claims(again.token())["jti"], minted["jti"]);
}

#[tokio::test]
async fn validation_returns_subject_and_numeric_claims() {
    let daemon = Daemon::start(ENTRY);
    let svid = fetch_token(&daemon).await;
    let mut api = attestd::client::connect(&daemon.socket()).await.unwrap();
    let response = api
        .validate_jwtsvid(ValidateJwtsvidRequest {
            audience: "svc-a".into(),
            svid: svid.token().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.spiffe_id, SUB);
    let fields = response.claims.unwrap().fields;
    use prost_types::value::Kind;
    let number = |name: &str| match fields[name].kind {
        Some(Kind::NumberValue(n)) => n,
        ref other => panic!("{name} is not a number: {other:?}"),
    };
    assert_eq!(
        number("exp") as u64,
        claims(svid.token())["exp"].as_u64().unwrap()
    );
    assert!(number("iat") > 0.0);
    assert!(matches!(&fields["sub"].kind, Some(Kind::StringValue(s)) if s == SUB));
}

#[tokio::test]
async fn empty_audience_or_foreign_identity_is_refused() {
    let daemon = Daemon::start(ENTRY);
    let mut api = attestd::client::connect(&daemon.socket()).await.unwrap();
    let status = attestd::client::fetch_jwt(&mut api, vec![], None)
        .await
        .unwrap_err();
    assert!(status.to_string().starts_with("InvalidArgument"), "{status}");
    let other = Some("spiffe://example.org/someone-else".to_owned());
    let status = attestd::client::fetch_jwt(&mut api, vec!["a".into()], other)
        .await
        .unwrap_err();
    assert!(status.to_string().starts_with("PermissionDenied"), "{status}");
    let mine = Some(SUB.to_owned());
    let ok = attestd::client::fetch_jwt(&mut api, vec!["a".into()], mine)
        .await
        .unwrap();
    assert_eq!(ok.svids.len(), 1);
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let daemon = Daemon::start(ENTRY);
    let svid = fetch_token(&daemon).await;
    let message = refusal(&daemon, svid.token(), "svc-b").await;
    assert!(message.contains("audience \"svc-b\""), "{message}");
}

#[tokio::test]
async fn expired_token_is_refused() {
    let daemon = Daemon::start(&format!("[svid]\njwt_ttl = \"5s\"\n{ENTRY}"));
    let svid = fetch_token(&daemon).await;
    let exp = claims(svid.token())["exp"].as_u64().unwrap();
    // Past exp and the validation leeway.
    let leeway = attestd::authority::JwtAuthority::VALIDATION_LEEWAY.as_secs();
    while now_secs() <= exp + leeway {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let message = refusal(&daemon, svid.token(), "svc-a").await;
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let daemon = Daemon::start(ENTRY);
    let svid = fetch_token(&daemon).await;
    let parts: Vec<&str> = svid.token().split('.').collect();
    let mut payload = claims(svid.token());
    payload["sub"] = json!("spiffe://example.org/jwt/admin");
    let forged = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    let message = refusal(&daemon, &forged, "svc-a").await;
    assert!(message.contains("signature does not verify"), "{message}");
}

#[tokio::test]
async fn tampered_signature_is_refused() {
    let daemon = Daemon::start(ENTRY);
    let svid = fetch_token(&daemon).await;
    let (head, signature) = svid.token().rsplit_once('.').unwrap();
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap();
    bytes[10] ^= 0x01;
    let forged = format!(
        "{head}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let message = refusal(&daemon, &forged, "svc-a").await;
    assert!(message.contains("signature does not verify"), "{message}");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let daemon = Daemon::start(ENTRY);
    let (kid, _) = daemon_key(&daemon);
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
    let payload = json!({"sub": SUB, "aud": ["svc-a"], "exp": now_secs() + 60});
    let unsigned = format!("{}.{}.", b64(&header), b64(&payload));
    let message = refusal(&daemon, &unsigned, "svc-a").await;
    assert!(message.contains("alg none"), "{message}");
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let daemon = Daemon::start(ENTRY);
    let svid = fetch_token(&daemon).await;
    let kid = kid_of(svid.token());
    // The classic confusion attack: the public key (as published) used as an
    // HMAC secret.
    let bundles = client(&daemon).await.fetch_jwt_bundles().await.unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let public_jwk = bundles
        .get(&td)
        .unwrap()
        .find_jwt_authority(&kid)
        .unwrap()
        .jwk_json()
        .to_vec();
    let payload = json!({"sub": SUB, "aud": ["svc-a"], "exp": now_secs() + 60});
    let forged = forge(
        &kid,
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_jwk),
        &payload,
    );
    let message = refusal(&daemon, &forged, "svc-a").await;
    assert!(message.contains("HS256"), "{message}");
}

#[tokio::test]
async fn token_from_a_key_not_in_the_bundle_is_refused() {
    let daemon = Daemon::start(ENTRY);
    let (kid, _) = daemon_key(&daemon);
    let foreign = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let foreign = EncodingKey::from_ec_der(&foreign.serialize_der());
    let payload = json!({"sub": SUB, "aud": ["svc-a"], "exp": now_secs() + 60});

    let unknown_kid = forge("not-our-key", Algorithm::ES256, &foreign, &payload);
    let message = refusal(&daemon, &unknown_kid, "svc-a").await;
    assert!(message.contains("not in the trust bundle"), "{message}");

    // Borrowing our kid does not help: the signature is checked with our key.
    let borrowed_kid = forge(&kid, Algorithm::ES256, &foreign, &payload);
    let message = refusal(&daemon, &borrowed_kid, "svc-a").await;
    assert!(message.contains("signature does not verify"), "{message}");
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    let daemon = Daemon::start(ENTRY);
    let (kid, key) = daemon_key(&daemon);
    // Correctly signed by attestd's own key, but with no expiry.
    let forged = forge(
        &kid,
        Algorithm::ES256,
        &key,
        &json!({"sub": SUB, "aud": ["svc-a"]}),
    );
    let message = refusal(&daemon, &forged, "svc-a").await;
    assert!(message.contains("\"exp\" is missing"), "{message}");
    // The same key with an exp passes: the refusal was for the claim.
    let valid = forge(
        &kid,
        Algorithm::ES256,
        &key,
        &json!({"sub": SUB, "aud": ["svc-a"], "exp": now_secs() + 60}),
    );
    client(&daemon)
        .await
        .validate_jwt_token("svc-a", &valid)
        .await
        .unwrap();
}

#[tokio::test]
async fn audience_allow_list_is_enforced_and_audited() {
    let daemon = Daemon::start(&format!("{ENTRY}jwt_audiences = [\"svc-a\"]\n"));
    let client = client(&daemon).await;
    client.fetch_jwt_svid(["svc-a"], None).await.unwrap();
    let error = client.fetch_jwt_svid(["svc-a", "svc-x"], None).await.unwrap_err();
    assert!(format!("{error:?}").contains("PermissionDenied"), "{error:?}");

    let records = daemon.audit_records();
    let issued: Vec<_> = records
        .iter()
        .filter(|r| r["rpc"] == "FetchJWTSVID" && r["outcome"] == "issued")
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["audience"], json!(["svc-a"]));
    assert_eq!(issued[0]["owner"], "platform@example.org");
    assert!(issued[0]["jti"].as_str().is_some_and(|j| j.len() == 32));
    assert!(issued[0]["not_after"].is_string());
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["rpc"] == "FetchJWTSVID" && r["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["audience"], json!(["svc-a", "svc-x"]));
    assert!(
        denied[0]["reason"].as_str().unwrap().contains("svc-x"),
        "{}",
        denied[0]
    );
    assert_eq!(denied[0]["spiffe_id"], SUB);
}

#[tokio::test]
async fn validations_are_audited() {
    let daemon = Daemon::start(ENTRY);
    let client = client(&daemon).await;
    let svid = client.fetch_jwt_svid(["svc-a"], None).await.unwrap();
    client.validate_jwt_token("svc-a", svid.token()).await.unwrap();
    refusal(&daemon, svid.token(), "svc-z").await;
    let records: Vec<_> = daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["rpc"] == "ValidateJWTSVID")
        .collect();
    let jti = claims(svid.token())["jti"].clone();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["outcome"], "validated");
    assert_eq!(records[0]["spiffe_id"], SUB);
    assert_eq!(records[0]["jti"], jti);
    assert_eq!(records[1]["outcome"], "rejected");
    assert!(records[1]["reason"].as_str().unwrap().contains("svc-z"));
    assert_eq!(records[1]["jti"], jti);
}

/// With an 8 s key lifetime: a key signs from a quarter of its life (or at
/// once, for the first), its successor is published at half its life and
/// signs from three quarters, and it leaves the bundle when it expires.
#[tokio::test]
async fn rotated_keys_are_published_before_use_and_old_tokens_stay_valid() {
    let daemon = Daemon::start(&format!(
        "[ca]\njwt_key_ttl = \"8s\"\n[svid]\njwt_ttl = \"5s\"\n{ENTRY}"
    ));
    let client = client(&daemon).await;
    let td = TrustDomain::new("example.org").unwrap();

    // Watch the bundle stream in the background, noting when each kid appears.
    let mut stream = client.stream_jwt_bundles().await.unwrap();
    let (seen_tx, seen) = tokio::sync::watch::channel(HashMap::<String, Instant>::new());
    let watcher = tokio::spawn(async move {
        while let Some(Ok(bundles)) = stream.next().await {
            let kids: Vec<String> = bundles
                .get(&td)
                .map(|b| b.jwt_authorities().map(|a| a.key_id().to_owned()).collect())
                .unwrap_or_default();
            seen_tx.send_modify(|seen| {
                for kid in kids {
                    seen.entry(kid).or_insert_with(Instant::now);
                }
            });
        }
    });

    let mut kids_in_tokens = Vec::new();
    let mut last_of_first_key: Option<JwtSvid> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let svid = client.fetch_jwt_svid(["svc-a"], None).await.unwrap();
        let fetched_at = Instant::now();
        let kid = kid_of(svid.token());
        let published_at = seen.borrow().get(&kid).copied();
        assert!(
            published_at.is_some_and(|at| at <= fetched_at),
            "token signed by {kid} before the bundle stream showed it"
        );
        if kids_in_tokens.last() != Some(&kid) {
            kids_in_tokens.push(kid.clone());
        }
        if kids_in_tokens.len() == 1 {
            last_of_first_key = Some(svid);
        } else if let Some(old) = last_of_first_key.take() {
            // The new key signs now; a token of the old one is still valid.
            let validated = client.validate_jwt_token("svc-a", old.token()).await;
            assert!(
                validated.is_ok(),
                "old key's token refused before expiry: {validated:?}"
            );
        }
        if kids_in_tokens.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    watcher.abort();
    assert!(kids_in_tokens.len() >= 3, "saw signing keys {kids_in_tokens:?}");
    let distinct: HashSet<_> = kids_in_tokens.iter().collect();
    assert_eq!(
        distinct.len(),
        kids_in_tokens.len(),
        "a retired key never signs again"
    );
}

/// `api fetch jwt --raw` prints the token alone, so a shell script can pass
/// it on: here to `api validate jwt`.
#[test]
fn a_raw_token_from_the_cli_feeds_validation() {
    let daemon = Daemon::start(ENTRY);
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(crate::harness::attestd_bin())
            .args(args)
            .arg("--socket")
            .arg(daemon.endpoint())
            .output()
            .unwrap();
        crate::harness::assert_success(&output);
        String::from_utf8(output.stdout).unwrap()
    };
    let printed = cli(&[
        "api",
        "fetch",
        "jwt",
        "--audience",
        "svc",
        "--spiffe-id",
        SUB,
        "--raw",
    ]);
    let token = printed.strip_suffix('\n').expect("one line");
    assert!(!token.contains(char::is_whitespace), "{printed:?}");
    assert_eq!(token.split('.').count(), 3, "a JWS compact token: {token}");
    assert_eq!(claims(token)["sub"], SUB);
    let validated = cli(&["api", "validate", "jwt", "--audience", "svc", "--svid", token]);
    assert!(validated.contains(SUB), "{validated}");
}

#[test]
fn a_token_that_is_not_base64url_is_named_so_without_debug_text() {
    let daemon = Daemon::start(ENTRY);
    // A real header (our key's kid), so the parts after it are what fails.
    let minted = std::process::Command::new(crate::harness::attestd_bin())
        .args([
            "api",
            "fetch",
            "jwt",
            "--raw",
            "--audience",
            "svc",
            "--socket",
            &daemon.endpoint(),
        ])
        .output()
        .unwrap();
    let minted = String::from_utf8(minted.stdout).unwrap();
    let mut parts = minted.trim().split('.');
    let (header, claims) = (parts.next().unwrap(), parts.next().unwrap());
    for (token, expected) in [
        (
            format!("{header}.{claims}.!!not-base64!!"),
            "the claims or signature are not base64url",
        ),
        ("!!.b.c".to_owned(), "the header is not base64url"),
        ("only.two".to_owned(), "not three dot-separated parts"),
    ] {
        let output = std::process::Command::new(crate::harness::attestd_bin())
            .args([
                "api",
                "validate",
                "jwt",
                "--audience",
                "svc",
                "--socket",
                &daemon.endpoint(),
                "--svid",
                &token,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{token}");
        assert!(stderr.contains(expected), "{token}: {stderr}");
        assert!(
            stderr.contains("three base64url parts (header, claims, signature) joined by dots"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("InvalidByte") && !stderr.contains("Base64("),
            "{stderr}"
        );
    }
}

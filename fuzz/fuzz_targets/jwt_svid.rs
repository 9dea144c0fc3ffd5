//! Tokens given to `ValidateJWTSVID`, validated as a federated trust
//! domain's are (`validate_foreign`, against a fixed key set: an EC P-256
//! key and an RSA key, whose signatures no mutation forges), then recorded
//! as the Workload API records a valid token.
//!
//! Input: `T<audience>\n<token>`: any token; or
//! `S<audience>\n<header JSON>\n<claims JSON>`: header and claims signed
//! with the EC key, so that the claim checks behind the signature are
//! fuzzed too. Never panics; a token that validates carries a `sub` of the
//! trust domain (the ID returned), an `aud` holding the audience, an
//! `exp` not in the past and no `nbf` in the future; its audit record can
//! be written, with the expiry.
#![no_main]

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use attestd::audit::{Outcome, Record};
use attestd::authority::{JwtBundle, validate_foreign};
use attestd::spiffe_id::TrustDomain;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// A key made for this target only: it signs nothing else.
const EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIQA+7vD72ZNhgcIb
MTHlyCBhoJzukGa6GbVcm9avmqmhRANCAAQXL7eogEiBEiFgX2U3g/TJKRiKUNYj
ys31VRXiYe1HLgw3IXUWFoq7VbDqytrX5dSUbwOyV0DeEsS5HL4jIJLt
-----END PRIVATE KEY-----";
/// The modulus of an RSA key whose private half was thrown away.
const RSA_N: &str = "mOwKRKS3IY9OcOo52ny_yLrFdRc3ylv6NZQkhSHbz96ZQm5Zhze25490O3wmvRRWnRDDpM54yD1-GbwGLWrS7ToYn4Ff3zzajf94qN1lVhkZNaPNaEThr3BAdLTAwE_7_R3vpOjGRFE02mwsd3_5dbaUQzfulO5F8rRN06hOtvXgf_J7RsWUDpusOBfdldFoNjTP515fWoV6KEV3HxkArKw0PHwuAwiqnUUBPoJ5iWbSimEKh9zUIvPopp-nsv0V-bpvmazeZO4eBZIYMrl5yfNyUJ6n1WBIctdsIWMX4wcORFt-0X_PYwxWibB1DfRuX8tzuiNgEEz03jIwlKK_rQ";
/// `VALIDATION_LEEWAY`.
const LEEWAY: u64 = 2;

/// Signed with ring (assembly, not instrumented): an instrumented pure-Rust
/// signature per input held the target to 300 executions a second.
static SIGNER: LazyLock<EcdsaKeyPair> = LazyLock::new(|| {
    let der = pem::parse(EC_KEY).unwrap().into_contents();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new()).unwrap()
});
static TRUST_DOMAIN: LazyLock<TrustDomain> = LazyLock::new(|| TrustDomain::new("example.org").unwrap());
static BUNDLE: LazyLock<JwtBundle> = LazyLock::new(|| {
    // Uncompressed: 0x04, then x and y.
    let point = SIGNER.public_key().as_ref();
    let ec = json!({
        "kty": "EC", "crv": "P-256", "use": "jwt-svid", "kid": "ec",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    let rsa = json!({"kty": "RSA", "use": "jwt-svid", "kid": "rsa", "n": RSA_N, "e": "AQAB"});
    let keys: Vec<Jwk> = [ec, rsa]
        .into_iter()
        .map(|k| serde_json::from_value(k).unwrap())
        .collect();
    JwtBundle::from_keys(keys)
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((audience, rest)) = text.get(1..).and_then(|t| t.split_once('\n')) else {
        return;
    };
    let token = match data[0] {
        b'T' => rest.to_owned(),
        b'S' => {
            let (header, claims) = rest.split_once('\n').unwrap_or((rest, ""));
            sign(header, claims)
        }
        _ => return,
    };
    let Ok(valid) = validate_foreign(&token, audience, &TRUST_DOMAIN, &BUNDLE) else {
        return;
    };

    assert!(valid.spiffe_id.belongs_to(&TRUST_DOMAIN));
    assert_eq!(
        valid.claims.get("sub").and_then(Value::as_str),
        Some(valid.spiffe_id.as_str())
    );
    let aud = valid.claims.get("aud");
    assert!(
        aud.and_then(Value::as_str) == Some(audience)
            || aud
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(audience))),
        "aud {aud:?} without {audience:?}"
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    // A NumericDate may have a fraction (RFC 7519).
    let exp = valid.claims.get("exp").and_then(Value::as_f64);
    assert!(
        exp.is_some_and(|exp| exp + LEEWAY as f64 >= now as f64),
        "exp {:?}",
        valid.claims.get("exp")
    );
    assert!(
        valid.expires_at().is_some(),
        "exp {:?} not recorded",
        valid.claims.get("exp")
    );
    if let Some(nbf) = valid.claims.get("nbf").and_then(Value::as_f64) {
        assert!(nbf <= (now + LEEWAY) as f64, "nbf {nbf}");
    }
    // What ValidateJWTSVID writes to the audit trail for a valid token.
    let record = Record::new("ValidateJWTSVID", Outcome::Validated, "valid", None)
        .with_subject(valid.spiffe_id.as_str())
        .with_token(valid.jti(), valid.expires_at())
        .with_audience(&[audience.to_owned()]);
    serde_json::to_string(&record).unwrap();
});

fn sign(header: &str, claims: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = SIGNER.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

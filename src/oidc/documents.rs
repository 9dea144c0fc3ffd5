//! The two documents of OIDC discovery, as SPIRE's OIDC discovery provider
//! serves them: the provider metadata at
//! `<issuer>/.well-known/openid-configuration` and the JWKS at
//! `<issuer>/keys`, each with a strong ETag over its bytes.

use std::time::Duration;

use axum::body::Bytes;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::authority::JwtIssuer;

/// Where the discovery document is, under the issuer.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the JWKS is, under the issuer (SPIRE's path).
pub const JWKS_PATH: &str = "/keys";
/// The only algorithm attestd signs JWT-SVIDs with.
const SIGNING_ALGORITHM: &str = "ES256";
/// How long caches may keep the discovery document: it names the issuer
/// and a path, which change only with the configuration.
pub const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(3600);
/// The longest any cache may keep the JWKS.
const JWKS_MAX_AGE_CEILING: Duration = Duration::from_secs(300);

/// The provider metadata, with the fields SPIRE's provider returns
/// (`authorization_endpoint` is required by OpenID Connect Discovery and
/// empty, as there: nobody logs in here).
#[derive(Serialize)]
struct Discovery<'a> {
    issuer: &'a str,
    jwks_uri: String,
    authorization_endpoint: &'a str,
    response_types_supported: [&'a str; 1],
    subject_types_supported: [&'a str; 1],
    id_token_signing_alg_values_supported: [&'a str; 1],
}

/// The discovery document of `issuer`: pretty JSON ending in a newline.
pub fn discovery_document(issuer: &JwtIssuer) -> String {
    let document = Discovery {
        issuer: issuer.as_str(),
        jwks_uri: issuer.url_of(JWKS_PATH),
        authorization_endpoint: "",
        response_types_supported: ["id_token"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: [SIGNING_ALGORITHM],
    };
    pretty(&document)
}

/// The JWKS of the JWT authorities `keys` (as in the JWT bundle: `use:
/// "jwt-svid"`): each as a signature key (`use: "sig"`, `alg: "ES256"`,
/// its `kid`), which is what OIDC relying parties select keys by. Pretty
/// JSON ending in a newline; the same keys give the same bytes.
pub fn jwks_document(keys: &[Jwk]) -> String {
    let keys = keys.iter().filter_map(signature_key).collect();
    pretty(&JwkSet { keys })
}

/// A JWT authority as an OIDC signature key; `None` (with a warning) for a
/// key attestd cannot have signed with.
fn signature_key(key: &Jwk) -> Option<Jwk> {
    let p256 =
        matches!(&key.algorithm, AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256);
    if !p256 || key.common.key_id.is_none() {
        tracing::warn!(kid = ?key.common.key_id, "JWT authority is not a P-256 key with a kid; left out of the JWKS");
        return None;
    }
    Some(Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::ES256),
            key_id: key.common.key_id.clone(),
            ..CommonParameters::default()
        },
        algorithm: key.algorithm.clone(),
    })
}

fn pretty(document: &impl Serialize) -> String {
    // Strings and lists of them: serialization cannot fail.
    let mut text = serde_json::to_string_pretty(document).unwrap_or_default();
    text.push('\n');
    text
}

/// How long caches may keep the JWKS, for JWT keys living `key_ttl`: a key
/// is published a quarter of its life before it signs (see
/// `authority::schedule`), so a cache that keeps the JWKS at most an
/// eighth of it fetches the new key at least once before any token signed
/// with it exists. Five minutes at most; zero (revalidate every time, cheap
/// with the ETag) for very short keys.
pub fn jwks_max_age(key_ttl: Duration) -> Duration {
    Duration::from_secs((key_ttl / 8).as_secs()).min(JWKS_MAX_AGE_CEILING)
}

/// A document as served: its bytes and their entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The document.
    pub body: Bytes,
    /// A strong entity tag (quoted): the first 128 bits of the body's
    /// SHA-256, hex.
    pub etag: String,
}

impl Published {
    /// Tags `text`.
    pub fn new(text: String) -> Self {
        let digest = Sha256::digest(text.as_bytes());
        Self {
            etag: format!("\"{}\"", hex::encode(&digest[..16])),
            body: Bytes::from(text),
        }
    }

    /// Whether an `If-None-Match` value names this document: `*`, or one of
    /// its comma-separated tags by weak comparison (RFC 9110 13.1.2: a
    /// `W/` prefix is ignored).
    pub fn matches(&self, if_none_match: &str) -> bool {
        if_none_match.split(',').map(str::trim).any(|tag| {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || tag == self.etag
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_names_the_issuer_exactly_and_keys_under_it() {
        for (issuer, jwks_uri) in [
            ("https://attestd.example.org", "https://attestd.example.org/keys"),
            ("https://attestd.example.org/", "https://attestd.example.org/keys"),
            (
                "https://idp.example.org:8443/h1",
                "https://idp.example.org:8443/h1/keys",
            ),
        ] {
            let text = discovery_document(&JwtIssuer::parse(issuer).unwrap());
            assert!(text.ends_with("}\n"));
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                json,
                serde_json::json!({
                    "issuer": issuer,
                    "jwks_uri": jwks_uri,
                    "authorization_endpoint": "",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                })
            );
        }
    }

    #[test]
    fn jwks_holds_the_bundles_keys_as_signature_keys() {
        let (_dir, authority) = crate::authority::test_authority();
        let bundle = authority.jwt().bundle();
        let json: serde_json::Value = serde_json::from_str(&jwks_document(bundle.keys())).unwrap();
        let keys = json["keys"].as_array().unwrap();
        assert_eq!(keys.len(), bundle.keys().len());
        for (served, original) in keys.iter().zip(bundle.keys()) {
            let mut fields: Vec<&str> = served.as_object().unwrap().keys().map(String::as_str).collect();
            fields.sort_unstable();
            assert_eq!(fields, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
            assert_eq!(
                (served["use"].as_str(), served["alg"].as_str()),
                (Some("sig"), Some("ES256"))
            );
            assert_eq!(served["kid"].as_str(), original.common.key_id.as_deref());
            let original = serde_json::to_value(original).unwrap();
            assert_eq!((&served["x"], &served["y"]), (&original["x"], &original["y"]));
        }
    }

    #[test]
    fn jwks_cache_lifetime_stays_below_the_key_lead() {
        assert_eq!(jwks_max_age(Duration::from_secs(24 * 3600)), JWKS_MAX_AGE_CEILING);
        assert_eq!(jwks_max_age(Duration::from_secs(80)), Duration::from_secs(10));
        assert_eq!(jwks_max_age(Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let document = Published::new("{}\n".into());
        let tag = document.etag.clone();
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 34);
        assert!(document.matches(&tag));
        assert!(document.matches(&format!("W/{tag}")));
        assert!(document.matches(&format!("\"other\", {tag}")));
        assert!(document.matches("*"));
        assert!(!document.matches("\"other\""));
        assert!(!document.matches(tag.trim_matches('"')));
        assert_ne!(Published::new("{ }\n".into()).etag, tag);
    }
}

//! A foreign trust domain's SPIFFE bundle document, read strictly: it is
//! what decides whom our workloads trust. The rules are those of the SPIFFE
//! Trust Domain and Bundle, X509-SVID and JWT-SVID standards, as go-spiffe
//! applies them: a JWK with an unknown or missing `use` is ignored; an
//! `x509-svid` authority carries exactly one certificate in `x5c`, which is
//! the authority; a `jwt-svid` authority has a `kid`. What is malformed
//! fails the whole document (the last good bundle stays in use). A document
//! that yields no authority is valid: that trust domain has revoked its
//! keys, and nothing it issued is trusted.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use serde::Deserialize;
use serde_json::Value;

use crate::authority::{JWT_SVID_USE, JwtBundle, X509_SVID_USE, X509Bundle};

/// The largest document read, from a file or an endpoint. Bundles hold a
/// few keys of a few hundred bytes to a few kilobytes each.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// The most JWKs a document may hold.
pub const MAX_KEYS: usize = 1024;

/// Why a bundle document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// Not a JSON bundle document (a JWK Set with `keys`).
    #[error("not a SPIFFE bundle document: {0}")]
    Malformed(String),
    /// More than [`MAX_KEYS`] keys.
    #[error("more than {MAX_KEYS} keys")]
    TooManyKeys,
    /// A JWK of a known use is not usable.
    #[error("key {index}: {reason}")]
    BadKey {
        /// Its position in `keys`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// A foreign trust domain's authorities, as last read or fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignBundle {
    x509: X509Bundle,
    jwt: JwtBundle,
    sequence: Option<u64>,
    refresh_hint: Option<Duration>,
}

#[derive(Deserialize)]
struct RawDocument {
    keys: Vec<Value>,
    spiffe_sequence: Option<u64>,
    spiffe_refresh_hint: Option<u64>,
}

impl ForeignBundle {
    /// A bundle of these authorities (a SPIRE Server's copy of a foreign
    /// trust domain's bundle, in fleet mode).
    pub fn from_authorities(x509: X509Bundle, jwt: JwtBundle, sequence: u64) -> Self {
        Self {
            x509,
            jwt,
            sequence: Some(sequence),
            refresh_hint: None,
        }
    }

    /// Parses a SPIFFE bundle document.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(BundleError::TooLarge);
        }
        // Duplicate members of the document are refused by serde.
        let raw: RawDocument =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed(e.to_string()))?;
        if raw.keys.len() > MAX_KEYS {
            return Err(BundleError::TooManyKeys);
        }
        let mut x509 = Vec::new();
        let mut jwt = Vec::new();
        let mut kids = HashSet::new();
        for (index, key) in raw.keys.iter().enumerate() {
            let bad = |reason: String| BundleError::BadKey { index, reason };
            match key.get("use").and_then(Value::as_str) {
                Some(X509_SVID_USE) => x509.push(x509_authority(key).map_err(bad)?),
                Some(JWT_SVID_USE) => {
                    if let Some(jwk) = jwt_authority(key).map_err(bad)? {
                        let kid = jwk.common.key_id.clone().unwrap_or_default();
                        if !kids.insert(kid.clone()) {
                            return Err(bad(format!("kid {kid:?} appears twice")));
                        }
                        jwt.push(jwk);
                    }
                }
                // Unknown or missing use: ignored, as the standard says.
                _ => {}
            }
        }
        Ok(Self {
            x509: X509Bundle::new(x509),
            jwt: JwtBundle::from_keys(jwt),
            sequence: raw.spiffe_sequence,
            refresh_hint: raw.spiffe_refresh_hint.map(Duration::from_secs),
        })
    }

    /// The X.509 authorities (CA certificates, DER).
    pub fn x509(&self) -> &X509Bundle {
        &self.x509
    }

    /// The JWT authorities.
    pub fn jwt(&self) -> &JwtBundle {
        &self.jwt
    }

    /// `spiffe_sequence`, if the document had one.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// `spiffe_refresh_hint`, if the document had one.
    pub fn refresh_hint(&self) -> Option<Duration> {
        self.refresh_hint
    }

    /// Whether both hold the same authorities (sequence and hint aside).
    pub fn same_authorities(&self, other: &Self) -> bool {
        self.x509 == other.x509 && self.jwt == other.jwt
    }
}

/// The certificate of an `x509-svid` JWK: exactly one in `x5c`, standard
/// base64 of a DER certificate with nothing after it.
fn x509_authority(key: &Value) -> Result<Vec<u8>, String> {
    let chain = key
        .get("x5c")
        .and_then(Value::as_array)
        .ok_or("an x509-svid authority needs x5c")?;
    let [certificate] = chain.as_slice() else {
        return Err(format!(
            "an x509-svid authority holds exactly one certificate in x5c, not {}",
            chain.len()
        ));
    };
    let encoded = certificate.as_str().ok_or("x5c holds a non-string")?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("x5c is not base64: {e}"))?;
    match x509_parser::parse_x509_certificate(&der) {
        Ok(([], _)) => Ok(der),
        Ok(_) => Err("x5c has bytes after its certificate".into()),
        Err(e) => Err(format!("x5c is not an X.509 certificate: {e}")),
    }
}

/// A `jwt-svid` JWK with a `kid`, public members only (a private one given
/// is dropped). `None` for a key type JWT-SVIDs are never signed with:
/// ignored, as an unknown key type must be. Never a symmetric key.
fn jwt_authority(key: &Value) -> Result<Option<Jwk>, String> {
    match key.get("kty").and_then(Value::as_str) {
        Some("EC" | "RSA") => {}
        _ => return Ok(None),
    }
    let jwk: Jwk = serde_json::from_value(key.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    if jwk.common.key_id.as_deref().is_none_or(str::is_empty) {
        return Err("a jwt-svid authority needs a kid".into());
    }
    if !matches!(
        jwk.algorithm,
        AlgorithmParameters::EllipticCurve(_) | AlgorithmParameters::RSA(_)
    ) {
        return Ok(None);
    }
    DecodingKey::from_jwk(&jwk).map_err(|e| format!("not a usable public key: {e}"))?;
    Ok(Some(jwk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::BundleDocument;

    /// A document of attestd's own making: an X.509 and a JWT authority.
    fn own_document() -> String {
        let (_dir, authority) = crate::authority::test_authority();
        BundleDocument::new(
            &authority.bundle(),
            &authority.jwt().bundle(),
            7,
            Duration::from_secs(60),
        )
        .to_json()
    }

    fn with_keys(keys: &str) -> Vec<u8> {
        format!(r#"{{"keys": [{keys}]}}"#).into_bytes()
    }

    #[test]
    fn reads_attestd_documents() {
        let bundle = ForeignBundle::parse(own_document().as_bytes()).unwrap();
        assert_eq!(bundle.x509().roots().len(), 1);
        assert_eq!(bundle.jwt().keys().len(), 1);
        assert_eq!(bundle.sequence(), Some(7));
        assert_eq!(bundle.refresh_hint(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn unknown_uses_and_key_types_are_ignored_and_empty_is_valid() {
        let bundle = ForeignBundle::parse(&with_keys(
            r#"{"kty": "EC", "use": "wit-svid"}, {"kty": "oct", "use": "jwt-svid", "kid": "h", "k": "c2VjcmV0"}, {"kty": "EC"}"#,
        ))
        .unwrap();
        assert!(bundle.x509().roots().is_empty());
        assert!(bundle.jwt().keys().is_empty(), "never a symmetric key");
        assert!(
            ForeignBundle::parse(br#"{"keys": []}"#)
                .unwrap()
                .jwt()
                .keys()
                .is_empty()
        );
    }

    #[test]
    fn malformed_documents_are_refused_with_the_reason() {
        assert!(matches!(
            ForeignBundle::parse(b"{}"),
            Err(BundleError::Malformed(_))
        ));
        assert!(matches!(
            ForeignBundle::parse(b"[1]"),
            Err(BundleError::Malformed(_))
        ));
        assert!(matches!(
            ForeignBundle::parse(br#"{"keys": [], "keys": []}"#),
            Err(BundleError::Malformed(m)) if m.contains("duplicate")
        ));
        assert_eq!(
            ForeignBundle::parse(&vec![b' '; MAX_DOCUMENT_BYTES + 1]),
            Err(BundleError::TooLarge)
        );
        let two = with_keys(r#"{"kty": "EC", "use": "x509-svid", "x5c": ["AAAA", "AAAA"]}"#);
        assert!(
            matches!(ForeignBundle::parse(&two), Err(BundleError::BadKey { index: 0, reason }) if reason.contains("exactly one"))
        );
        let junk = with_keys(r#"{"kty": "EC", "use": "x509-svid", "x5c": ["AAAA"]}"#);
        assert!(matches!(
            ForeignBundle::parse(&junk),
            Err(BundleError::BadKey { .. })
        ));
        let document: Value = serde_json::from_str(&own_document()).unwrap();
        let mut jwt_key = document["keys"][1].clone();
        jwt_key.as_object_mut().unwrap().remove("kid");
        let no_kid = with_keys(&jwt_key.to_string());
        assert!(
            matches!(ForeignBundle::parse(&no_kid), Err(BundleError::BadKey { reason, .. }) if reason.contains("kid"))
        );
        let twice = with_keys(&format!("{0}, {0}", document["keys"][1]));
        assert!(
            matches!(ForeignBundle::parse(&twice), Err(BundleError::BadKey { index: 1, reason }) if reason.contains("twice"))
        );
    }

    #[test]
    fn a_private_member_given_is_not_kept() {
        let document: Value = serde_json::from_str(&own_document()).unwrap();
        let mut jwt_key = document["keys"][1].clone();
        jwt_key["d"] = Value::from("c2VjcmV0");
        let bundle = ForeignBundle::parse(&with_keys(&jwt_key.to_string())).unwrap();
        let kept = serde_json::to_value(&bundle.jwt().keys()[0]).unwrap();
        assert!(kept.get("d").is_none(), "{kept}");
    }
}

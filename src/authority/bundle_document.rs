//! The SPIFFE trust bundle document (a JWKS): X.509 authorities as JWKs with
//! `use: "x509-svid"` and their certificate in `x5c`, JWT authorities with
//! `use: "jwt-svid"` and a `kid`. attestd keeps it current in
//! `<data_dir>/bundle.json` for relying parties and `attestd bundle show`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters, EllipticCurveKeyType,
    Jwk, PublicKeyUse, RSAKeyParameters, RSAKeyType,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{Authority, AuthorityError, JWT_SVID_USE, JwtBundle, X509Bundle};
use crate::{atomic_file, wall_clock};

/// The `use` of X.509 authorities in SPIFFE bundles.
pub const X509_SVID_USE: &str = "x509-svid";

/// A SPIFFE bundle document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleDocument {
    /// The authorities.
    pub keys: Vec<Jwk>,
    /// Increases with every change of the bundle.
    pub spiffe_sequence: u64,
    /// How often relying parties should fetch it again, in seconds.
    pub spiffe_refresh_hint: u64,
}

impl BundleDocument {
    /// The document for these bundles.
    pub fn new(x509: &X509Bundle, jwt: &JwtBundle, sequence: u64, refresh_hint: Duration) -> Self {
        let mut keys: Vec<Jwk> = x509
            .roots()
            .iter()
            .filter_map(|der| x509_authority(der))
            .collect();
        keys.extend(jwt.keys().iter().cloned());
        Self {
            keys,
            spiffe_sequence: sequence,
            spiffe_refresh_hint: refresh_hint.as_secs(),
        }
    }

    /// Reads a bundle document written by attestd.
    pub fn read(path: &Path) -> Result<Self, AuthorityError> {
        let text = std::fs::read(path).map_err(|source| AuthorityError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| AuthorityError::InvalidFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The JSON document.
    pub fn to_json(&self) -> String {
        // Strings and integers only: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The X.509 authorities as PEM certificates.
    pub fn to_pem(&self) -> String {
        self.x509_authorities()
            .into_iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der)))
            .collect()
    }

    /// The JWT authorities (`use: "jwt-svid"`), in the bundle's order.
    pub fn jwt_authorities(&self) -> Vec<Jwk> {
        self.keys
            .iter()
            .filter(
                |key| matches!(&key.common.public_key_use, Some(PublicKeyUse::Other(u)) if u == JWT_SVID_USE),
            )
            .cloned()
            .collect()
    }

    /// The X.509 authorities' certificates, DER.
    pub fn x509_authorities(&self) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter(|key| matches!(&key.common.public_key_use, Some(PublicKeyUse::Other(u)) if u == X509_SVID_USE))
            .filter_map(|key| key.common.x509_chain.as_ref()?.first().cloned())
            .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .collect()
    }
}

/// A CA certificate as a JWK: its public key, `use: "x509-svid"`, and the
/// certificate itself in `x5c`. Keys of a type JWK cannot express are left
/// out with a warning.
fn x509_authority(der: &[u8]) -> Option<Jwk> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let Some(algorithm) = key_parameters(cert.public_key()) else {
        return unsupported(&cert);
    };
    Some(Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Other(X509_SVID_USE.into())),
            x509_chain: Some(vec![base64::engine::general_purpose::STANDARD.encode(der)]),
            ..CommonParameters::default()
        },
        algorithm,
    })
}

/// A JWT authority given as a public key (PKIX SubjectPublicKeyInfo DER,
/// as a SPIRE Server publishes them) and its key id, as a JWK with `use:
/// "jwt-svid"`: EC P-256/P-384 or RSA keys.
pub fn jwt_authority_from_spki(spki_der: &[u8], kid: &str) -> Result<Jwk, String> {
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| format!("JWT authority {kid:?}: not a public key: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("JWT authority {kid:?}: bytes after its public key"));
    }
    let algorithm = key_parameters(&spki)
        .ok_or_else(|| format!("JWT authority {kid:?}: a key type JWT-SVIDs are not signed with"))?;
    Ok(Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Other(JWT_SVID_USE.into())),
            key_id: Some(kid.to_owned()),
            ..CommonParameters::default()
        },
        algorithm,
    })
}

/// The JWK members of a public key: EC P-256 or P-384, or RSA.
fn key_parameters(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<AlgorithmParameters> {
    let b64url = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let data = point.data();
            let curve = match data.len() {
                65 => EllipticCurve::P256,
                97 => EllipticCurve::P384,
                _ => return None,
            };
            let (x, y) = data[1..].split_at((data.len() - 1) / 2);
            Some(AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve,
                x: b64url(x),
                y: b64url(y),
            }))
        }
        Ok(PublicKey::RSA(rsa)) => Some(AlgorithmParameters::RSA(RSAKeyParameters {
            key_type: RSAKeyType::RSA,
            n: b64url(strip_leading_zeros(rsa.modulus)),
            e: b64url(strip_leading_zeros(rsa.exponent)),
        })),
        _ => None,
    }
}

fn unsupported(cert: &X509Certificate<'_>) -> Option<Jwk> {
    tracing::warn!(subject = %cert.subject(), "CA key type cannot be expressed as a JWK; left out of bundle.json");
    None
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[start..]
}

/// Publishes the bundle document, built anew whenever the X.509 or JWT
/// bundle changes, until the authority is dropped: for `bundle.json` and
/// the bundle endpoint. `spiffe_sequence` must grow with every change, also
/// across restarts (relying parties compare it): it is the Unix time of the
/// change in seconds, or one more than the last if that is not larger.
pub fn publish_bundle_document(
    authority: &Arc<Authority>,
    refresh_hint: Duration,
) -> watch::Receiver<Arc<BundleDocument>> {
    let mut x509 = authority.subscribe_bundle();
    let mut jwt = authority.jwt().subscribe();
    let build = move |x509: &X509Bundle, jwt: &JwtBundle, previous: u64| {
        let sequence = wall_clock::unix_seconds(wall_clock::now()).max(previous + 1);
        Arc::new(BundleDocument::new(x509, jwt, sequence, refresh_hint))
    };
    let first = build(&x509.borrow_and_update(), &jwt.borrow_and_update(), 0);
    let (sender, receiver) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            let changed = tokio::select! {
                result = x509.changed() => result.is_ok(),
                result = jwt.changed() => result.is_ok(),
                () = sender.closed() => false,
            };
            if !changed {
                return;
            }
            let previous = sender.borrow().spiffe_sequence;
            sender.send_replace(build(
                &x509.borrow_and_update(),
                &jwt.borrow_and_update(),
                previous,
            ));
        }
    });
    receiver
}

/// Writes `path` (mode 0644, atomically) with the current document now,
/// so it is current before the daemon reports ready (`attestd bundle show`
/// may run right after), and returns the task that rewrites it with every
/// document `documents` publishes, until it stops publishing.
pub fn maintain_bundle_file(
    mut documents: watch::Receiver<Arc<BundleDocument>>,
    path: PathBuf,
) -> impl Future<Output = ()> {
    atomic_file::remove_leftovers(&path);
    let write = move |document: &BundleDocument| {
        if let Err(error) = atomic_file::write(&path, document.to_json().as_bytes(), 0o644) {
            tracing::error!(path = %path.display(), %error, "cannot write the bundle document");
        }
    };
    write(&documents.borrow_and_update());
    async move {
        while documents.changed().await.is_ok() {
            let document = Arc::clone(&documents.borrow_and_update());
            write(&document);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_both_kinds_of_authority() {
        let (_dir, authority) = crate::authority::test_authority();
        let document = BundleDocument::new(
            &authority.bundle(),
            &authority.jwt().bundle(),
            1,
            Duration::from_secs(60),
        );
        let json = serde_json::to_value(&document).unwrap();
        let keys = json["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["use"], "x509-svid");
        assert_eq!(keys[0]["kty"], "EC");
        assert_eq!(keys[0]["crv"], "P-256");
        assert!(keys[0].get("kid").is_none());
        assert_eq!(keys[0]["x5c"].as_array().unwrap().len(), 1);
        assert_eq!(keys[1]["use"], "jwt-svid");
        assert!(keys[1]["kid"].is_string());
        assert!(keys.iter().all(|k| k.get("d").is_none()), "no private members");
        assert_eq!(document.x509_authorities(), authority.bundle().roots());
        assert_eq!(document.jwt_authorities(), authority.jwt().bundle().keys());
    }
}

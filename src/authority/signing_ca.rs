//! A CA that signs X.509-SVIDs: its certificate and key, the chain it adds
//! to every SVID (an upstream intermediate's own issuers), and its place in
//! the rotation schedule.

use std::path::Path;
use std::time::SystemTime;

use rcgen::{Issuer, KeyPair};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::AuthorityError;
use super::schedule::{Lifetime, Scheduled};
use crate::spiffe_id::TrustDomain;
use crate::wall_clock::from_unix_seconds;

/// A CA that signs SVIDs.
pub struct SigningCa {
    cert_der: Vec<u8>,
    /// Certificates sent after the leaf: this CA and any above it, short of
    /// the trust anchor (empty for a root, which relying parties hold).
    chain: Vec<Vec<u8>>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    lifetime: Lifetime,
    not_before: SystemTime,
}

impl std::fmt::Debug for SigningCa {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCa")
            .field("not_before", &self.not_before)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Scheduled for SigningCa {
    fn lifetime(&self) -> Lifetime {
        self.lifetime
    }
}

impl SigningCa {
    /// Checks a CA certificate and its key (the key must be the
    /// certificate's; the certificate a CA; its SPIFFE ID, if any, the trust
    /// domain's) and makes them a signer. `path` names the source in errors;
    /// `schedule` is (created, activate_at) for a rotating CA, and defaults
    /// to the start of validity.
    pub(super) fn from_parts(
        path: &Path,
        cert_der: Vec<u8>,
        chain: Vec<Vec<u8>>,
        key_pem: String,
        schedule: Option<(SystemTime, SystemTime)>,
        trust_domain: &TrustDomain,
    ) -> Result<Self, AuthorityError> {
        let invalid = |reason: String| AuthorityError::InvalidFile {
            path: path.to_owned(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(format!("bad private key: {e}")))?;
        let (_, cert) =
            X509Certificate::from_der(&cert_der).map_err(|e| invalid(format!("bad certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid("the private key does not match the certificate".into()));
        }
        if !cert.is_ca()
            || !cert
                .key_usage()
                .ok()
                .flatten()
                .is_some_and(|ku| ku.value.key_cert_sign())
        {
            return Err(invalid(
                "the certificate is not a CA allowed to sign certificates".into(),
            ));
        }
        let expected = trust_domain.id_string();
        if let Some(other) = uri_sans(&cert).into_iter().find(|uri| *uri != expected) {
            return Err(invalid(format!(
                "the CA's SPIFFE ID {other} is not {expected}: it belongs to another trust domain"
            )));
        }
        let not_before = from_unix_seconds(cert.validity().not_before.timestamp().max(0) as u64);
        let not_after = from_unix_seconds(cert.validity().not_after.timestamp().max(0) as u64);
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| invalid(format!("unusable CA certificate: {e}")))?;
        let (created, activate_at) = schedule.unwrap_or((not_before, not_before));
        Ok(Self {
            cert_der,
            chain,
            key_pem,
            issuer,
            lifetime: Lifetime {
                created,
                activate_at,
                not_after,
            },
            not_before,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Certificates sent after an SVID it signs.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The private key, PKCS#8 PEM (for saving the embedded CA).
    pub(super) fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub(super) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Start of the CA's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the CA's validity: no SVID may outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.lifetime.not_after
    }
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    cert.extensions()
        .iter()
        .filter_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(&san.general_names),
            _ => None,
        })
        .flatten()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect()
}

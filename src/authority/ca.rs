//! The embedded CA: a self-signed ECDSA P-256 root made on first start and
//! kept in `<data_dir>/ca.pem` (certificate and PKCS#8 key in one file, mode
//! 0600, replaced atomically so a crash never leaves a cert without its key).
//! Restarts reuse it, so the bundle relying parties hold stays valid.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::AuthorityError;
use super::x509::random_serial;
use crate::atomic_file;
use crate::spiffe_id::TrustDomain;
use crate::wall_clock::from_unix_seconds;

const CA_FILE: &str = "ca.pem";
/// Backdating absorbs small clock differences between hosts.
const BACKDATE: Duration = Duration::from_secs(60);

/// A CA that signs SVIDs: its certificate, key, and validity.
pub struct SigningCa {
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for SigningCa {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCa")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl SigningCa {
    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
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
        self.not_after
    }
}

/// Loads `<data_dir>/ca.pem`, or makes and saves a new root if there is none
/// or the saved one has expired.
pub(super) fn load_or_create(
    trust_domain: &TrustDomain,
    data_dir: &Path,
    ttl: Duration,
) -> Result<SigningCa, AuthorityError> {
    atomic_file::create_dir(data_dir, 0o700).map_err(|source| AuthorityError::Io {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = ca_file(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let ca = parse(&path, &text, trust_domain)?;
            if ca.not_after > SystemTime::now() {
                return Ok(ca);
            }
            tracing::warn!(path = %path.display(), "saved CA has expired; creating a new root");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(AuthorityError::Io { path, source }),
    }
    let (pem, ca) = create(trust_domain, ttl)?;
    atomic_file::write(&path, pem.as_bytes(), 0o600).map_err(|source| AuthorityError::Io {
        path: path.clone(),
        source,
    })?;
    tracing::info!(path = %path.display(), trust_domain = %trust_domain, "created embedded CA");
    Ok(ca)
}

fn create(trust_domain: &TrustDomain, ttl: Duration) -> Result<(String, SigningCa), AuthorityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(trust_domain);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A signing certificate may carry the trust domain's ID (no path).
    params.subject_alt_names = vec![SanType::URI(trust_domain.id_string().try_into()?)];
    params.serial_number = Some(random_serial());
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(now + ttl);
    let cert = params.self_signed(&key)?;
    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
    let ca = SigningCa {
        cert_der: cert.der().to_vec(),
        not_before: now - BACKDATE,
        not_after: now + ttl,
        issuer: Issuer::new(params, key),
    };
    Ok((pem, ca))
}

fn ca_name(trust_domain: &TrustDomain) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "attestd");
    name.push(DnType::CommonName, format!("attestd CA {trust_domain}"));
    name
}

/// Parses a saved CA, checking it is a CA for our trust domain and that the
/// key belongs to the certificate.
fn parse(path: &Path, text: &str, trust_domain: &TrustDomain) -> Result<SigningCa, AuthorityError> {
    let invalid = |reason: String| AuthorityError::InvalidFile {
        path: path.to_owned(),
        reason,
    };
    let blocks = pem::parse_many(text).map_err(|e| invalid(format!("not PEM: {e}")))?;
    let cert_der =
        find_block(&blocks, "CERTIFICATE").ok_or_else(|| invalid("no CERTIFICATE block".into()))?;
    let key_der = find_block(&blocks, "PRIVATE KEY").ok_or_else(|| invalid("no PRIVATE KEY block".into()))?;
    let key = KeyPair::try_from(key_der.as_slice()).map_err(|e| invalid(format!("bad key: {e}")))?;
    let (_, cert) =
        X509Certificate::from_der(&cert_der).map_err(|e| invalid(format!("bad certificate: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(invalid("the private key does not match the certificate".into()));
    }
    if !cert.is_ca() {
        return Err(invalid("the certificate is not a CA".into()));
    }
    let expected = trust_domain.id_string();
    if !has_uri_san(&cert, &expected) {
        return Err(invalid(format!(
            "the CA belongs to another trust domain (no URI SAN {expected}); \
             use another data_dir or remove the file to start a new trust domain"
        )));
    }
    let not_before = from_unix_seconds(cert.validity().not_before.timestamp().max(0) as u64);
    let not_after = from_unix_seconds(cert.validity().not_after.timestamp().max(0) as u64);
    let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
        .map_err(|e| invalid(format!("unusable CA certificate: {e}")))?;
    Ok(SigningCa {
        cert_der,
        issuer,
        not_before,
        not_after,
    })
}

fn find_block(blocks: &[pem::Pem], tag: &str) -> Option<Vec<u8>> {
    blocks
        .iter()
        .find(|b| b.tag() == tag)
        .map(|b| b.contents().to_vec())
}

fn has_uri_san(cert: &X509Certificate<'_>, uri: &str) -> bool {
    cert.extensions().iter().any(|ext| match ext.parsed_extension() {
        ParsedExtension::SubjectAlternativeName(san) => san
            .general_names
            .iter()
            .any(|name| matches!(name, GeneralName::URI(u) if *u == uri)),
        _ => false,
    })
}

/// Where the embedded CA lives under `data_dir`.
pub fn ca_file(data_dir: &Path) -> PathBuf {
    data_dir.join(CA_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create(&td("example.org"), &data, Duration::from_secs(3600)).unwrap();
        let second = load_or_create(&td("example.org"), &data, Duration::from_secs(3600)).unwrap();
        assert_eq!(first.cert_der(), second.cert_der());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&ca_file(&data)), 0o600);
    }

    #[test]
    fn refuses_foreign_or_broken_ca() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(&td("example.org"), dir.path(), Duration::from_secs(3600)).unwrap();
        let err = load_or_create(&td("other.org"), dir.path(), Duration::from_secs(3600)).unwrap_err();
        assert!(err.to_string().contains("another trust domain"), "{err}");
        std::fs::write(ca_file(dir.path()), "garbage").unwrap();
        assert!(load_or_create(&td("example.org"), dir.path(), Duration::from_secs(3600)).is_err());
    }
}

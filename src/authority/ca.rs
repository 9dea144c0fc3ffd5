//! The embedded CA: self-signed ECDSA P-256 roots on the rotation schedule
//! ([`super::schedule`]): a new root is made and published ahead of the
//! current one's expiry, signs from a quarter of its life, and the old root
//! stays in the bundle until every SVID it signed has expired. The set is
//! kept in `<data_dir>/ca.json` (certificates and keys, mode 0600, replaced
//! atomically), so restarts never change the bundle.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::AuthorityError;
use super::schedule::{Rotation, Scheduled, Slot};
use super::signing_ca::SigningCa;
use super::x509::random_serial;
use crate::atomic_file;
use crate::spiffe_id::TrustDomain;
use crate::wall_clock::{STEP_TOLERANCE, from_unix_seconds, unix_seconds};

const CA_FILE: &str = "ca.json";
/// Backdating absorbs small clock differences between hosts, and a step
/// back of the clock within the tolerance the schedule allows a credential
/// made "in the future" (beyond it, the root is replaced).
const BACKDATE: Duration = STEP_TOLERANCE;

#[derive(Serialize, Deserialize)]
struct StoredSet {
    cas: Vec<StoredCa>,
}

#[derive(Serialize, Deserialize)]
struct StoredCa {
    created: u64,
    activate_at: u64,
    certificate: String,
    private_key: String,
}

/// The embedded roots.
#[derive(Debug)]
pub(super) struct CaSet {
    path: PathBuf,
    trust_domain: TrustDomain,
    rotation: Rotation<SigningCa>,
}

impl CaSet {
    /// Loads `<data_dir>/ca.json`, if there is one.
    pub fn load(trust_domain: &TrustDomain, data_dir: &Path, ttl: Duration) -> Result<Self, AuthorityError> {
        let path = data_dir.join(CA_FILE);
        atomic_file::remove_leftovers(&path);
        let cas = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&path, &text, trust_domain)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(AuthorityError::Io { path, source }),
        };
        Ok(Self {
            path,
            trust_domain: trust_domain.clone(),
            rotation: Rotation::new(ttl, cas),
        })
    }

    /// Brings the schedule up to `now`, saving a changed set to its file
    /// (0600, atomically) before using it; returns whether the bundle
    /// changed. If the file cannot be written nothing changes (see
    /// [`Rotation::advance`]).
    pub fn advance(&mut self, now: SystemTime) -> Result<bool, AuthorityError> {
        let trust_domain = self.trust_domain.clone();
        let path = self.path.clone();
        self.rotation.advance(
            now,
            |slot| create(&path, &trust_domain, slot),
            |cas| save(&path, cas),
        )
    }

    /// The root that signs at `now`.
    pub fn signing(&self, now: SystemTime) -> Option<&SigningCa> {
        self.rotation.signing(now)
    }

    /// When the schedule next changes, seen at `now`.
    pub fn next_change(&self, now: SystemTime) -> SystemTime {
        self.rotation.next_change(now)
    }

    /// Every published root.
    pub fn roots(&self) -> Vec<Vec<u8>> {
        self.rotation
            .published()
            .iter()
            .map(|ca| ca.cert_der().to_vec())
            .collect()
    }
}

/// Writes `cas` to `path` (0600, atomically).
fn save(path: &Path, cas: &[&SigningCa]) -> Result<(), AuthorityError> {
    let stored = StoredSet {
        cas: cas
            .iter()
            .map(|ca| StoredCa {
                created: unix_seconds(ca.lifetime().created),
                activate_at: unix_seconds(ca.lifetime().activate_at),
                certificate: pem::encode(&pem::Pem::new("CERTIFICATE", ca.cert_der().to_vec())),
                private_key: ca.key_pem().to_owned(),
            })
            .collect(),
    };
    // Strings and integers only: serialization cannot fail.
    let json = serde_json::to_vec_pretty(&stored).unwrap_or_default();
    atomic_file::write(path, &json, 0o600).map_err(|source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    })
}

fn create(path: &Path, trust_domain: &TrustDomain, slot: Slot) -> Result<SigningCa, AuthorityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "attestd");
    name.push(DnType::CommonName, format!("attestd CA {trust_domain}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A signing certificate may carry the trust domain's ID (no path).
    params.subject_alt_names = vec![SanType::URI(trust_domain.id_string().try_into()?)];
    params.serial_number = Some(random_serial());
    params.not_before = OffsetDateTime::from(slot.created - BACKDATE);
    params.not_after = OffsetDateTime::from(slot.created + slot.ttl);
    let cert = params.self_signed(&key)?;
    let not_after = crate::audit::rfc3339(slot.created + slot.ttl);
    tracing::info!(trust_domain = %trust_domain, %not_after, "created embedded CA");
    SigningCa::from_parts(
        path,
        cert.der().to_vec(),
        Vec::new(),
        key.serialize_pem(),
        Some((slot.created, slot.activate_at)),
        trust_domain,
    )
}

fn parse(path: &Path, text: &str, trust_domain: &TrustDomain) -> Result<Vec<SigningCa>, AuthorityError> {
    let invalid = |reason: String| AuthorityError::InvalidFile {
        path: path.to_owned(),
        reason,
    };
    let stored: StoredSet = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    stored
        .cas
        .into_iter()
        .map(|ca| {
            let cert =
                pem::parse(&ca.certificate).map_err(|e| invalid(format!("bad certificate PEM: {e}")))?;
            SigningCa::from_parts(
                path,
                cert.into_contents(),
                Vec::new(),
                ca.private_key,
                Some((from_unix_seconds(ca.created), from_unix_seconds(ca.activate_at))),
                trust_domain,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_owned();
        let now = SystemTime::now();
        let mut first = CaSet::load(&td("example.org"), &data, HOUR).unwrap();
        assert!(first.advance(now).unwrap());
        let mut second = CaSet::load(&td("example.org"), &data, HOUR).unwrap();
        assert!(!second.advance(now).unwrap(), "a restart changes nothing");
        assert_eq!(first.roots(), second.roots());
        let mode = std::fs::metadata(data.join(CA_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_foreign_or_broken_ca() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = CaSet::load(&td("example.org"), dir.path(), HOUR).unwrap();
        set.advance(SystemTime::now()).unwrap();
        let err = CaSet::load(&td("other.org"), dir.path(), HOUR).unwrap_err();
        assert!(err.to_string().contains("another trust domain"), "{err}");
        std::fs::write(dir.path().join(CA_FILE), "garbage").unwrap();
        assert!(CaSet::load(&td("example.org"), dir.path(), HOUR).is_err());
    }
}

//! The node's state in `state_dir`, so a restart neither re-attests nor
//! loses the node's identity: `agent.json` (the agent key with its
//! X.509-SVID and whether the node may re-attest; 0600, one file so key and
//! certificate are replaced together) and `bundle.json` (the server's
//! latest bundle, a SPIFFE bundle document). Both are replaced atomically.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::FleetError;
use crate::atomic_file;
use crate::authority::{BundleDocument, JwtBundle, X509Bundle};
use crate::federation::ForeignBundle;
use crate::spiffe_id::SpiffeId;

const AGENT_FILE: &str = "agent.json";
const BUNDLE_FILE: &str = "bundle.json";
/// The refresh hint of the stored bundle (read only by attestd, at start).
const BUNDLE_REFRESH_HINT: Duration = Duration::from_secs(300);
/// A state file larger than this is not read (it is attestd's own).
const MAX_STATE_BYTES: u64 = 1 << 20;

/// The node's identity: the agent X.509-SVID and its key.
#[derive(Clone)]
pub(super) struct AgentSvid {
    /// PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The leaf's serial, lowercase hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Whether the server lets the node attest again (x509pop) instead of
    /// renewing (join tokens are single-use).
    pub reattestable: bool,
}

impl std::fmt::Debug for AgentSvid {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl AgentSvid {
    /// The SVID the server issued for `key_pkcs8`.
    pub fn new(key_pkcs8: Vec<u8>, chain: Vec<Vec<u8>>, reattestable: bool) -> Result<Self, String> {
        let leaf = Leaf::parse(
            chain
                .first()
                .ok_or("the server sent an empty certificate chain")?,
        )?;
        let key = rcgen::KeyPair::try_from(key_pkcs8.as_slice()).map_err(|e| format!("agent key: {e}"))?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != leaf.public_key_der {
            return Err("the agent SVID does not certify the agent key".into());
        }
        Ok(Self {
            key_pkcs8,
            chain,
            spiffe_id: leaf.spiffe_id,
            serial: leaf.serial,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            reattestable,
        })
    }

    /// Past half its lifetime: time to renew (spire-agent's rule).
    pub fn due(&self, now: SystemTime) -> bool {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        now >= self.not_before + lifetime / 2
    }
}

/// What attestd reads from an SVID's leaf certificate.
pub(super) struct Leaf {
    pub spiffe_id: SpiffeId,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
}

impl Leaf {
    /// Reads a leaf: exactly one URI SAN, a SPIFFE ID.
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .map_err(|e| format!("unreadable subjectAltName: {e}"))?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let [uri] = uris.as_slice() else {
            return Err(format!("not an X.509-SVID ({} URI SANs)", uris.len()));
        };
        let spiffe_id = SpiffeId::new(uri).map_err(|e| format!("URI SAN {uri:?}: {e}"))?;
        let time = |t: x509_parser::time::ASN1Time| {
            let seconds = u64::try_from(t.timestamp()).unwrap_or_default();
            SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
        };
        Ok(Self {
            spiffe_id,
            serial: hex::encode(cert.raw_serial()),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            public_key_der: cert.public_key().raw.to_vec(),
        })
    }
}

/// The SubjectPublicKeyInfo DER of a certificate.
pub(super) fn public_key_der(der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    Ok(cert.public_key().raw.to_vec())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    /// Standard base64 of the PKCS#8 DER key.
    key: String,
    /// Standard base64 of each DER certificate, leaf first.
    chain: Vec<String>,
    reattestable: bool,
}

/// The node's state directory.
#[derive(Debug, Clone)]
pub(super) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// `dir`, created 0700 if missing (it holds the agent key).
    pub fn open(dir: &Path) -> Result<Self, FleetError> {
        atomic_file::create_dir(dir, 0o700).map_err(|e| file_error(dir, e))?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// Where the state is (for messages).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The stored agent SVID, if any. A file that cannot be used is an
    /// error, not a reason to attest again (which a join token could not).
    pub fn agent(&self) -> Result<Option<AgentSvid>, FleetError> {
        let path = self.dir.join(AGENT_FILE);
        let Some(bytes) = read_bounded(&path)? else {
            return Ok(None);
        };
        let invalid = |reason: String| FleetError::File {
            path: path.clone(),
            reason,
        };
        let file: AgentFile = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(&file.key).map_err(|e| invalid(format!("key: {e}")))?;
        let chain = file
            .chain
            .iter()
            .map(|der| b64.decode(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("chain: {e}")))?;
        AgentSvid::new(key, chain, file.reattestable)
            .map(Some)
            .map_err(invalid)
    }

    /// Replaces the stored agent SVID (0600: it holds the key).
    pub fn save_agent(&self, svid: &AgentSvid) -> Result<(), FleetError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let file = AgentFile {
            key: b64.encode(&svid.key_pkcs8),
            chain: svid.chain.iter().map(|der| b64.encode(der)).collect(),
            reattestable: svid.reattestable,
        };
        let path = self.dir.join(AGENT_FILE);
        // Strings and booleans only: serialization cannot fail.
        let json = serde_json::to_vec_pretty(&file).unwrap_or_default();
        atomic_file::write(&path, &json, 0o600).map_err(|e| file_error(&path, e))
    }

    /// Deletes the stored agent SVID (the node was banned).
    pub fn delete_agent(&self) -> Result<(), FleetError> {
        let path = self.dir.join(AGENT_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(file_error(&path, e)),
            _ => Ok(()),
        }
    }

    /// The server's bundle as last stored, if any.
    pub fn bundle(&self) -> Result<Option<(X509Bundle, JwtBundle)>, FleetError> {
        let path = self.dir.join(BUNDLE_FILE);
        let Some(bytes) = read_bounded(&path)? else {
            return Ok(None);
        };
        let bundle = ForeignBundle::parse(&bytes).map_err(|e| FleetError::File {
            path,
            reason: e.to_string(),
        })?;
        Ok(Some((bundle.x509().clone(), bundle.jwt().clone())))
    }

    /// Replaces the stored bundle.
    pub fn save_bundle(&self, x509: &X509Bundle, jwt: &JwtBundle, sequence: u64) -> Result<(), FleetError> {
        let path = self.dir.join(BUNDLE_FILE);
        let document = BundleDocument::new(x509, jwt, sequence, BUNDLE_REFRESH_HINT);
        atomic_file::write(&path, document.to_json().as_bytes(), 0o644).map_err(|e| file_error(&path, e))
    }
}

/// The file's bytes, `None` if it does not exist.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, FleetError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, e)),
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_STATE_BYTES + 1), &mut bytes)
        .map_err(|e| file_error(path, e))?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(FleetError::File {
            path: path.to_owned(),
            reason: format!("larger than {MAX_STATE_BYTES} bytes"),
        });
    }
    Ok(Some(bytes))
}

fn file_error(path: &Path, error: std::io::Error) -> FleetError {
    FleetError::File {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed SVID for a fresh key, as a server would issue it.
    fn agent_svid(reattestable: bool) -> AgentSvid {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org/spire/agent/join_token/t"
                .try_into()
                .unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        AgentSvid::new(key.serialize_der(), vec![cert.der().to_vec()], reattestable).unwrap()
    }

    #[test]
    fn the_agent_svid_survives_a_restart_in_a_0600_file_and_a_ban_deletes_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("agent")).unwrap();
        assert!(state.agent().unwrap().is_none());
        let svid = agent_svid(true);
        state.save_agent(&svid).unwrap();
        let mode = std::fs::metadata(dir.path().join("agent/agent.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = state.agent().unwrap().unwrap();
        assert_eq!(again.serial, svid.serial);
        assert_eq!(
            again.spiffe_id.as_str(),
            "spiffe://example.org/spire/agent/join_token/t"
        );
        assert!(again.reattestable);
        state.delete_agent().unwrap();
        assert!(state.agent().unwrap().is_none());
    }

    #[test]
    fn an_svid_for_another_key_is_refused() {
        let svid = agent_svid(false);
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let refused = AgentSvid::new(other.serialize_der(), svid.chain.clone(), false).unwrap_err();
        assert!(refused.contains("does not certify"), "{refused}");
    }
}

//! x509pop node attestation (SPIRE's `pkg/common/plugin/x509pop`): the
//! node sends its certificate chain, the server answers with a nonce, and
//! the node proves it holds the certificate's key by signing
//! SHA-256(server nonce ‖ own nonce). The digest is signed as it is (a
//! prehashed ECDSA signature, as Go's `ecdsa.Sign` makes): EC P-256 keys.
//! The agent's SPIFFE ID is `spiffe://<td>/spire/agent/x509pop/<SHA-1 of
//! the leaf>`; the node may attest again, so its SVID is renewed that way.

use base64::Engine as _;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::pkcs8::DecodePrivateKey as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::FleetError;
use crate::config::X509popFiles;
use crate::proto::spire::api::types::AttestationData;

/// SPIRE's nonce length, both ways.
const NONCE_LEN: usize = 32;
/// A challenge larger than this is refused unread.
const MAX_CHALLENGE_BYTES: usize = 4096;
/// PEM files larger than this are not read.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The node's certificate chain and the key that proves it.
pub(super) struct Prover {
    chain: Vec<Vec<u8>>,
    key: SigningKey,
}

#[derive(Serialize)]
struct Payload {
    /// DER certificates, leaf first (standard base64 in JSON, as Go's
    /// `[][]byte`).
    certificates: Vec<String>,
}

#[derive(Deserialize)]
struct Challenge {
    ecdsa_signature: Option<Nonce>,
    rsa_signature: Option<Nonce>,
}

#[derive(Deserialize)]
struct Nonce {
    nonce: String,
}

#[derive(Serialize)]
struct Response {
    ecdsa_signature: EcdsaResponse,
}

#[derive(Serialize)]
struct EcdsaResponse {
    nonce: String,
    r: String,
    s: String,
}

impl Prover {
    /// Reads `cert_file` (and `intermediates_file`) and `key_file`, and
    /// checks that the key is the leaf's.
    pub fn load(files: &X509popFiles) -> Result<Self, FleetError> {
        let mut chain = certificates(&files.cert_file)?;
        if let Some(path) = &files.intermediates_file {
            chain.extend(certificates(path)?);
        }
        let key = signing_key(&files.key_file)?;
        let leaf = super::super::state::public_key_der(&chain[0]).map_err(|reason| FleetError::File {
            path: files.cert_file.clone(),
            reason,
        })?;
        let ours = p256::pkcs8::EncodePublicKey::to_public_key_der(key.verifying_key()).map_err(|e| {
            FleetError::File {
                path: files.key_file.clone(),
                reason: e.to_string(),
            }
        })?;
        if ours.as_bytes() != leaf.as_slice() {
            return Err(FleetError::File {
                path: files.key_file.clone(),
                reason: format!("not the key of the certificate in {}", files.cert_file.display()),
            });
        }
        Ok(Self { chain, key })
    }

    /// The AttestAgent data: `{"certificates": [...]}`.
    pub fn attestation_data(&self) -> AttestationData {
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = Payload {
            certificates: self.chain.iter().map(|der| b64.encode(der)).collect(),
        };
        AttestationData {
            r#type: "x509pop".into(),
            // Strings only: serialization cannot fail.
            payload: serde_json::to_vec(&payload).unwrap_or_default(),
        }
    }

    /// The answer to the server's challenge.
    pub fn respond(&self, challenge: &[u8]) -> Result<Vec<u8>, String> {
        if challenge.len() > MAX_CHALLENGE_BYTES {
            return Err("the x509pop challenge is too large".into());
        }
        let challenge: Challenge =
            serde_json::from_slice(challenge).map_err(|e| format!("unreadable x509pop challenge: {e}"))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let theirs = match (challenge.ecdsa_signature, challenge.rsa_signature) {
            (Some(ecdsa), _) => b64
                .decode(ecdsa.nonce)
                .map_err(|e| format!("x509pop challenge nonce: {e}"))?,
            (None, Some(_)) => {
                return Err("the server asks for an RSA signature; attestd's x509pop key is EC".into());
            }
            (None, None) => return Err("the x509pop challenge asks for nothing".into()),
        };
        if theirs.len() != NONCE_LEN {
            return Err("the x509pop challenge nonce is not 32 bytes".into());
        }
        let mut ours = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut ours);
        let digest = Sha256::new().chain_update(&theirs).chain_update(ours).finalize();
        let signature: p256::ecdsa::Signature = self
            .key
            .sign_prehash(&digest)
            .map_err(|e| format!("x509pop signature: {e}"))?;
        let (r, s) = signature.split_bytes();
        let response = Response {
            ecdsa_signature: EcdsaResponse {
                nonce: b64.encode(ours),
                r: b64.encode(r),
                s: b64.encode(s),
            },
        };
        Ok(serde_json::to_vec(&response).unwrap_or_default())
    }
}

/// The certificates of a PEM file, DER; at least one.
fn certificates(path: &std::path::Path) -> Result<Vec<Vec<u8>>, FleetError> {
    let certificates: Vec<Vec<u8>> = pem_blocks(path)?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certificates.is_empty() {
        return Err(FleetError::File {
            path: path.to_owned(),
            reason: "holds no CERTIFICATE".into(),
        });
    }
    Ok(certificates)
}

/// The EC P-256 key of a PEM file (PKCS#8 or SEC1).
fn signing_key(path: &std::path::Path) -> Result<SigningKey, FleetError> {
    let invalid = |reason: String| FleetError::File {
        path: path.to_owned(),
        reason,
    };
    let blocks = pem_blocks(path)?;
    let block = blocks
        .iter()
        .find(|block| matches!(block.tag(), "PRIVATE KEY" | "EC PRIVATE KEY"))
        .ok_or_else(|| invalid("holds no PRIVATE KEY or EC PRIVATE KEY".into()))?;
    match block.tag() {
        "PRIVATE KEY" => SigningKey::from_pkcs8_der(block.contents())
            .map_err(|e| invalid(format!("not an EC P-256 key (x509pop supports those): {e}"))),
        _ => p256::SecretKey::from_sec1_der(block.contents())
            .map(SigningKey::from)
            .map_err(|e| invalid(format!("not an EC P-256 key (x509pop supports those): {e}"))),
    }
}

fn pem_blocks(path: &std::path::Path) -> Result<Vec<pem::Pem>, FleetError> {
    let invalid = |reason: String| FleetError::File {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| invalid(e.to_string()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_PEM_BYTES), &mut bytes)
        .map_err(|e| invalid(e.to_string()))?;
    pem::parse_many(&bytes).map_err(|e| invalid(e.to_string()))
}

//! The JWT signing keys: P-256, on the shared rotation schedule
//! ([`super::schedule`]), kept in `<data_dir>/jwt_keys.json` (mode 0600,
//! replaced atomically) so a restart keeps validating earlier tokens.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::RngCore;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::{Deserialize, Serialize};

use super::AuthorityError;
use super::schedule::{Lifetime, Rotation, Scheduled, Slot};
use crate::atomic_file;
use crate::wall_clock::{from_unix_seconds, unix_seconds};

const KEYS_FILE: &str = "jwt_keys.json";
/// The `use` of JWT authorities in SPIFFE bundles.
pub const JWT_SVID_USE: &str = "jwt-svid";

/// One signing key.
pub struct JwtKey {
    /// Key id, in token headers and the bundle.
    pub kid: String,
    /// Its place in the schedule; no token it signs expires after
    /// `lifetime.not_after`.
    pub lifetime: Lifetime,
    pkcs8: Vec<u8>,
    /// The signing key.
    pub encoding: EncodingKey,
    /// The public key as published.
    pub jwk: Jwk,
}

impl std::fmt::Debug for JwtKey {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Scheduled for JwtKey {
    fn lifetime(&self) -> Lifetime {
        self.lifetime
    }
}

impl JwtKey {
    fn generate(slot: Slot) -> Result<Self, AuthorityError> {
        let pkcs8 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?.serialize_der();
        let mut kid = [0u8; 16];
        rand::rng().fill_bytes(&mut kid);
        let lifetime = Lifetime {
            created: slot.created,
            activate_at: slot.activate_at,
            not_after: slot.created + slot.ttl,
        };
        Self::from_parts(hex::encode(kid), lifetime, pkcs8)
    }

    fn from_parts(kid: String, lifetime: Lifetime, pkcs8: Vec<u8>) -> Result<Self, AuthorityError> {
        let encoding = EncodingKey::from_ec_der(&pkcs8);
        let mut jwk =
            Jwk::from_encoding_key(&encoding, Algorithm::ES256).map_err(|e| AuthorityError::InvalidKey {
                kid: kid.clone(),
                reason: e.to_string(),
            })?;
        // Only kty, crv, x, y, kid and use are published.
        jwk.common.key_algorithm = None;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Other(JWT_SVID_USE.into()));
        Ok(Self {
            kid,
            lifetime,
            pkcs8,
            encoding,
            jwk,
        })
    }
}

/// The keys: one signing, maybe one published ahead, maybe one retired but
/// still validating.
#[derive(Debug)]
pub struct KeySet {
    path: PathBuf,
    rotation: Rotation<JwtKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKeys {
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    created: u64,
    activate_at: u64,
    not_after: u64,
    /// PKCS#8 DER, base64.
    pkcs8: String,
}

impl KeySet {
    /// Loads the saved keys of `data_dir` (dropping expired ones); the set
    /// may be empty until [`Self::advance`] runs.
    pub fn load(data_dir: &Path, ttl: Duration) -> Result<Self, AuthorityError> {
        let path = data_dir.join(KEYS_FILE);
        atomic_file::remove_leftovers(&path);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    path,
                    rotation: Rotation::new(ttl, Vec::new()),
                });
            }
            Err(source) => return Err(AuthorityError::Io { path, source }),
        };
        let invalid = |reason: String| AuthorityError::InvalidFile {
            path: path.clone(),
            reason,
        };
        let stored: StoredKeys = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let mut keys = Vec::new();
        for key in stored.keys {
            use base64::Engine as _;
            let pkcs8 = base64::engine::general_purpose::STANDARD
                .decode(&key.pkcs8)
                .map_err(|e| invalid(format!("key {}: {e}", key.kid)))?;
            keys.push(
                JwtKey::from_parts(
                    key.kid,
                    Lifetime {
                        created: from_unix_seconds(key.created),
                        activate_at: from_unix_seconds(key.activate_at),
                        not_after: from_unix_seconds(key.not_after),
                    },
                    pkcs8,
                )
                // The operator must learn which file holds the broken key.
                .map_err(|e| invalid(format!("{e} (not a P-256 key in PKCS#8)")))?,
            );
        }
        Ok(Self {
            path,
            rotation: Rotation::new(ttl, keys),
        })
    }

    /// Brings the set up to `now`, saving a changed set to its file (0600,
    /// atomically) before using it (see [`Rotation::advance`]); returns
    /// whether the published keys changed. If the file cannot be written
    /// nothing changes.
    pub fn advance(&mut self, now: SystemTime) -> Result<bool, AuthorityError> {
        let path = self.path.clone();
        self.rotation
            .advance(now, JwtKey::generate, |keys| save(&path, keys))
    }

    /// The key that signs at `now`.
    pub fn signing(&self, now: SystemTime) -> Option<&JwtKey> {
        self.rotation.signing(now)
    }

    /// When the schedule next changes, seen at `now`.
    pub fn next_change(&self, now: SystemTime) -> SystemTime {
        self.rotation.next_change(now)
    }

    /// Every published key.
    pub fn published(&self) -> &[JwtKey] {
        self.rotation.published()
    }
}

/// Writes `keys` to `path` (0600, atomically).
fn save(path: &Path, keys: &[&JwtKey]) -> Result<(), AuthorityError> {
    use base64::Engine as _;
    let stored = StoredKeys {
        keys: keys
            .iter()
            .map(|key| StoredKey {
                kid: key.kid.clone(),
                created: unix_seconds(key.lifetime.created),
                activate_at: unix_seconds(key.lifetime.activate_at),
                not_after: unix_seconds(key.lifetime.not_after),
                pkcs8: base64::engine::general_purpose::STANDARD.encode(&key.pkcs8),
            })
            .collect(),
    };
    // Plain strings and integers: serialization cannot fail.
    let json = serde_json::to_vec_pretty(&stored).unwrap_or_default();
    atomic_file::write(path, &json, 0o600).map_err(|source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(100);

    #[test]
    fn keys_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = KeySet::load(dir.path(), TTL).unwrap();
        let now = SystemTime::now();
        set.advance(now).unwrap();
        let reloaded = KeySet::load(dir.path(), TTL).unwrap();
        assert_eq!(reloaded.signing(now).unwrap().kid, set.signing(now).unwrap().kid);
        assert_eq!(reloaded.published()[0].jwk, set.published()[0].jwk);
        let json: serde_json::Value = serde_json::to_value(&set.published()[0].jwk).unwrap();
        let mut fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(fields, ["crv", "kid", "kty", "use", "x", "y"]);
    }
}

//! The JWT signing keys and their schedule. Each key lives `ttl`:
//!
//! ```text
//! created ──ttl/4──▶ signs ──ttl/2──▶ successor signs ──ttl/4──▶ expires
//!             (published)      │
//!                              └ the successor is created (and published) at ttl/2
//! ```
//!
//! A key enters the JWT bundle when it is created, a quarter of its life
//! before it signs anything, so relying parties see it first. It stops
//! signing when its successor starts, and leaves the bundle when it expires;
//! no token outlives its key (token expiry is capped at the key's), so a key
//! stays published until every token it signed has expired.
//!
//! Keys are kept in `<data_dir>/jwt_keys.json` (mode 0600, replaced
//! atomically), so a restart keeps validating earlier tokens.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::RngCore;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::{Deserialize, Serialize};

use super::AuthorityError;
use crate::atomic_file;
use crate::wall_clock::{from_unix_seconds, unix_seconds};

const KEYS_FILE: &str = "jwt_keys.json";
/// The `use` of JWT authorities in SPIFFE bundles.
pub const JWT_SVID_USE: &str = "jwt-svid";

/// One signing key.
pub struct JwtKey {
    /// Key id, in token headers and the bundle.
    pub kid: String,
    created: SystemTime,
    activate_at: SystemTime,
    /// No token signed by this key expires later.
    pub not_after: SystemTime,
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
            .field("activate_at", &self.activate_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl JwtKey {
    fn generate(created: SystemTime, activate_at: SystemTime, ttl: Duration) -> Result<Self, AuthorityError> {
        let pkcs8 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?.serialize_der();
        let mut kid = [0u8; 16];
        rand::rng().fill_bytes(&mut kid);
        Self::from_parts(hex::encode(kid), created, activate_at, created + ttl, pkcs8)
    }

    fn from_parts(
        kid: String,
        created: SystemTime,
        activate_at: SystemTime,
        not_after: SystemTime,
        pkcs8: Vec<u8>,
    ) -> Result<Self, AuthorityError> {
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
            created,
            activate_at,
            not_after,
            pkcs8,
            encoding,
            jwk,
        })
    }
}

/// The keys: some signing, some published ahead, some retired but still
/// validating.
#[derive(Debug)]
pub struct KeySet {
    ttl: Duration,
    path: PathBuf,
    keys: Vec<JwtKey>,
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
        let mut set = Self {
            ttl,
            path: path.clone(),
            keys: Vec::new(),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(set),
            Err(source) => return Err(AuthorityError::Io { path, source }),
        };
        let invalid = |reason: String| AuthorityError::InvalidFile {
            path: path.clone(),
            reason,
        };
        let stored: StoredKeys = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        for key in stored.keys {
            use base64::Engine as _;
            let pkcs8 = base64::engine::general_purpose::STANDARD
                .decode(&key.pkcs8)
                .map_err(|e| invalid(format!("key {}: {e}", key.kid)))?;
            set.keys.push(JwtKey::from_parts(
                key.kid,
                from_unix_seconds(key.created),
                from_unix_seconds(key.activate_at),
                from_unix_seconds(key.not_after),
                pkcs8,
            )?);
        }
        Ok(set)
    }

    /// Brings the set up to `now`: drops expired keys, creates the next key
    /// when it is due (or a first, immediately active one). Returns whether
    /// the published set changed.
    pub fn advance(&mut self, now: SystemTime) -> Result<bool, AuthorityError> {
        let before = self.keys.len();
        self.keys.retain(|key| key.not_after > now);
        let mut changed = self.keys.len() != before;
        if self.signing(now).is_none() {
            self.keys.push(JwtKey::generate(now, now, self.ttl)?);
            changed = true;
        } else if self.successor_due(now) {
            self.keys
                .push(JwtKey::generate(now, now + self.ttl / 4, self.ttl)?);
            changed = true;
        }
        Ok(changed)
    }

    /// The newest key may not have a successor yet; one is due at half its
    /// life.
    fn successor_due(&self, now: SystemTime) -> bool {
        self.newest()
            .is_some_and(|newest| newest.created + self.ttl / 2 <= now)
    }

    fn newest(&self) -> Option<&JwtKey> {
        self.keys.iter().max_by_key(|key| key.created)
    }

    /// The key that signs at `now`: the most recently activated live one.
    pub fn signing(&self, now: SystemTime) -> Option<&JwtKey> {
        self.keys
            .iter()
            .filter(|key| key.activate_at <= now && key.not_after > now)
            .max_by_key(|key| key.activate_at)
    }

    /// When [`Self::advance`] next has work: a successor due or a key expiring.
    pub fn next_change(&self) -> SystemTime {
        let successor = self.newest().map(|newest| newest.created + self.ttl / 2);
        let expiry = self.keys.iter().map(|key| key.not_after).min();
        [successor, expiry]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(SystemTime::now)
    }

    /// Every published key (all not yet expired ones).
    pub fn published(&self) -> &[JwtKey] {
        &self.keys
    }

    /// Writes the set to its file (0600, atomically).
    pub fn save(&self) -> Result<(), AuthorityError> {
        use base64::Engine as _;
        let stored = StoredKeys {
            keys: self
                .keys
                .iter()
                .map(|key| StoredKey {
                    kid: key.kid.clone(),
                    created: unix_seconds(key.created),
                    activate_at: unix_seconds(key.activate_at),
                    not_after: unix_seconds(key.not_after),
                    pkcs8: base64::engine::general_purpose::STANDARD.encode(&key.pkcs8),
                })
                .collect(),
        };
        // Plain strings and integers: serialization cannot fail.
        let json = serde_json::to_vec_pretty(&stored).unwrap_or_default();
        atomic_file::write(&self.path, &json, 0o600).map_err(|source| AuthorityError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(100);

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    #[test]
    fn schedule_publishes_before_signing_and_keeps_old_keys_until_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = KeySet::load(dir.path(), TTL).unwrap();
        assert!(set.advance(at(0)).unwrap());
        let first = set.signing(at(0)).unwrap().kid.clone();
        assert_eq!(set.next_change(), at(50));

        assert!(!set.advance(at(49)).unwrap());
        assert!(set.advance(at(50)).unwrap(), "successor published at half-life");
        assert_eq!(set.published().len(), 2);
        let second = set.newest().unwrap().kid.clone();
        assert_ne!(first, second);
        assert_eq!(
            set.signing(at(74)).unwrap().kid,
            first,
            "successor not yet signing"
        );
        assert_eq!(
            set.signing(at(75)).unwrap().kid,
            second,
            "successor signs after a quarter life"
        );

        // The first key expires at 100, then leaves the bundle.
        assert_eq!(set.next_change(), at(100));
        assert!(set.advance(at(100)).unwrap());
        assert_eq!(
            set.published().len(),
            2,
            "a third key was published at the second's half-life"
        );
        assert!(set.published().iter().all(|k| k.kid != first));
    }

    #[test]
    fn keys_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = KeySet::load(dir.path(), TTL).unwrap();
        let now = SystemTime::now();
        set.advance(now).unwrap();
        set.save().unwrap();
        let reloaded = KeySet::load(dir.path(), TTL).unwrap();
        assert_eq!(reloaded.signing(now).unwrap().kid, set.signing(now).unwrap().kid);
        assert_eq!(reloaded.published()[0].jwk, set.published()[0].jwk);
        let json: serde_json::Value = serde_json::to_value(&set.published()[0].jwk).unwrap();
        let mut fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(fields, ["crv", "kid", "kty", "use", "x", "y"]);
    }
}

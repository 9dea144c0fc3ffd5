//! JWT-SVIDs: minting (a fresh token per call, ES256, `kid`, integer `exp`,
//! random `jti`), the JWT bundle, and full validation of presented tokens.
//! Encoding and signature checks are jsonwebtoken's; this module decides
//! which keys and algorithms are acceptable and what the claims must say.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use rand::RngCore;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::AuthorityError;
use super::issuer::JwtIssuer;
use super::jwt_keys::KeySet;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::telemetry::{Credential, metrics};
use crate::wall_clock::{self, unix_seconds};

/// Retry delay after a failed key rotation.
const ROTATION_RETRY: Duration = Duration::from_secs(5);

/// Why a presented token is not a valid JWT-SVID of this trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not a JWS compact token with a JSON header.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header's `alg` is refused (none, HMAC, or not our keys' type).
    #[error("algorithm refused: {0}")]
    AlgorithmRefused(String),
    /// The header's `typ` is neither JWT nor JOSE.
    #[error("header typ {0:?} is not JWT or JOSE")]
    BadType(String),
    /// The header has no `kid`.
    #[error("header has no kid")]
    MissingKid,
    /// No key of our JWT bundle has this `kid`.
    #[error("signing key {0:?} is not in the trust bundle")]
    UnknownKey(String),
    /// The signature does not verify with the key.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `aud` does not contain the audience.
    #[error("audience {0:?} is not in the token's aud")]
    AudienceMismatch(String),
    /// A required claim is absent.
    #[error("claim {0:?} is missing")]
    MissingClaim(String),
    /// `sub` is not a SPIFFE ID of our trust domain.
    #[error("sub is not a SPIFFE ID of this trust domain: {0}")]
    BadSubject(String),
}

/// A minted JWT-SVID.
#[derive(Debug, Clone)]
pub struct JwtSvid {
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// JWS compact serialization.
    pub token: String,
    /// The token's unique id.
    pub jti: String,
    /// When it expires.
    pub expires_at: SystemTime,
}

/// A token that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedJwt {
    /// Its subject.
    pub spiffe_id: SpiffeId,
    /// All its claims.
    pub claims: serde_json::Map<String, Value>,
}

impl ValidatedJwt {
    /// The `jti` claim, if any.
    pub fn jti(&self) -> Option<&str> {
        self.claims.get("jti").and_then(Value::as_str)
    }

    /// The `exp` claim as a time (what the audit record says of it). A
    /// NumericDate may have a fraction (RFC 7519), and jsonwebtoken accepts
    /// one: such a token's record had no expiry (found by
    /// fuzz/fuzz_targets/jwt_svid.rs).
    pub fn expires_at(&self) -> Option<SystemTime> {
        let exp = self.claims.get("exp")?;
        // `as` saturates: past u64 is past the year 9999 all the same.
        let seconds = exp
            .as_u64()
            .or_else(|| exp.as_f64().filter(|s| *s >= 0.0).map(|s| s as u64))?;
        Some(wall_clock::from_unix_seconds(seconds))
    }
}

/// The public JWT keys of our trust domain.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtBundle {
    keys: Vec<Jwk>,
}

impl JwtBundle {
    /// A bundle of these public keys (a foreign trust domain's, say).
    pub fn from_keys(keys: Vec<Jwk>) -> Self {
        Self { keys }
    }

    /// The keys.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// The key with this id.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys
            .iter()
            .find(|key| key.common.key_id.as_deref() == Some(kid))
    }

    /// The JWKS document the Workload API sends: `{"keys":[...]}`.
    pub fn jwks_json(&self) -> Vec<u8> {
        let set = JwkSet {
            keys: self.keys.clone(),
        };
        // JWKs of strings: serialization cannot fail.
        serde_json::to_vec(&set).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    /// The configured issuer (`jwt_issuer`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    sub: &'a str,
    aud: &'a [String],
    exp: u64,
    iat: u64,
    jti: &'a str,
    /// Claims a caller of [`JwtAuthority::mint_with`] adds (task tokens).
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, Value>,
}

/// Claims attestd sets itself (or validators give meaning to): extra
/// claims may not name them, so a token never carries two of one.
const REGISTERED_CLAIMS: [&str; 7] = ["sub", "aud", "exp", "iat", "jti", "nbf", "iss"];

/// Signs and validates JWT-SVIDs, and rotates the keys that do.
#[derive(Debug)]
pub struct JwtAuthority {
    trust_domain: TrustDomain,
    /// The `iss` of every token minted (plain JWT-SVIDs and task tokens
    /// alike: all are signed by the keys OIDC discovery publishes under
    /// this issuer).
    issuer: Option<JwtIssuer>,
    // std Mutex: held to pick a key or look one up, never across an await.
    // None in fleet mode: the SPIRE Server signs, and its keys are the
    // bundle.
    keys: Option<Mutex<KeySet>>,
    bundle: watch::Sender<Arc<JwtBundle>>,
}

impl JwtAuthority {
    /// Clock skew tolerated on `exp` and `nbf` when validating.
    pub const VALIDATION_LEEWAY: Duration = Duration::from_secs(2);

    /// Takes over a loaded key set, bringing it up to date; tokens carry
    /// `issuer` as `iss` when given.
    pub(super) fn new(
        trust_domain: TrustDomain,
        mut keys: KeySet,
        issuer: Option<JwtIssuer>,
    ) -> Result<Self, AuthorityError> {
        super::jwt_crypto::install();
        keys.advance(wall_clock::now())?;
        let bundle = watch::Sender::new(Arc::new(bundle_of(&keys)));
        Ok(Self {
            trust_domain,
            issuer,
            keys: Some(Mutex::new(keys)),
            bundle,
        })
    }

    /// A validator of the tokens a remote authority signs with the keys of
    /// `bundle` (fleet mode); it signs nothing itself.
    pub(super) fn remote(trust_domain: TrustDomain, bundle: JwtBundle) -> Self {
        super::jwt_crypto::install();
        Self {
            trust_domain,
            issuer: None,
            keys: None,
            bundle: watch::Sender::new(Arc::new(bundle)),
        }
    }

    /// Publishes a remote authority's current keys; returns whether they
    /// changed.
    pub(super) fn replace_remote_keys(&self, bundle: JwtBundle) -> bool {
        let changed = self.bundle.send_if_modified(|current| {
            let changed = **current != bundle;
            if changed {
                *current = Arc::new(bundle);
            }
            changed
        });
        if changed {
            tracing::info!(keys = ?self.bundle().keys().iter().filter_map(|k| k.common.key_id.as_deref()).collect::<Vec<_>>(), "JWT bundle changed");
        }
        changed
    }

    fn lock(&self) -> Result<MutexGuard<'_, KeySet>, AuthorityError> {
        let keys = self.keys.as_ref().ok_or(AuthorityError::SignedRemotely)?;
        // Every critical section leaves the set consistent.
        Ok(keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The current JWT bundle.
    pub fn bundle(&self) -> Arc<JwtBundle> {
        self.bundle.borrow().clone()
    }

    /// A receiver that sees every key change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<JwtBundle>> {
        self.bundle.subscribe()
    }

    /// Mints a fresh token for `spiffe_id` and `audiences`, valid for `ttl`
    /// but never beyond its signing key.
    pub fn mint(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
    ) -> Result<JwtSvid, AuthorityError> {
        self.mint_with(
            spiffe_id,
            audiences,
            wall_clock::now() + ttl,
            &serde_json::Map::new(),
        )
    }

    /// Mints a fresh token like [`Self::mint`] that expires at `expires_at`
    /// (or earlier, with its signing key) and carries `extra` claims
    /// besides the JWT-SVID's own, which `extra` may not name.
    pub fn mint_with(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
        expires_at: SystemTime,
        extra: &serde_json::Map<String, Value>,
    ) -> Result<JwtSvid, AuthorityError> {
        if let Some(name) = REGISTERED_CLAIMS.iter().find(|name| extra.contains_key(**name)) {
            return Err(AuthorityError::BadTokenRequest(format!(
                "claim {name:?} is set by attestd"
            )));
        }
        let now = wall_clock::now();
        if expires_at <= now {
            return Err(AuthorityError::BadTokenRequest(
                "the expiry is not in the future".into(),
            ));
        }
        let mut keys = self.lock()?;
        if keys.signing(now).is_none() {
            // The rotation task is late (a suspended host): catch up here,
            // publishing before signing.
            self.refresh_locked(&mut keys, now)?;
        }
        let key = keys.signing(now).ok_or(AuthorityError::NoSigningKey)?;
        let expires_at = expires_at.min(key.lifetime.not_after);
        // Sign outside the lock: concurrent mints need not queue.
        let (kid, encoding) = (key.kid.clone(), key.encoding.clone());
        drop(keys);
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let jti = hex::encode(jti);
        let claims = Claims {
            iss: self.issuer.as_ref().map(JwtIssuer::as_str),
            sub: spiffe_id.as_str(),
            aud: audiences,
            exp: unix_seconds(expires_at),
            iat: unix_seconds(now),
            jti: &jti,
            extra,
        };
        let header = Header {
            typ: Some("JWT".into()),
            alg: Algorithm::ES256,
            kid: Some(kid),
            ..Header::default()
        };
        let token = jsonwebtoken::encode(&header, &claims, &encoding)?;
        Ok(JwtSvid {
            spiffe_id: spiffe_id.clone(),
            token,
            jti,
            expires_at,
        })
    }

    /// Validates `token` for `audience`: header, key, signature, expiry,
    /// audience, subject. `iss`, if any, is not compared (as SPIRE's agent
    /// does not): a signature by a key of this trust domain's bundle is
    /// what vouches for a token, and tokens minted before `jwt_issuer` was
    /// set or changed stay valid until they expire.
    pub fn validate(&self, token: &str, audience: &str) -> Result<ValidatedJwt, JwtError> {
        self.validate_for(token, Some(audience))
    }

    /// Validates `token` like [`Self::validate`] but accepts any audience:
    /// for a caller that then decides itself whom the token must be
    /// addressed to (a task token presented by its own holder).
    pub fn validate_any_audience(&self, token: &str) -> Result<ValidatedJwt, JwtError> {
        self.validate_for(token, None)
    }

    fn validate_for(&self, token: &str, audience: Option<&str>) -> Result<ValidatedJwt, JwtError> {
        // The SPIRE Server's keys need not be P-256 (its jwt_key_type).
        let signers = match self.keys {
            Some(_) => Signers::Ours,
            None => Signers::Foreign,
        };
        let (algorithm, kid) = check_header(token, signers)?;
        verify(
            token,
            audience,
            algorithm,
            &kid,
            &self.trust_domain,
            &self.bundle(),
        )
    }

    /// Keeps the keys on schedule until the process ends.
    pub async fn run_rotation(self: Arc<Self>) {
        if self.keys.is_none() {
            // A remote authority's keys are replaced as it publishes them.
            return;
        }
        loop {
            // The keys are here (checked above): the lock cannot fail.
            wall_clock::sleep_until_due(|now| self.lock().map_or(now, |keys| keys.next_change(now))).await;
            let result = self
                .lock()
                .and_then(|mut keys| self.refresh_locked(&mut keys, wall_clock::now()));
            metrics().rotation(Credential::JwtKeys, result.is_ok());
            if let Err(error) = result {
                tracing::error!(%error, "JWT key rotation failed; retrying");
                tokio::time::sleep(ROTATION_RETRY).await;
            }
        }
    }

    /// Advances the schedule; a change is saved, then the bundle published
    /// (before any new key can sign: callers hold the lock). A change that
    /// cannot be saved is not made: the current key keeps signing.
    fn refresh_locked(&self, keys: &mut KeySet, now: SystemTime) -> Result<(), AuthorityError> {
        if !keys.advance(now)? {
            return Ok(());
        }
        let bundle = bundle_of(keys);
        tracing::info!(keys = ?bundle.keys().iter().filter_map(|k| k.common.key_id.as_deref()).collect::<Vec<_>>(), "JWT bundle changed");
        self.bundle.send_replace(Arc::new(bundle));
        Ok(())
    }
}

/// Validates `token`, a JWT-SVID of the foreign `trust_domain`, for
/// `audience` against that trust domain's keys: header, key, signature,
/// expiry, audience, and a subject in that trust domain. Any JWT-SVID
/// algorithm the key's type supports is accepted (foreign keys need not be
/// P-256), never `none` or HMAC.
pub fn validate_foreign(
    token: &str,
    audience: &str,
    trust_domain: &TrustDomain,
    bundle: &JwtBundle,
) -> Result<ValidatedJwt, JwtError> {
    let (algorithm, kid) = check_header(token, Signers::Foreign)?;
    verify(token, Some(audience), algorithm, &kid, trust_domain, bundle)
}

/// The checks after the header's: the key by `kid`, the signature with
/// `algorithm`, the claims, and the subject's trust domain.
fn verify(
    token: &str,
    audience: Option<&str>,
    algorithm: Algorithm,
    kid: &str,
    trust_domain: &TrustDomain,
    bundle: &JwtBundle,
) -> Result<ValidatedJwt, JwtError> {
    let jwk = bundle
        .find(kid)
        .ok_or_else(|| JwtError::UnknownKey(kid.to_owned()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let mut validation = Validation::new(algorithm);
    // Judged by attestd's clock below: jsonwebtoken reads the host's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    match audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
        .map_err(|e| decode_error(e, audience.unwrap_or_default()))?;
    check_times(&data.claims, unix_seconds(wall_clock::now()))?;
    let sub = data.claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    let spiffe_id = SpiffeId::new(sub).map_err(|e| JwtError::BadSubject(format!("{sub:?}: {e}")))?;
    if !spiffe_id.belongs_to(trust_domain) {
        return Err(JwtError::BadSubject(sub.to_owned()));
    }
    Ok(ValidatedJwt {
        spiffe_id,
        claims: data.claims,
    })
}

fn bundle_of(keys: &KeySet) -> JwtBundle {
    JwtBundle {
        keys: keys.published().iter().map(|key| key.jwk.clone()).collect(),
    }
}

/// Whose keys signed the token: ours sign ES256 only; a foreign trust
/// domain's may use any algorithm the JWT-SVID standard lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signers {
    Ours,
    Foreign,
}

/// Reads the JOSE header and refuses what no SPIFFE JWT-SVID of `signers`
/// can carry, with a precise reason; returns the algorithm and the `kid`.
fn check_header(token: &str, signers: Signers) -> Result<(Algorithm, String), JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(format!(
            "not three dot-separated parts: {JWS_FORM}"
        )));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtError::Malformed(format!("the header is not base64url: {JWS_FORM}")))?;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| JwtError::Malformed(format!("header is not a JSON object: {e}")))?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or_default();
    let algorithm = match (alg, signers) {
        ("ES256", _) => Algorithm::ES256,
        ("ES384", Signers::Foreign) => Algorithm::ES384,
        ("RS256", Signers::Foreign) => Algorithm::RS256,
        ("RS384", Signers::Foreign) => Algorithm::RS384,
        ("RS512", Signers::Foreign) => Algorithm::RS512,
        ("PS256", Signers::Foreign) => Algorithm::PS256,
        ("PS384", Signers::Foreign) => Algorithm::PS384,
        ("PS512", Signers::Foreign) => Algorithm::PS512,
        ("", _) => return Err(JwtError::AlgorithmRefused("no alg".into())),
        ("none" | "None" | "NONE", _) => {
            return Err(JwtError::AlgorithmRefused("unsigned tokens (alg none)".into()));
        }
        (hmac, _) if hmac.starts_with("HS") => {
            return Err(JwtError::AlgorithmRefused(format!(
                "{hmac}: shared-secret algorithms"
            )));
        }
        (other, Signers::Ours) => {
            return Err(JwtError::AlgorithmRefused(format!(
                "{other} does not match this trust domain's EC P-256 keys"
            )));
        }
        (other, Signers::Foreign) => {
            return Err(JwtError::AlgorithmRefused(format!(
                "{other} is not a JWT-SVID algorithm attestd verifies"
            )));
        }
    };
    if let Some(typ) = header.get("typ") {
        match typ.as_str() {
            Some("JWT" | "JOSE") => {}
            _ => return Err(JwtError::BadType(typ.to_string())),
        }
    }
    match header.get("kid").and_then(Value::as_str) {
        Some(kid) if !kid.is_empty() => Ok((algorithm, kid.to_owned())),
        _ => Err(JwtError::MissingKid),
    }
}

/// What a JWT is, for the errors of a token that is not one.
const JWS_FORM: &str = "a JWT-SVID is three base64url parts (header, claims, signature) joined by dots";

/// `exp` and `nbf` judged at `now` with the leeway, as jsonwebtoken judges
/// them by the host's clock, so that a token's expiry follows attestd's
/// clock as its issuance does. jsonwebtoken has required `exp` as an
/// integer; `nbf` is optional.
fn check_times(claims: &serde_json::Map<String, Value>, now: u64) -> Result<(), JwtError> {
    let leeway = JwtAuthority::VALIDATION_LEEWAY.as_secs();
    let date = |name: &str| {
        claims
            .get(name)
            .map(|value| {
                value
                    .as_u64()
                    .ok_or_else(|| JwtError::Malformed(format!("{name} is not a NumericDate")))
            })
            .transpose()
    };
    if date("exp")?.is_some_and(|exp| exp < now.saturating_sub(leeway)) {
        return Err(JwtError::Expired);
    }
    if date("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(JwtError::NotYetValid);
    }
    Ok(())
}

fn decode_error(error: jsonwebtoken::errors::Error, audience: &str) -> JwtError {
    use jsonwebtoken::errors::ErrorKind;
    // Never the library's debug text: a caller sees these messages.
    match error.into_kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidAudience => JwtError::AudienceMismatch(audience.to_owned()),
        ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim),
        ErrorKind::InvalidAlgorithm => JwtError::AlgorithmRefused("alg does not match the key".into()),
        ErrorKind::Base64(_) => {
            JwtError::Malformed(format!("the claims or signature are not base64url: {JWS_FORM}"))
        }
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            JwtError::Malformed("the claims are not a JSON object".into())
        }
        _ => JwtError::Malformed(format!("not a valid JWT-SVID: {JWS_FORM}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(dir: &std::path::Path) -> JwtAuthority {
        let td = TrustDomain::new("example.org").unwrap();
        JwtAuthority::new(td, KeySet::load(dir, Duration::from_secs(3600)).unwrap(), None).unwrap()
    }

    fn header(json: &str) -> String {
        format!(
            "{}.e30.sig",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// A federated trust domain signs whatever `exp` it likes: the
    /// expiry recorded for a valid token never overflows the clock nor
    /// fails to be written (it panicked from the year 10000 on).
    #[test]
    fn a_far_expiry_is_recorded_without_a_panic() {
        for exp in [253_402_300_800u64, u64::MAX] {
            let valid = ValidatedJwt {
                spiffe_id: SpiffeId::new("spiffe://example.org/w").unwrap(),
                claims: serde_json::json!({ "exp": exp }).as_object().unwrap().clone(),
            };
            let expires_at = valid.expires_at().unwrap();
            assert_eq!(wall_clock::unix_seconds(expires_at), wall_clock::MAX_UNIX_SECONDS);
            let record =
                crate::audit::Record::new("ValidateJWTSVID", crate::audit::Outcome::Validated, "valid", None)
                    .with_token(valid.jti(), Some(expires_at));
            assert_eq!(record.not_after.as_deref(), Some("9999-12-31T23:59:59.000Z"));
        }
        let fractional = ValidatedJwt {
            spiffe_id: SpiffeId::new("spiffe://example.org/w").unwrap(),
            claims: serde_json::json!({ "exp": 4_102_444_800.5 })
                .as_object()
                .unwrap()
                .clone(),
        };
        assert_eq!(
            fractional.expires_at().map(wall_clock::unix_seconds),
            Some(4_102_444_800)
        );
    }

    #[test]
    fn header_checks_name_the_reason() {
        let refused = |json: &str| check_header(&header(json), Signers::Ours).unwrap_err();
        assert!(
            matches!(refused(r#"{"alg":"none","kid":"k"}"#), JwtError::AlgorithmRefused(r) if r.contains("none"))
        );
        assert!(
            matches!(refused(r#"{"alg":"HS256","kid":"k"}"#), JwtError::AlgorithmRefused(r) if r.contains("HS256"))
        );
        assert!(
            matches!(refused(r#"{"alg":"RS256","kid":"k"}"#), JwtError::AlgorithmRefused(r) if r.contains("RS256"))
        );
        assert!(matches!(refused(r#"{"kid":"k"}"#), JwtError::AlgorithmRefused(_)));
        assert_eq!(refused(r#"{"alg":"ES256"}"#), JwtError::MissingKid);
        assert!(matches!(
            refused(r#"{"alg":"ES256","kid":"k","typ":"xyz"}"#),
            JwtError::BadType(_)
        ));
        assert!(matches!(
            check_header("a.b", Signers::Ours),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            check_header("!!.b.c", Signers::Ours),
            Err(JwtError::Malformed(_))
        ));
        assert_eq!(
            check_header(
                &header(r#"{"alg":"ES256","kid":"k","typ":"JOSE"}"#),
                Signers::Ours
            )
            .unwrap(),
            (Algorithm::ES256, "k".to_owned())
        );
        assert_eq!(
            check_header(&header(r#"{"alg":"RS256","kid":"k"}"#), Signers::Foreign).unwrap(),
            (Algorithm::RS256, "k".to_owned()),
            "a foreign trust domain may sign with RSA"
        );
        for refused in [
            r#"{"alg":"HS256","kid":"k"}"#,
            r#"{"alg":"none","kid":"k"}"#,
            r#"{"alg":"EdDSA","kid":"k"}"#,
        ] {
            assert!(matches!(
                check_header(&header(refused), Signers::Foreign),
                Err(JwtError::AlgorithmRefused(_))
            ));
        }
    }

    #[test]
    fn minted_tokens_validate_for_each_audience_only() {
        let dir = tempfile::tempdir().unwrap();
        let jwt = authority(dir.path());
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let audiences = vec!["a".to_owned(), "b".to_owned()];
        let svid = jwt.mint(&id, &audiences, Duration::from_secs(60)).unwrap();
        for audience in ["a", "b"] {
            let valid = jwt.validate(&svid.token, audience).unwrap();
            assert_eq!(valid.spiffe_id, id);
            assert_eq!(valid.jti(), Some(svid.jti.as_str()));
        }
        assert_eq!(
            jwt.validate(&svid.token, "c").unwrap_err(),
            JwtError::AudienceMismatch("c".into())
        );
        // Another trust domain's authority does not hold our key.
        let other_dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            authority(other_dir.path()).validate(&svid.token, "a"),
            Err(JwtError::UnknownKey(_))
        ));
    }

    #[test]
    fn extra_claims_are_signed_but_never_replace_the_registered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let jwt = authority(dir.path());
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let expires_at = SystemTime::now() + Duration::from_secs(60);
        let mut extra = serde_json::Map::new();
        extra.insert("task_id".into(), Value::from("t1"));
        let svid = jwt.mint_with(&id, &["a".to_owned()], expires_at, &extra).unwrap();
        assert_eq!(unix_seconds(svid.expires_at), unix_seconds(expires_at));
        let valid = jwt.validate(&svid.token, "a").unwrap();
        assert_eq!(valid.claims["task_id"], "t1");
        assert_eq!(valid.claims["sub"], "spiffe://example.org/w");
        // Any audience when the caller checks it itself; still every other check.
        assert_eq!(jwt.validate_any_audience(&svid.token).unwrap().spiffe_id, id);
        // A different character inside the signature (6 bits each there).
        let at = svid.token.len() - 10;
        let other = if &svid.token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{other}{}", &svid.token[..at], &svid.token[at + 1..]);
        assert!(jwt.validate_any_audience(&forged).is_err());

        extra.insert("sub".into(), Value::from("spiffe://example.org/other"));
        assert!(matches!(
            jwt.mint_with(&id, &["a".to_owned()], expires_at, &extra),
            Err(AuthorityError::BadTokenRequest(reason)) if reason.contains("\"sub\"")
        ));
        assert!(matches!(
            jwt.mint_with(&id, &["a".to_owned()], SystemTime::now(), &serde_json::Map::new()),
            Err(AuthorityError::BadTokenRequest(_))
        ));
    }

    #[test]
    fn a_configured_issuer_is_every_tokens_iss_and_validation_accepts_it() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let issuer = JwtIssuer::parse("https://attestd.example.org").unwrap();
        let keys = KeySet::load(dir.path(), Duration::from_secs(3600)).unwrap();
        let jwt = JwtAuthority::new(td, keys, Some(issuer)).unwrap();
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let plain = jwt.mint(&id, &["a".to_owned()], Duration::from_secs(60)).unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert("task_id".into(), Value::from("t1"));
        let expires_at = SystemTime::now() + Duration::from_secs(60);
        let task = jwt.mint_with(&id, &["a".to_owned()], expires_at, &extra).unwrap();
        for token in [&plain.token, &task.token] {
            let valid = jwt.validate(token, "a").unwrap();
            assert_eq!(valid.claims["iss"], "https://attestd.example.org");
        }
        // Without an issuer, no iss at all.
        let other = tempfile::tempdir().unwrap();
        let without = authority(other.path())
            .mint(&id, &["a".to_owned()], Duration::from_secs(60))
            .unwrap();
        let claims: serde_json::Map<String, Value> =
            jsonwebtoken::dangerous::insecure_decode_claims(&without.token).unwrap();
        assert!(!claims.contains_key("iss"));
        // Nor can a caller's extra claims set it.
        extra.insert("iss".into(), Value::from("https://evil.example"));
        assert!(matches!(
            jwt.mint_with(&id, &["a".to_owned()], expires_at, &extra),
            Err(AuthorityError::BadTokenRequest(reason)) if reason.contains("\"iss\"")
        ));
    }

    #[test]
    fn token_expiry_never_outlives_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let jwt = authority(dir.path());
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let svid = jwt
            .mint(&id, &["a".to_owned()], Duration::from_secs(10 * 3600))
            .unwrap();
        let key_expiry = jwt
            .lock()
            .unwrap()
            .signing(SystemTime::now())
            .unwrap()
            .lifetime
            .not_after;
        assert!(svid.expires_at <= key_expiry);
    }
}

//! The certificate authority: holds the signing CA, mints X.509-SVIDs for
//! SPIFFE IDs, and publishes the trust bundle. It knows nothing of
//! processes or entries, only of identities to certify.
//!
//! JWT-SVIDs are signed by the [`JwtAuthority`]'s rotating keys.
//!
//! The signer is a [`SigningCa`]: today the embedded, self-signed root kept in
//! `data_dir` ([`ca`]); an upstream intermediate loaded from files fits the
//! same shape (its chain carries the intermediate, the bundle the roots).

mod bundle;
mod bundle_document;
mod ca;
mod issuer;
mod jwt;
mod jwt_crypto;
mod jwt_keys;
mod schedule;
mod signing_ca;
mod upstream;
mod x509;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use ca::CaSet;
use upstream::UpstreamCa;

pub use bundle::X509Bundle;
pub use bundle_document::{BundleDocument, X509_SVID_USE, maintain_bundle_file, publish_bundle_document};
pub use issuer::JwtIssuer;
pub use jwt::{JwtAuthority, JwtBundle, JwtError, JwtSvid, ValidatedJwt, validate_foreign};
pub use jwt_keys::JWT_SVID_USE;
pub use signing_ca::SigningCa;
pub use upstream::UpstreamFiles;
pub use x509::{SvidTemplate, X509Svid};

use crate::spiffe_id::TrustDomain;
use crate::wall_clock;

/// How often an upstream CA's files are checked for replacement.
const UPSTREAM_POLL: Duration = Duration::from_secs(5);
/// Retry delay after a failed CA rotation.
const ROTATION_RETRY: Duration = Duration::from_secs(5);

/// Why the authority could not load its CA or mint an SVID.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// Reading or writing CA files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A CA or key file exists but is not usable.
    #[error("{path}: {reason}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored JWT key is not usable.
    #[error("JWT key {kid}: {reason}")]
    InvalidKey {
        /// The key id.
        kid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Signing a JWT failed.
    #[error("signing a JWT failed: {0}")]
    JwtSigning(#[from] jsonwebtoken::errors::Error),
    /// Key generation or signing failed.
    #[error("signing failed: {0}")]
    Signing(#[from] rcgen::Error),
    /// A token was asked for with claims or an expiry attestd does not
    /// sign.
    #[error("cannot mint this token: {0}")]
    BadTokenRequest(String),
    /// No JWT key can sign right now.
    #[error("no JWT signing key is available")]
    NoSigningKey,
    /// The CA has expired: nothing it signs would verify.
    #[error("the signing CA expired; no SVID can be minted")]
    CaExpired,
    /// The identity's term (its owner's) has ended: an SVID minted now
    /// would be expired already.
    #[error("the identity's owner term has ended; no SVID is minted for it")]
    TermEnded,
}

/// How JWT-SVIDs are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Lifetime of each signing key (see `[ca] jwt_key_ttl`).
    pub key_ttl: Duration,
    /// The `iss` of every token (`jwt_issuer`); none if unset.
    pub issuer: Option<JwtIssuer>,
}

impl JwtSettings {
    /// Keys of `key_ttl`, tokens without `iss`.
    pub fn without_issuer(key_ttl: Duration) -> Self {
        Self {
            key_ttl,
            issuer: None,
        }
    }
}

/// Where X.509-SVIDs are signed.
#[derive(Debug)]
enum Signer {
    /// attestd's own rotating roots.
    Embedded(CaSet),
    /// An intermediate from the organisation's CA, in files.
    Upstream(Box<UpstreamCa>),
}

impl Signer {
    fn roots(&self) -> Vec<Vec<u8>> {
        match self {
            Self::Embedded(set) => set.roots(),
            Self::Upstream(upstream) => upstream.roots(),
        }
    }
}

/// Mints SVIDs and publishes the bundle.
#[derive(Debug)]
pub struct Authority {
    trust_domain: TrustDomain,
    // std Mutex: held to pick the signer and sign (CPU only, about a
    // millisecond), never across an await.
    signer: Mutex<Signer>,
    bundle: watch::Sender<Arc<X509Bundle>>,
    jwt: Arc<JwtAuthority>,
}

impl Authority {
    /// The authority `config` describes: embedded (rotating roots in
    /// `data_dir`) or upstream (`[ca]` files); JWT keys always in
    /// `data_dir`, their tokens issued as `jwt_issuer` if set.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, AuthorityError> {
        let (trust_domain, data_dir, ca) = (config.trust_domain.clone(), &config.data_dir, &config.ca);
        let jwt = JwtSettings {
            key_ttl: ca.jwt_key_ttl.0,
            issuer: config.jwt_issuer.clone(),
        };
        match &ca.upstream {
            Some(files) => Self::upstream(trust_domain, data_dir, files, jwt),
            None => Self::embedded(trust_domain, data_dir, ca.ttl.0, jwt),
        }
    }

    /// Loads the embedded CA and the JWT keys from `data_dir`, creating
    /// them on first start.
    pub fn embedded(
        trust_domain: TrustDomain,
        data_dir: &Path,
        ca_ttl: Duration,
        jwt: JwtSettings,
    ) -> Result<Self, AuthorityError> {
        create_data_dir(data_dir)?;
        let mut set = CaSet::load(&trust_domain, data_dir, ca_ttl)?;
        if set.advance(SystemTime::now())? {
            set.save()?;
        }
        Self::with_signer(trust_domain, data_dir, Signer::Embedded(set), jwt)
    }

    /// Signs with an upstream intermediate; JWT keys from `data_dir`.
    pub fn upstream(
        trust_domain: TrustDomain,
        data_dir: &Path,
        files: &UpstreamFiles,
        jwt: JwtSettings,
    ) -> Result<Self, AuthorityError> {
        create_data_dir(data_dir)?;
        let upstream = UpstreamCa::load(files, &trust_domain)?;
        Self::with_signer(trust_domain, data_dir, Signer::Upstream(Box::new(upstream)), jwt)
    }

    fn with_signer(
        trust_domain: TrustDomain,
        data_dir: &Path,
        signer: Signer,
        jwt: JwtSettings,
    ) -> Result<Self, AuthorityError> {
        let jwt_keys = jwt_keys::KeySet::load(data_dir, jwt.key_ttl)?;
        Ok(Self {
            jwt: Arc::new(JwtAuthority::new(trust_domain.clone(), jwt_keys, jwt.issuer)?),
            bundle: watch::Sender::new(Arc::new(X509Bundle::new(signer.roots()))),
            signer: Mutex::new(signer),
            trust_domain,
        })
    }

    /// The JWT-SVID signer and validator.
    pub fn jwt(&self) -> &Arc<JwtAuthority> {
        &self.jwt
    }

    /// The trust domain this authority certifies.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Mints a fresh X.509-SVID with a new key.
    pub fn mint_x509(&self, template: &SvidTemplate) -> Result<X509Svid, AuthorityError> {
        let now = SystemTime::now();
        let mut signer = self.lock();
        let ca = match &mut *signer {
            Signer::Embedded(set) => {
                if set.signing(now).is_none() {
                    // The rotation task is late (a suspended host): catch
                    // up here, publishing before signing.
                    self.advance_embedded(set, now)?;
                }
                set.signing(now).ok_or(AuthorityError::CaExpired)?
            }
            Signer::Upstream(upstream) => upstream.signer(),
        };
        x509::mint(ca, template)
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<X509Bundle> {
        self.bundle.borrow().clone()
    }

    /// A receiver that sees every change of the trust bundle.
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<X509Bundle>> {
        self.bundle.subscribe()
    }

    /// Keeps the X.509 CA current until the process ends: the embedded
    /// roots on their schedule, an upstream CA's files re-read when
    /// replaced.
    pub async fn run_ca_rotation(self: Arc<Self>) {
        loop {
            let next = match &*self.lock() {
                Signer::Embedded(set) => set.next_change(),
                Signer::Upstream(_) => SystemTime::now() + UPSTREAM_POLL,
            };
            wall_clock::sleep_until(next).await;
            if let Err(error) = self.refresh(SystemTime::now()) {
                tracing::error!(%error, "CA rotation failed; keeping the current CA");
                tokio::time::sleep(ROTATION_RETRY).await;
            }
        }
    }

    fn refresh(&self, now: SystemTime) -> Result<(), AuthorityError> {
        let mut signer = self.lock();
        match &mut *signer {
            Signer::Embedded(set) => self.advance_embedded(set, now),
            Signer::Upstream(upstream) => {
                if upstream.reload_if_changed(&self.trust_domain)? {
                    tracing::info!("upstream CA files replaced; new CA in use");
                    self.bundle
                        .send_replace(Arc::new(X509Bundle::new(upstream.roots())));
                }
                Ok(())
            }
        }
    }

    /// Advances the embedded schedule; a change is saved and published
    /// (before the new root can sign: the caller holds the lock). A root in
    /// use must be in the bundle even if saving fails, so that failure is
    /// logged, not returned, as for the JWT keys.
    fn advance_embedded(&self, set: &mut CaSet, now: SystemTime) -> Result<(), AuthorityError> {
        if !set.advance(now)? {
            return Ok(());
        }
        if let Err(error) = set.save() {
            // The root still works; a restart would lose it, and with it
            // the bundle relying parties hold.
            tracing::error!(%error, "cannot save the embedded CA");
        }
        let roots = set.roots();
        tracing::info!(roots = roots.len(), "X.509 trust bundle changed");
        self.bundle.send_replace(Arc::new(X509Bundle::new(roots)));
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Signer> {
        // Every critical section leaves the signer consistent.
        self.signer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The state directory (keys inside): created 0700 if missing.
fn create_data_dir(data_dir: &Path) -> Result<(), AuthorityError> {
    crate::atomic_file::create_dir(data_dir, 0o700).map_err(|source| AuthorityError::Io {
        path: data_dir.to_owned(),
        source,
    })
}

/// An embedded authority for `example.org` on a temporary directory (kept
/// alive by the returned guard), for unit tests.
#[cfg(test)]
pub(crate) fn test_authority() -> (tempfile::TempDir, Authority) {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let hour = Duration::from_secs(3600);
    let authority = Authority::embedded(td, dir.path(), hour, JwtSettings::without_issuer(hour)).unwrap();
    (dir, authority)
}

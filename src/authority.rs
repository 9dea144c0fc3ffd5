//! The certificate authority: holds the signing CA, mints X.509-SVIDs for
//! SPIFFE IDs, and publishes the trust bundle. It knows nothing of
//! processes or entries, only of identities to certify.
//!
//! JWT-SVIDs are signed by the [`JwtAuthority`]'s rotating keys.
//!
//! The signer is a [`SigningCa`]: today the embedded, self-signed root kept in
//! `data_dir` ([`ca`]); an upstream intermediate loaded from files fits the
//! same shape (its chain carries the intermediate, the bundle the roots).
//! In fleet mode the signer is remote (a [`RemoteSigner`]: the SPIRE
//! Server), and the bundles are the server's, replaced as it publishes them.

mod bundle;
mod bundle_document;
mod ca;
mod issuer;
mod jwt;
mod jwt_crypto;
mod jwt_keys;
mod remote;
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
pub use bundle_document::{
    BundleDocument, X509_SVID_USE, jwt_authority_from_spki, maintain_bundle_file, publish_bundle_document,
};
pub use issuer::JwtIssuer;
pub use jwt::{JwtAuthority, JwtBundle, JwtError, JwtSvid, ValidatedJwt, validate_foreign};
pub use jwt_keys::JWT_SVID_USE;
pub use remote::{BoxFuture, RemoteSigner};
pub use signing_ca::SigningCa;
pub use upstream::UpstreamFiles;
#[doc(hidden)]
pub use upstream::check_pem as check_upstream_pem;
pub use x509::{SvidTemplate, X509Svid};

use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::telemetry::{Credential, metrics};
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
    /// In fleet mode nothing is signed locally (a task token, say): the
    /// SPIRE Server signs every SVID.
    #[error("in fleet mode the SPIRE Server signs every SVID; attestd signs nothing itself")]
    SignedRemotely,
    /// The remote signer (the SPIRE Server) refused or could not be
    /// reached.
    #[error("SPIRE Server: {0}")]
    Remote(String),
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

/// Who signs: attestd itself, or a remote authority.
#[derive(Debug)]
enum Minting {
    // std Mutex: held to pick the signer and sign (CPU only, about a
    // millisecond), never across an await.
    Local(Mutex<Signer>),
    Remote(Arc<dyn RemoteSigner>),
}

/// Mints SVIDs and publishes the bundle.
#[derive(Debug)]
pub struct Authority {
    trust_domain: TrustDomain,
    minting: Minting,
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
        set.advance(wall_clock::now())?;
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
            minting: Minting::Local(Mutex::new(signer)),
            trust_domain,
        })
    }

    /// An authority whose SVIDs `signer` mints (fleet mode), starting with
    /// the remote authority's bundles; [`Self::replace_bundles`] keeps them
    /// current.
    pub fn remote(
        trust_domain: TrustDomain,
        signer: Arc<dyn RemoteSigner>,
        x509: X509Bundle,
        jwt: JwtBundle,
    ) -> Self {
        Self {
            jwt: Arc::new(JwtAuthority::remote(trust_domain.clone(), jwt)),
            bundle: watch::Sender::new(Arc::new(x509)),
            minting: Minting::Remote(signer),
            trust_domain,
        }
    }

    /// Publishes the remote authority's current bundles (fleet mode);
    /// returns whether either changed. Unchanged bundles wake no stream.
    pub fn replace_bundles(&self, x509: X509Bundle, jwt: JwtBundle) -> bool {
        let x509_changed = self.bundle.send_if_modified(|current| {
            let changed = **current != x509;
            if changed {
                *current = Arc::new(x509);
            }
            changed
        });
        let jwt_changed = self.jwt.replace_remote_keys(jwt);
        if x509_changed {
            tracing::info!(roots = self.bundle().roots().len(), "X.509 trust bundle changed");
        }
        x509_changed || jwt_changed
    }

    /// The JWT-SVID signer and validator.
    pub fn jwt(&self) -> &Arc<JwtAuthority> {
        &self.jwt
    }

    /// The trust domain this authority certifies.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Mints a fresh X.509-SVID with a new key, wherever it is signed.
    pub async fn issue_x509(&self, template: &SvidTemplate) -> Result<X509Svid, AuthorityError> {
        match &self.minting {
            Minting::Local(_) => self.mint_x509(template),
            Minting::Remote(signer) => signer.mint_x509(template).await,
        }
    }

    /// Mints a fresh JWT-SVID for `spiffe_id` (granted by the remote
    /// entry `remote_entry` in fleet mode), valid for `ttl` if signed here
    /// (the remote authority decides its own lifetimes).
    pub async fn issue_jwt(
        &self,
        spiffe_id: &SpiffeId,
        remote_entry: Option<&str>,
        audiences: &[String],
        ttl: Duration,
    ) -> Result<JwtSvid, AuthorityError> {
        match (&self.minting, remote_entry) {
            (Minting::Local(_), _) => self.jwt.mint(spiffe_id, audiences, ttl),
            (Minting::Remote(signer), Some(entry)) => signer.mint_jwt(spiffe_id, entry, audiences).await,
            (Minting::Remote(_), None) => Err(AuthorityError::SignedRemotely),
        }
    }

    /// Mints a fresh X.509-SVID with a new key, signed here (see
    /// [`Self::issue_x509`] for an authority that may be remote).
    pub fn mint_x509(&self, template: &SvidTemplate) -> Result<X509Svid, AuthorityError> {
        let now = wall_clock::now();
        let Minting::Local(signer) = &self.minting else {
            return Err(AuthorityError::SignedRemotely);
        };
        let mut signer = lock(signer);
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
        let Minting::Local(signer) = &self.minting else {
            // A remote authority's bundles are replaced as it publishes them.
            return;
        };
        loop {
            wall_clock::sleep_until_due(|now| match &*lock(signer) {
                Signer::Embedded(set) => set.next_change(now),
                Signer::Upstream(_) => now + UPSTREAM_POLL,
            })
            .await;
            let result = self.refresh(signer, wall_clock::now());
            metrics().rotation(Credential::X509Ca, result.is_ok());
            if let Err(error) = result {
                tracing::error!(%error, "CA rotation failed; keeping the current CA");
                tokio::time::sleep(ROTATION_RETRY).await;
            }
        }
    }

    fn refresh(&self, signer: &Mutex<Signer>, now: SystemTime) -> Result<(), AuthorityError> {
        let mut signer = lock(signer);
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

    /// Advances the embedded schedule; a change is saved, then published
    /// (before the new root can sign: the caller holds the lock). A change
    /// that cannot be saved is not made and the error is returned: the
    /// current root keeps signing, and the caller retries (a root used but
    /// never saved would be forgotten by a restart while relying parties
    /// trust it: a split bundle).
    fn advance_embedded(&self, set: &mut CaSet, now: SystemTime) -> Result<(), AuthorityError> {
        if !set.advance(now)? {
            return Ok(());
        }
        let roots = set.roots();
        tracing::info!(roots = roots.len(), "X.509 trust bundle changed");
        self.bundle.send_replace(Arc::new(X509Bundle::new(roots)));
        Ok(())
    }
}

fn lock(signer: &Mutex<Signer>) -> MutexGuard<'_, Signer> {
    // Every critical section leaves the signer consistent.
    signer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

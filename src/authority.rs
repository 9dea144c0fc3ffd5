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
mod jwt;
mod jwt_keys;
mod x509;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use bundle::X509Bundle;
pub use bundle_document::{BundleDocument, maintain_bundle_file};
pub use ca::SigningCa;
pub use jwt::{JwtAuthority, JwtBundle, JwtError, JwtSvid, ValidatedJwt};
pub use jwt_keys::JWT_SVID_USE;
pub use x509::{SvidTemplate, X509Svid};

use crate::spiffe_id::TrustDomain;

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
    /// No JWT key can sign right now.
    #[error("no JWT signing key is available")]
    NoSigningKey,
    /// The CA has expired: nothing it signs would verify.
    #[error("the signing CA expired; no SVID can be minted")]
    CaExpired,
}

/// Mints SVIDs and publishes the bundle.
#[derive(Debug)]
pub struct Authority {
    trust_domain: TrustDomain,
    signer: SigningCa,
    bundle: watch::Sender<Arc<X509Bundle>>,
    jwt: Arc<JwtAuthority>,
}

impl Authority {
    /// Loads the embedded CA and the JWT keys from `data_dir`, creating
    /// them on first start.
    pub fn embedded(
        trust_domain: TrustDomain,
        data_dir: &std::path::Path,
        ca_ttl: Duration,
        jwt_key_ttl: Duration,
    ) -> Result<Self, AuthorityError> {
        let signer = ca::load_or_create(&trust_domain, data_dir, ca_ttl)?;
        let bundle = X509Bundle::new(vec![signer.cert_der().to_vec()]);
        let jwt_keys = jwt_keys::KeySet::load(data_dir, jwt_key_ttl)?;
        Ok(Self {
            jwt: Arc::new(JwtAuthority::new(trust_domain.clone(), jwt_keys)?),
            trust_domain,
            signer,
            bundle: watch::Sender::new(Arc::new(bundle)),
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
        x509::mint(&self.signer, template)
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<X509Bundle> {
        self.bundle.borrow().clone()
    }

    /// A receiver that sees every change of the trust bundle.
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<X509Bundle>> {
        self.bundle.subscribe()
    }
}

/// An embedded authority for `example.org` on a temporary directory (kept
/// alive by the returned guard), for unit tests.
#[cfg(test)]
pub(crate) fn test_authority() -> (tempfile::TempDir, Authority) {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let hour = Duration::from_secs(3600);
    let authority = Authority::embedded(td, dir.path(), hour, hour).unwrap();
    (dir, authority)
}

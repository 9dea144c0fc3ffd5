//! OIDC discovery for JWT-SVIDs: relying parties that accept tokens only
//! from an OpenID Connect issuer (cloud workload identity federation,
//! Vault's JWT auth, identity providers, MCP servers) are configured with
//! `jwt_issuer`, fetch `<issuer>/.well-known/openid-configuration`, and
//! from it the JWKS at `<issuer>/keys`, as from SPIRE's OIDC discovery
//! provider.
//!
//! The `[oidc]` listener serves both ([`serve`]): over TLS itself with
//! `cert_file` and `key_file`, or plain HTTP behind the operator's TLS
//! proxy at the issuer URL. The JWKS follows the JWT bundle (a new key
//! appears when it is published, a quarter of its life before it signs),
//! with an ETag and a cache lifetime that keeps caches ahead of rotation.
//! [`jwks_document`] gives the same JWKS for static hosting
//! (`attestd bundle show --format jwks`).

mod documents;
mod listener;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use documents::{
    DISCOVERY_MAX_AGE, DISCOVERY_PATH, JWKS_PATH, Published, discovery_document, jwks_document, jwks_max_age,
};
pub use listener::{CONNECTION_LIFETIME, HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT, MAX_REQUEST_HEAD};

use crate::authority::JwtBundle;
use crate::config::{Config, ConfigError, OidcConfig};
use listener::Site;

/// The discovery document of `config`'s `jwt_issuer`, to host statically
/// beside [`jwks_document`]; an error if no issuer is set.
pub fn static_discovery_document(config: &Config) -> Result<String, ConfigError> {
    match &config.jwt_issuer {
        Some(issuer) => Ok(discovery_document(issuer)),
        None => Err(ConfigError {
            file: config.source.clone(),
            line: None,
            key: Some("jwt_issuer".into()),
            message: "is not set: the discovery document names the issuer (e.g. jwt_issuer = \"https://attestd.example.org\")".into(),
        }),
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// The certificate or key file is missing or unusable.
    #[error("[oidc] {key} {}: {reason}", path.display())]
    Tls {
        /// The config key naming the file (`cert_file`, `key_file`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The address could not be bound.
    #[error("[oidc] listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Loads the certificate (if any) and binds `config.listen`, then returns
/// the server, which serves the documents of `bundle` (JWT keys living
/// `key_ttl`) until `shutdown`. A bad file or address fails here, at start.
pub async fn serve(
    config: &OidcConfig,
    bundle: watch::Receiver<Arc<JwtBundle>>,
    key_ttl: Duration,
    shutdown: watch::Receiver<bool>,
) -> Result<impl Future<Output = ()> + use<>, OidcError> {
    let tls = match &config.tls {
        Some(files) => Some((files.clone(), tls::load(files)?)),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| OidcError::Bind {
            addr: config.listen,
            source,
        })?;
    let site = Arc::new(Site::new(config, bundle, jwks_max_age(key_ttl)));
    tracing::info!(
        addr = %config.listen,
        issuer = %config.issuer,
        tls = tls.is_some(),
        "OIDC discovery listener"
    );
    let max_connections = config.max_connections;
    Ok(async move {
        match tls {
            Some((files, loaded)) => {
                let (current, receiver) = watch::channel(Arc::clone(&loaded.config));
                tokio::select! {
                    () = listener::accept_loop(listener, site, Some(receiver), max_connections, shutdown) => {}
                    () = tls::keep_current(files, loaded, current) => {}
                }
            }
            None => listener::accept_loop(listener, site, None, max_connections, shutdown).await,
        }
    })
}

//! The listener's certificate and key (`[oidc] cert_file`, `key_file`):
//! loaded into a rustls server configuration (ring, TLS 1.2 and 1.3,
//! HTTP/1.1 by ALPN), and loaded again when either file changes, since
//! operators renew certificates in place. A renewal that does not load (a
//! key written before its certificate, a broken file) is logged and the
//! previous certificate kept; the next change is tried again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::OidcError;
use crate::config::TlsFiles;
use crate::file_stamp::FileStamp;

/// How often the files are checked for a change (as the upstream CA's).
const POLL: Duration = Duration::from_secs(5);

/// The server configuration of the files now, and their stamps.
pub(super) struct LoadedTls {
    pub config: Arc<ServerConfig>,
    stamps: Option<[FileStamp; 2]>,
}

/// Loads `files`; the error names the key and file at fault.
pub(super) fn load(files: &TlsFiles) -> Result<LoadedTls, OidcError> {
    // Stamped before reading: a change during the read shows as a later
    // change and is loaded again.
    let stamps = stamps(files);
    let invalid = |key: &'static str, path: &Path, reason: String| OidcError::Tls {
        key,
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("cert_file", &files.cert_file, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(
            "cert_file",
            &files.cert_file,
            "holds no CERTIFICATE".into(),
        ));
    };
    check_validity(leaf, &files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| invalid("key_file", &files.key_file, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // ring offers every default version: this does not fail.
        .map_err(|e| invalid("cert_file", &files.cert_file, format!("TLS set-up: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            let reason = match e {
                rustls::Error::InconsistentKeys(_) => "is not the key of cert_file's certificate".into(),
                other => other.to_string(),
            };
            invalid("key_file", &files.key_file, reason)
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(LoadedTls {
        config: Arc::new(config),
        stamps,
    })
}

/// A certificate that does not parse is refused; one outside its validity
/// only warned about (clients will refuse it, and a renewal is likely on
/// its way).
fn check_validity(leaf: &CertificateDer<'_>, path: &Path) -> Result<(), OidcError> {
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| OidcError::Tls {
        key: "cert_file",
        path: path.to_owned(),
        reason: format!("the first certificate does not parse: {e}"),
    })?;
    let not_after = cert.validity().not_after.to_datetime();
    if !cert.validity().is_valid() {
        tracing::warn!(path = %path.display(), %not_after, "the OIDC listener's certificate is not valid now");
    } else {
        tracing::info!(path = %path.display(), %not_after, "OIDC listener certificate");
    }
    Ok(())
}

fn stamps(files: &TlsFiles) -> Option<[FileStamp; 2]> {
    Some([
        FileStamp::of(&files.cert_file).ok()?,
        FileStamp::of(&files.key_file).ok()?,
    ])
}

/// Loads `files` again whenever their stamps change, publishing each
/// configuration that loads, until every receiver is gone.
pub(super) async fn keep_current(
    files: TlsFiles,
    loaded: LoadedTls,
    current: watch::Sender<Arc<ServerConfig>>,
) {
    let mut tried = loaded.stamps;
    loop {
        tokio::time::sleep(POLL).await;
        if current.is_closed() {
            return;
        }
        let now = stamps(&files);
        // Missing files (mid-replacement) are waited out.
        if now.is_none() || now == tried {
            continue;
        }
        tried = now;
        match load(&files) {
            Ok(loaded) => {
                tracing::info!(cert_file = %files.cert_file.display(), "OIDC listener certificate reloaded");
                tried = loaded.stamps;
                current.send_replace(loaded.config);
            }
            Err(error) => {
                tracing::error!(%error, "OIDC listener certificate not reloaded; keeping the previous one");
            }
        }
    }
}

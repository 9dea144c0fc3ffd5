//! One fetch from a SPIFFE bundle endpoint: HTTPS GET (hyper, HTTP/1.1)
//! over rustls with the ring provider, the server authenticated as its
//! profile says, the whole exchange and the body bounded.
//!
//! `https_web` trusts the system's roots (read with rustls-native-certs
//! from the operating system's store, so the host's CA updates apply and
//! no list is compiled in) or, with `endpoint_ca_file`, only that file's.
//! The roots are read at every fetch: a replaced CA file needs no restart.
//! Redirects are not followed (SPIFFE Federation 7.5.1 leaves that to the
//! operator): a redirect is an error naming its target, so the operator
//! configures the URL it points to after checking it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, HOST, LOCATION, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::document::MAX_DOCUMENT_BYTES;
use super::svid_verifier::SvidVerifier;
use crate::config::{EndpointConfig, EndpointProfile};

/// A fetch (name resolution, connection, handshake, request and body)
/// that takes longer fails.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The roots to authenticate the server with could not be had.
    #[error("trust roots: {0}")]
    Roots(String),
    /// The host name did not resolve, or no address accepted a connection.
    #[error("connecting to {authority}: {reason}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// The TLS handshake failed (the server was not authenticated).
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The server answered with a redirect, which is not followed.
    #[error("redirected ({status}) to {location}: configure that URL as endpoint_url if it is trusted")]
    Redirect {
        /// The status.
        status: u16,
        /// The `Location` header.
        location: String,
    },
    /// The server answered with another status than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body is larger than a bundle document may be.
    #[error("the response is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// The fetch took longer than [`FETCH_TIMEOUT`].
    #[error("no complete answer within {}s", FETCH_TIMEOUT.as_secs())]
    Timeout,
}

/// How the endpoint's server is authenticated for one fetch.
pub(super) enum ServerAuth {
    /// Web PKI, from the profile's CA file or the system roots.
    Web,
    /// An X.509-SVID for the profile's SPIFFE ID under these CA
    /// certificates (DER): the latest bundle of its trust domain.
    Spiffe(Vec<Vec<u8>>),
}

/// GETs the endpoint's document (at most [`MAX_DOCUMENT_BYTES`]).
pub(super) async fn fetch(endpoint: &EndpointConfig, auth: ServerAuth) -> Result<Bytes, FetchError> {
    let tls = tls_config(&endpoint.profile, auth).await?;
    tokio::time::timeout(FETCH_TIMEOUT, get(&endpoint.url, tls))
        .await
        .unwrap_or(Err(FetchError::Timeout))
}

/// The rustls client configuration for the profile (ring provider,
/// TLS 1.2 and 1.3, HTTP/1.1 by ALPN).
async fn tls_config(profile: &EndpointProfile, auth: ServerAuth) -> Result<ClientConfig, FetchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Roots(e.to_string()))?;
    let mut config = match (profile, auth) {
        (EndpointProfile::HttpsSpiffe { spiffe_id }, ServerAuth::Spiffe(roots)) => {
            if roots.is_empty() {
                return Err(FetchError::Roots(format!(
                    "no X.509 authority of {} is known to authenticate {spiffe_id}",
                    spiffe_id.trust_domain()
                )));
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SvidVerifier::new(
                    &roots,
                    spiffe_id.clone(),
                    &provider,
                )))
                .with_no_client_auth()
        }
        (EndpointProfile::HttpsWeb { ca_file }, _) => {
            let ca_file = ca_file.clone();
            // File reads: off the async runtime.
            let roots = tokio::task::spawn_blocking(move || web_roots(ca_file.as_deref()))
                .await
                .map_err(|e| FetchError::Roots(e.to_string()))??;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (EndpointProfile::HttpsSpiffe { .. }, ServerAuth::Web) => {
            return Err(FetchError::Roots("https_spiffe needs a SPIFFE bundle".into()));
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The roots of `ca_file` (PEM), or the system's.
fn web_roots(ca_file: Option<&std::path::Path>) -> Result<RootCertStore, FetchError> {
    let mut store = RootCertStore::empty();
    let certificates: Vec<Vec<u8>> = match ca_file {
        Some(path) => {
            let text =
                std::fs::read(path).map_err(|e| FetchError::Roots(format!("{}: {e}", path.display())))?;
            pem::parse_many(&text)
                .map_err(|e| FetchError::Roots(format!("{}: {e}", path.display())))?
                .into_iter()
                .filter(|block| block.tag() == "CERTIFICATE")
                .map(pem::Pem::into_contents)
                .collect()
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!(%error, "a system root could not be read");
            }
            found.certs.into_iter().map(|cert| cert.to_vec()).collect()
        }
    };
    let (added, _) = store.add_parsable_certificates(certificates.into_iter().map(Into::into));
    if added == 0 {
        return Err(FetchError::Roots(match ca_file {
            Some(path) => format!("{} holds no usable CA certificate", path.display()),
            None => "the system holds no usable CA certificate".into(),
        }));
    }
    Ok(store)
}

/// Connects, authenticates the server and GETs `url`.
async fn get(url: &Uri, tls: ClientConfig) -> Result<Bytes, FetchError> {
    // Checked https URL with a host when the config was read.
    let authority = url
        .authority()
        .ok_or_else(|| FetchError::Http("the URL has no host".into()))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let connect_error = |reason: String| FetchError::Connect {
        authority: format!("{host}:{port}"),
        reason,
    };
    let server_name = ServerName::try_from(host.to_owned()).map_err(|e| connect_error(e.to_string()))?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(FetchError::Tls)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    // The connection is driven alongside the request, and dropped with it.
    let driver = AbortOnDrop(tokio::spawn(connection));
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(HOST, authority.as_str())
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, concat!("attestd/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or("(no Location)");
        return Err(FetchError::Redirect {
            status: status.as_u16(),
            location: location.chars().take(256).collect(),
        });
    }
    if status != StatusCode::OK {
        return Err(FetchError::Status(status.as_u16()));
    }
    let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => FetchError::TooLarge,
            Err(e) => FetchError::Http(e.to_string()),
        })?;
    drop(driver);
    Ok(body.to_bytes())
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

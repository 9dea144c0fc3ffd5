//! attestd's own bundle as a SPIFFE bundle endpoint (`[bundle_endpoint]`):
//! `GET /` over HTTPS answers the current bundle document (JSON, with
//! `spiffe_sequence` and `spiffe_refresh_hint`), as SPIRE server's does.
//!
//! The listener is open to the network, so everything is bounded: at most
//! `max_connections` connections are served at once (more wait in the
//! kernel's backlog), each lives at most [`CONNECTION_LIFETIME`] (handshake
//! and request included: a slow client cannot hold a slot), carries one
//! request whose head may not exceed hyper's smallest buffer, and anything
//! but a `GET` is refused. No client authentication is asked for (SPIFFE
//! Federation 5.2.1.3).
//!
//! The certificate is, for `https_web`, the configured PEM files, read
//! again when they are replaced; for `https_spiffe`, an X.509-SVID of our
//! trust domain from the SVID cache, which mints and rotates it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::authority::{AuthorityError, BundleDocument, SvidTemplate, X509Svid};
use crate::config::{BundleEndpointConfig, ServingProfile};
use crate::file_stamp::FileStamp;
use crate::svid_cache::{SvidCache, SvidReceiver};

/// How long one connection may stay open, all included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// How often replaced `https_web` certificate files are looked for (at a
/// handshake, at most this often).
const FILE_CHECK: Duration = Duration::from_secs(5);
/// hyper's smallest read buffer: a request head must fit.
const MAX_REQUEST_HEAD: usize = 8192;

/// Why the bundle endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointServerError {
    /// The address could not be bound.
    #[error("bundle endpoint: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The `https_web` certificate or key is not usable.
    #[error("bundle endpoint: {path}: {reason}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The `https_spiffe` SVID could not be minted.
    #[error("bundle endpoint: cannot mint its X.509-SVID: {0}")]
    Svid(#[from] AuthorityError),
    /// The TLS configuration could not be built.
    #[error("bundle endpoint: TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Binds `config.listen` and loads or mints the certificate (so a mistake
/// fails the start), then returns the server to spawn; it serves
/// `documents`' latest document until the process ends.
pub async fn serve_bundle_endpoint(
    config: &BundleEndpointConfig,
    documents: watch::Receiver<Arc<BundleDocument>>,
    cache: &Arc<SvidCache>,
    svid_ttl: Duration,
) -> Result<impl Future<Output = ()> + Send + 'static, EndpointServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let credentials = match &config.profile {
        ServingProfile::HttpsWeb { cert_file, key_file } => {
            Credentials::Files(FileCredentials::load(cert_file, key_file, &provider)?)
        }
        ServingProfile::HttpsSpiffe { spiffe_id } => {
            let template = SvidTemplate {
                spiffe_id: spiffe_id.clone(),
                dns_names: Vec::new(),
                ttl: svid_ttl,
                valid_until: None,
                remote_entry: None,
            };
            Credentials::Svid(SvidCredentials::subscribe(
                Arc::clone(cache),
                template,
                &provider,
            )?)
        }
    };
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(credentials));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| EndpointServerError::Bind {
            addr: config.listen,
            source,
        })?;
    tracing::info!(listen = %config.listen, spiffe_id = ?config.spiffe_id().map(|id| id.as_str()), "bundle endpoint serving");
    let slots = Arc::new(Semaphore::new(config.max_connections));
    Ok(async move {
        loop {
            // Closed never: the semaphore lives as long as this loop.
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "bundle endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let documents = documents.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(CONNECTION_LIFETIME, serve_connection(acceptor, tcp, documents))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "bundle endpoint connection failed"),
                    Err(_) => tracing::debug!(%peer, "bundle endpoint connection timed out"),
                }
            });
        }
    })
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    documents: watch::Receiver<Arc<BundleDocument>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tls = acceptor.accept(tcp).await?;
    let service = service_fn(move |request: Request<Incoming>| {
        let document = Arc::clone(&documents.borrow());
        async move { Ok::<_, std::convert::Infallible>(answer(&request, &document)) }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

/// `GET /`: the document; any other path 404; any other method 405.
fn answer(request: &Request<Incoming>, document: &BundleDocument) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.method() != Method::GET {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, http::HeaderValue::from_static("GET"));
        return response;
    }
    if request.uri().path() != "/" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    let mut response = Response::new(Full::new(Bytes::from(document.to_json())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    // Clients poll by the refresh hint; caches in between must not answer
    // for us after a rotation.
    headers.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

/// The certificate the endpoint presents, current at each handshake.
#[derive(Debug)]
enum Credentials {
    Files(FileCredentials),
    Svid(SvidCredentials),
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self {
            Self::Files(files) => Some(files.current()),
            Self::Svid(svid) => svid.current(),
        }
    }
}

/// `https_web`: PEM certificate chain and key files.
#[derive(Debug)]
struct FileCredentials {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    stamps: (Option<FileStamp>, Option<FileStamp>),
    checked: Instant,
    key: Arc<CertifiedKey>,
}

impl FileCredentials {
    fn load(
        cert_file: &Path,
        key_file: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, EndpointServerError> {
        let stamps = (FileStamp::of(cert_file).ok(), FileStamp::of(key_file).ok());
        let key = read_certified_key(cert_file, key_file, provider)?;
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider: Arc::clone(provider),
            state: Mutex::new(FileState {
                stamps,
                checked: Instant::now(),
                key,
            }),
        })
    }

    /// The key in use, after reading the files again if they were
    /// replaced (checked at most every [`FILE_CHECK`]); a replacement that
    /// does not load leaves the previous certificate in use.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = lock(&self.state);
        if state.checked.elapsed() >= FILE_CHECK {
            state.checked = Instant::now();
            let stamps = (
                FileStamp::of(&self.cert_file).ok(),
                FileStamp::of(&self.key_file).ok(),
            );
            if stamps != state.stamps {
                match read_certified_key(&self.cert_file, &self.key_file, &self.provider) {
                    Ok(key) => {
                        tracing::info!(cert_file = %self.cert_file.display(), "bundle endpoint certificate replaced");
                        state.key = key;
                        state.stamps = stamps;
                    }
                    Err(error) => {
                        tracing::error!(%error, "keeping the bundle endpoint's previous certificate")
                    }
                }
            }
        }
        Arc::clone(&state.key)
    }
}

fn read_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, EndpointServerError> {
    let unusable = |path: &Path, reason: String| EndpointServerError::Credentials {
        path: path.to_owned(),
        reason,
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| unusable(path, e.to_string()));
    let chain: Vec<CertificateDer<'static>> = pem::parse_many(read(cert_file)?)
        .map_err(|e| unusable(cert_file, e.to_string()))?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| CertificateDer::from(block.into_contents()))
        .collect();
    if chain.is_empty() {
        return Err(unusable(cert_file, "holds no CERTIFICATE".into()));
    }
    let key = pem::parse_many(read(key_file)?)
        .map_err(|e| unusable(key_file, e.to_string()))?
        .into_iter()
        .find_map(|block| match block.tag() {
            "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(block.into_contents().into())),
            "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(block.into_contents().into())),
            "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(block.into_contents().into())),
            _ => None,
        })
        .ok_or_else(|| unusable(key_file, "holds no private key".into()))?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|e| unusable(key_file, format!("does not go with the certificate: {e}")))
}

/// `https_spiffe`: our own X.509-SVID, rotated by the SVID cache.
struct SvidCredentials {
    cache: Arc<SvidCache>,
    template: SvidTemplate,
    provider: Arc<CryptoProvider>,
    state: Mutex<SvidState>,
}

impl std::fmt::Debug for SvidCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidCredentials")
            .field("spiffe_id", &self.template.spiffe_id)
            .finish_non_exhaustive()
    }
}

struct SvidState {
    receiver: SvidReceiver,
    serial: String,
    key: Arc<CertifiedKey>,
}

impl SvidCredentials {
    fn subscribe(
        cache: Arc<SvidCache>,
        template: SvidTemplate,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, EndpointServerError> {
        let receiver = cache.subscribe_local(&template)?;
        let svid = Arc::clone(&receiver.borrow());
        let key = certified_svid(&svid, provider)?;
        Ok(Self {
            cache,
            template,
            provider: Arc::clone(provider),
            state: Mutex::new(SvidState {
                receiver,
                serial: svid.serial.clone(),
                key,
            }),
        })
    }

    /// The current SVID's key; a rotated SVID is taken up at the next
    /// handshake. If the cache re-issued the SVID into a new slot (the old
    /// one expired, after a suspend), the new slot is subscribed to.
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut state = lock(&self.state);
        if state.receiver.has_changed().is_err() {
            match self.cache.subscribe_local(&self.template) {
                Ok(receiver) => state.receiver = receiver,
                Err(error) => tracing::error!(%error, "bundle endpoint: cannot renew its X.509-SVID"),
            }
        }
        let svid = Arc::clone(&state.receiver.borrow_and_update());
        if svid.serial != state.serial {
            match certified_svid(&svid, &self.provider) {
                Ok(key) => {
                    state.key = key;
                    state.serial = svid.serial.clone();
                }
                Err(error) => tracing::error!(%error, "bundle endpoint: unusable X.509-SVID"),
            }
        }
        Some(Arc::clone(&state.key))
    }
}

fn certified_svid(
    svid: &X509Svid,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, EndpointServerError> {
    let chain = svid
        .cert_chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(svid.private_key_pkcs8.clone().into());
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(EndpointServerError::Tls)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section leaves the state whole.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

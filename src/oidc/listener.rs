//! The listener: HTTP/1.1 over TLS or plain TCP, two documents, GET and
//! HEAD only.
//!
//! It faces relying parties on other hosts, so everything a client
//! controls is bounded: at most `max_connections` connections (more wait
//! in the kernel's backlog, costing attestd nothing), a TLS handshake
//! within [`HANDSHAKE_TIMEOUT`], a request head within
//! [`HEADER_READ_TIMEOUT`] and [`MAX_REQUEST_HEAD`] bytes, request bodies
//! never read, and each connection closed (gracefully, after the response
//! in flight) once it has been open [`CONNECTION_LIFETIME`].

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::documents::{
    DISCOVERY_MAX_AGE, DISCOVERY_PATH, JWKS_PATH, Published, discovery_document, jwks_document,
};
use crate::authority::JwtBundle;
use crate::config::OidcConfig;

/// A TLS handshake not done by then is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head not received by then closes the connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read; larger ones
/// get 431. (hyper's floor is 8 KiB.)
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// The most header fields a request may have.
const MAX_HEADERS: usize = 32;
/// How long one connection may stay open: discovery takes two requests; a
/// relying party that keeps its connection alive reconnects.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// After its lifetime, how long a connection gets to finish its response.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the listener serves, at which paths.
pub(super) struct Site {
    discovery_path: String,
    jwks_path: String,
    discovery: Arc<Published>,
    jwks: JwksCache,
    jwks_max_age: Duration,
}

impl Site {
    pub fn new(config: &OidcConfig, bundle: watch::Receiver<Arc<JwtBundle>>, jwks_max_age: Duration) -> Self {
        Self {
            discovery_path: config.issuer.path_of(DISCOVERY_PATH),
            jwks_path: config.issuer.path_of(JWKS_PATH),
            discovery: Arc::new(Published::new(discovery_document(&config.issuer))),
            jwks: JwksCache::new(bundle),
            jwks_max_age,
        }
    }

    /// The response to `request`: a document (or 304 when the client's
    /// copy is current), 405 for another method on a document, 404 for
    /// any other path.
    fn respond(&self, request: &Request<Incoming>) -> Response<Body> {
        let path = request.uri().path();
        let (document, max_age) = if path == self.discovery_path {
            (Arc::clone(&self.discovery), DISCOVERY_MAX_AGE)
        } else if path == self.jwks_path {
            (self.jwks.current(), self.jwks_max_age)
        } else {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        };
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let current = request
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| document.matches(value));
        let (status, body) = match current {
            true => (StatusCode::NOT_MODIFIED, Body::empty()),
            false => (StatusCode::OK, Body::from(document.body.clone())),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if status == StatusCode::OK {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Ok(etag) = HeaderValue::from_str(&document.etag) {
            headers.insert(header::ETAG, etag);
        }
        if let Ok(cache) = HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs())) {
            headers.insert(header::CACHE_CONTROL, cache);
        }
        // Public documents: browser-based relying parties may read them too
        // (as SPIRE's provider allows).
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The JWKS of the JWT bundle now: read from the bundle's watch channel on
/// every request, and built again only when the bundle changed (a key
/// rotation), so no restart and no refresh task is needed.
struct JwksCache {
    bundle: watch::Receiver<Arc<JwtBundle>>,
    // std Mutex: held to compare two pointers or build a small document,
    // never across an await.
    built: Mutex<(Arc<JwtBundle>, Arc<Published>)>,
}

impl JwksCache {
    fn new(bundle: watch::Receiver<Arc<JwtBundle>>) -> Self {
        let now = bundle.borrow().clone();
        let built = Arc::new(Published::new(jwks_document(now.keys())));
        Self {
            bundle,
            built: Mutex::new((now, built)),
        }
    }

    fn current(&self) -> Arc<Published> {
        let now = self.bundle.borrow().clone();
        // Every critical section leaves the pair consistent.
        let mut built = self.built.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !Arc::ptr_eq(&built.0, &now) {
            let document = Arc::new(Published::new(jwks_document(now.keys())));
            *built = (now, document);
        }
        Arc::clone(&built.1)
    }
}

/// Accepts connections while it holds a permit for them, until `shutdown`;
/// each is served on its own task. `tls`: the current server
/// configuration, or none for plain HTTP.
pub(super) async fn accept_loop(
    listener: TcpListener,
    site: Arc<Site>,
    tls: Option<watch::Receiver<Arc<rustls::ServerConfig>>>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit,
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, most likely: wait for some to close.
                tracing::warn!(%error, "OIDC listener: accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = tls
            .as_ref()
            .map(|config| TlsAcceptor::from(config.borrow().clone()));
        tokio::spawn(connection(stream, acceptor, Arc::clone(&site), permit));
    }
}

/// One connection, holding its permit until it closes.
async fn connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    site: Arc<Site>,
    _permit: OwnedSemaphorePermit,
) {
    // Small responses: send them at once.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return serve_http(stream, site).await;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => serve_http(stream, site).await,
        Ok(Err(error)) => tracing::debug!(%error, "OIDC listener: TLS handshake failed"),
        Err(_) => tracing::debug!("OIDC listener: TLS handshake timed out"),
    }
}

async fn serve_http<S>(stream: S, site: Arc<Site>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = site.respond(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_headers(MAX_HEADERS);
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(error) = served {
                tracing::debug!(%error, "OIDC listener: connection ended with an error");
            }
        }
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
    }
}

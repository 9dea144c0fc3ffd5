//! The optional loopback HTTP listener (off unless `[health] listen` is
//! set): `/live` (the process answers), `/ready` (the Workload API is
//! serving and not shutting down), `/metrics` (OpenMetrics text, which
//! Prometheus scrapes).
//!
//! Any local user can connect to a loopback port, so the listener holds at
//! most a configured number of connections (further ones wait in the
//! kernel's backlog, costing attestd nothing) and closes each after
//! [`CONNECTION_LIFETIME`], so idle ones cannot keep the slots.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use super::metrics::metrics;

/// The listener could not be started.
#[derive(Debug, thiserror::Error)]
#[error("health listener on {addr}: {source}")]
pub struct HealthError {
    /// The address.
    pub addr: SocketAddr,
    /// The underlying error.
    pub source: std::io::Error,
}

/// Whether the Workload API is serving; flipped by the daemon.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the daemon ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How long one connection may stay open: a probe or a scrape takes
/// milliseconds; a scraper that keeps its connection alive reconnects.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// Binds `addr` and serves, at most `max_connections` at a time, until the
/// process ends. Binding happens before this returns, so a bad address
/// fails the start.
pub async fn serve(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
    max_connections: usize,
) -> Result<impl Future<Output = ()>, HealthError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError { addr, source })?;
    let listener = BoundedListener::new(listener, max_connections);
    let app = Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(move || ready(Arc::clone(&readiness))))
        .route("/metrics", get(metrics_text));
    tracing::info!(%addr, "health and metrics listener");
    Ok(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "health listener failed");
        }
    })
}

/// A TCP listener that accepts only while it holds fewer than its permits,
/// and closes each connection after [`CONNECTION_LIFETIME`]: for probe and
/// scrape listeners any local (or remote) peer can reach.
pub(crate) struct BoundedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl BoundedListener {
    /// Holds at most `max_connections` of `listener`'s connections at a time.
    pub(crate) fn new(listener: TcpListener, max_connections: usize) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(max_connections)),
        }
    }
}

impl Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                // The semaphore is never closed; were it, serve nothing more.
                std::future::pending::<()>().await;
                continue;
            };
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let stream = BoundedStream {
                        stream,
                        _permit: permit,
                        closes_at: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                    };
                    return (stream, addr);
                }
                Err(error) => {
                    tracing::warn!(%error, "health listener: accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection holding one of the listener's permits until it closes,
/// which it does by [`CONNECTION_LIFETIME`] at the latest.
pub(crate) struct BoundedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    closes_at: Pin<Box<Sleep>>,
}

impl BoundedStream {
    fn expired(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closes_at.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "health connection lifetime over",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.expired(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.expired(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

async fn ready(readiness: Arc<Readiness>) -> impl IntoResponse {
    if readiness.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text() -> impl IntoResponse {
    (
        // prometheus-client writes OpenMetrics text (`_total` samples of
        // counters, `# EOF`): served as what it is.
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics().encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn holds_at_most_its_connections_and_closes_them_in_time() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        tokio::spawn(serve(addr, Arc::new(Readiness::default()), 2).await.unwrap());
        // Two idle connections take both slots...
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...so a third is not served (it waits in the backlog)...
        let mut third = TcpStream::connect(addr).await.unwrap();
        third
            .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut answer)).await;
        assert!(early.is_err(), "served past the connection bound");
        // ...until the idle ones reach their lifetime and are closed.
        let n = tokio::time::timeout(
            CONNECTION_LIFETIME + Duration::from_secs(5),
            third.read(&mut answer),
        )
        .await
        .expect("served once the idle connections were closed")
        .unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
}

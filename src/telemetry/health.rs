//! The optional loopback HTTP listener (off unless `[health] listen` is
//! set): `/live` (the process answers), `/ready` (the Workload API is
//! serving and not shutting down), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

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

/// Binds `addr` and serves until the process ends. Binding happens before
/// this returns, so a bad address fails the start.
pub async fn serve(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
) -> Result<impl Future<Output = ()>, HealthError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError { addr, source })?;
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

async fn ready(readiness: Arc<Readiness>) -> impl IntoResponse {
    if readiness.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics().encode(),
    )
}

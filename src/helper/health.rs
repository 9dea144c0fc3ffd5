//! spiffe-helper's `health_checks` listener: liveness and readiness for
//! probes, from the state of the files the helper writes.
//!
//! As in spiffe-helper, every output is `unwritten`, `written` or `failed`
//! (its last write failed). Live means no output failed; ready means every
//! output is written. Both answer 200 or 503 with the same JSON body
//! spiffe-helper serves, so dashboards that read it keep working.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use super::config::{HealthChecks, HelperConfig};
use super::watch::Written;
use crate::telemetry::BoundedListener;

/// Probes are tiny and periodic: a few connections are plenty, and the
/// bound keeps a flood of them (the port is reachable from the network)
/// from costing more.
const MAX_CONNECTIONS: usize = 16;

/// The state of one output's file(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum FileState {
    Unwritten,
    Written,
    Failed,
}

/// Every output's state, shared by the daemon loop and the listener.
#[derive(Debug, Clone)]
pub(super) struct Health(Arc<Mutex<State>>);

#[derive(Debug)]
struct State {
    x509: Option<FileState>,
    /// Keyed by the file's path, as spiffe-helper reports them.
    jwt: BTreeMap<String, FileState>,
    /// Which path each JWT output is reported under.
    jwt_paths: BTreeMap<Written, String>,
}

#[derive(Serialize)]
struct Body<'a> {
    status: &'static str,
    health: HealthBody<'a>,
}

#[derive(Serialize)]
struct HealthBody<'a> {
    file_write_statuses: FileWriteStatuses<'a>,
}

#[derive(Serialize)]
struct FileWriteStatuses<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    x509_write_status: Option<FileState>,
    jwt_write_status: &'a BTreeMap<String, FileState>,
}

impl Health {
    /// Every configured output, unwritten.
    pub(super) fn new(config: &HelperConfig) -> Self {
        let path = |name: &str| config.cert_dir.join(name).display().to_string();
        let mut jwt_paths = BTreeMap::new();
        if let Some(output) = &config.jwt_bundle {
            jwt_paths.insert(Written::JwtBundle, path(&output.name));
        }
        for (index, output) in config.jwt_svids.iter().enumerate() {
            jwt_paths.insert(Written::JwtSvid(index), path(&output.file.name));
        }
        let jwt = jwt_paths
            .values()
            .map(|p| (p.clone(), FileState::Unwritten))
            .collect();
        Self(Arc::new(Mutex::new(State {
            x509: config.x509.as_ref().map(|_| FileState::Unwritten),
            jwt,
            jwt_paths,
        })))
    }

    /// Records the outcome of an output's latest write.
    pub(super) fn set(&self, output: Written, state: FileState) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let State { x509, jwt, jwt_paths } = &mut *guard;
        match output {
            Written::X509 => *x509 = Some(state),
            other => {
                if let Some(path) = jwt_paths.get(&other) {
                    jwt.insert(path.clone(), state);
                }
            }
        }
    }

    fn answer(
        &self,
        good: impl Fn(FileState) -> bool,
    ) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let all_good = state.x509.iter().chain(state.jwt.values()).all(|s| good(*s));
        let (code, status) = match all_good {
            true => (StatusCode::OK, "OK"),
            false => (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        };
        let body = Body {
            status,
            health: HealthBody {
                file_write_statuses: FileWriteStatuses {
                    x509_write_status: state.x509,
                    jwt_write_status: &state.jwt,
                },
            },
        };
        let json = serde_json::to_string(&body).unwrap_or_default();
        (code, [(header::CONTENT_TYPE, "application/json")], json)
    }
}

/// Binds the listener (on every interface, IPv6 and IPv4 where the host
/// has IPv6, as spiffe-helper's `:port`); the returned future serves until
/// dropped. Binding fails the start, not a later probe.
pub(super) async fn serve(
    checks: &HealthChecks,
    health: Health,
) -> std::io::Result<impl Future<Output = ()> + use<>> {
    let any_v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, checks.bind_port));
    let listener = match TcpListener::bind(any_v6).await {
        Ok(listener) => listener,
        Err(_) => TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, checks.bind_port))).await?,
    };
    let addr = listener.local_addr()?;
    let (live, ready) = (health.clone(), health);
    let app = Router::new()
        .route(
            &checks.liveness_path,
            get(move || async move { live.answer(|s| s != FileState::Failed) }),
        )
        .route(
            &checks.readiness_path,
            get(move || async move { ready.answer(|s| s == FileState::Written) }),
        );
    tracing::info!(%addr, liveness = %checks.liveness_path, readiness = %checks.readiness_path, "health checks listener");
    let listener = BoundedListener::new(listener, MAX_CONNECTIONS);
    Ok(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "health checks listener failed");
        }
    })
}

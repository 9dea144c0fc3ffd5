//! `attestd helper`: a sidecar for programs that cannot speak the Workload
//! API and read their certificates from files instead, compatible with
//! spiffe-helper in configuration keys, file names and behaviour.
//!
//! It writes the caller's X.509-SVID (chain, PKCS#8 key, bundle), JWT-SVIDs
//! for configured audiences and the JWT bundles into `cert_dir`; in daemon
//! mode it keeps them current, starts `cmd` once every file exists and sends
//! it `renew_signal` after each X.509 rotation. [`files`] explains how the
//! certificate and key are swapped so that readers never get a mismatched
//! pair.

mod config;
mod files;
mod hcl;
mod health;
mod jwt;
mod outputs;
mod process;
mod watch;
mod x509;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use config::{FileOutput, HealthChecks, HelperConfig, JwtSvidOutput, X509Output};
pub use jwt::JwtError;
pub use process::{ChildCommand, ProcessError};
pub use x509::X509Error;

use crate::client::{self, ClientError};
use health::{FileState, Health};
use outputs::Outputs;
use process::Supervisor;
use watch::{Report, Watcher, Written};

/// Why the helper stopped or could not write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelperError {
    /// Reaching the Workload API failed, or it refused the request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `cert_dir` could not be created.
    #[error("cert_dir {path}: {source}")]
    CertDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The X.509-SVID response could not be turned into files.
    #[error(transparent)]
    X509(#[from] X509Error),
    /// The JWT-SVID response could not be used.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The command could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Installing signal handlers failed.
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
    /// The `health_checks` listener could not be started.
    #[error("health_checks listener on port {port}: {source}")]
    HealthListener {
        /// `bind_port`.
        port: u16,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A watcher task panicked.
    #[error("a watcher task failed: {0}")]
    Watcher(String),
}

/// Runs the helper: once (`daemon_mode = false`), or until SIGTERM/SIGINT.
pub async fn run(config: HelperConfig) -> Result<(), HelperError> {
    let socket = client::socket_path(config.agent_address.as_deref())?;
    let outputs = Outputs::open(&config)?;
    if config.daemon_mode {
        daemon(config, Arc::new(outputs), socket).await
    } else {
        one_shot(&config, &outputs, &socket).await
    }
}

/// Fetches and writes every configured output once.
async fn one_shot(config: &HelperConfig, outputs: &Outputs, socket: &Path) -> Result<(), HelperError> {
    let mut client = client::connect(socket).await?;
    if let Some(output) = &config.x509 {
        let response = client::fetch_x509(&mut client).await?;
        outputs.publish_x509(output, &outputs.render_x509(output, &response)?)?;
    }
    if let Some(output) = &config.jwt_bundle {
        let response = client::fetch_jwt_bundles(&mut client).await?;
        outputs.write_jwt_bundle(output, &response)?;
    }
    for output in &config.jwt_svids {
        let response = client::fetch_jwt(&mut client, output.audiences.clone(), None).await?;
        outputs.write_jwt_svid(output, &response)?;
    }
    Ok(())
}

/// Keeps every output current; starts the command once all exist and
/// signals it after each X.509 rotation.
async fn daemon(config: HelperConfig, outputs: Arc<Outputs>, socket: PathBuf) -> Result<(), HelperError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(HelperError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(HelperError::Signals)?;
    let (written_tx, mut written) = mpsc::unbounded_channel();
    let watcher = Watcher {
        outputs,
        socket: socket.clone(),
        written: written_tx,
    };
    let health = Health::new(&config);
    let health_listener = match &config.health_checks {
        Some(checks) => Some(tokio::spawn(
            health::serve(checks, health.clone())
                .await
                .map_err(|source| HelperError::HealthListener {
                    port: checks.bind_port,
                    source,
                })?,
        )),
        None => None,
    };
    let (mut watchers, mut pending) = spawn_watchers(&config, &watcher);
    tracing::info!(socket = %socket.display(), cert_dir = %config.cert_dir.display(), "helper started");

    let mut supervisor = Supervisor::new(config.cmd, config.renew_signal, config.pid_file);
    let mut started = false;
    let outcome = loop {
        tokio::select! {
            Some(message) = written.recv() => {
                let update = match message {
                    Report::Written(update) => update,
                    Report::Failed(output) => {
                        health.set(output, FileState::Failed);
                        continue;
                    }
                };
                health.set(update, FileState::Written);
                pending.remove(&update);
                if update == Written::X509 {
                    report(supervisor.renewed());
                }
                // The command starts once, when every file it may read exists.
                if !started && pending.is_empty() {
                    started = true;
                    report(supervisor.ensure_started());
                }
            }
            Some(ended) = watchers.join_next() => {
                break Err(ended.unwrap_or_else(|panic| HelperError::Watcher(panic.to_string())));
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping");
                break Ok(());
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: stopping");
                break Ok(());
            }
        }
    };
    watchers.abort_all();
    if let Some(listener) = health_listener {
        listener.abort();
    }
    supervisor.stop().await;
    outcome
}

/// Starts one watcher per configured output; returns them with the set of
/// outputs not written yet.
fn spawn_watchers(config: &HelperConfig, watcher: &Watcher) -> (JoinSet<HelperError>, BTreeSet<Written>) {
    let mut watchers = JoinSet::new();
    let mut pending = BTreeSet::new();
    if let Some(output) = config.x509.clone() {
        pending.insert(Written::X509);
        watchers.spawn(watcher.clone().x509(output));
    }
    if let Some(output) = config.jwt_bundle.clone() {
        pending.insert(Written::JwtBundle);
        watchers.spawn(watcher.clone().jwt_bundle(output));
    }
    for (index, output) in config.jwt_svids.iter().cloned().enumerate() {
        pending.insert(Written::JwtSvid(index));
        watchers.spawn(watcher.clone().jwt_svid(index, output));
    }
    (watchers, pending)
}

/// A process that cannot be started or signalled does not stop the helper:
/// the files stay current and the next rotation tries again.
fn report(result: Result<(), ProcessError>) {
    if let Err(error) = result {
        tracing::error!(%error, "process notification failed");
    }
}

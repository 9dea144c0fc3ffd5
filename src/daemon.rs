//! The daemon's lifecycle: load policy and CA, open the audit trail, bind the
//! socket, serve until SIGTERM/SIGINT, then end open streams, drain, and
//! remove the socket.

mod descriptor_limit;
mod reload_request;

pub use reload_request::{ReloadRequestError, request_reload};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tonic::transport::Server;

use crate::attest::{Attestor, Reach};
use crate::audit::{AuditError, AuditLog};
use crate::authority::{
    Authority, AuthorityError, BundleDocument, maintain_bundle_file, publish_bundle_document,
};
use crate::authz::{self, Authz, AuthzError, PolicyBook};
use crate::config::{Config, ConfigError, DEFAULT_REFRESH_HINT, LimitsConfig};
use crate::federation::{EndpointServerError, Federation, FederationError, serve_bundle_endpoint};
use crate::fleet::{Fleet, FleetError};
use crate::oidc::{self, OidcError};
use crate::proto::agent::authorization_server::AuthorizationServer;
use crate::proto::agent::tasks_server::TasksServer;
use crate::proto::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use crate::registry::{self, EntryFiles, Policy, Registry};
use crate::sds::{SecretDiscovery, SecretDiscoveryServiceServer};
use crate::svid_cache::SvidCache;
use crate::tasks::{TaskError, TaskRegistry};
use crate::telemetry::{HealthError, Readiness, notify_ready, notify_stopping, run_watchdog, serve_health};
use crate::workload_api::{
    AttestationPermits, AuthorizationApi, ConnectionBudget, ConnectionLimits, Context, ListenerError,
    MAX_HEADER_LIST_SIZE, RequestPermits, RequestPermitsLayer, SocketListener, TasksApi, WorkloadApi,
    serve_authzen,
};

/// The largest request message attestd decodes. tonic buffers a message
/// whole before the handler sees it (and reserves its declared length up
/// front), so this times the streams in flight bounds what callers can make
/// attestd hold; the default of 4 MiB let one uid pin 16 GiB (256
/// connections of 16 streams). Workload API requests are small: the largest
/// legitimate one is a JWT-SVID to validate.
const MAX_REQUEST_MESSAGE: usize = 256 * 1024;
/// HTTP/2 flow-control windows: request data attestd has received but not
/// yet read, per stream and per connection (hyper's defaults are 1 MiB).
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// A request not answered by then (its message received, its caller
/// attested, its answer built; for a stream, the first message) fails: a
/// caller that stalls mid-message gives its request permit back.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connections get to finish after shutdown starts.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The HTTP/2 transport of the Workload API socket, before any layer or
/// service: what a caller's connection and streams may hold. The
/// benchmark's tuned floor is built on it too.
pub fn transport(limits: &LimitsConfig) -> Server {
    Server::builder()
        // Advertised to clients; the authority fix enforces it on decode.
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE as u32)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .timeout(REQUEST_TIMEOUT)
}

/// Where the daemon keeps the SPIFFE bundle document.
pub fn bundle_file(data_dir: &Path) -> PathBuf {
    data_dir.join("bundle.json")
}

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The configuration or a policy file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The CA could not be loaded or created.
    #[error("certificate authority: {0}")]
    Authority(#[from] AuthorityError),
    /// The audit trail could not be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The task store could not be loaded.
    #[error(transparent)]
    Tasks(#[from] TaskError),
    /// The Cedar policies are invalid.
    #[error("policies: {0}")]
    Authz(#[from] AuthzError),
    /// The socket could not be set up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The health listener could not be started.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// A foreign trust domain's bundle could not be loaded.
    #[error(transparent)]
    Federation(#[from] FederationError),
    /// The bundle endpoint could not be started.
    #[error(transparent)]
    BundleEndpoint(#[from] EndpointServerError),
    /// The OIDC discovery listener could not be started.
    #[error(transparent)]
    Oidc(#[from] OidcError),
    /// Fleet mode: the node could not join its SPIRE Server, or was
    /// banned by it.
    #[error("fleet mode: {0}")]
    Fleet(#[from] FleetError),
    /// Installing signal handlers failed.
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// The gRPC server's task panicked.
    #[error("server task: {0}")]
    ServerTask(#[from] tokio::task::JoinError),
}

/// Runs attestd until SIGTERM or SIGINT; SIGHUP reloads the policy (the
/// entries and the Cedar policies).
pub async fn run(config: Config) -> Result<(), DaemonError> {
    crate::sys::fix_mmap_threshold();
    let (signals, hangup, authz_hangup) = Signals::install()?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let attestations = concurrent_attestations(&config.limits);
    let (ctx, source, documents) = start_services(&config, shutdown, attestations).await?;
    let ctx = Arc::new(ctx);
    // After the policy loaded: a bad config fails with its one line alone.
    let reach = warn_unless_other_users_reachable();
    let nofile = descriptor_limit::raise_to_hard_limit();
    let readiness = Arc::new(Readiness::default());
    let tcp_connections = serve_tcp_listeners(&config, &ctx, documents, &readiness).await?;
    let budget = ConnectionBudget::new(&config.limits, nofile, attestations, tcp_connections);
    tracing::info!(
        max_connections = budget.global,
        connection_reserve = budget.reserve,
        max_connections_per_uid = budget.per_uid,
        nofile,
        max_concurrent_attestations = attestations,
        "connection limits"
    );
    // The entries' source keeps the registry current: the files (reloaded
    // on change and SIGHUP), or the SPIRE Server (synced).
    let mut fleet_ended = match source {
        PolicySource::Files(entry_files) => {
            tokio::spawn(registry::keep_current(
                config.clone(),
                Arc::clone(&ctx.registry),
                entry_files,
                hangup,
            ));
            None
        }
        PolicySource::Server(fleet) => Some(tokio::spawn(fleet.run(
            Arc::clone(&ctx.registry),
            Arc::clone(&ctx.federation),
            config.federated_trust_domains(),
        ))),
    };
    tokio::spawn(authz::keep_current(
        config.policy_dir.clone(),
        Arc::clone(&ctx.authz),
        Arc::clone(&ctx.registry),
        authz_hangup,
    ));

    let limits = ConnectionLimits::new(budget);
    if let Some(path) = &config.authz.listen {
        tokio::spawn(serve_authzen(Arc::clone(&ctx), path, Arc::clone(&limits))?);
    }
    let mut listener = SocketListener::bind(&config.socket_path)?;
    readiness.set(true);
    notify_ready(&ready_status(listener.path(), &reach));
    tokio::spawn(run_watchdog());
    tracing::info!(
        socket = %listener.path().display(),
        trust_domain = %config.trust_domain,
        entries = ctx.registry.policy().entries().len(),
        audit = %ctx.audit.path().display(),
        "attestd ready"
    );

    // grpc.health.v1 on the Workload API socket, for `attestd healthcheck`
    // and gRPC probes: no attestation, no audit, and not counted as a
    // Workload API request (a probe is not a client's error).
    let (grpc_health, grpc_health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_audit_refusals(
        ctx.audit.refusing(),
        grpc_health.clone(),
        Arc::clone(&readiness),
        ctx.shutdown.clone(),
    ));
    let stop = async move {
        signals.stop().await;
        readiness.set(false);
        grpc_health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        notify_stopping();
        // Ends every open stream, so the drain below has an end.
        let _ = shutdown_tx.send(true);
    };
    let server = transport(&config.limits)
        .layer(RequestPermitsLayer(RequestPermits::new(
            config.limits.max_requests_per_uid,
        )))
        .add_service(
            SpiffeWorkloadApiServer::new(WorkloadApi::new(Arc::clone(&ctx)))
                .max_decoding_message_size(MAX_REQUEST_MESSAGE),
        )
        // attestd's agent API: tasks and decisions.
        .add_service(
            TasksServer::new(TasksApi::new(Arc::clone(&ctx))).max_decoding_message_size(MAX_REQUEST_MESSAGE),
        )
        .add_service(
            AuthorizationServer::new(AuthorizationApi::new(Arc::clone(&ctx)))
                .max_decoding_message_size(MAX_REQUEST_MESSAGE),
        )
        .add_service(grpc_health_service)
        // Envoy SDS v3, for an Envoy beside a workload.
        .add_service(
            SecretDiscoveryServiceServer::new(SecretDiscovery::new(Arc::clone(&ctx), config.sds.clone()))
                .max_decoding_message_size(MAX_REQUEST_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            listener.incoming(limits, config.limits.first_request_timeout),
            stop,
        );
    let mut shutdown = ctx.shutdown.clone();
    // Served from a runtime worker, not from this `block_on` thread: the
    // accept loop then spawns each connection's task onto the worker it
    // runs on, where it runs next, instead of handing it to another
    // thread and waking that (two context switches a connection, about a
    // tenth of a new connection's CPU).
    let mut server = tokio::spawn(server);
    let mut ended = None;
    tokio::select! {
        result = &mut server => result??,
        _ = async {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(DRAIN_GRACE).await;
        } => tracing::warn!("connections still open after the grace period; closing them"),
        Some(Ok(error)) = async { Some(fleet_ended.as_mut()?.await) } => {
            // Banned by the server: nothing may be served any more.
            tracing::error!(%error, "fleet mode ended; attestd stops");
            ended = Some(error);
        }
    }
    // No longer accepting (the task would otherwise outlive this function).
    server.abort();
    drop(listener);
    // Denials left out since the last window's end are summarised now, not lost.
    ctx.audit.summarise_denials();
    tracing::info!("attestd stopped");
    match ended {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

/// While decisions are refused because the audit trail cannot be written,
/// the Workload API is not serving, and says so: grpc.health.v1 (`attestd
/// healthcheck`) and `/ready` report it until a record is written again.
/// Ends when attestd stops (which reports not serving for good).
async fn report_audit_refusals(
    mut refusing: watch::Receiver<bool>,
    health: tonic_health::server::HealthReporter,
    readiness: Arc<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopping| *stopping) => return,
            changed = refusing.changed() => if changed.is_err() { return },
        }
        let refused = *refusing.borrow_and_update();
        let status = match refused {
            true => tonic_health::ServingStatus::NotServing,
            false => tonic_health::ServingStatus::Serving,
        };
        if *shutdown.borrow() {
            return;
        }
        readiness.set(!refused);
        health.set_service_status("", status).await;
        match refused {
            true => tracing::error!("audit trail cannot be written: decisions refused; reported not serving"),
            false => tracing::info!("audit trail written again; serving"),
        }
    }
}

/// Where the registry's entries come from.
enum PolicySource {
    /// The config file and `entries_dir`, as read at start.
    Files(EntryFiles),
    /// A SPIRE Server (fleet mode), synced by this.
    Server(Box<Fleet>),
}

/// Starts the optional TCP listeners (the bundle endpoint, health and
/// metrics, OIDC discovery); returns how many connections they may hold
/// at once, descriptors the Workload API's budget leaves them.
async fn serve_tcp_listeners(
    config: &Config,
    ctx: &Arc<Context>,
    documents: watch::Receiver<Arc<BundleDocument>>,
    readiness: &Arc<Readiness>,
) -> Result<usize, DaemonError> {
    let mut connections = 0;
    if let Some(endpoint) = &config.bundle_endpoint {
        let server = serve_bundle_endpoint(endpoint, documents, &ctx.cache, config.svid.x509_ttl.0).await?;
        tokio::spawn(server);
        connections += endpoint.max_connections;
    }
    if let Some(addr) = config.health.listen {
        let max = config.limits.health_max_connections;
        tokio::spawn(serve_health(addr, Arc::clone(readiness), max).await?);
        connections += max;
    }
    if let Some(oidc) = &config.oidc {
        let server = oidc::serve(
            oidc,
            ctx.authority.jwt().subscribe(),
            config.ca.jwt_key_ttl.0,
            ctx.shutdown.clone(),
        )
        .await?;
        tokio::spawn(server);
        connections += oidc.max_connections;
    }
    Ok(connections)
}

/// Loads the policy, the authority, the foreign bundles and the audit
/// trail, and starts their background tasks. Also returns where the policy
/// came from (the entry files its reloads start from, or the SPIRE Server
/// to sync with), and the bundle document as it changes (for the bundle
/// endpoint).
async fn start_services(
    config: &Config,
    shutdown: watch::Receiver<bool>,
    attestations: usize,
) -> Result<(Context, PolicySource, watch::Receiver<Arc<BundleDocument>>), DaemonError> {
    let started = std::time::Instant::now();
    let (policy, authority, source) = match &config.server {
        None => {
            let mut entry_files = EntryFiles::default();
            let policy = Policy::load_with(config, &mut entry_files)?;
            let authority = Arc::new(Authority::from_config(config)?);
            (policy, authority, PolicySource::Files(entry_files))
        }
        Some(server) => {
            let mut fleet = Fleet::join(config, server).await?;
            let policy = std::mem::take(&mut fleet.policy);
            (
                policy,
                Arc::clone(&fleet.authority),
                PolicySource::Server(Box::new(fleet)),
            )
        }
    };
    policy.build_lookups();
    tracing::info!(
        entries = policy.entries().len(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "entries loaded"
    );
    crate::policy_check::log_warnings(config, &policy);
    let started = std::time::Instant::now();
    let policies = PolicyBook::load(config.policy_dir.as_deref(), policy.entries())?;
    tracing::info!(
        policies = policies.len(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "Cedar policies loaded"
    );
    let audit = Arc::new(
        AuditLog::open(&config.audit.path, config.audit.rotation, config.audit.on_failure)?
            .with_denial_limit(config.audit.denial_limit),
    );
    tokio::spawn(Arc::clone(&audit).summarise_denials_every_window());
    crate::wall_clock::watch_steps();
    tokio::spawn(Arc::clone(authority.jwt()).run_rotation());
    tokio::spawn(Arc::clone(&authority).run_ca_rotation());
    let refresh_hint = config
        .bundle_endpoint
        .as_ref()
        .map_or(DEFAULT_REFRESH_HINT, |endpoint| endpoint.refresh_hint);
    let documents = publish_bundle_document(&authority, refresh_hint);
    tokio::spawn(maintain_bundle_file(
        documents.clone(),
        bundle_file(&config.data_dir),
    ));
    let federation = match config.federation.is_empty() {
        true => Federation::none(),
        false => Federation::start(config, &authority)?,
    };
    let registry = Arc::new(Registry::new(policy));
    let tasks = Arc::new(TaskRegistry::open(
        &config.data_dir,
        Arc::clone(authority.jwt()),
        Arc::clone(&registry),
    )?);
    let ctx = Context {
        attestor: Arc::new(Attestor::new("/proc", config.attestation.max_exe_hash_bytes)),
        registry,
        cache: SvidCache::new(Arc::clone(&authority)),
        authority,
        federation,
        audit,
        authz: Arc::new(Authz::new(
            policies,
            Arc::clone(&tasks) as Arc<dyn authz::TaskTokens>,
        )),
        tasks,
        attestations: AttestationPermits::new(attestations),
        shutdown,
    };
    Ok((ctx, source, documents))
}

/// Attestations allowed at once: configured, or one per CPU (they hash
/// and scan `/proc`; more at once would only queue on the CPUs).
/// Says loudly, at start, if callers of other uids cannot be attested.
/// attestd still starts: serving its own uid is useful, and each call it
/// cannot attest is refused anyway (fail closed); a refusal to start would
/// turn a missing capability into an outage for every uid.
fn warn_unless_other_users_reachable() -> Reach {
    let reach = Reach::of_this_process();
    if let Some(warning) = reach.warning() {
        tracing::warn!(missing = %reach.missing(), "{warning}");
    }
    reach
}

/// systemd's status line (`systemctl status attestd`): the socket, and what
/// is missing to attest other users if anything is.
fn ready_status(socket: &Path, reach: &Reach) -> String {
    match reach.is_complete() {
        true => format!("serving {}", socket.display()),
        false => format!(
            "serving {}; cannot attest other users: missing {}",
            socket.display(),
            reach.missing()
        ),
    }
}

fn concurrent_attestations(limits: &LimitsConfig) -> usize {
    limits
        .max_concurrent_attestations
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
}

/// The stop signals. All signals attestd handles are installed before
/// anything else, so none takes its default action (termination) during
/// start-up.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// The stop signals, and SIGHUP twice (each receiver sees every
    /// signal): the entries' reload and the Cedar policies'.
    fn install() -> Result<(Self, Signal, Signal), DaemonError> {
        let install = |kind| signal(kind).map_err(DaemonError::Signals);
        let stop = Self {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        };
        Ok((
            stop,
            install(SignalKind::hangup())?,
            install(SignalKind::hangup())?,
        ))
    }

    /// Resolves on SIGTERM or SIGINT.
    async fn stop(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}

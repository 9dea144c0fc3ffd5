//! The SPIFFE Workload API over a Unix socket: wires attestation, the
//! registry, the SVID cache, the authority and the audit trail into the
//! gRPC service real SPIFFE clients call.
//!
//! Every request is checked for the security header first, then its caller
//! is attested from the connection's kernel-pinned peer, then matched.

mod admission;
mod attestation_permits;
mod authority_fix;
mod authorize;
mod authzen_listener;
mod caller;
mod caller_watch;
mod connection;
mod h2_wire;
mod jwt;
mod limits;
mod listener;
mod opening_flight;
mod per_uid_permits;
mod request_permits;
mod service;
mod status;
mod streams;
mod tasks;

use std::sync::Arc;

use tokio::sync::watch;

pub use attestation_permits::{AttestationPermit, AttestationPermits};
pub use authority_fix::MAX_HEADER_LIST_SIZE;
/// The HTTP/2 header re-encoder, for the fuzz targets (fuzz/).
#[doc(hidden)]
pub use authority_fix::{AuthorityFix, AuthorityFixError};
pub use authorize::AuthorizationApi;
pub use authzen_listener::serve_authzen;
pub(crate) use caller_watch::{CallerWatch, Credentials, Wake};
pub use connection::{AttestedConnection, PeerInfo};
pub use limits::{ConnectionBudget, ConnectionLimits, ConnectionSlot, Refused};
pub use listener::{ListenerError, SocketListener};
pub use request_permits::{RequestPermits, RequestPermitsLayer, RequestPermitsService};
pub use service::WorkloadApi;
pub(crate) use service::{observe, peer_of};
pub(crate) use streams::OpenStream;
pub use tasks::{MAX_LISTED, TasksApi};

use crate::attest::Attestor;
use crate::audit::AuditLog;
use crate::authority::Authority;
use crate::authz::Authz;
use crate::federation::Federation;
use crate::registry::Registry;
use crate::svid_cache::SvidCache;
use crate::tasks::TaskRegistry;

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Context {
    /// Attests callers.
    pub attestor: Arc<Attestor>,
    /// The live policy.
    pub registry: Arc<Registry>,
    /// Shared, rotating SVIDs.
    pub cache: Arc<SvidCache>,
    /// The trust bundle source.
    pub authority: Arc<Authority>,
    /// Foreign trust domains' bundles, for the callers that federate.
    pub federation: Arc<Federation>,
    /// Where decisions are recorded.
    pub audit: Arc<AuditLog>,
    /// Live and ended tasks: started, ended and verified here.
    pub tasks: Arc<TaskRegistry>,
    /// The policy decision point (Cedar policies, task tokens).
    pub authz: Arc<Authz>,
    /// Permits for attestations in flight (hashing, `/proc` fd scans run on
    /// blocking threads): bounds them host-wide and per uid.
    pub attestations: Arc<AttestationPermits>,
    /// Flips to `true` when the daemon stops, ending open streams so a
    /// graceful shutdown does not wait on clients that never hang up.
    pub shutdown: watch::Receiver<bool>,
}

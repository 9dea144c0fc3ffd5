//! Envoy's Secret Discovery Service (SDS v3) on the Workload API socket,
//! as SPIRE agent serves it, so an Envoy beside a workload gets that
//! workload's SVIDs and bundles with no files and no restarts. Envoy asks by
//! name (see [`select`] for the names); TLS certificates carry the SVID's
//! chain and PKCS#8 key as inline PEM, validation contexts the bundles for
//! Envoy's SPIFFE certificate validator (or a plain `trusted_ca`).
//!
//! SDS is a second face on the Workload API's data: the caller is admitted
//! and its credentials followed by the same code ([`CallerWatch`]), and
//! every certificate handed out is audited like a Workload API one.
//!
//! [`CallerWatch`]: crate::workload_api::CallerWatch

mod resources;
mod select;
mod service;
mod stream;

pub use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
pub use service::SecretDiscovery;

use crate::config::SdsConfig;
use crate::spiffe_id::TrustDomain;

/// What every SDS answer needs besides the caller's credentials.
#[derive(Debug)]
struct Settings {
    trust_domain: TrustDomain,
    config: SdsConfig,
}

/// RPC names as they appear in the audit trail and the metrics.
mod rpc {
    pub const STREAM_SECRETS: &str = "StreamSecrets";
    pub const FETCH_SECRETS: &str = "FetchSecrets";
    pub const DELTA_SECRETS: &str = "DeltaSecrets";
}

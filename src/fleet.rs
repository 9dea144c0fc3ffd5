//! Fleet mode: attestd as a node agent of a SPIRE Server, a drop-in for
//! spire-agent. The server attests this node (join token or x509pop),
//! holds the registration entries and signs every SVID; attestd keeps
//! attesting local processes itself and serves them the same Workload API.
//!
//! It plugs in where the embedded CA and the entry files do: the server is
//! a [`RemoteSigner`](crate::authority::RemoteSigner) behind the
//! [`Authority`] ([`mint`]), and its entries are a policy swapped into the
//! [`Registry`] at every sync ([`sync`]); the request path is the same.
//!
//! The SPIRE Server APIs used (`proto/spire`, spire-api-sdk v1.13.3):
//! `agent.v1` AttestAgent and RenewAgent, `entry.v1`
//! SyncAuthorizedEntries (GetAuthorizedEntries on servers without it),
//! `bundle.v1` GetBundle and GetFederatedBundle, `svid.v1` BatchNewX509SVID and NewJWTSVID. Every
//! call goes over TLS to the server, authenticated as
//! `spiffe://<trust domain>/spire/server` under the server's bundle (no
//! host name check, ALPN h2), with the agent's X.509-SVID as client
//! certificate once the node is attested.

mod bundle;
mod connection;
mod entries;
mod mint;
mod node;
mod state;
mod status;
mod sync;

use std::path::PathBuf;
use std::sync::Arc;

use crate::authority::Authority;
use crate::config::{Config, ServerConfig};
use crate::federation::Federation;
use crate::registry::{Policy, Registry};
use crate::spiffe_id::TrustDomain;

pub use entries::UNOWNED;

/// Why fleet mode could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A state or bootstrap file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The server could not be reached or the TLS session set up.
    #[error("cannot reach the SPIRE Server at {address}: {reason}")]
    Unreachable {
        /// `host:port`.
        address: String,
        /// What failed.
        reason: String,
    },
    /// Node attestation failed.
    #[error("node attestation failed: {0}")]
    Attestation(String),
    /// A command that uses the node's identity found none.
    #[error("this node is not attested (no usable agent SVID in {0}): start attestd first")]
    NotAttested(PathBuf),
    /// The node is not attested and nothing to attest it with was given.
    #[error(
        "this node is not attested yet: give a join token (`attestd run --join-token TOKEN`, \
         ATTESTD_JOIN_TOKEN, or [server] join_token), made with `spire-server token generate`"
    )]
    NeedJoinToken,
    /// The agent's identity can no longer be used and cannot be renewed
    /// without a new attestation that its attestor cannot redo.
    #[error("{0}; attest this node again with a new join token (its state is in {1})")]
    Lost(String, PathBuf),
    /// The server banned this node: attestd stops serving.
    #[error("the SPIRE Server has banned this node ({0}); its agent SVID was deleted")]
    Banned(String),
    /// The server answered something attestd cannot use.
    #[error("SPIRE Server: {0}")]
    Server(String),
}

/// A node joined to its SPIRE Server: what the daemon serves from (the
/// remote authority and the server's entries), and the sync that keeps
/// them current.
pub struct Fleet {
    /// Mints through the server; its bundles are the server's.
    pub authority: Arc<Authority>,
    /// The server's entries as of the first sync.
    pub policy: Policy,
    syncer: sync::Syncer,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

/// The server's entries for this node now, as the daemon serves them
/// (for `attestd explain` in fleet mode).
pub async fn server_policy(config: &Config, server: &ServerConfig) -> Result<Policy, FleetError> {
    Ok(Policy::from_entries(
        sync::fetch_once(config, server).await?.entries,
    ))
}

/// `attestd entry list` in fleet mode: the entries the server authorizes
/// for this node, as the daemon serves them, and a line naming those it
/// does not serve, if any.
pub async fn list(config: &Config, server: &ServerConfig) -> Result<(Policy, Option<String>), FleetError> {
    let converted = sync::fetch_once(config, server).await?;
    let line = not_served(&converted);
    Ok((Policy::from_entries(converted.entries), line))
}

/// `attestd entry check` in fleet mode: the usual warnings about the
/// server's entries, plus those served without an owner and those not
/// served at all.
pub async fn check(config: &Config, server: &ServerConfig) -> Result<Vec<String>, FleetError> {
    let converted = sync::fetch_once(config, server).await?;
    let policy = Policy::from_entries(converted.entries.clone());
    let mut warnings =
        crate::policy_check::check_policy(config, &policy, crate::registry::owner_clock::now());
    warnings.extend(
        converted
            .entries
            .iter()
            .filter(|entry| &*entry.owner == UNOWNED)
            .map(|entry| {
                format!(
                    "{}: {} has no owner: no [server] owners prefix matches it (served, audited as unowned)",
                    entry.location, entry.spiffe_id
                )
            }),
    );
    warnings.extend(not_served(&converted));
    Ok(warnings)
}

/// What the server authorizes that attestd does not serve.
fn not_served(converted: &entries::Converted) -> Option<String> {
    let kinds: Vec<String> = converted
        .unmatchable
        .iter()
        .map(|(kind, count)| format!("{kind} ({count})"))
        .collect();
    (!kinds.is_empty()).then(|| {
        format!(
            "not served: entries with selectors attestd never produces: {}",
            kinds.join(", ")
        )
    })
}

impl Fleet {
    /// Joins the server of `config.server`: loads the node's state (or
    /// attests the node and keeps its state), then syncs the entries and
    /// the bundle once, so the daemon starts with the server's policy.
    pub async fn join(config: &Config, server: &ServerConfig) -> Result<Self, FleetError> {
        let node = node::Node::start(config, server).await?;
        let signer = Arc::new(mint::ServerSigner::new(Arc::clone(&node)));
        let mut syncer = sync::Syncer::new(config, server, node);
        let first = syncer.first().await?;
        let authority = Arc::new(Authority::remote(
            config.trust_domain.clone(),
            signer,
            first.x509,
            first.jwt,
        ));
        Ok(Self {
            authority,
            policy: first.policy,
            syncer,
        })
    }

    /// Keeps the registry's policy, the authority's bundles, the foreign
    /// bundles the server holds for the entries' `federates_with` (into
    /// `federation`, except for the trust domains of `[[federation]]`,
    /// `configured`) and the agent SVID current until the server bans
    /// this node; returns why it stopped.
    pub async fn run(
        self,
        registry: Arc<Registry>,
        federation: Arc<Federation>,
        configured: Vec<TrustDomain>,
    ) -> FleetError {
        let targets = sync::Targets {
            registry,
            authority: self.authority,
            federation,
            configured,
        };
        self.syncer.run(targets).await
    }
}

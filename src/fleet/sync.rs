//! The sync loop, every `sync_interval` (5 s by default, as spire-agent):
//! renew the agent SVID if it is past half its life, fetch the authorized
//! entries (SyncAuthorizedEntries by revision, or GetAuthorizedEntries on
//! servers without it) and the bundle (the server's CA rotates), then swap
//! a new policy into the registry and new bundles into the authority when
//! they changed; and the server's copies of the foreign bundles the
//! entries federate with (GetFederatedBundle), into the federation. A failed round keeps everything as it was and is retried
//! with backoff; a ban ends it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::FleetError;
use super::bundle::{from_proto, get_bundle};
use super::connection::RPC_TIMEOUT;
use super::entries::{Converted, Converter};
use super::node::Node;
use super::status::{self, Verdict};
use crate::authority::{Authority, JwtBundle, X509Bundle};
use crate::config::{Config, OwnerMapping, ServerConfig, SvidConfig};
use crate::federation::{Federation, ForeignBundle};
use crate::proto::spire::api::server::bundle::v1::GetFederatedBundleRequest;
use crate::proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use crate::proto::spire::api::server::entry::v1::entry_client::EntryClient;
use crate::proto::spire::api::server::entry::v1::{
    EntryRevision, GetAuthorizedEntriesRequest, SyncAuthorizedEntriesRequest, SyncAuthorizedEntriesResponse,
};
use crate::proto::spire::api::types::{Entry as ServerEntry, EntryMask};
use crate::registry::{Policy, Registry};
use crate::spiffe_id::TrustDomain;
use crate::telemetry::metrics;

/// The most entries a node takes from the server.
const MAX_ENTRIES: usize = 100_000;
/// The longest wait between failed rounds (spire-agent's cap).
const MAX_BACKOFF: Duration = Duration::from_secs(8 * 60);

/// The most foreign trust domains whose bundles are fetched per round.
const MAX_FEDERATED: usize = 64;

/// What the sync keeps current.
pub(super) struct Targets {
    pub registry: Arc<Registry>,
    pub authority: Arc<Authority>,
    pub federation: Arc<Federation>,
    /// `[[federation]]` trust domains: their bundles come from there.
    pub configured: Vec<TrustDomain>,
}

/// What the first round brings: the daemon starts with it.
pub(super) struct First {
    pub policy: Policy,
    pub x509: X509Bundle,
    pub jwt: JwtBundle,
}

/// One successful round.
struct Round {
    converted: Converted,
    x509: X509Bundle,
    jwt: JwtBundle,
    sequence: u64,
}

/// What failed in a round.
enum RoundError {
    /// A call to the server.
    Server(Status),
    /// Renewing or re-attesting the node.
    Node(FleetError),
}

impl From<Status> for RoundError {
    fn from(status: Status) -> Self {
        Self::Server(status)
    }
}

/// Why a round failed, for the loop.
enum Failure {
    /// Retry later.
    Retry(String),
    /// Stop: the node is banned.
    Fatal(FleetError),
}

/// Keeps the node's entries and bundles current.
pub(super) struct Syncer {
    node: Arc<Node>,
    trust_domain: TrustDomain,
    defaults: SvidConfig,
    owners: Vec<OwnerMapping>,
    interval: Duration,
    /// The server's entries by id, as last synced.
    entries: HashMap<String, ServerEntry>,
    /// False once the server answered SyncAuthorizedEntries with
    /// Unimplemented (SPIRE before 1.8.7): GetAuthorizedEntries then.
    by_revision: bool,
    /// The unmatchable selector kinds last reported.
    reported: String,
}

impl Syncer {
    pub fn new(config: &Config, server: &ServerConfig, node: Arc<Node>) -> Self {
        Self {
            node,
            trust_domain: config.trust_domain.clone(),
            defaults: config.svid,
            owners: server.owners.clone(),
            interval: server.sync_interval,
            entries: HashMap::new(),
            by_revision: true,
            reported: String::new(),
        }
    }

    /// The first round, which must succeed for the daemon to start.
    pub async fn first(&mut self) -> Result<First, FleetError> {
        let round = self.round().await.map_err(|failure| match failure {
            Failure::Fatal(error) => error,
            Failure::Retry(reason) => FleetError::Unreachable {
                address: self.node.address().to_owned(),
                reason,
            },
        })?;
        self.report(&round.converted);
        self.keep_bundle(&round);
        tracing::info!(
            entries = round.converted.entries.len(),
            server = self.node.address(),
            "entries synced from the SPIRE Server"
        );
        Ok(First {
            policy: Policy::from_entries(round.converted.entries),
            x509: round.x509,
            jwt: round.jwt,
        })
    }

    /// Syncs every interval until the node is banned.
    pub async fn run(mut self, targets: Targets) -> FleetError {
        // The first round's entries need their foreign bundles now.
        let current = self.converter().convert(self.entries.values());
        self.federated(&current, &targets).await;
        let mut delay = self.interval;
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(delay).await;
            match self.round().await {
                Ok(round) => {
                    self.federated(&round.converted, &targets).await;
                    self.apply(round, &targets.registry, &targets.authority);
                    metrics().fleet_sync(true);
                    failures = 0;
                    delay = self.interval;
                }
                Err(Failure::Fatal(error)) => {
                    if matches!(error, FleetError::Banned(_)) {
                        self.node.forget();
                    }
                    return error;
                }
                Err(Failure::Retry(reason)) => {
                    metrics().fleet_sync(false);
                    failures = failures.saturating_add(1);
                    delay = self.backoff(failures);
                    tracing::warn!(server = self.node.address(), %reason, retry_in = ?delay, "sync with the SPIRE Server failed; serving what it last sent");
                }
            }
        }
    }

    /// Exponential from the interval, with 10% jitter, up to the lesser of
    /// 8 minutes and 48 intervals (spire-agent's schedule).
    fn backoff(&self, failures: u32) -> Duration {
        let cap = MAX_BACKOFF.min(self.interval * 48);
        let base = self
            .interval
            .saturating_mul(2u32.saturating_pow(failures.min(16)))
            .min(cap);
        base.mul_f64(rand::rng().random_range(0.9..1.1))
    }

    /// One round; a server demand to attest again is met once, then the
    /// round is retried.
    async fn round(&mut self) -> Result<Round, Failure> {
        let serial = self.node.agent().serial.clone();
        match self.try_round().await {
            // A call that went out with the SVID the round just replaced
            // (the server refuses it once the new one is used): retry.
            Err(RoundError::Server(status))
                if status::verdict(&status) == Verdict::Reattest && self.node.agent().serial != serial =>
            {
                self.try_round().await.map_err(|error| self.failure(error))
            }
            Err(RoundError::Server(status)) if status::verdict(&status) == Verdict::Reattest => {
                tracing::warn!(reason = %status::describe(&status), "the SPIRE Server no longer accepts the agent SVID; attesting again");
                self.node
                    .reattest()
                    .await
                    .map_err(|error| self.failure(RoundError::Node(error)))?;
                self.try_round().await.map_err(|error| self.failure(error))
            }
            result => result.map_err(|error| self.failure(error)),
        }
    }

    fn failure(&self, error: RoundError) -> Failure {
        self.node.reset();
        match error {
            RoundError::Server(status) if status::verdict(&status) == Verdict::Banned => {
                Failure::Fatal(FleetError::Banned(status::describe(&status)))
            }
            RoundError::Server(status) => Failure::Retry(status::describe(&status)),
            RoundError::Node(error @ FleetError::Banned(_)) => Failure::Fatal(error),
            RoundError::Node(error) => Failure::Retry(error.to_string()),
        }
    }

    async fn try_round(&mut self) -> Result<Round, RoundError> {
        self.node.renew_if_due().await.map_err(RoundError::Node)?;
        let channel = self.node.channel().map_err(RoundError::Node)?;
        tokio::time::timeout(RPC_TIMEOUT, self.sync_entries(channel.clone()))
            .await
            .map_err(|_| Status::deadline_exceeded("syncing entries timed out"))??;
        let bundle = get_bundle(BundleClient::new(channel)).await?;
        let (x509, jwt) = from_proto(&bundle, Some(&self.trust_domain)).map_err(Status::internal)?;
        Ok(Round {
            converted: self.converter().convert(self.entries.values()),
            x509,
            jwt,
            sequence: bundle.sequence_number,
        })
    }

    fn converter(&self) -> Converter<'_> {
        Converter {
            trust_domain: &self.trust_domain,
            defaults: &self.defaults,
            owners: &self.owners,
            address: self.node.address(),
        }
    }

    /// Puts a round's policy and bundles in effect where they changed.
    fn apply(&mut self, round: Round, registry: &Registry, authority: &Authority) {
        self.report(&round.converted);
        if authority.replace_bundles(round.x509.clone(), round.jwt.clone()) {
            self.keep_bundle(&round);
        }
        let entries = round.converted.entries;
        if entries != registry.policy().entries() {
            let count = entries.len();
            drop(registry.replace(Policy::from_entries(entries)));
            registry.policy().build_lookups();
            tracing::info!(entries = count, "new entries from the SPIRE Server in effect");
        }
    }

    /// Fetches the server's bundles of the foreign trust domains the
    /// entries federate with (those not configured in `[[federation]]`)
    /// into the federation, before the entries naming them take effect. A
    /// trust domain the server has no bundle of is logged; a failed fetch
    /// keeps the bundle in effect until the next round.
    async fn federated(&self, converted: &Converted, targets: &Targets) {
        let wanted: std::collections::BTreeSet<&TrustDomain> = converted
            .entries
            .iter()
            .flat_map(|entry| entry.federates_with.iter())
            .filter(|td| !targets.configured.contains(td))
            .collect();
        let Ok(channel) = self.node.channel() else { return };
        let mut client = BundleClient::new(channel);
        for td in wanted.into_iter().take(MAX_FEDERATED) {
            let request = GetFederatedBundleRequest {
                trust_domain: td.name().to_owned(),
                output_mask: None,
            };
            let fetched = tokio::time::timeout(RPC_TIMEOUT, client.get_federated_bundle(request)).await;
            let bundle = match fetched {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) if status.code() == Code::NotFound => {
                    tracing::warn!(trust_domain = %td, "the SPIRE Server has no bundle of a trust domain entries federate with");
                    continue;
                }
                Ok(Err(status)) => {
                    tracing::warn!(trust_domain = %td, reason = %status::describe(&status), "fetching a federated bundle from the SPIRE Server failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(trust_domain = %td, "fetching a federated bundle from the SPIRE Server timed out");
                    continue;
                }
            };
            match from_proto(&bundle, Some(td)) {
                Ok((x509, jwt)) => {
                    let foreign = ForeignBundle::from_authorities(x509, jwt, bundle.sequence_number);
                    targets.federation.update(td, foreign, "SPIRE Server");
                }
                Err(reason) => {
                    tracing::warn!(trust_domain = %td, %reason, "unusable federated bundle from the SPIRE Server")
                }
            }
        }
    }

    /// Stores the round's bundle and connects with its authorities from now
    /// on.
    fn keep_bundle(&self, round: &Round) {
        if let Err(error) = self
            .node
            .state()
            .save_bundle(&round.x509, &round.jwt, round.sequence)
        {
            tracing::error!(%error, "cannot store the server's bundle; a restart would start from the previous one");
        }
        self.node.set_roots(round.x509.clone());
    }

    /// Reports entries attestd cannot serve (a changed report is logged;
    /// the metrics are set every round).
    fn report(&mut self, converted: &Converted) {
        let unmatchable: usize = converted.unmatchable.values().sum();
        metrics().fleet_entries(converted.entries.len(), unmatchable, converted.unowned);
        let summary: Vec<String> = converted
            .unmatchable
            .iter()
            .map(|(kind, count)| format!("{kind} ({count})"))
            .collect();
        let summary = summary.join(", ");
        if summary != self.reported {
            if !summary.is_empty() {
                tracing::warn!(entries = unmatchable, kinds = %summary, "SPIRE entries with selectors attestd never produces are not served");
            }
            self.reported = summary;
        }
    }

    /// Brings `self.entries` up to date with the server.
    async fn sync_entries(&mut self, channel: Channel) -> Result<(), Status> {
        let mut client = EntryClient::new(channel);
        if !self.by_revision {
            return self.get_entries(&mut client).await;
        }
        let (requests, outgoing) = mpsc::channel(2);
        let first = SyncAuthorizedEntriesRequest {
            output_mask: Some(entry_mask()),
            ids: Vec::new(),
        };
        // The channel has room: the first send cannot wait.
        let _ = requests.try_send(first);
        let mut responses = match client
            .sync_authorized_entries(ReceiverStream::new(outgoing))
            .await
        {
            Ok(responses) => responses.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!("the SPIRE Server has no SyncAuthorizedEntries: using GetAuthorizedEntries");
                self.by_revision = false;
                return self.get_entries(&mut client).await;
            }
            Err(status) => return Err(status),
        };
        let first = next(&mut responses).await?;
        if first.entry_revisions.is_empty() {
            // A small set: every entry in one message.
            bounded(first.entries.len())?;
            self.entries = first.entries.into_iter().map(|e| (e.id.clone(), e)).collect();
            return Ok(());
        }
        let page = first.entry_revisions.len();
        let mut seen = HashSet::new();
        let mut needed = Vec::new();
        let mut response = first;
        loop {
            if !response.entries.is_empty() {
                return Err(Status::internal("entries among the revisions"));
            }
            self.revisions(&response.entry_revisions, &mut seen, &mut needed)?;
            if !response.more {
                break;
            }
            response = next(&mut responses).await?;
        }
        needed.sort();
        for ids in needed.chunks(page) {
            let request = SyncAuthorizedEntriesRequest {
                output_mask: None,
                ids: ids.to_vec(),
            };
            requests
                .send(request)
                .await
                .map_err(|_| Status::unavailable("the entries stream closed"))?;
            loop {
                let response = next(&mut responses).await?;
                if !response.entry_revisions.is_empty() {
                    return Err(Status::internal("revisions among the entries"));
                }
                for entry in response.entries {
                    self.entries.insert(entry.id.clone(), entry);
                }
                if !response.more {
                    break;
                }
            }
        }
        // The server no longer authorizes what it did not list.
        self.entries.retain(|id, _| seen.contains(id));
        tracing::debug!(
            authorized = seen.len(),
            fetched = needed.len(),
            "entries synced by revision"
        );
        Ok(())
    }

    /// Notes which entries are still authorized and which must be fetched
    /// (unknown, or changed: another revision or creation time).
    fn revisions(
        &self,
        revisions: &[EntryRevision],
        seen: &mut HashSet<String>,
        needed: &mut Vec<String>,
    ) -> Result<(), Status> {
        for revision in revisions {
            if revision.id.is_empty() || revision.revision_number < 0 {
                continue;
            }
            seen.insert(revision.id.clone());
            bounded(seen.len())?;
            let stale = self.entries.get(&revision.id).is_none_or(|entry| {
                entry.revision_number != revision.revision_number
                    || (revision.created_at != 0 && entry.created_at != revision.created_at)
            });
            if stale {
                needed.push(revision.id.clone());
            }
        }
        Ok(())
    }

    async fn get_entries(&mut self, client: &mut EntryClient<Channel>) -> Result<(), Status> {
        let request = GetAuthorizedEntriesRequest {
            output_mask: Some(entry_mask()),
        };
        let entries = client.get_authorized_entries(request).await?.into_inner().entries;
        bounded(entries.len())?;
        self.entries = entries.into_iter().map(|e| (e.id.clone(), e)).collect();
        Ok(())
    }
}

/// The server's entries for this node now, converted, with the node's
/// stored identity (never renewed here: the daemon owns that) and over
/// GetAuthorizedEntries.
pub(super) async fn fetch_once(config: &Config, server: &ServerConfig) -> Result<Converted, FleetError> {
    let node = Node::open(config, server)?;
    let address = node.address().to_owned();
    let mut syncer = Syncer::new(config, server, node);
    let mut client = EntryClient::new(syncer.node.channel()?);
    tokio::time::timeout(RPC_TIMEOUT, syncer.get_entries(&mut client))
        .await
        .map_err(|_| FleetError::Unreachable {
            address: address.clone(),
            reason: "GetAuthorizedEntries timed out".into(),
        })?
        .map_err(|status| FleetError::Unreachable {
            address,
            reason: format!("GetAuthorizedEntries: {}", status::describe(&status)),
        })?;
    Ok(syncer.converter().convert(syncer.entries.values()))
}

/// What attestd reads of an entry (spire-agent's mask, plus the TTLs and
/// DNS names `entry list` shows and the expiry it honours).
fn entry_mask() -> EntryMask {
    EntryMask {
        spiffe_id: true,
        parent_id: false,
        selectors: true,
        x509_svid_ttl: true,
        federates_with: true,
        admin: true,
        downstream: true,
        expires_at: true,
        dns_names: true,
        revision_number: true,
        store_svid: true,
        jwt_svid_ttl: true,
        hint: true,
        created_at: true,
    }
}

async fn next(
    responses: &mut tonic::Streaming<SyncAuthorizedEntriesResponse>,
) -> Result<SyncAuthorizedEntriesResponse, Status> {
    responses
        .message()
        .await?
        .ok_or_else(|| Status::unavailable("the server ended the entries stream early"))
}

fn bounded(entries: usize) -> Result<(), Status> {
    if entries > MAX_ENTRIES {
        return Err(Status::resource_exhausted(format!(
            "the server authorizes more than {MAX_ENTRIES} entries for this node"
        )));
    }
    Ok(())
}

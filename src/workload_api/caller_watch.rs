//! An admitted caller's credentials, followed for as long as a stream
//! stays open: its SVIDs (one per entry), the trust bundle, the foreign
//! bundles its entries federate with, and the policy.
//! Shared by the Workload API's `FetchX509SVID` and by Envoy SDS, which
//! render the same credentials in their own messages.
//!
//! Before every change is handed on, the caller is admitted again (still
//! alive, still the same executable, still entitled), so a process that
//! exits, exec's or setuid's, or whose entries are removed or their owners'
//! terms end, loses its identities: the watch ends with PermissionDenied.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::Status;

use super::admission::{self, Refusal};
use super::caller::Caller;
use super::{Context, PeerInfo, status};
use crate::audit::{Outcome, Record};
use crate::authority::{SvidTemplate, X509Bundle, X509Svid};
use crate::federation::{CallerBundles, FederatedBundles};
use crate::registry::{Entry, EntryId, Policy, owner_clock};
use crate::svid_cache::SvidReceiver;

/// What woke a waiting watch.
pub(crate) enum Wake {
    /// One of the caller's SVIDs rotated, or the bundle changed.
    Credentials,
    /// A foreign trust domain's bundle changed (perhaps not one the caller
    /// gets).
    Federation,
    /// The policy was swapped.
    Policy,
    /// The term of one of the caller's entries' owners ended.
    OwnerTerm,
    /// A source the watch followed is gone (its SVID was re-minted into a
    /// new slot): the client must reconnect to get the current one.
    SourceClosed,
    Shutdown,
}

/// The caller's credentials at one moment.
pub(crate) struct Credentials {
    /// Each of the caller's entries (policy order, unique hints) with its
    /// current SVID.
    pub identities: Vec<(Arc<Entry>, Arc<X509Svid>)>,
    /// The trust domain's own bundle.
    pub bundle: Arc<X509Bundle>,
    /// The foreign bundles the caller's entries federate with.
    pub federated: CallerBundles,
}

/// Follows one admitted caller's credentials.
pub(crate) struct CallerWatch {
    ctx: Arc<Context>,
    caller: Caller,
    /// The RPC the caller is re-admitted under (audit records name it).
    rpc: &'static str,
    /// One per entry of `caller`, in the same order.
    svids: Vec<(SvidTemplate, SvidReceiver)>,
    bundle: watch::Receiver<Arc<X509Bundle>>,
    federation: watch::Receiver<Arc<FederatedBundles>>,
    /// The foreign bundles last handed out.
    federated_sent: CallerBundles,
    policy: watch::Receiver<Arc<Policy>>,
    shutdown: watch::Receiver<bool>,
}

impl CallerWatch {
    /// Starts following `caller`: mints (or reuses) its SVIDs now, so a
    /// failure is the RPC's status rather than a broken stream.
    pub(super) async fn new(ctx: Arc<Context>, caller: Caller, rpc: &'static str) -> Result<Self, Status> {
        let mut watch = Self {
            bundle: ctx.authority.subscribe_bundle(),
            federation: ctx.federation.subscribe(),
            federated_sent: CallerBundles::default(),
            policy: ctx.registry.subscribe(),
            shutdown: ctx.shutdown.clone(),
            svids: Vec::new(),
            ctx,
            caller,
            rpc,
        };
        // A policy swapped in after the caller's admission took its snapshot
        // is one the caller has not been matched against yet.
        if !Arc::ptr_eq(&watch.policy.borrow(), &watch.caller.policy) {
            watch.policy.mark_changed();
        }
        watch.follow_entries().await?;
        Ok(watch)
    }

    /// Admits the caller of a connection and follows it: for services
    /// beside the Workload API (Envoy SDS); a refusal is the status to
    /// answer.
    pub async fn admit(ctx: Arc<Context>, peer: &PeerInfo, rpc: &'static str) -> Result<Self, Status> {
        let caller = admission::admit(&ctx, peer, rpc).await.map_err(Refusal::status)?;
        Self::new(ctx, caller, rpc).await
    }

    /// The caller as last admitted.
    pub(super) fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The caller's process id (for logs).
    pub fn pid(&self) -> i32 {
        self.caller.workload.pid
    }

    /// The credentials now, marking them seen.
    pub fn current(&mut self) -> Credentials {
        let identities = self
            .caller
            .entries
            .iter()
            .zip(&mut self.svids)
            .map(|(entry, (_, receiver))| (Arc::clone(entry), Arc::clone(&receiver.borrow_and_update())))
            .collect();
        let federated = self.federated_now();
        self.federated_sent = federated.clone();
        Credentials {
            identities,
            bundle: Arc::clone(&self.bundle.borrow_and_update()),
            federated,
        }
    }

    /// The foreign bundles the caller's entries federate with, now.
    fn federated_now(&mut self) -> CallerBundles {
        self.federation
            .borrow_and_update()
            .for_entries(&self.caller.entries)
    }

    /// Whether the caller's foreign bundles differ from those last handed
    /// out.
    fn federated_changed(&mut self) -> bool {
        !self.federated_now().same_as(&self.federated_sent)
    }

    /// Waits until the caller's credentials change (an SVID rotates, the
    /// bundle changes, the policy changes the caller's entries), admitting
    /// the caller again first. Ends with the status that closes the stream
    /// when the caller lost its identities, or on shutdown.
    pub async fn changed(&mut self) -> Result<(), Status> {
        loop {
            let wake = self.next_change().await;
            if self.apply(wake).await? {
                return Ok(());
            }
        }
    }

    /// Acts on what [`Self::next_change`] woke for: admits the caller again
    /// where it matters; returns whether the credentials changed. Not to be
    /// cancelled: a policy change it has marked seen would be lost.
    pub async fn apply(&mut self, wake: Wake) -> Result<bool, Status> {
        match wake {
            Wake::Credentials => {
                self.readmit().await?;
                Ok(true)
            }
            // Only a change of the bundles this caller gets is worth a message.
            Wake::Federation => {
                if !self.federated_changed() {
                    return Ok(false);
                }
                self.readmit().await?;
                Ok(true)
            }
            // An entry's federates_with may change with its id.
            Wake::Policy | Wake::OwnerTerm => Ok(self.readmit().await? || self.federated_changed()),
            Wake::SourceClosed => Err(status::reissuing()),
            Wake::Shutdown => Err(status::shutting_down()),
        }
    }

    /// Audits each identity handed out, with `reason`; fails closed if the
    /// audit trail cannot take them.
    pub fn audit_issued<'a>(
        &self,
        reason: &str,
        identities: impl IntoIterator<Item = &'a (Arc<Entry>, Arc<X509Svid>)>,
    ) -> Result<(), Status> {
        let records: Vec<Record> = identities
            .into_iter()
            .map(|(entry, svid)| {
                Record::new(self.rpc, Outcome::Issued, reason, Some(&self.caller.workload))
                    .with_entry(entry)
                    .with_credential(&svid.serial, svid.not_after)
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        self.ctx.audit.write(records).map_err(|e| status::audit(&e))
    }

    /// Waits until an SVID, the bundle or the policy changes, an owner's
    /// term ends, or shutdown; safe to cancel (it only waits), so it can
    /// race a client's requests.
    pub async fn next_change(&mut self) -> Wake {
        let owner_expiry = self.caller.owner_expiry();
        let term_ends = async {
            match owner_expiry {
                // Boxed: a timer that follows the wall clock would be a
                // third of this future's size, and every open stream holds
                // the future while it waits.
                Some(end) => Box::pin(owner_clock::sleep_until(end)).await,
                None => futures::future::pending().await,
            }
        };
        let any_svid = async {
            if self.svids.is_empty() {
                return futures::future::pending().await;
            }
            let changes = self.svids.iter_mut().map(|(_, rx)| Box::pin(rx.changed()));
            futures::future::select_all(changes).await.0
        };
        let (wake, result) = tokio::select! {
            result = any_svid => (Wake::Credentials, result.is_ok()),
            result = self.bundle.changed() => (Wake::Credentials, result.is_ok()),
            result = self.federation.changed() => (Wake::Federation, result.is_ok()),
            result = self.policy.changed() => (Wake::Policy, result.is_ok()),
            () = term_ends => (Wake::OwnerTerm, true),
            _ = self.shutdown.wait_for(|stopping| *stopping) => (Wake::Shutdown, true),
        };
        if result { wake } else { Wake::SourceClosed }
    }

    /// Admits the caller again; returns whether its entries, or the SVIDs
    /// they call for (a renewed owner's term, new DNS names or lifetime),
    /// changed.
    pub async fn readmit(&mut self) -> Result<bool, Status> {
        self.policy.borrow_and_update();
        let peer = self.caller.peer.clone();
        let caller = admission::admit(&self.ctx, &peer, self.rpc)
            .await
            .map_err(Refusal::stream_end)?;
        let before: Vec<EntryId> = self.caller.entries.iter().map(|e| e.id).collect();
        let after: Vec<EntryId> = caller.entries.iter().map(|e| e.id).collect();
        let changed = before != after;
        self.caller = caller;
        let resubscribed = self.follow_entries().await?;
        Ok(changed || resubscribed)
    }

    /// Subscribes to the SVID of each of the caller's entries, keeping the
    /// subscriptions it already has; returns whether it made a new one.
    async fn follow_entries(&mut self) -> Result<bool, Status> {
        let mut subscribed = false;
        self.caller.entries = self.caller.entries_with_unique_hints();
        let mut previous = std::mem::take(&mut self.svids);
        for entry in &self.caller.entries {
            let template = SvidTemplate {
                spiffe_id: entry.spiffe_id.clone(),
                dns_names: entry.dns_names.to_vec(),
                ttl: entry.x509_ttl,
                // An SVID never outlives its owner's term.
                valid_until: entry.owner_expiry().map(owner_clock::to_wall),
                remote_entry: entry.remote_entry.clone(),
            };
            let receiver = match previous.iter().position(|(t, _)| *t == template) {
                Some(i) => previous.swap_remove(i).1,
                None => {
                    subscribed = true;
                    self.ctx
                        .cache
                        .subscribe(&template)
                        .await
                        .map_err(|e| status::minting(&e))?
                }
            };
            self.svids.push((template, receiver));
        }
        Ok(subscribed)
    }
}

//! The streaming answers. Each message carries the caller's full state
//! (an identity left out is taken as revoked); the first goes out at once,
//! the next on every rotation of one of the caller's SVIDs, change of the
//! bundle or of a federated bundle the caller gets, or policy change that
//! alters the caller's entries, and when the
//! term of one of its entries' owners ends (the caller is admitted again:
//! that identity is left out of the next message, or the stream ends if it
//! was the last, as when the policy removes an entry). Every X.509-SVID
//! sent is audited before it is sent.

use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;
use tonic::Status;

use super::admission::{self, Refusal};
use super::caller::{Caller, rpc};
use super::{Context, status};
use crate::audit::{Outcome, Record};
use crate::authority::{SvidTemplate, X509Bundle};
use crate::federation::{CallerBundles, FederatedBundles};
use crate::proto::{X509svid, X509svidResponse};
use crate::registry::{Entry, EntryId, Policy, owner_clock};
use crate::selector::SelectorSet;
use crate::svid_cache::SvidReceiver;
use crate::telemetry::metrics;

/// What woke a waiting stream.
enum Wake {
    /// One of the caller's SVIDs rotated, or the bundle changed.
    Credentials,
    /// The policy was swapped.
    Policy,
    /// A foreign trust domain's bundle changed.
    Federation,
    /// The term of one of the caller's entries' owners ended.
    OwnerTerm,
    /// A source the stream watched is gone (its SVID was re-minted into a
    /// new slot): the client must reconnect to get the current one.
    SourceClosed,
    Shutdown,
}

/// Counts an open stream in the metrics for as long as it lives.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics().streams(1);
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics().streams(-1);
    }
}

struct X509Watch {
    _open: OpenStream,
    ctx: Arc<Context>,
    caller: Caller,
    /// One per entry of `caller`, in the same order.
    svids: Vec<(SvidTemplate, SvidReceiver)>,
    bundle: watch::Receiver<Arc<X509Bundle>>,
    federation: watch::Receiver<Arc<FederatedBundles>>,
    /// The federated bundles of the last message.
    federated_sent: CallerBundles,
    policy: watch::Receiver<Arc<Policy>>,
    shutdown: watch::Receiver<bool>,
    first: bool,
    done: bool,
}

/// The `FetchX509SVID` stream. Mints (or reuses) the caller's SVIDs and
/// builds the first message before returning, so a failure is the RPC's
/// status rather than a broken stream. Before every later message the caller
/// is admitted again (still alive, still the same executable, still
/// entitled), so a process that exits, exec's or setuid's, or whose entries
/// are removed or their owners' terms end, loses its identities: the stream
/// ends with PermissionDenied.
pub(super) fn x509_svids(
    ctx: Arc<Context>,
    caller: Caller,
) -> Result<BoxStream<'static, Result<X509svidResponse, Status>>, Status> {
    let mut watch = X509Watch {
        _open: OpenStream::new(),
        bundle: ctx.authority.subscribe_bundle(),
        federation: ctx.federation.subscribe(),
        federated_sent: CallerBundles::default(),
        policy: ctx.registry.subscribe(),
        shutdown: ctx.shutdown.clone(),
        svids: Vec::new(),
        ctx,
        caller,
        first: true,
        done: false,
    };
    // A policy swapped in after the caller's admission took its snapshot
    // is one the caller has not been matched against yet.
    if !Arc::ptr_eq(&watch.policy.borrow(), &watch.caller.policy) {
        watch.policy.mark_changed();
    }
    watch.follow_entries()?;
    let first = watch.respond()?;
    let rest = stream::unfold(watch, |mut watch| async move {
        if watch.done {
            return None;
        }
        let item = watch.next_message().await;
        watch.done = item.is_err();
        Some((item, watch))
    });
    Ok(stream::once(async { Ok(first) }).chain(rest).boxed())
}

impl X509Watch {
    /// Waits for the next change worth a message and builds it.
    async fn next_message(&mut self) -> Result<X509svidResponse, Status> {
        loop {
            match self.next_change().await {
                Wake::Credentials => {
                    self.recheck().await?;
                    return self.respond();
                }
                // Only a change of the bundles this caller gets is sent.
                Wake::Federation => {
                    if !self.federated_now().same_as(&self.federated_sent) {
                        self.recheck().await?;
                        return self.respond();
                    }
                }
                // An entry's federates_with may change with its id.
                Wake::Policy | Wake::OwnerTerm => {
                    if self.recheck().await? || !self.federated_now().same_as(&self.federated_sent) {
                        return self.respond();
                    }
                }
                Wake::SourceClosed => return Err(status::reissuing()),
                Wake::Shutdown => return Err(status::shutting_down()),
            }
        }
    }

    /// Waits until an SVID, the bundle or the policy changes, an owner's
    /// term ends, or shutdown.
    async fn next_change(&mut self) -> Wake {
        let owner_expiry = self.caller.owner_expiry();
        let term_ends = async {
            match owner_expiry {
                Some(end) => owner_clock::sleep_until(end).await,
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
    async fn recheck(&mut self) -> Result<bool, Status> {
        self.policy.borrow_and_update();
        let peer = self.caller.peer.clone();
        let caller = admission::admit(&self.ctx, &peer, rpc::FETCH_X509_SVID)
            .await
            .map_err(Refusal::stream_end)?;
        let before: Vec<EntryId> = self.caller.entries.iter().map(|e| e.id).collect();
        let after: Vec<EntryId> = caller.entries.iter().map(|e| e.id).collect();
        let changed = before != after;
        self.caller = caller;
        let resubscribed = self.follow_entries()?;
        Ok(changed || resubscribed)
    }

    /// Subscribes to the SVID of each of the caller's entries, keeping the
    /// subscriptions it already has; returns whether it made a new one.
    fn follow_entries(&mut self) -> Result<bool, Status> {
        let mut subscribed = false;
        self.caller.entries = self.caller.entries_with_unique_hints();
        let mut previous = std::mem::take(&mut self.svids);
        for entry in &self.caller.entries {
            let template = SvidTemplate {
                spiffe_id: entry.spiffe_id.clone(),
                dns_names: entry.dns_names.clone(),
                ttl: entry.x509_ttl,
                // An SVID never outlives its owner's term.
                valid_until: entry.owner_expiry().map(owner_clock::to_wall),
            };
            let receiver = match previous.iter().position(|(t, _)| *t == template) {
                Some(i) => previous.swap_remove(i).1,
                None => {
                    subscribed = true;
                    self.ctx
                        .cache
                        .subscribe(&template)
                        .map_err(|e| status::minting(&e))?
                }
            };
            self.svids.push((template, receiver));
        }
        Ok(subscribed)
    }

    /// The foreign bundles the caller's entries federate with, now.
    fn federated_now(&mut self) -> CallerBundles {
        self.federation
            .borrow_and_update()
            .for_entries(&self.caller.entries)
    }

    /// The full state now; audited before it is handed out.
    fn respond(&mut self) -> Result<X509svidResponse, Status> {
        let bundle = self.bundle.borrow_and_update().concatenated_der();
        let federated = self.federated_now();
        let reason = if self.first {
            "fetched"
        } else {
            "pushed on rotation or bundle change"
        };
        self.first = false;
        let mut svids = Vec::with_capacity(self.svids.len());
        let mut records = Vec::with_capacity(self.svids.len());
        for (entry, (_, receiver)) in self.caller.entries.iter().zip(&mut self.svids) {
            let svid = Arc::clone(&receiver.borrow_and_update());
            records.push(
                Record::new(
                    rpc::FETCH_X509_SVID,
                    Outcome::Issued,
                    reason,
                    Some(&self.caller.workload),
                )
                .with_entry(entry)
                .with_credential(&svid.serial, svid.not_after),
            );
            svids.push(X509svid {
                spiffe_id: svid.spiffe_id.to_string(),
                x509_svid: svid.chain_der(),
                x509_svid_key: svid.private_key_pkcs8.clone(),
                bundle: bundle.clone(),
                hint: entry.hint.clone().unwrap_or_default(),
            });
        }
        self.ctx.audit.write(&records).map_err(|e| status::audit(&e))?;
        tracing::debug!(
            pid = self.caller.workload.pid,
            count = svids.len(),
            "sent X.509-SVIDs"
        );
        let federated_bundles = federated.x509_map();
        self.federated_sent = federated;
        Ok(X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles,
        })
    }
}

/// A bundle stream (`FetchX509Bundles`, `FetchJWTBundles`):
/// `render(own, federated)` now, then on every change of our bundle `own`
/// or of a foreign bundle the caller gets, until shutdown. Which foreign
/// bundles it gets follows the policy: on a swap the caller's selectors are
/// matched again (trust material, not an identity: no new attestation).
pub(super) fn bundle_stream<T, R>(
    ctx: &Context,
    selectors: SelectorSet,
    entries: Vec<Arc<Entry>>,
    own: watch::Receiver<Arc<T>>,
    render: impl Fn(&T, &CallerBundles) -> R + Send + 'static,
) -> BoxStream<'static, Result<R, Status>>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
{
    struct BundleWatch<T> {
        _open: OpenStream,
        own: watch::Receiver<Arc<T>>,
        federation: watch::Receiver<Arc<FederatedBundles>>,
        policy: watch::Receiver<Arc<Policy>>,
        shutdown: watch::Receiver<bool>,
        selectors: SelectorSet,
        entries: Vec<Arc<Entry>>,
        /// What the last message was made of.
        sent: Option<(Arc<T>, CallerBundles)>,
    }
    let state = Some(BundleWatch {
        _open: OpenStream::new(),
        own,
        federation: ctx.federation.subscribe(),
        policy: ctx.registry.subscribe(),
        shutdown: ctx.shutdown.clone(),
        selectors,
        entries,
        sent: None,
    });
    // A `None` state ends the stream after the item that set it.
    stream::unfold(state, |state| async move {
        let mut watch = state?;
        loop {
            if watch.sent.is_some() {
                let changed = tokio::select! {
                    result = watch.own.changed() => result.is_ok(),
                    result = watch.federation.changed() => result.is_ok(),
                    result = watch.policy.changed() => {
                        let policy = Arc::clone(&watch.policy.borrow_and_update());
                        watch.entries = policy.matching(&watch.selectors);
                        result.is_ok()
                    }
                    _ = watch.shutdown.wait_for(|stopping| *stopping) => false,
                };
                if !changed {
                    return Some((Err(status::shutting_down()), None));
                }
            }
            let own = Arc::clone(&watch.own.borrow_and_update());
            let federated = watch.federation.borrow_and_update().for_entries(&watch.entries);
            let unchanged = watch.sent.as_ref().is_some_and(|(sent, sent_federated)| {
                Arc::ptr_eq(sent, &own) && sent_federated.same_as(&federated)
            });
            if !unchanged {
                watch.sent = Some((Arc::clone(&own), federated.clone()));
                return Some((Ok((own, federated)), Some(watch)));
            }
        }
    })
    .map(move |item| item.map(|(own, federated)| render(&own, &federated)))
    .boxed()
}

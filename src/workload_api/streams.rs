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

use super::caller::{Caller, rpc};
use super::caller_watch::{CallerWatch, Credentials};
use super::{Context, status};
use crate::federation::{CallerBundles, FederatedBundles};
use crate::proto::{X509svid, X509svidResponse};
use crate::registry::{Entry, Policy};
use crate::selector::SelectorSet;
use crate::telemetry::metrics;

/// Counts an open stream in the metrics for as long as it lives.
pub(crate) struct OpenStream;

impl OpenStream {
    pub fn new() -> Self {
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
    credentials: CallerWatch,
    first: bool,
    done: bool,
}

/// The `FetchX509SVID` stream. Mints (or reuses) the caller's SVIDs and
/// builds the first message before returning, so a failure is the RPC's
/// status rather than a broken stream. Every later message follows a
/// change of the caller's credentials, after which the caller was admitted
/// again (see [`CallerWatch`]).
pub(super) async fn x509_svids(
    ctx: Arc<Context>,
    caller: Caller,
) -> Result<BoxStream<'static, Result<X509svidResponse, Status>>, Status> {
    let mut watch = X509Watch {
        _open: OpenStream::new(),
        credentials: CallerWatch::new(ctx, caller, rpc::FETCH_X509_SVID).await?,
        first: true,
        done: false,
    };
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
        self.credentials.changed().await?;
        self.respond()
    }

    /// The full state now; audited before it is handed out.
    fn respond(&mut self) -> Result<X509svidResponse, Status> {
        let Credentials {
            identities,
            bundle,
            federated,
        } = self.credentials.current();
        let bundle = bundle.concatenated_der();
        let reason = if self.first {
            "fetched"
        } else {
            "pushed on rotation or bundle change"
        };
        self.first = false;
        self.credentials.audit_issued(reason, &identities)?;
        let svids: Vec<X509svid> = identities
            .iter()
            .map(|(entry, svid)| X509svid {
                spiffe_id: svid.spiffe_id.to_string(),
                x509_svid: svid.chain_der(),
                x509_svid_key: svid.private_key_pkcs8.clone(),
                bundle: bundle.clone(),
                hint: entry.hint.as_deref().unwrap_or_default().to_owned(),
            })
            .collect();
        tracing::debug!(
            pid = self.credentials.caller().workload.pid,
            count = svids.len(),
            "sent X.509-SVIDs"
        );
        Ok(X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: federated.x509_map(),
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

//! The streaming answers. Each message carries the caller's full state
//! (an identity left out is taken as revoked); the first goes out at once,
//! the next on every rotation of one of the caller's SVIDs or change of the
//! bundle. Every X.509-SVID sent is audited before it is sent.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;
use tonic::Status;

use super::caller::{Caller, rpc};
use super::{Context, status};
use crate::audit::{Outcome, Record};
use crate::authority::{SvidTemplate, X509Bundle};
use crate::proto::{X509svid, X509svidResponse};
use crate::svid_cache::SvidReceiver;

/// What woke a waiting stream.
enum Wake {
    Changed,
    /// A source the stream watched is gone (its SVID was re-minted into a
    /// new slot): the client must reconnect to get the current one.
    SourceClosed,
    Shutdown,
}

/// Waits until one of `svids` or `bundle` changes, or shutdown.
async fn next_change(
    svids: &mut [SvidReceiver],
    bundle: &mut watch::Receiver<Arc<X509Bundle>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Wake {
    let any_svid = async {
        if svids.is_empty() {
            return futures::future::pending().await;
        }
        let (result, _, _) =
            futures::future::select_all(svids.iter_mut().map(|rx| Box::pin(rx.changed()))).await;
        result
    };
    let changed = tokio::select! {
        result = any_svid => result.is_ok(),
        result = bundle.changed() => result.is_ok(),
        _ = shutdown.wait_for(|stopping| *stopping) => return Wake::Shutdown,
    };
    if changed {
        Wake::Changed
    } else {
        Wake::SourceClosed
    }
}

struct X509Watch {
    ctx: Arc<Context>,
    caller: Caller,
    svids: Vec<SvidReceiver>,
    bundle: watch::Receiver<Arc<X509Bundle>>,
    shutdown: watch::Receiver<bool>,
    first: bool,
    done: bool,
}

/// The `FetchX509SVID` stream. Mints (or reuses) the caller's SVIDs and
/// builds the first message before returning, so a failure is the RPC's
/// status rather than a broken stream.
pub(super) fn x509_svids(
    ctx: Arc<Context>,
    mut caller: Caller,
) -> Result<BoxStream<'static, Result<X509svidResponse, Status>>, Status> {
    caller.entries = caller.entries_with_unique_hints();
    let mut svids = Vec::with_capacity(caller.entries.len());
    for entry in &caller.entries {
        let template = SvidTemplate {
            spiffe_id: entry.spiffe_id.clone(),
            dns_names: entry.dns_names.clone(),
            ttl: entry.x509_ttl,
        };
        svids.push(ctx.cache.subscribe(&template).map_err(|e| status::minting(&e))?);
    }
    let mut watch = X509Watch {
        bundle: ctx.authority.subscribe_bundle(),
        shutdown: ctx.shutdown.clone(),
        ctx,
        caller,
        svids,
        first: true,
        done: false,
    };
    let first = watch.respond()?;
    let rest = stream::unfold(watch, |mut watch| async move {
        if watch.done {
            return None;
        }
        let item = match next_change(&mut watch.svids, &mut watch.bundle, &mut watch.shutdown).await {
            Wake::Changed => watch.respond(),
            Wake::SourceClosed => Err(status::reissuing()),
            Wake::Shutdown => Err(status::shutting_down()),
        };
        watch.done = item.is_err();
        Some((item, watch))
    });
    Ok(stream::once(async { Ok(first) }).chain(rest).boxed())
}

impl X509Watch {
    /// The full state now; audited before it is handed out.
    fn respond(&mut self) -> Result<X509svidResponse, Status> {
        let bundle = self.bundle.borrow_and_update().concatenated_der();
        let reason = if self.first {
            "fetched"
        } else {
            "pushed on rotation or bundle change"
        };
        self.first = false;
        let mut svids = Vec::with_capacity(self.svids.len());
        let mut records = Vec::with_capacity(self.svids.len());
        for (entry, receiver) in self.caller.entries.iter().zip(&mut self.svids) {
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
        Ok(X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        })
    }
}

/// A bundle stream: `render(bundle)` now and on every change of `bundle`,
/// until shutdown.
pub(super) fn bundle_stream<T, R>(
    bundle: watch::Receiver<Arc<T>>,
    shutdown: watch::Receiver<bool>,
    render: impl Fn(&T) -> R + Send + 'static,
) -> BoxStream<'static, Result<R, Status>>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
{
    let state = (bundle, shutdown, true, false);
    stream::unfold(state, move |(mut bundle, mut shutdown, first, done)| async move {
        if done {
            return None;
        }
        if !first {
            let changed = tokio::select! {
                result = bundle.changed() => result.is_ok(),
                _ = shutdown.wait_for(|stopping| *stopping) => false,
            };
            if !changed {
                return Some((Err(status::shutting_down()), (bundle, shutdown, false, true)));
            }
        }
        let current = Arc::clone(&bundle.borrow_and_update());
        Some((Ok(current), (bundle, shutdown, false, false)))
    })
    .map(move |item| item.map(|bundle| render(&bundle)))
    .boxed()
}

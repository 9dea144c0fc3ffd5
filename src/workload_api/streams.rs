//! The streaming answers. Each message carries the caller's full state
//! (an identity left out is taken as revoked); the first goes out at once,
//! the next on every rotation of one of the caller's SVIDs, change of the
//! bundle, or policy change that alters the caller's entries, and when the
//! term of one of its entries' owners ends (the caller is admitted again:
//! that identity is left out of the next message, or the stream ends if it
//! was the last, as when the policy removes an entry). Every X.509-SVID
//! sent is audited before it is sent.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;
use tonic::Status;

use super::caller::{Caller, rpc};
use super::caller_watch::{CallerWatch, Credentials};
use super::{Context, status};
use crate::proto::{X509svid, X509svidResponse};
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
pub(super) fn x509_svids(
    ctx: Arc<Context>,
    caller: Caller,
) -> Result<BoxStream<'static, Result<X509svidResponse, Status>>, Status> {
    let mut watch = X509Watch {
        _open: OpenStream::new(),
        credentials: CallerWatch::new(ctx, caller, rpc::FETCH_X509_SVID)?,
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
        let Credentials { identities, bundle } = self.credentials.current();
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
                hint: entry.hint.clone().unwrap_or_default(),
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
    struct BundleWatch<T> {
        _open: OpenStream,
        bundle: watch::Receiver<Arc<T>>,
        shutdown: watch::Receiver<bool>,
        first: bool,
    }
    let state = Some(BundleWatch {
        _open: OpenStream::new(),
        bundle,
        shutdown,
        first: true,
    });
    // A `None` state ends the stream after the item that set it.
    stream::unfold(state, |state| async move {
        let mut watch = state?;
        if !watch.first {
            let changed = tokio::select! {
                result = watch.bundle.changed() => result.is_ok(),
                _ = watch.shutdown.wait_for(|stopping| *stopping) => false,
            };
            if !changed {
                return Some((Err(status::shutting_down()), None));
            }
        }
        watch.first = false;
        let current = Arc::clone(&watch.bundle.borrow_and_update());
        Some((Ok(current), Some(watch)))
    })
    .map(move |item| item.map(|bundle| render(&bundle)))
    .boxed()
}

//! Requests being received and handled, per uid. tonic buffers a request
//! message whole (up to the message limit) before its handler runs, so the
//! memory one uid can pin is what it has in flight times that limit; with
//! its connection and stream caps alone that would be 256 x 16 messages.
//! Each uid may have a fixed number of requests in flight; the rest wait,
//! their bodies unread (bounded by the HTTP/2 windows). A permit is held
//! until the handler has answered (for a stream: its first message), so
//! open streams do not hold one.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use super::PeerInfo;
use super::per_uid_permits::{PerUidPermit, PerUidPermits};

/// Per-uid permits for requests in flight.
#[derive(Debug)]
pub struct RequestPermits(PerUidPermits);

impl RequestPermits {
    /// Each uid may have `per_uid` requests in flight (at least 1).
    pub fn new(per_uid: usize) -> Arc<Self> {
        Arc::new(Self(PerUidPermits::new(per_uid.max(1))))
    }

    /// Waits for `uid`'s turn. The returned guard holds the permit.
    async fn acquire(&self, uid: u32) -> Option<PerUidPermit> {
        // The semaphores are never closed.
        self.0.acquire(uid).await.ok()
    }
}

/// The tower layer that applies [`RequestPermits`] to the gRPC service.
#[derive(Debug, Clone)]
pub struct RequestPermitsLayer(pub Arc<RequestPermits>);

impl<S> tower::Layer<S> for RequestPermitsLayer {
    type Service = RequestPermitsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestPermitsService {
            inner,
            permits: Arc::clone(&self.0),
        }
    }
}

/// See [`RequestPermitsLayer`].
#[derive(Debug, Clone)]
pub struct RequestPermitsService<S> {
    inner: S,
    permits: Arc<RequestPermits>,
}

impl<S, B> tower::Service<http::Request<B>> for RequestPermitsService<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service polled ready is the one that must take the request.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        // A connection whose peer could not be pinned shares one bucket.
        let uid = match request.extensions().get::<PeerInfo>().map(|peer| &peer.0) {
            Some(Ok(peer)) => peer.uid,
            _ => u32::MAX,
        };
        let permits = Arc::clone(&self.permits);
        Box::pin(async move {
            let _held = permits.acquire(uid).await;
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn each_uid_has_its_own_requests_in_flight() {
        let permits = RequestPermits::new(2);
        let a = permits.acquire(2001).now_or_never().flatten().unwrap();
        let _b = permits.acquire(2001).now_or_never().flatten().unwrap();
        assert!(permits.acquire(2001).now_or_never().is_none(), "2001 waits");
        assert!(
            permits.acquire(1000).now_or_never().flatten().is_some(),
            "other uids do not"
        );
        drop(a);
        assert!(permits.acquire(2001).now_or_never().flatten().is_some());
        assert_eq!(permits.0.users(2001), Some(1), "only _b is left");
    }
}

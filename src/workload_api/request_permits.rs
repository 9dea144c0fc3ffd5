//! Requests being received and handled, per uid. tonic buffers a request
//! message whole (up to the message limit) before its handler runs, so the
//! memory one uid can pin is what it has in flight times that limit; with
//! its connection and stream caps alone that would be 256 x 16 messages.
//! Each uid may have a fixed number of requests in flight; the rest wait,
//! their bodies unread (bounded by the HTTP/2 windows). A permit is held
//! until the handler has answered (for a stream: its first message), so
//! open streams do not hold one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::PeerInfo;

/// Per-uid permits for requests in flight.
#[derive(Debug)]
pub struct RequestPermits {
    per_uid: usize,
    // std Mutex: held to look up or count, never across an await.
    uids: Mutex<HashMap<u32, UidPermits>>,
}

#[derive(Debug)]
struct UidPermits {
    permits: Arc<Semaphore>,
    /// Holders and waiters; the entry goes when none is left.
    users: usize,
}

/// One holder or waiter of a uid's permits.
struct UidUser {
    owner: Arc<RequestPermits>,
    uid: u32,
}

impl RequestPermits {
    /// Each uid may have `per_uid` requests in flight (at least 1).
    pub fn new(per_uid: usize) -> Arc<Self> {
        Arc::new(Self {
            per_uid: per_uid.max(1),
            uids: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for `uid`'s turn. The returned guards hold the permit.
    async fn acquire(self: &Arc<Self>, uid: u32) -> Option<(OwnedSemaphorePermit, UidUser)> {
        let (user, permits) = self.enter(uid);
        // The semaphores are never closed.
        let permit = permits.acquire_owned().await.ok()?;
        Some((permit, user))
    }

    fn enter(self: &Arc<Self>, uid: u32) -> (UidUser, Arc<Semaphore>) {
        let mut uids = self.lock();
        let entry = uids.entry(uid).or_insert_with(|| UidPermits {
            permits: Arc::new(Semaphore::new(self.per_uid)),
            users: 0,
        });
        entry.users += 1;
        let permits = Arc::clone(&entry.permits);
        let user = UidUser {
            owner: Arc::clone(self),
            uid,
        };
        (user, permits)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, UidPermits>> {
        // Counter updates leave the map consistent.
        self.uids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for UidUser {
    fn drop(&mut self) {
        let mut uids = self.owner.lock();
        if let Some(entry) = uids.get_mut(&self.uid) {
            entry.users -= 1;
            if entry.users == 0 {
                uids.remove(&self.uid);
            }
        }
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
        assert_eq!(permits.lock()[&2001].users, 1, "only _b is left");
    }
}

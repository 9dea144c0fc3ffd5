//! Permits for attestations. Attesting hashes executables and scans
//! `/proc/*/fd` on blocking threads; without a bound, every request in
//! flight on the host would be one more busy thread. So at most a fixed
//! number run at once host-wide, and no uid holds more than half of them:
//! a uid waits for its own turn first, so its queued requests never stand
//! in line ahead of other uids' (a request flood from one uid delays others
//! by at most the attestations it may run at once).

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use super::per_uid_permits::{PerUidPermit, PerUidPermits};

/// The host-wide and per-uid attestation permits.
#[derive(Debug)]
pub struct AttestationPermits {
    global: Arc<Semaphore>,
    per_uid: PerUidPermits,
}

/// Leave to attest, for as long as it is held. Move it into the blocking
/// task: a request cancelled mid-attestation must not free the permit while
/// its work still runs.
#[derive(Debug)]
pub struct AttestationPermit {
    _global: OwnedSemaphorePermit,
    _uid: PerUidPermit,
}

impl AttestationPermits {
    /// `max` attestations at once host-wide (at least 1), each uid at most
    /// half of them (rounded up).
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            global: Arc::new(Semaphore::new(max)),
            per_uid: PerUidPermits::new(max.div_ceil(2)),
        })
    }

    /// Waits for a permit for an attestation of a caller of `uid`: first
    /// the uid's own turn, then a host-wide one. Fails only if the permits
    /// were closed, which they never are.
    pub async fn acquire(&self, uid: u32) -> Result<AttestationPermit, AcquireError> {
        let uid_permit = self.per_uid.acquire(uid).await?;
        let global = Arc::clone(&self.global).acquire_owned().await?;
        Ok(AttestationPermit {
            _global: global,
            _uid: uid_permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_uid_takes_at_most_half_and_others_go_first() {
        let permits = AttestationPermits::new(4);
        let a1 = permits.acquire(2001).now_or_never().unwrap().unwrap();
        let _a2 = permits.acquire(2001).now_or_never().unwrap().unwrap();
        assert!(
            permits.acquire(2001).now_or_never().is_none(),
            "a uid holds at most half"
        );
        let _b1 = permits.acquire(1000).now_or_never().unwrap().unwrap();
        let b2 = permits.acquire(1000).now_or_never().unwrap().unwrap();
        assert!(permits.acquire(0).now_or_never().is_none(), "all four taken");
        drop((a1, b2));
        assert!(permits.acquire(0).now_or_never().is_some());
    }

    #[tokio::test]
    async fn forgets_uids_with_no_holder_or_waiter() {
        let permits = AttestationPermits::new(1);
        let held = permits.acquire(2001).now_or_never().unwrap().unwrap();
        // A waiter that gives up (a cancelled request) leaves no trace.
        assert!(permits.acquire(2001).now_or_never().is_none());
        assert_eq!(permits.per_uid.users(2001), Some(1));
        drop(held);
        assert!(permits.per_uid.is_empty());
    }
}

//! Permits for attestations. Attesting hashes executables and scans
//! `/proc/*/fd` on blocking threads; without a bound, every request in
//! flight on the host would be one more busy thread. So at most a fixed
//! number run at once host-wide, and no uid holds more than half of them:
//! a uid waits for its own turn first, so its queued requests never stand
//! in line ahead of other uids' (a request flood from one uid delays others
//! by at most the attestations it may run at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// The host-wide and per-uid attestation permits.
#[derive(Debug)]
pub struct AttestationPermits {
    global: Arc<Semaphore>,
    per_uid_limit: usize,
    // std Mutex: held to look up or count, never across an await.
    per_uid: Mutex<HashMap<u32, UidPermits>>,
}

#[derive(Debug)]
struct UidPermits {
    permits: Arc<Semaphore>,
    /// Holders and waiters; the entry goes when none is left.
    users: usize,
}

/// Leave to attest, for as long as it is held. Move it into the blocking
/// task: a request cancelled mid-attestation must not free the permit while
/// its work still runs.
#[derive(Debug)]
pub struct AttestationPermit {
    _global: OwnedSemaphorePermit,
    _uid: OwnedSemaphorePermit,
    _user: UidUser,
}

/// One holder or waiter of a uid's permits.
#[derive(Debug)]
struct UidUser {
    owner: Arc<AttestationPermits>,
    uid: u32,
}

impl AttestationPermits {
    /// `max` attestations at once host-wide (at least 1), each uid at most
    /// half of them (rounded up).
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            global: Arc::new(Semaphore::new(max)),
            per_uid_limit: max.div_ceil(2),
            per_uid: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for a permit for an attestation of a caller of `uid`: first
    /// the uid's own turn, then a host-wide one. Fails only if the permits
    /// were closed, which they never are.
    pub async fn acquire(self: &Arc<Self>, uid: u32) -> Result<AttestationPermit, AcquireError> {
        let (user, uid_permits) = self.enter(uid);
        let uid_permit = uid_permits.acquire_owned().await?;
        let global = Arc::clone(&self.global).acquire_owned().await?;
        Ok(AttestationPermit {
            _global: global,
            _uid: uid_permit,
            _user: user,
        })
    }

    fn enter(self: &Arc<Self>, uid: u32) -> (UidUser, Arc<Semaphore>) {
        let mut per_uid = self.lock();
        let entry = per_uid.entry(uid).or_insert_with(|| UidPermits {
            permits: Arc::new(Semaphore::new(self.per_uid_limit)),
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
        self.per_uid
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for UidUser {
    fn drop(&mut self) {
        let mut per_uid = self.owner.lock();
        if let Some(entry) = per_uid.get_mut(&self.uid) {
            entry.users -= 1;
            if entry.users == 0 {
                per_uid.remove(&self.uid);
            }
        }
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
        assert_eq!(permits.lock()[&2001].users, 1);
        drop(held);
        assert!(permits.lock().is_empty());
    }
}

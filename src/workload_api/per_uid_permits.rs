//! A fixed number of permits per uid, for limits that one uid must not be
//! able to exhaust for the others. A uid's semaphore exists only while the
//! uid has a holder or a waiter, so uids that come and go leave nothing
//! behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Up to a fixed number of permits per uid.
#[derive(Debug)]
pub(super) struct PerUidPermits {
    per_uid: usize,
    // std Mutex: held to look up or count, never across an await.
    uids: Arc<Mutex<HashMap<u32, UidPermits>>>,
}

#[derive(Debug)]
struct UidPermits {
    permits: Arc<Semaphore>,
    /// Holders and waiters; the entry goes when none is left.
    users: usize,
}

/// One of a uid's permits, for as long as it is held.
#[derive(Debug)]
pub(super) struct PerUidPermit {
    // Released before the uid's entry is let go of (fields drop in order).
    _permit: OwnedSemaphorePermit,
    _user: UidUser,
}

/// One holder or waiter of a uid's permits.
#[derive(Debug)]
struct UidUser {
    uids: Arc<Mutex<HashMap<u32, UidPermits>>>,
    uid: u32,
}

impl PerUidPermits {
    /// `per_uid` permits for each uid.
    pub(super) fn new(per_uid: usize) -> Self {
        Self {
            per_uid,
            uids: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Waits for one of `uid`'s permits. Fails only if the permits were
    /// closed, which they never are.
    pub(super) async fn acquire(&self, uid: u32) -> Result<PerUidPermit, AcquireError> {
        let (user, permits) = self.enter(uid);
        let permit = permits.acquire_owned().await?;
        Ok(PerUidPermit {
            _permit: permit,
            _user: user,
        })
    }

    fn enter(&self, uid: u32) -> (UidUser, Arc<Semaphore>) {
        let mut uids = lock(&self.uids);
        let entry = uids.entry(uid).or_insert_with(|| UidPermits {
            permits: Arc::new(Semaphore::new(self.per_uid)),
            users: 0,
        });
        entry.users += 1;
        let permits = Arc::clone(&entry.permits);
        let user = UidUser {
            uids: Arc::clone(&self.uids),
            uid,
        };
        (user, permits)
    }

    /// Holders and waiters of `uid`'s permits (`None`: the uid is not
    /// tracked).
    #[cfg(test)]
    pub(super) fn users(&self, uid: u32) -> Option<usize> {
        lock(&self.uids).get(&uid).map(|entry| entry.users)
    }

    /// Whether no uid is tracked.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        lock(&self.uids).is_empty()
    }
}

fn lock(uids: &Mutex<HashMap<u32, UidPermits>>) -> MutexGuard<'_, HashMap<u32, UidPermits>> {
    // Counter updates leave the map consistent.
    uids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for UidUser {
    fn drop(&mut self) {
        let mut uids = lock(&self.uids);
        if let Some(entry) = uids.get_mut(&self.uid) {
            entry.users -= 1;
            if entry.users == 0 {
                uids.remove(&self.uid);
            }
        }
    }
}

//! A cap on open connections per uid, so that one local user opening
//! connections without end exhausts its own share, not attestd's file
//! descriptors and with them every other workload's access.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Open connections per uid, with a cap.
#[derive(Debug)]
pub struct ConnectionLimits {
    per_uid: usize,
    // std Mutex: held for a counter update, never across an await.
    open: Mutex<HashMap<u32, usize>>,
}

/// One counted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    uid: u32,
}

impl ConnectionLimits {
    /// At most `per_uid` open connections for each uid.
    pub fn new(per_uid: usize) -> Arc<Self> {
        Arc::new(Self {
            per_uid,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection of `uid`, unless it is at its cap.
    pub fn acquire(self: &Arc<Self>, uid: u32) -> Option<ConnectionSlot> {
        let mut open = self.lock();
        let count = open.entry(uid).or_default();
        if *count >= self.per_uid {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            limits: Arc::clone(self),
            uid,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, usize>> {
        // Counter updates leave the map consistent.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        if let Some(count) = open.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_uid_separately_and_frees_on_drop() {
        let limits = ConnectionLimits::new(2);
        let a = limits.acquire(1000).unwrap();
        let _b = limits.acquire(1000).unwrap();
        assert!(limits.acquire(1000).is_none(), "uid 1000 at its cap");
        assert!(limits.acquire(0).is_some(), "other uids unaffected");
        drop(a);
        assert!(
            limits.acquire(1000).is_some(),
            "a closed connection frees its slot"
        );
    }
}

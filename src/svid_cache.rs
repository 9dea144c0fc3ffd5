//! Per-entry SVIDs: minted once, shared by every caller of the entry, and
//! rotated in the background.
//!
//! Each cached SVID has one rotation task that owns the `watch::Sender`;
//! callers hold receivers, so an open stream sees every rotation. The task
//! renews at about half the remaining lifetime (with jitter, so entries minted
//! together do not renew together), retries a failed mint with backoff while
//! the current SVID stays in service, and retires itself once nobody holds a
//! receiver and the entry has not been used for a whole lifetime (a later
//! caller gets a fresh mint).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::authority::{Authority, AuthorityError, SvidTemplate, X509Svid};

/// First retry delay after a failed mint; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Renewal happens at half the remaining lifetime minus up to this fraction
/// of it.
const JITTER_FRACTION: f64 = 0.1;

/// The receiving end of one cached SVID.
pub type SvidReceiver = watch::Receiver<Arc<X509Svid>>;

struct Slot {
    /// Kept so later callers can subscribe without a new mint.
    receiver: SvidReceiver,
    last_used: Instant,
}

/// The shared SVIDs, keyed by what they certify.
pub struct SvidCache {
    authority: Arc<Authority>,
    // std Mutex: held for map access and a first mint (CPU only, about a
    // millisecond), never across an await.
    slots: Mutex<HashMap<SvidTemplate, Slot>>,
}

impl std::fmt::Debug for SvidCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidCache")
            .field("entries", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl SvidCache {
    /// An empty cache minting with `authority`.
    pub fn new(authority: Arc<Authority>) -> Arc<Self> {
        Arc::new(Self {
            authority,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// A receiver of the current SVID for `template`, minting it if this is
    /// its first use. Must be called inside the tokio runtime (it may spawn
    /// the rotation task).
    pub fn subscribe(self: &Arc<Self>, template: &SvidTemplate) -> Result<SvidReceiver, AuthorityError> {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(template)
            && slot.receiver.borrow().not_after > SystemTime::now()
        {
            slot.last_used = Instant::now();
            return Ok(slot.receiver.clone());
        }
        let svid = Arc::new(self.authority.mint_x509(template)?);
        tracing::info!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, "minted X.509-SVID");
        let (sender, receiver) = watch::channel(svid);
        slots.insert(
            template.clone(),
            Slot {
                receiver: receiver.clone(),
                last_used: Instant::now(),
            },
        );
        tokio::spawn(rotate(Arc::downgrade(self), template.clone(), sender));
        Ok(receiver)
    }

    /// Number of SVIDs currently cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SvidTemplate, Slot>> {
        // Every critical section leaves the map consistent, so a poisoned
        // lock is safe to keep using.
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops the slot if nobody but the cache holds a receiver and it has
    /// not been used for `idle`. Returns whether it was dropped.
    fn retire_if_idle(
        &self,
        template: &SvidTemplate,
        sender: &watch::Sender<Arc<X509Svid>>,
        idle: Duration,
    ) -> bool {
        let mut slots = self.lock();
        let Some(slot) = slots.get(template) else {
            return true;
        };
        if sender.receiver_count() <= 1 && slot.last_used.elapsed() >= idle {
            slots.remove(template);
            return true;
        }
        false
    }
}

/// The rotation task of one SVID: owns its sender until the cache is dropped
/// or the SVID is retired.
async fn rotate(cache: Weak<SvidCache>, template: SvidTemplate, sender: watch::Sender<Arc<X509Svid>>) {
    loop {
        let current = sender.borrow().clone();
        tokio::time::sleep(renewal_delay(&current, SystemTime::now())).await;
        let Some(cache) = cache.upgrade() else { return };
        if cache.retire_if_idle(&template, &sender, template.ttl) {
            tracing::debug!(spiffe_id = %template.spiffe_id, "retired idle SVID");
            return;
        }
        let renewed = renew(&cache.authority, &template, &current).await;
        tracing::info!(spiffe_id = %renewed.spiffe_id, serial = %renewed.serial, previous = %current.serial, "rotated X.509-SVID");
        sender.send_replace(Arc::new(renewed));
    }
}

/// Mints a replacement, retrying with backoff. The old SVID keeps being
/// served meanwhile; once it has expired the retries continue (callers then
/// get expired material, which clients reject, rather than nothing at all).
async fn renew(authority: &Authority, template: &SvidTemplate, current: &X509Svid) -> X509Svid {
    let mut backoff = MIN_BACKOFF;
    loop {
        match authority.mint_x509(template) {
            Ok(svid) => return svid,
            Err(error) => {
                let left = current
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::warn!(spiffe_id = %template.spiffe_id, %error, retry_in = ?backoff, valid_for = ?left, "SVID renewal failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Half the remaining lifetime, less up to 10% of it as jitter.
fn renewal_delay(svid: &X509Svid, now: SystemTime) -> Duration {
    let remaining = svid.not_after.duration_since(now).unwrap_or_default();
    let half = remaining / 2;
    let jitter = half.mul_f64(rand::rng().random_range(0.0..JITTER_FRACTION));
    half - jitter
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe_id::{SpiffeId, TrustDomain};

    fn fixture(ttl: Duration) -> (tempfile::TempDir, Arc<SvidCache>, SvidTemplate) {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let authority = Authority::embedded(td, dir.path(), Duration::from_secs(3600)).unwrap();
        let template = SvidTemplate {
            spiffe_id: SpiffeId::new("spiffe://example.org/w").unwrap(),
            dns_names: vec![],
            ttl,
        };
        (dir, SvidCache::new(Arc::new(authority)), template)
    }

    #[test]
    fn renewal_is_near_half_life() {
        let now = SystemTime::now();
        let svid = X509Svid {
            spiffe_id: SpiffeId::new("spiffe://example.org/w").unwrap(),
            cert_chain: vec![],
            private_key_pkcs8: vec![],
            serial: String::new(),
            not_before: now,
            not_after: now + Duration::from_secs(100),
        };
        for _ in 0..100 {
            let delay = renewal_delay(&svid, now);
            assert!(
                delay <= Duration::from_secs(50) && delay >= Duration::from_secs(45),
                "{delay:?}"
            );
        }
    }

    #[tokio::test]
    async fn shared_between_callers_and_rotated() {
        let (_dir, cache, template) = fixture(Duration::from_secs(6));
        let mut first = cache.subscribe(&template).unwrap();
        let second = cache.subscribe(&template).unwrap();
        let serial = first.borrow().serial.clone();
        assert_eq!(second.borrow().serial, serial, "one SVID per entry");
        tokio::time::timeout(Duration::from_secs(5), first.changed())
            .await
            .unwrap()
            .unwrap();
        assert_ne!(first.borrow().serial, serial, "rotated before expiry");
        assert_eq!(cache.len(), 1);
    }
}

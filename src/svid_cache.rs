//! Per-entry SVIDs: minted once, shared by every caller of the entry, and
//! rotated in the background.
//!
//! Each cached SVID has one rotation task that owns the `watch::Sender`;
//! callers hold receivers, so an open stream sees every rotation. The task
//! renews at about half the remaining lifetime (with jitter, so entries minted
//! together do not renew together), retries a failed mint with backoff while
//! the current SVID stays in service, and retires itself once nobody holds a
//! receiver and the entry has not been used for a whole lifetime (a later
//! caller gets a fresh mint). An SVID whose template ends with its owner's
//! term (`valid_until`) is not renewed past it: the task stops there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::authority::{Authority, AuthorityError, SvidTemplate, X509Svid};
use crate::telemetry::metrics;
use crate::wall_clock;

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
    /// Tells the slot's own rotation task from the task of a slot it
    /// replaced (which must then stop).
    generation: u64,
}

/// What a rotation task should do when it wakes up.
#[derive(Debug, PartialEq, Eq)]
enum Duty {
    Renew,
    /// Unused for a whole lifetime and nobody listening: drop it.
    Retire,
    /// Its slot was replaced by a fresh mint: the task is obsolete.
    Obsolete,
    /// The owner's term ended: the slot is gone, nothing more is minted.
    TermEnded,
}

/// The shared SVIDs, keyed by what they certify.
pub struct SvidCache {
    authority: Arc<Authority>,
    // std Mutex: held for map access, never across an await.
    slots: Mutex<HashMap<SvidTemplate, Slot>>,
    /// One gate per template being minted for the first time, so callers
    /// arriving meanwhile wait for that mint instead of minting again (a
    /// remote mint takes a round trip to the server).
    first_mints: Mutex<HashMap<SvidTemplate, Arc<tokio::sync::Mutex<()>>>>,
    next_generation: AtomicU64,
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
            first_mints: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(0),
        })
    }

    /// A receiver of the current SVID for `template`, minting it if this is
    /// its first use or the cached one has expired (after a suspend, say;
    /// the stale slot's task then retires). Concurrent first callers share
    /// one mint. Must be called inside the tokio runtime (it may spawn the
    /// rotation task).
    pub async fn subscribe(
        self: &Arc<Self>,
        template: &SvidTemplate,
    ) -> Result<SvidReceiver, AuthorityError> {
        if let Some(receiver) = self.current(template) {
            return Ok(receiver);
        }
        let gate = Arc::clone(lock(&self.first_mints).entry(template.clone()).or_default());
        let _minting = gate.lock().await;
        // Minted by the caller this one waited for.
        if let Some(receiver) = self.current(template) {
            return Ok(receiver);
        }
        let minted = self.authority.issue_x509(template).await;
        lock(&self.first_mints).remove(template);
        Ok(self.install(template, minted?))
    }

    /// [`Self::subscribe`] for an authority that signs here, without
    /// waiting: for callers outside async code (a TLS certificate
    /// resolver). Fails in fleet mode.
    pub fn subscribe_local(
        self: &Arc<Self>,
        template: &SvidTemplate,
    ) -> Result<SvidReceiver, AuthorityError> {
        if let Some(receiver) = self.current(template) {
            return Ok(receiver);
        }
        let svid = self.authority.mint_x509(template)?;
        Ok(self.install(template, svid))
    }

    /// Puts a first-minted SVID in its slot and starts its rotation task.
    fn install(self: &Arc<Self>, template: &SvidTemplate, svid: X509Svid) -> SvidReceiver {
        let svid = Arc::new(svid);
        tracing::info!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, "minted X.509-SVID");
        metrics().x509_minted(false);
        let (sender, receiver) = watch::channel(svid);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            template.clone(),
            Slot {
                receiver: receiver.clone(),
                last_used: Instant::now(),
                generation,
            },
        );
        tokio::spawn(rotate(Arc::downgrade(self), template.clone(), generation, sender));
        receiver
    }

    /// The cached SVID for `template`, if it is still valid (marking it
    /// used).
    fn current(&self, template: &SvidTemplate) -> Option<SvidReceiver> {
        let mut slots = self.lock();
        let slot = slots.get_mut(template)?;
        let now = wall_clock::now();
        let svid = slot.receiver.borrow();
        // Not yet valid: the clock stepped back past its making.
        if svid.not_after <= now || svid.not_before > now {
            return None;
        }
        drop(svid);
        slot.last_used = Instant::now();
        Some(slot.receiver.clone())
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
        lock(&self.slots)
    }

    /// Decides what the rotation task of `generation` does now; retiring
    /// removes the slot.
    fn duty(&self, template: &SvidTemplate, generation: u64, listeners: usize) -> Duty {
        let mut slots = self.lock();
        let Some(slot) = slots.get(template).filter(|slot| slot.generation == generation) else {
            return Duty::Obsolete;
        };
        if template
            .valid_until
            .is_some_and(|until| wall_clock::now() >= until)
        {
            slots.remove(template);
            return Duty::TermEnded;
        }
        // The slot's own receiver is always there; more means a live stream.
        if listeners <= 1 && slot.last_used.elapsed() >= template.ttl {
            slots.remove(template);
            return Duty::Retire;
        }
        Duty::Renew
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent, so a poisoned
    // lock is safe to keep using.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The rotation task of one SVID: owns its sender until the cache is
/// dropped, the SVID is retired, or its slot is replaced. Dropping the
/// sender ends the streams still holding its receivers, and their clients
/// reconnect to the current slot.
async fn rotate(
    cache: Weak<SvidCache>,
    template: SvidTemplate,
    generation: u64,
    sender: watch::Sender<Arc<X509Svid>>,
) {
    loop {
        let current = sender.borrow().clone();
        // Fixed once per SVID: a clock step must not move it.
        let renew_at = renewal_time(&current, wall_clock::now());
        wall_clock::sleep_until_due(|now| next_duty(&template, &current, renew_at, now)).await;
        let Some(cache) = cache.upgrade() else { return };
        match cache.duty(&template, generation, sender.receiver_count()) {
            Duty::Renew => {}
            Duty::Retire => {
                tracing::debug!(spiffe_id = %template.spiffe_id, "retired idle SVID");
                return;
            }
            Duty::Obsolete => return,
            Duty::TermEnded => {
                tracing::info!(spiffe_id = %template.spiffe_id, "owner's term ended; SVID no longer renewed");
                // Open streams drop their receivers as they wake at the
                // same moment: dropping the sender under them first would
                // end them as if the SVID had been re-issued.
                drop(cache);
                sender.closed().await;
                return;
            }
        }
        let renewed = renew(&cache.authority, &template, &current).await;
        tracing::info!(spiffe_id = %renewed.spiffe_id, serial = %renewed.serial, previous = %current.serial, "rotated X.509-SVID");
        metrics().x509_minted(true);
        sender.send_replace(Arc::new(renewed));
    }
}

/// Mints a replacement, retrying with backoff. The old SVID keeps being
/// served meanwhile; once it has expired the retries continue (callers then
/// get expired material, which clients reject, rather than nothing at all).
async fn renew(authority: &Authority, template: &SvidTemplate, current: &X509Svid) -> X509Svid {
    let mut backoff = MIN_BACKOFF;
    loop {
        match authority.issue_x509(template).await {
            Ok(svid) => return svid,
            Err(error) => {
                let left = current
                    .not_after
                    .duration_since(wall_clock::now())
                    .unwrap_or_default();
                tracing::warn!(spiffe_id = %template.spiffe_id, %error, retry_in = ?backoff, valid_for = ?left, "SVID renewal failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// When the rotation task next has something to do: renew at `renew_at`,
/// except for an SVID already cut at the end of its owner's term (a renewal
/// could not outlast it): it stops at that end. An SVID not valid yet (the
/// clock stepped back past its making, beyond its backdating) is renewed at
/// once.
fn next_duty(
    template: &SvidTemplate,
    current: &X509Svid,
    renew_at: SystemTime,
    now: SystemTime,
) -> SystemTime {
    if current.not_before > now {
        return now;
    }
    match template.valid_until {
        Some(until) if current.not_after >= until => until,
        _ => renew_at,
    }
}

/// Half the lifetime left at `now` (when the SVID is new: half its life),
/// less up to 10% of it as jitter.
fn renewal_time(svid: &X509Svid, now: SystemTime) -> SystemTime {
    let remaining = svid.not_after.duration_since(now).unwrap_or_default();
    let half = remaining / 2;
    let jitter = half.mul_f64(rand::rng().random_range(0.0..JITTER_FRACTION));
    now + half - jitter
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe_id::SpiffeId;

    fn fixture(ttl: Duration) -> (tempfile::TempDir, Arc<SvidCache>, SvidTemplate) {
        let (dir, authority) = crate::authority::test_authority();
        let template = SvidTemplate {
            spiffe_id: SpiffeId::new("spiffe://example.org/w").unwrap(),
            dns_names: vec![],
            ttl,
            valid_until: None,
            remote_entry: None,
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
            let delay = renewal_time(&svid, now).duration_since(now).unwrap();
            assert!(
                delay <= Duration::from_secs(50) && delay >= Duration::from_secs(45),
                "{delay:?}"
            );
        }
    }

    #[tokio::test]
    async fn shared_between_callers_and_rotated() {
        let (_dir, cache, template) = fixture(Duration::from_secs(6));
        let mut first = cache.subscribe(&template).await.unwrap();
        let second = cache.subscribe(&template).await.unwrap();
        let serial = first.borrow().serial.clone();
        assert_eq!(second.borrow().serial, serial, "one SVID per entry");
        tokio::time::timeout(Duration::from_secs(5), first.changed())
            .await
            .unwrap()
            .unwrap();
        assert_ne!(first.borrow().serial, serial, "rotated before expiry");
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn replaced_slot_makes_its_old_task_obsolete_and_idle_slots_retire() {
        let (_dir, cache, template) = fixture(Duration::from_secs(5));
        let receiver = cache.subscribe(&template).await.unwrap();
        let generation = cache.lock()[&template].generation;
        assert_eq!(cache.duty(&template, generation + 1, 1), Duty::Obsolete);
        // A listener besides the slot's own receiver keeps it rotating.
        assert_eq!(cache.duty(&template, generation, 2), Duty::Renew);
        // Recently used: still renewed even with no listener.
        assert_eq!(cache.duty(&template, generation, 1), Duty::Renew);
        cache.lock().get_mut(&template).unwrap().last_used -= Duration::from_secs(5);
        assert_eq!(cache.duty(&template, generation, 1), Duty::Retire);
        assert!(cache.is_empty());
        drop(receiver);
    }

    #[tokio::test]
    async fn an_svid_cut_at_its_owners_term_is_not_renewed_and_its_slot_ends_there() {
        let (_dir, cache, mut template) = fixture(Duration::from_secs(3600));
        let until = SystemTime::now() + Duration::from_secs(60);
        template.valid_until = Some(until);
        let receiver = cache.subscribe(&template).await.unwrap();
        let svid = Arc::clone(&receiver.borrow());
        assert_eq!(svid.not_after, until, "cut at the term's end");
        let now = SystemTime::now();
        assert_eq!(
            next_duty(&template, &svid, renewal_time(&svid, now), now),
            until,
            "no renewal before it"
        );
        // Longer than the term: renewed at half-life as usual.
        let uncut = SvidTemplate {
            valid_until: Some(until + Duration::from_secs(7200)),
            remote_entry: None,
            ..template.clone()
        };
        assert!(next_duty(&uncut, &svid, renewal_time(&svid, now), now) < until);
        // Back past its making (beyond the backdating): renewed at once.
        let back = svid.not_before - Duration::from_secs(1);
        assert_eq!(next_duty(&uncut, &svid, renewal_time(&svid, now), back), back);

        let generation = cache.lock()[&template].generation;
        assert_eq!(cache.duty(&template, generation, 2), Duty::Renew);
        template.valid_until = Some(SystemTime::now() - Duration::from_secs(1));
        cache.lock().insert(
            template.clone(),
            Slot {
                receiver: receiver.clone(),
                last_used: Instant::now(),
                generation,
            },
        );
        assert_eq!(cache.duty(&template, generation, 2), Duty::TermEnded);
        assert!(
            !cache.lock().contains_key(&template),
            "later callers get nothing from it"
        );
        assert!(
            cache.subscribe(&template).await.is_err(),
            "nothing is minted after the term"
        );
    }
}

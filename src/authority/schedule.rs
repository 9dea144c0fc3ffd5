//! The rotation schedule shared by the embedded CA and the JWT signing keys.
//! Each credential lives `ttl`:
//!
//! ```text
//! created ─ ttl/4 ─▶ signs ─── ttl/2 ───▶ successor signs ─ ttl/4 ─▶ expires
//!  (published)                  ▲
//!                               └ successor created (and published) at ttl/2
//! ```
//!
//! A credential is published (in the bundle) from its creation, a quarter of
//! its life before it signs anything, so relying parties hold it first. It
//! stops signing when its successor starts, and leaves the bundle when it
//! expires. Nothing it signs outlives it (lifetimes are capped at its
//! expiry), so it stays published until everything it signed has expired.
//! The very first credential signs at once.

use std::time::{Duration, SystemTime};

use crate::wall_clock::STEP_TOLERANCE;

/// A credential's place in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// When it was made (and published).
    pub created: SystemTime,
    /// When it starts signing.
    pub activate_at: SystemTime,
    /// When it expires; nothing it signs lives longer.
    pub not_after: SystemTime,
}

/// A credential with a place in the schedule.
pub trait Scheduled {
    /// Its place in the schedule.
    fn lifetime(&self) -> Lifetime;
}

/// When to make a credential and when it signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Creation (publication) time.
    pub created: SystemTime,
    /// Start of signing.
    pub activate_at: SystemTime,
    /// Lifetime from creation.
    pub ttl: Duration,
}

/// The credentials of one kind, on the schedule.
#[derive(Debug)]
pub struct Rotation<K> {
    ttl: Duration,
    items: Vec<K>,
}

impl<K: Scheduled> Rotation<K> {
    /// A schedule of `ttl`-long credentials, starting from `items` (loaded).
    pub fn new(ttl: Duration, items: Vec<K>) -> Self {
        Self { ttl, items }
    }

    /// Brings the schedule up to `now`: drops expired credentials, and
    /// those made in the future (the clock stepped back past them: nothing
    /// they signed is valid yet, see [`in_use`]), and makes the next one
    /// when it is due (or a first, immediately signing one).
    /// Returns whether the published set changed.
    ///
    /// The new set is handed to `save` before it replaces the current one:
    /// if saving fails, nothing changes and the error is returned. A
    /// credential that is not on disk is never published or used, since a
    /// restart would forget it while relying parties hold it and SVIDs it
    /// signed are in use (a split bundle); the current one keeps signing,
    /// and the caller retries.
    pub fn advance<E>(
        &mut self,
        now: SystemTime,
        make: impl FnOnce(Slot) -> Result<K, E>,
        save: impl FnOnce(&[&K]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let alive = |item: &K| in_use(item.lifetime(), now);
        let expired = self.items.iter().any(|item| !alive(item));
        let slot = self.due(now);
        if slot.is_none() && !expired {
            return Ok(false);
        }
        let new = slot.map(make).transpose()?;
        let next: Vec<&K> = self.items.iter().filter(|item| alive(item)).chain(&new).collect();
        save(&next)?;
        self.items.retain(alive);
        self.items.extend(new);
        Ok(true)
    }

    /// The slot of the credential to make at `now`, if one is due.
    fn due(&self, now: SystemTime) -> Option<Slot> {
        if self.signing(now).is_none() {
            Some(Slot {
                created: now,
                activate_at: now,
                ttl: self.ttl,
            })
        } else if self.successor_due(now) {
            Some(Slot {
                created: now,
                activate_at: now + self.ttl / 4,
                ttl: self.ttl,
            })
        } else {
            None
        }
    }

    fn successor_due(&self, now: SystemTime) -> bool {
        self.newest()
            .is_some_and(|newest| newest.lifetime().created + self.ttl / 2 <= now)
    }

    fn newest(&self) -> Option<&K> {
        self.items.iter().max_by_key(|item| item.lifetime().created)
    }

    /// The credential that signs at `now`: the most recently activated
    /// live one; if none is active yet, the live one due first. That
    /// happens when a successor was made late (attestd was down, or the
    /// host suspended, past the moment it was due) and its predecessor
    /// expires before it activates: the successor has been published for
    /// a while, a fresh credential made then would not have been published
    /// at all.
    pub fn signing(&self, now: SystemTime) -> Option<&K> {
        let live = self
            .items
            .iter()
            .map(|item| (item, item.lifetime()))
            .filter(|(_, lifetime)| in_use(*lifetime, now));
        live.clone()
            .filter(|(_, lifetime)| lifetime.activate_at <= now)
            .max_by_key(|(_, lifetime)| lifetime.activate_at)
            .or_else(|| live.min_by_key(|(_, lifetime)| lifetime.activate_at))
            .map(|(item, _)| item)
    }

    /// When [`Self::advance`] next has work at `now`: a successor due or an
    /// expiry; `now` itself if there is nothing yet, or a credential made
    /// in the future.
    pub fn next_change(&self, now: SystemTime) -> SystemTime {
        if self.items.iter().any(|item| !in_use(item.lifetime(), now)) {
            return now;
        }
        let successor = self
            .newest()
            .map(|newest| newest.lifetime().created + self.ttl / 2);
        let expiry = self.items.iter().map(|item| item.lifetime().not_after).min();
        [successor, expiry].into_iter().flatten().min().unwrap_or(now)
    }

    /// Every published credential (all unexpired ones), oldest first.
    pub fn published(&self) -> &[K] {
        &self.items
    }
}

/// Whether a credential can be used at `now`: not expired, and not made
/// after `now` beyond [`STEP_TOLERANCE`]. A credential made "in the future"
/// means the clock was stepped back past its making: its certificate is
/// not valid yet (the backdating covers the tolerance), nor is anything it
/// signed, and its place in the schedule (its successor due half a life
/// after it was made) would stretch its real life by the step.
fn in_use(lifetime: Lifetime, now: SystemTime) -> bool {
    lifetime.not_after > now && lifetime.created <= now + STEP_TOLERANCE
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(100);

    #[derive(Debug, Clone, PartialEq)]
    struct Cred(u32, Slot);

    impl Scheduled for Cred {
        fn lifetime(&self) -> Lifetime {
            Lifetime {
                created: self.1.created,
                activate_at: self.1.activate_at,
                not_after: self.1.created + self.1.ttl,
            }
        }
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    #[test]
    fn publishes_before_signing_and_keeps_old_credentials_until_expiry() {
        let mut next = 0;
        let mut make = |slot| -> Result<Cred, ()> {
            next += 1;
            Ok(Cred(next, slot))
        };
        let save = |_: &[&Cred]| Ok(());
        let mut rotation = Rotation::new(TTL, Vec::new());
        assert!(rotation.advance(at(0), &mut make, save).unwrap());
        assert_eq!(rotation.signing(at(0)).unwrap().0, 1, "the first signs at once");
        assert_eq!(rotation.next_change(at(0)), at(50));

        assert!(!rotation.advance(at(49), &mut make, save).unwrap());
        assert!(
            rotation.advance(at(50), &mut make, save).unwrap(),
            "successor published at half-life"
        );
        assert_eq!(rotation.published().len(), 2);
        assert_eq!(
            rotation.signing(at(74)).unwrap().0,
            1,
            "successor not yet signing"
        );
        assert_eq!(
            rotation.signing(at(75)).unwrap().0,
            2,
            "successor signs after a quarter life"
        );

        assert_eq!(rotation.next_change(at(75)), at(100));
        assert!(rotation.advance(at(100), &mut make, save).unwrap());
        let live: Vec<u32> = rotation.published().iter().map(|c| c.0).collect();
        assert_eq!(
            live,
            [2, 3],
            "the first expired; a third was published at the second's half-life"
        );
    }

    #[test]
    fn after_a_long_outage_a_fresh_credential_signs_at_once() {
        let mut rotation = Rotation::new(TTL, Vec::new());
        rotation
            .advance(at(0), |slot| Ok::<_, ()>(Cred(1, slot)), |_| Ok(()))
            .unwrap();
        rotation
            .advance(at(500), |slot| Ok::<_, ()>(Cred(2, slot)), |_| Ok(()))
            .unwrap();
        assert_eq!(rotation.published().len(), 1);
        assert_eq!(rotation.signing(at(500)).unwrap().0, 2);
    }

    #[test]
    fn a_late_successor_signs_when_its_predecessor_expires_before_it_activates() {
        let ok = |_: &[&Cred]| Ok::<_, ()>(());
        let mut rotation = Rotation::new(TTL, Vec::new());
        rotation.advance(at(0), |slot| Ok(Cred(1, slot)), ok).unwrap();
        // Down from before the successor was due (50) until 90: it is made
        // then, to activate at 115, after the first expires (100).
        assert!(rotation.advance(at(90), |slot| Ok(Cred(2, slot)), ok).unwrap());
        assert_eq!(rotation.signing(at(99)).unwrap().0, 1);
        // At 100 the published successor signs; no unpublished third is made.
        assert!(rotation.advance(at(100), |slot| Ok(Cred(3, slot)), ok).unwrap());
        let live: Vec<u32> = rotation.published().iter().map(|c| c.0).collect();
        assert_eq!(live, [2]);
        assert_eq!(rotation.signing(at(100)).unwrap().0, 2);
    }

    #[test]
    fn a_change_that_cannot_be_saved_is_not_made() {
        let mut rotation = Rotation::new(TTL, Vec::new());
        let ok = |_: &[&Cred]| Ok::<_, &str>(());
        let full = |_: &[&Cred]| Err::<(), _>("disk full");
        rotation.advance(at(0), |slot| Ok(Cred(1, slot)), ok).unwrap();
        // The successor is due but cannot be saved: the first keeps signing
        // and nothing new is published.
        assert_eq!(
            rotation.advance(at(50), |slot| Ok(Cred(2, slot)), full),
            Err("disk full")
        );
        assert_eq!(rotation.published().len(), 1);
        assert_eq!(rotation.signing(at(80)).unwrap().0, 1);
        // Space again: the successor is made then.
        assert!(rotation.advance(at(55), |slot| Ok(Cred(3, slot)), ok).unwrap());
        let live: Vec<u32> = rotation.published().iter().map(|c| c.0).collect();
        assert_eq!(live, [1, 3]);
    }

    #[test]
    fn a_clock_stepped_back_past_a_credential_replaces_it_at_once() {
        let ok = |_: &[&Cred]| Ok::<_, ()>(());
        let mut rotation = Rotation::new(Duration::from_secs(1000), Vec::new());
        rotation.advance(at(500), |slot| Ok(Cred(1, slot)), ok).unwrap();
        // Back by less than the tolerance: nothing changes.
        let back_a_little = at(500) - STEP_TOLERANCE;
        assert_eq!(rotation.signing(back_a_little).unwrap().0, 1);
        assert_eq!(rotation.next_change(back_a_little), at(1000));
        // Back further: the credential is from the future; it signs
        // nothing, the change is due now, and a fresh one signs at once.
        let back = at(100);
        assert!(rotation.signing(back).is_none());
        assert_eq!(rotation.next_change(back), back);
        assert!(rotation.advance(back, |slot| Ok(Cred(2, slot)), ok).unwrap());
        let live: Vec<u32> = rotation.published().iter().map(|c| c.0).collect();
        assert_eq!(live, [2]);
        assert_eq!(rotation.signing(back).unwrap().0, 2);
        assert_eq!(rotation.next_change(back), at(600), "its successor at half-life");
    }
}

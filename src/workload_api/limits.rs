//! Caps on open connections, so that local users opening connections without
//! end exhaust their own share, not attestd's file descriptors and with them
//! every other workload's access.
//!
//! Three rules, checked at accept:
//! - each uid holds at most `per_uid` connections;
//! - all uids together hold at most `global`, a number derived from the
//!   descriptor limit (every connection holds its socket and a pidfd);
//! - the last `reserve` of those are kept for uids that hold fewer than
//!   [`RESERVE_SHARE`] connections, so that a new uid is still served while
//!   others sit at their caps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::LimitsConfig;
use crate::telemetry::{ConnectionRefusal, metrics};

/// Descriptors one connection holds: its socket and the pin on its peer (a
/// pidfd, or a `/proc/<pid>` directory on older kernels).
pub const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything that is not a connection: the runtime,
/// the listener, the audit trail, policy watches, signals, and headroom.
const FDS_BESIDES_CONNECTIONS: u64 = 64;
/// Descriptors one attestation in flight may open at once (`/proc/<pid>`,
/// its fd directory during a holder scan, the executable being hashed).
const FDS_PER_ATTESTATION: u64 = 8;
/// Within the reserve, a uid holding fewer connections than this is still
/// admitted: one stream plus one request, what an ordinary client needs.
pub const RESERVE_SHARE: usize = 2;

/// The connection budget in effect, derived from the configuration and the
/// descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Open connections one uid may hold.
    pub per_uid: usize,
    /// Open connections all uids together may hold.
    pub global: usize,
    /// How many of `global` only uids with few connections may take.
    pub reserve: usize,
}

impl ConnectionBudget {
    /// The budget for a process allowed `nofile` descriptors: the configured
    /// `max_connections`, or as many as the descriptors allow (never more),
    /// and the configured reserve or an eighth of the cap.
    /// `tcp_connections`: what the TCP listeners (health, OIDC discovery)
    /// may hold, one descriptor each.
    pub fn new(limits: &LimitsConfig, nofile: u64, attestations: usize, tcp_connections: usize) -> Self {
        let besides =
            FDS_BESIDES_CONNECTIONS + FDS_PER_ATTESTATION * attestations as u64 + tcp_connections as u64;
        let affordable = usize::try_from(nofile.saturating_sub(besides) / FDS_PER_CONNECTION)
            .unwrap_or(usize::MAX)
            .max(1);
        let global = match limits.max_connections {
            Some(configured) if configured > affordable => {
                tracing::warn!(
                    configured,
                    affordable,
                    nofile,
                    "[limits] max_connections exceeds what the descriptor limit allows; lowered"
                );
                affordable
            }
            Some(configured) => configured,
            None => affordable,
        };
        let reserve = limits
            .connection_reserve
            .unwrap_or(global / 8)
            .min(global.saturating_sub(1));
        Self {
            per_uid: limits.max_connections_per_uid,
            global,
            reserve,
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its uid holds `per_uid` connections already.
    UidCap,
    /// Only uids with fewer than [`RESERVE_SHARE`] connections are admitted
    /// now, and its uid holds more.
    Reserved,
    /// Every connection slot is taken.
    Full,
}

impl Refused {
    /// For logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UidCap => "uid at its connection cap",
            Self::Reserved => "only uids with few connections are admitted now (reserve)",
            Self::Full => "attestd at its global connection cap",
        }
    }

    fn metric(self) -> ConnectionRefusal {
        match self {
            Self::UidCap => ConnectionRefusal::UidCap,
            Self::Reserved => ConnectionRefusal::Reserve,
            Self::Full => ConnectionRefusal::Full,
        }
    }
}

/// Open connections, per uid and in all.
#[derive(Debug)]
pub struct ConnectionLimits {
    budget: ConnectionBudget,
    // std Mutex: held for a counter update, never across an await.
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// One counted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    uid: u32,
}

impl ConnectionLimits {
    /// Connections counted against `budget`.
    pub fn new(budget: ConnectionBudget) -> Arc<Self> {
        Arc::new(Self {
            budget,
            open: Mutex::new(Open::default()),
        })
    }

    /// A slot for a new connection of `uid`, unless a rule refuses it.
    pub fn acquire(self: &Arc<Self>, uid: u32) -> Result<ConnectionSlot, Refused> {
        let mut open = self.lock();
        let held = open.per_uid.get(&uid).copied().unwrap_or(0);
        let refusal = if held >= self.budget.per_uid {
            Some(Refused::UidCap)
        } else if open.total >= self.budget.global {
            Some(Refused::Full)
        } else if open.total >= self.budget.global - self.budget.reserve && held >= RESERVE_SHARE {
            Some(Refused::Reserved)
        } else {
            None
        };
        if let Some(refused) = refusal {
            metrics().connection_refused(refused.metric());
            return Err(refused);
        }
        *open.per_uid.entry(uid).or_default() += 1;
        open.total += 1;
        metrics().connections(1);
        Ok(ConnectionSlot {
            limits: Arc::clone(self),
            uid,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        // Counter updates leave the counts consistent.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ConnectionSlot {
    /// The uid the slot is counted for.
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        if let Some(count) = open.per_uid.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                open.per_uid.remove(&self.uid);
            }
            open.total -= 1;
            metrics().connections(-1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_uid: usize, global: usize, reserve: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(ConnectionBudget {
            per_uid,
            global,
            reserve,
        })
    }

    #[test]
    fn caps_each_uid_separately_and_frees_on_drop() {
        let limits = limits(2, 100, 10);
        let a = limits.acquire(1000).unwrap();
        let _b = limits.acquire(1000).unwrap();
        assert_eq!(limits.acquire(1000).unwrap_err(), Refused::UidCap);
        assert!(limits.acquire(0).is_ok(), "other uids unaffected");
        drop(a);
        assert!(limits.acquire(1000).is_ok(), "a closed connection frees its slot");
    }

    #[test]
    fn the_reserve_keeps_room_for_uids_with_few_connections() {
        let limits = limits(8, 10, 4);
        // One uid takes what is outside the reserve...
        let squatter: Vec<_> = (0..6).map(|_| limits.acquire(2001).unwrap()).collect();
        // ...and no more, though under its own cap.
        assert_eq!(limits.acquire(2001).unwrap_err(), Refused::Reserved);
        // A new uid gets its share of the reserve, and no more.
        let new: Vec<_> = (0..RESERVE_SHARE)
            .map(|_| limits.acquire(1000).unwrap())
            .collect();
        assert_eq!(limits.acquire(1000).unwrap_err(), Refused::Reserved);
        let other = limits.acquire(1001).unwrap();
        let _last = limits.acquire(1002).unwrap();
        assert_eq!(limits.acquire(1003).unwrap_err(), Refused::Full);
        drop((squatter, new, other));
        assert!(limits.acquire(1003).is_ok(), "slots freed");
    }

    #[test]
    fn the_budget_follows_the_descriptor_limit() {
        let config = LimitsConfig::default();
        let budget = ConnectionBudget::new(&config, 1024, 2, 16);
        // 1024 fds, less 64 + 2 * 8 + 16 kept for the rest, 2 per connection.
        assert_eq!(budget.global, (1024 - 96) / 2);
        assert_eq!(budget.reserve, budget.global / 8);
        assert_eq!(budget.per_uid, 256);

        let configured = LimitsConfig {
            max_connections: Some(100_000),
            connection_reserve: Some(7),
            ..LimitsConfig::default()
        };
        let budget = ConnectionBudget::new(&configured, 1024, 2, 16);
        assert_eq!(budget.global, 464, "never more than the descriptors allow");
        assert_eq!(budget.reserve, 7);
        let budget = ConnectionBudget::new(&configured, 10, 2, 16);
        assert_eq!((budget.global, budget.reserve), (1, 0), "at least one");
    }
}

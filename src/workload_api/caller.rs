//! An admitted caller: what attestation learned and the entries it holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use super::PeerInfo;
use crate::attest::Workload;
use crate::registry::{Entry, Policy};

/// An attested caller and the entries it matched (never empty).
#[derive(Debug)]
pub(super) struct Caller {
    /// The connection's pinned peer, for re-checks while a stream is open.
    pub peer: PeerInfo,
    pub workload: Workload,
    pub entries: Vec<Arc<Entry>>,
    /// The policy snapshot the caller was admitted under.
    pub policy: Arc<Policy>,
}

impl Caller {
    /// Clients need non-empty hints to be unique within a response: the
    /// first entry (in policy order) with a hint keeps it, later ones are
    /// left out.
    pub fn entries_with_unique_hints(&self) -> Vec<Arc<Entry>> {
        let mut seen = HashSet::new();
        self.entries
            .iter()
            .filter(|entry| match &entry.hint {
                Some(hint) if !seen.insert(&**hint) => {
                    tracing::warn!(entry = %entry.location, hint, "hint already used by an earlier matching entry; identity left out");
                    false
                }
                _ => true,
            })
            .cloned()
            .collect()
    }

    /// When the first of the caller's entries stops granting: the earliest
    /// end of their owners' terms (on the owners' clock).
    pub fn owner_expiry(&self) -> Option<SystemTime> {
        self.entries.iter().filter_map(|entry| entry.owner_expiry()).min()
    }
}

/// RPC names as they appear in the audit trail.
pub(super) mod rpc {
    pub const FETCH_X509_SVID: &str = "FetchX509SVID";
    pub const FETCH_X509_BUNDLES: &str = "FetchX509Bundles";
    pub const FETCH_JWT_SVID: &str = "FetchJWTSVID";
    pub const FETCH_JWT_BUNDLES: &str = "FetchJWTBundles";
    pub const VALIDATE_JWT_SVID: &str = "ValidateJWTSVID";
    pub const FETCH_WIT_SVID: &str = "FetchWITSVID";
    pub const FETCH_WIT_BUNDLES: &str = "FetchWITBundles";
    pub const START_TASK: &str = "StartTask";
    pub const END_TASK: &str = "EndTask";
    pub const LIST_TASKS: &str = "ListTasks";
}

//! Registration entries: policy-as-code that binds selectors to a SPIFFE ID
//! and to an accountable owner, and the index that finds a caller's entries.
//!
//! A [`Policy`] is an immutable snapshot; the [`Registry`] swaps whole
//! snapshots atomically, so a request always sees one consistent policy.

mod index;
mod load;
mod reload;

pub use reload::{keep_current, reload};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, ConfigError, Location, TasksConfig};
use crate::selector::SelectorSet;
use crate::spiffe_id::SpiffeId;

use index::SelectorIndex;

/// One registration entry, with defaults resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Stable id: a digest of the SPIFFE ID and selectors.
    pub id: String,
    /// The identity granted.
    pub spiffe_id: SpiffeId,
    /// Selectors a caller must all have.
    pub selectors: SelectorSet,
    /// The accountable party.
    pub owner: String,
    /// Free text.
    pub description: Option<String>,
    /// Free key/values (agent name, version, ...).
    pub labels: BTreeMap<String, String>,
    /// X.509-SVID lifetime.
    pub x509_ttl: Duration,
    /// JWT-SVID lifetime.
    pub jwt_ttl: Duration,
    /// Audiences JWT-SVIDs may be minted for (empty: any).
    pub jwt_audiences: Vec<String>,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Hint for workloads with several identities.
    pub hint: Option<String>,
    /// The last day (UTC) the owner answers for the workload.
    pub owner_expires: Option<time::Date>,
    /// Whether and how the workload may start tasks.
    pub tasks: Option<TasksConfig>,
    /// May ask for decisions about other agents' task tokens.
    pub may_ask_for_others: bool,
    /// Where the entry is written (`file:line`).
    pub location: Location,
}

impl Entry {
    /// The first moment the entry's owner no longer answers for it: the
    /// start (UTC) of the day after `owner_expires`.
    pub fn owner_expiry(&self) -> Option<std::time::SystemTime> {
        let next_day = self.owner_expires?.next_day()?;
        let seconds = next_day.midnight().assume_utc().unix_timestamp();
        Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
    }

    /// Whether the owner's term has ended at `now`: the entry then grants
    /// nothing.
    pub fn owner_expired(&self, now: std::time::SystemTime) -> bool {
        self.owner_expiry().is_some_and(|expiry| now >= expiry)
    }
}

/// An immutable, indexed set of entries.
#[derive(Debug, Default)]
pub struct Policy {
    entries: Vec<Arc<Entry>>,
    index: SelectorIndex,
    names_executables: bool,
    names_sha256: bool,
}

impl Policy {
    /// Builds and indexes a policy from the config file and its
    /// `entries_dir`. Any error in any file fails the whole policy.
    pub fn load(config: &Config) -> Result<Self, ConfigError> {
        let entries = load::entries(config)?;
        Ok(Self::from_entries(entries))
    }

    fn from_entries(entries: Vec<Entry>) -> Self {
        let entries: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        let index = SelectorIndex::build(&entries);
        let names_executables = entries
            .iter()
            .flat_map(|entry| entry.selectors.iter())
            .any(|selector| matches!(selector.kind(), "unix:path" | "unix:sha256"));
        let names_sha256 = entries
            .iter()
            .flat_map(|entry| entry.selectors.iter())
            .any(|selector| selector.kind() == "unix:sha256");
        Self {
            entries,
            index,
            names_executables,
            names_sha256,
        }
    }

    /// Whether any entry names `unix:sha256`: only then are executables
    /// hashed (CPU a caller could otherwise make attestd spend for nothing).
    pub fn names_sha256(&self) -> bool {
        self.names_sha256
    }

    /// Whether any entry relies on `unix:path` or `unix:sha256`: only then
    /// must attestation prove those are bound to the connection.
    pub fn names_executables(&self) -> bool {
        self.names_executables
    }

    /// Every entry, in policy order.
    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// The entries whose selectors are all in `selectors`, in policy order
    /// (so the first is the caller's default identity).
    pub fn matching(&self, selectors: &SelectorSet) -> Vec<Arc<Entry>> {
        self.index
            .matching(selectors)
            .into_iter()
            .map(|i| Arc::clone(&self.entries[i]))
            .collect()
    }
}

/// The live policy, swapped atomically as a whole; open streams watch it to
/// re-check their callers when it changes.
#[derive(Debug)]
pub struct Registry {
    current: watch::Sender<Arc<Policy>>,
}

impl Registry {
    /// A registry serving `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            current: watch::Sender::new(Arc::new(policy)),
        }
    }

    /// The current snapshot.
    pub fn policy(&self) -> Arc<Policy> {
        self.current.borrow().clone()
    }

    /// Swaps in a new policy; open streams re-check their callers.
    pub fn replace(&self, policy: Policy) {
        self.current.send_replace(Arc::new(policy));
    }

    /// A receiver that sees every policy swap.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Policy>> {
        self.current.subscribe()
    }
}

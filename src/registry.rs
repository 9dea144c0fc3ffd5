//! Registration entries: policy-as-code that binds selectors to a SPIFFE ID
//! and to an accountable owner, and the index that finds a caller's entries.
//!
//! A [`Policy`] is an immutable snapshot; the [`Registry`] swaps whole
//! snapshots atomically, so a request always sees one consistent policy.
//!
//! An entry whose owner's term has ended (`owner_expires` passed) grants
//! nothing: matching leaves it out, judged by the [`owner_clock`] at each
//! admission, so no reload is needed when the day passes.

mod by_spiffe_id;
mod entry_files;
mod index;
mod labels;
mod load;
pub mod owner_clock;
mod reload;

pub use entry_files::EntryFiles;
pub use labels::Labels;
pub use reload::{keep_current, reload};

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::config::{Config, ConfigError, Location, TasksConfig};
use crate::selector::SelectorSet;
use crate::spiffe_id::{SpiffeId, TrustDomain};

use by_spiffe_id::BySpiffeId;
use index::{IndexBuilder, SelectorIndex};

/// One registration entry, with defaults resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Stable id: a digest of the SPIFFE ID and selectors.
    pub id: EntryId,
    /// The identity granted.
    pub spiffe_id: SpiffeId,
    /// Selectors a caller must all have.
    pub selectors: SelectorSet,
    /// The accountable party (shared by the entries of a file that name
    /// the same owner).
    pub owner: Arc<str>,
    /// Free text. (Boxed slices and strings here and below: a policy holds
    /// many entries, and each spare capacity word is 800 KB at 100,000.)
    pub description: Option<Box<str>>,
    /// Free key/values (agent name, version, ...).
    pub labels: Labels,
    /// X.509-SVID lifetime.
    pub x509_ttl: Duration,
    /// JWT-SVID lifetime.
    pub jwt_ttl: Duration,
    /// Audiences JWT-SVIDs may be minted for (empty: any).
    pub jwt_audiences: Box<[String]>,
    /// Extra DNS SANs.
    pub dns_names: Box<[String]>,
    /// Hint for workloads with several identities.
    pub hint: Option<Box<str>>,
    /// Foreign trust domains whose bundles the workload gets (sorted; an
    /// empty box allocates nothing).
    pub federates_with: Box<[TrustDomain]>,
    /// The last day (UTC) the owner answers for the workload.
    pub owner_expires: Option<time::Date>,
    /// Whether and how the workload may start tasks (boxed: most entries
    /// have none, and a policy holds many entries).
    pub tasks: Option<Box<TasksConfig>>,
    /// May ask for decisions about other agents' task tokens.
    pub may_ask_for_others: bool,
    /// `jwt_audiences = []` was written (any audience, said explicitly).
    pub jwt_audiences_written_empty: bool,
    /// Where the entry is written (`file:line`; a SPIRE Server's entries
    /// are located by their id there).
    pub location: Location,
    /// In fleet mode, the SPIRE Server's id of the entry (the server mints
    /// by entry); none for entries from files.
    pub remote_entry: Option<Arc<str>>,
}

/// An entry's stable id: the first 8 bytes of the SHA-256 of its SPIFFE
/// ID and selectors; prints as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(pub u64);

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
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

    /// Why the entry grants nothing once its owner's term has ended
    /// (`None` for an entry without a term).
    pub fn owner_expired_reason(&self) -> Option<String> {
        let day = self.owner_expires?;
        Some(format!("owner of {} expired on {day}", self.spiffe_id))
    }
}

/// The most expired entries a refusal names one by one; the rest are
/// counted.
const MAX_EXPIRED_NAMED: usize = 3;

/// The entries a caller's selectors match, split by whether their owner's
/// term has ended.
#[derive(Debug, Default)]
pub struct Matches {
    /// In effect, in policy order (the first is the caller's default
    /// identity).
    pub entries: Vec<Arc<Entry>>,
    /// Matched, but their owner's term has ended: they grant nothing.
    pub expired: Vec<Arc<Entry>>,
}

impl Matches {
    /// Why a caller that matched only entries whose owner's term has ended
    /// gets nothing; `None` if it holds an entry or matched none.
    pub fn expired_refusal(&self) -> Option<String> {
        if !self.entries.is_empty() || self.expired.is_empty() {
            return None;
        }
        let mut reasons: Vec<String> = self
            .expired
            .iter()
            .take(MAX_EXPIRED_NAMED)
            .filter_map(|entry| entry.owner_expired_reason())
            .collect();
        if let Some(more) = self
            .expired
            .len()
            .checked_sub(MAX_EXPIRED_NAMED)
            .filter(|&n| n > 0)
        {
            reasons.push(format!("and {more} more expired entries"));
        }
        Some(reasons.join("; "))
    }
}

/// An immutable, indexed set of entries.
#[derive(Debug, Default)]
pub struct Policy {
    entries: Vec<Arc<Entry>>,
    index: SelectorIndex,
    /// Who still grants an identity named in a token is looked up, not
    /// scanned for. Built at its first use or by [`Self::build_lookups`],
    /// so a reload puts a policy in effect without waiting for it.
    by_spiffe_id: OnceLock<BySpiffeId>,
    names_executables: bool,
    names_sha256: bool,
    /// The first moment an entry's owner's term ends: before it no entry
    /// can have expired, and matching skips the per-entry check.
    first_owner_expiry: Option<SystemTime>,
}

impl Policy {
    /// Builds and indexes a policy from the config file and its
    /// `entries_dir`. Any error in any file fails the whole policy.
    pub fn load(config: &Config) -> Result<Self, ConfigError> {
        Self::load_with(config, &mut EntryFiles::default())
    }

    /// [`Self::load`], reading again only the files of `entries_dir` that
    /// changed since `files` last read them (and keeping what it reads for
    /// the next time).
    pub fn load_with(config: &Config, files: &mut EntryFiles) -> Result<Self, ConfigError> {
        let entries = load::entries(config, files)?;
        if entries.len() < CHECK_ALONGSIDE {
            load::refuse_duplicates(&entries)?;
            return Ok(Self::from_entries(entries));
        }
        // Each pass over a large policy's entries, scattered in memory,
        // waits on memory more than it computes: the duplicate check runs
        // on another core while the index is built.
        let (indexed, checked) = std::thread::scope(|scope| {
            let checked = scope.spawn(|| load::refuse_duplicates(&entries));
            (Indexed::build(&entries), checked.join())
        });
        checked.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok(Self::with_index(entries, indexed))
    }

    /// Indexes `entries` (already validated), in policy order.
    pub(crate) fn from_entries(entries: Vec<Arc<Entry>>) -> Self {
        let indexed = Indexed::build(&entries);
        Self::with_index(entries, indexed)
    }

    fn with_index(
        entries: Vec<Arc<Entry>>,
        Indexed {
            index,
            first_owner_expiry,
        }: Indexed,
    ) -> Self {
        Self {
            names_executables: index.names_kind("unix:path") || index.names_kind("unix:sha256"),
            names_sha256: index.names_kind("unix:sha256"),
            entries,
            index,
            by_spiffe_id: OnceLock::new(),
            first_owner_expiry,
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

    /// The entries granting `spiffe_id`, in policy order, whatever their
    /// owners' terms.
    pub fn granting<'a>(&'a self, spiffe_id: &'a SpiffeId) -> impl Iterator<Item = &'a Arc<Entry>> + Clone {
        self.by_spiffe_id()
            .granting(spiffe_id, &self.entries)
            .map(|i| &self.entries[i])
    }

    /// Builds now the lookups otherwise built at their first use (what a
    /// reload does once the policy is in effect, so that no request waits).
    pub fn build_lookups(&self) {
        self.by_spiffe_id();
    }

    fn by_spiffe_id(&self) -> &BySpiffeId {
        self.by_spiffe_id.get_or_init(|| BySpiffeId::build(&self.entries))
    }

    /// Every entry, in policy order.
    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// The entries in effect whose selectors are all in `selectors`, in
    /// policy order (so the first is the caller's default identity): those
    /// whose owner's term has ended by the [`owner_clock`] are left out.
    pub fn matching(&self, selectors: &SelectorSet) -> Vec<Arc<Entry>> {
        self.matches(selectors, owner_clock::now()).entries
    }

    /// The entries whose selectors are all in `selectors`, split at `now`
    /// (on the [`owner_clock`]) into those in effect and those whose
    /// owner's term has ended.
    pub fn matches(&self, selectors: &SelectorSet, now: SystemTime) -> Matches {
        let found = self.index.matching(selectors);
        let mut matches = Matches {
            entries: Vec::with_capacity(found.len()),
            expired: Vec::new(),
        };
        // The common case (no term has ended yet) costs one comparison.
        let some_expired = self.first_owner_expiry.is_some_and(|first| now >= first);
        for i in found {
            let entry = Arc::clone(&self.entries[i]);
            match some_expired && entry.owner_expired(now) {
                true => matches.expired.push(entry),
                false => matches.entries.push(entry),
            }
        }
        matches
    }
}

/// From this many entries on, a policy is checked for duplicates on
/// another thread while its index is built.
const CHECK_ALONGSIDE: usize = 10_000;

/// What matching needs, built in one pass over the entries.
struct Indexed {
    index: SelectorIndex,
    first_owner_expiry: Option<SystemTime>,
}

impl Indexed {
    fn build(entries: &[Arc<Entry>]) -> Self {
        let mut index = IndexBuilder::with_capacity(entries.len());
        let mut first_owner_expiry = None;
        for entry in entries {
            index.add(entry);
            if let Some(expiry) = entry.owner_expiry() {
                first_owner_expiry =
                    Some(first_owner_expiry.map_or(expiry, |first: SystemTime| first.min(expiry)));
            }
        }
        Self {
            index: index.finish(),
            first_owner_expiry,
        }
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
    /// Returns the previous one (freeing a large policy takes a while: the
    /// caller chooses when).
    pub fn replace(&self, policy: Policy) -> Arc<Policy> {
        self.current.send_replace(Arc::new(policy))
    }

    /// A receiver that sees every policy swap.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Policy>> {
        self.current.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;

    fn policy(entries: &str) -> Policy {
        let text = format!("trust_domain = \"example.org\"\n{entries}");
        let config = Config::parse(std::path::Path::new("p.toml"), &text).unwrap();
        Policy::load(&config).unwrap()
    }

    /// A policy holds up to hundreds of thousands of entries: every word
    /// added here is 800 KB at 100,000 (the loading benchmark's budget).
    #[test]
    fn an_entry_stays_small() {
        assert!(
            std::mem::size_of::<Entry>() <= 288,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    fn entry(name: &str, expires: Option<&str>) -> String {
        let expires = expires
            .map(|d| format!("owner_expires = {d}\n"))
            .unwrap_or_default();
        format!(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/{name}\"\nselectors = [\"unix:uid:1\"]\nowner = \"o\"\n{expires}"
        )
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    fn ids(entries: &[Arc<Entry>]) -> Vec<&str> {
        entries.iter().map(|e| e.spiffe_id.as_str()).collect()
    }

    #[test]
    fn entries_granting_an_identity_are_found_by_its_spiffe_id_in_policy_order() {
        let second = "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:2\"]\nowner = \"p\"\n";
        let policy = policy(&[entry("a", None), entry("b", None), second.to_owned()].concat());
        let owners = |id: &str| -> Vec<String> {
            let id = SpiffeId::new(id).unwrap();
            policy.granting(&id).map(|e| e.owner.to_string()).collect()
        };
        assert_eq!(owners("spiffe://example.org/a"), ["o", "p"]);
        assert_eq!(owners("spiffe://example.org/b"), ["o"]);
        assert!(owners("spiffe://example.org/c").is_empty());
    }

    #[test]
    fn a_large_policy_is_checked_for_duplicates_alongside_its_indexing() {
        let uids = |range: std::ops::Range<usize>| -> String {
            range
                .map(|uid| {
                    format!(
                        "[[entry]]\nspiffe_id = \"spiffe://example.org/u{uid}\"\nselectors = [\"unix:uid:{uid}\"]\nowner = \"o\"\n"
                    )
                })
                .collect()
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), uids(0..CHECK_ALONGSIDE)).unwrap();
        let text = format!("trust_domain = \"example.org\"\nentries_dir = {:?}\n", dir.path());
        let config = Config::parse(std::path::Path::new("main.toml"), &text).unwrap();
        let loaded = Policy::load(&config).unwrap();
        assert_eq!(loaded.entries().len(), CHECK_ALONGSIDE);
        let caller = [Selector::parse("unix:uid:1234").unwrap()].into_iter().collect();
        assert_eq!(ids(&loaded.matching(&caller)), ["spiffe://example.org/u1234"]);

        std::fs::write(dir.path().join("b.toml"), uids(17..18)).unwrap();
        let err = Policy::load(&config).unwrap_err();
        assert_eq!(err.file, dir.path().join("b.toml"));
        assert!(err.message.contains("a.toml:69 (same spiffe_id"), "{err}");
    }

    #[test]
    fn an_entry_stops_granting_at_the_end_of_its_owners_last_day() {
        let policy = policy(
            &[
                entry("a", Some("2030-06-30")),
                entry("b", None),
                entry("c", Some("2030-07-31")),
            ]
            .concat(),
        );
        assert_eq!(
            policy.first_owner_expiry,
            Some(at("2030-07-01T00:00:00Z")),
            "computed once per policy"
        );
        let caller: SelectorSet = [Selector::parse("unix:uid:1").unwrap()].into_iter().collect();

        let last_moment = policy.matches(&caller, at("2030-06-30T23:59:59.999Z"));
        assert_eq!(
            ids(&last_moment.entries),
            [
                "spiffe://example.org/a",
                "spiffe://example.org/b",
                "spiffe://example.org/c"
            ]
        );
        assert!(last_moment.expired.is_empty());

        let next_day = policy.matches(&caller, at("2030-07-01T00:00:00Z"));
        assert_eq!(
            ids(&next_day.entries),
            ["spiffe://example.org/b", "spiffe://example.org/c"]
        );
        assert_eq!(ids(&next_day.expired), ["spiffe://example.org/a"]);
        assert_eq!(next_day.expired_refusal(), None, "the caller still holds entries");
    }

    #[test]
    fn a_caller_left_with_only_expired_entries_hears_why() {
        let lapsed = policy(&[entry("a", Some("2020-01-31")), entry("b", Some("2021-02-28"))].concat());
        let caller: SelectorSet = [Selector::parse("unix:uid:1").unwrap()].into_iter().collect();
        let matches = lapsed.matches(&caller, SystemTime::now());
        assert!(matches.entries.is_empty());
        assert_eq!(
            matches.expired_refusal().as_deref(),
            Some(
                "owner of spiffe://example.org/a expired on 2020-01-31; \
                 owner of spiffe://example.org/b expired on 2021-02-28"
            )
        );
        assert!(
            lapsed.matching(&caller).is_empty(),
            "matching judges by the owners' clock"
        );

        let many: String = (0..5)
            .map(|i| entry(&format!("e{i}"), Some("2020-01-01")))
            .collect();
        let matches = policy(&many).matches(&caller, SystemTime::now());
        let refusal = matches.expired_refusal().unwrap();
        assert!(refusal.ends_with("; and 2 more expired entries"), "{refusal}");
        assert_eq!(
            refusal.matches("owner of").count(),
            MAX_EXPIRED_NAMED,
            "{refusal}"
        );

        let unmatched: SelectorSet = [Selector::parse("unix:uid:2").unwrap()].into_iter().collect();
        assert_eq!(
            policy(&many)
                .matches(&unmatched, SystemTime::now())
                .expired_refusal(),
            None
        );
    }
}

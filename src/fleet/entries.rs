//! The server's registration entries as attestd's: the selectors SPIRE
//! writes as `type` and `value` (`unix` + `uid:1000`) are attestd's
//! `unix:uid:1000`, matched by the same index as entries from files.
//!
//! What SPIRE entries do not say, or attestd cannot serve, is decided here:
//! - the owner, which SPIRE entries lack, comes from `[server] owners` by
//!   the longest matching SPIFFE ID prefix; an entry none maps is served
//!   all the same, with the owner [`UNOWNED`], and its SPIRE entry id is
//!   on every audit record (label `spire_entry_id`);
//! - entries whose selectors attestd never produces (`k8s:`, `docker:`,
//!   ...) could never match: they are left out and reported at every sync,
//!   by selector kind, rather than silently unmatched;
//! - node alias entries (`spiffe_id:` selectors: they group agents, not
//!   workloads), downstream entries (a nested SPIRE server's CA) and
//!   expired entries are left out too.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

use crate::config::{Location, OwnerMapping, SvidConfig};
use crate::proto::spire::api::types::Entry as ServerEntry;
use crate::registry::{Entry, EntryId, Labels};
use crate::selector::{Selector, SelectorSet};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The owner of a server entry that no `[server] owners` prefix maps.
pub const UNOWNED: &str = "unowned";
/// The label that carries a server entry's id (on its audit records).
const ENTRY_ID_LABEL: &str = "spire_entry_id";
/// SPIRE's selector type of node alias entries.
const NODE_ALIAS_TYPE: &str = "spiffe_id";

/// The entries attestd serves from one sync, and what it left out.
#[derive(Debug, Default)]
pub(super) struct Converted {
    /// In effect, oldest entry first (a workload's first identity is its
    /// default, as the oldest is a SPIRE agent's).
    pub entries: Vec<Arc<Entry>>,
    /// Entries left out because attestd never produces one of their
    /// selectors, by the first such selector kind (`k8s:ns`).
    pub unmatchable: BTreeMap<String, usize>,
    /// Entries served without a mapped owner.
    pub unowned: usize,
    /// Entries left out as unservable: node aliases, downstream, expired,
    /// or malformed (counted, logged at debug).
    pub skipped: usize,
}

/// Turns the server's entries into attestd's.
pub(super) struct Converter<'a> {
    pub trust_domain: &'a TrustDomain,
    pub defaults: &'a SvidConfig,
    pub owners: &'a [OwnerMapping],
    /// Where entries are located (`spire-server <address> entry <id>`).
    pub address: &'a str,
}

impl Converter<'_> {
    /// Converts every entry (in any order).
    pub fn convert<'e>(&self, server_entries: impl IntoIterator<Item = &'e ServerEntry>) -> Converted {
        let now = crate::wall_clock::now();
        let mut converted = Converted::default();
        let mut entries: Vec<(i64, &str, Entry)> = Vec::new();
        for server_entry in server_entries {
            match self.entry(server_entry, now) {
                Ok(entry) => {
                    if &*entry.owner == UNOWNED {
                        converted.unowned += 1;
                    }
                    entries.push((server_entry.created_at, &server_entry.id, entry));
                }
                Err(LeftOut::Unmatchable(kind)) => *converted.unmatchable.entry(kind).or_default() += 1,
                Err(LeftOut::Skipped(reason)) => {
                    tracing::debug!(entry = %server_entry.id, reason, "server entry not served");
                    converted.skipped += 1;
                }
            }
        }
        entries.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        converted.entries = entries.into_iter().map(|(_, _, entry)| Arc::new(entry)).collect();
        converted
    }

    fn entry(&self, server: &ServerEntry, now: SystemTime) -> Result<Entry, LeftOut> {
        if server.selectors.iter().any(|s| s.r#type == NODE_ALIAS_TYPE) {
            return Err(LeftOut::Skipped("a node alias entry"));
        }
        if server.downstream {
            return Err(LeftOut::Skipped(
                "a downstream entry (a nested SPIRE server's CA)",
            ));
        }
        if server.expires_at > 0 && unix(server.expires_at) <= now {
            return Err(LeftOut::Skipped("expired"));
        }
        let mut selectors = Vec::with_capacity(server.selectors.len());
        for selector in &server.selectors {
            let text = format!("{}:{}", selector.r#type, selector.value);
            match Selector::parse(&text) {
                Ok(selector) => selectors.push(selector),
                Err(_) => {
                    let kind = match selector.value.split_once(':') {
                        Some((key, _)) => format!("{}:{key}", selector.r#type),
                        None => selector.r#type.clone(),
                    };
                    return Err(LeftOut::Unmatchable(kind.chars().take(64).collect()));
                }
            }
        }
        if selectors.is_empty() {
            return Err(LeftOut::Skipped("no selectors"));
        }
        let id = server
            .spiffe_id
            .as_ref()
            .ok_or(LeftOut::Skipped("no SPIFFE ID"))?;
        let spiffe_id = SpiffeId::new(&format!("spiffe://{}{}", id.trust_domain, id.path))
            .map_err(|_| LeftOut::Skipped("an invalid SPIFFE ID"))?;
        if !spiffe_id.belongs_to(self.trust_domain) {
            return Err(LeftOut::Skipped("a SPIFFE ID of another trust domain"));
        }
        let mut federates_with = server
            .federates_with
            .iter()
            .map(|td| TrustDomain::new(td.strip_prefix("spiffe://").unwrap_or(td)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| LeftOut::Skipped("an invalid federates_with"))?;
        federates_with.sort();
        federates_with.dedup();
        let selectors: SelectorSet = selectors.into_iter().collect();
        let labels: BTreeMap<String, String> = [(ENTRY_ID_LABEL.to_owned(), server.id.clone())].into();
        Ok(Entry {
            id: entry_id(&server.id),
            owner: self.owner(&spiffe_id),
            spiffe_id,
            selectors,
            description: None,
            labels: Labels::from(&labels),
            x509_ttl: ttl(server.x509_svid_ttl).unwrap_or(self.defaults.x509_ttl.0),
            jwt_ttl: ttl(server.jwt_svid_ttl).unwrap_or(self.defaults.jwt_ttl.0),
            jwt_audiences: Box::default(),
            dns_names: server.dns_names.as_slice().into(),
            hint: (!server.hint.is_empty()).then(|| server.hint.as_str().into()),
            federates_with: federates_with.into_boxed_slice(),
            owner_expires: None,
            tasks: None,
            may_ask_for_others: false,
            jwt_audiences_written_empty: false,
            location: Location {
                file: Arc::from(Path::new(&format!(
                    "spire-server {} entry {}",
                    self.address, server.id
                ))),
                line: 0,
            },
            remote_entry: Some(Arc::from(server.id.as_str())),
        })
    }

    /// The owner of the longest prefix of `spiffe_id` in `[server] owners`.
    fn owner(&self, spiffe_id: &SpiffeId) -> Arc<str> {
        self.owners
            .iter()
            .filter(|mapping| spiffe_id.as_str().starts_with(&mapping.prefix))
            .max_by_key(|mapping| mapping.prefix.len())
            .map_or_else(|| Arc::from(UNOWNED), |mapping| Arc::from(mapping.owner.as_str()))
    }
}

/// Why a server entry is not served.
enum LeftOut {
    /// attestd never produces this selector kind.
    Unmatchable(String),
    Skipped(&'static str),
}

/// A server entry's stable id: a digest of its SPIRE entry id, apart from
/// the digests of file entries.
fn entry_id(server_id: &str) -> EntryId {
    let digest = Sha256::new()
        .chain_update(b"spire-entry\n")
        .chain_update(server_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    EntryId(u64::from_be_bytes(first))
}

/// A TTL in seconds; 0 (or less) means the server's default.
fn ttl(seconds: i32) -> Option<Duration> {
    u64::try_from(seconds)
        .ok()
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
}

fn unix(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::spire::api::types::{Selector as ServerSelector, Spiffeid};

    fn server_entry(id: &str, path: &str, selectors: &[(&str, &str)], created_at: i64) -> ServerEntry {
        ServerEntry {
            id: id.into(),
            spiffe_id: Some(Spiffeid {
                trust_domain: "example.org".into(),
                path: path.into(),
            }),
            selectors: selectors
                .iter()
                .map(|(t, v)| ServerSelector {
                    r#type: (*t).into(),
                    value: (*v).into(),
                })
                .collect(),
            created_at,
            ..ServerEntry::default()
        }
    }

    #[test]
    fn spire_entries_become_attestd_entries_with_owners_and_reports() {
        let td = TrustDomain::new("example.org").unwrap();
        let owners = [
            OwnerMapping {
                prefix: "spiffe://example.org/ml/".into(),
                owner: "ml@example.org".into(),
            },
            OwnerMapping {
                prefix: "spiffe://example.org/ml/train/".into(),
                owner: "train@example.org".into(),
            },
        ];
        let converter = Converter {
            trust_domain: &td,
            defaults: &SvidConfig::default(),
            owners: &owners,
            address: "spire:8081",
        };
        let entries = [
            server_entry("b", "/ml/train/job", &[("unix", "uid:1000")], 2),
            server_entry(
                "a",
                "/web",
                &[("unix", "uid:33"), ("unix", "path:/usr/bin/web")],
                1,
            ),
            server_entry("k", "/k8s", &[("k8s", "ns:default")], 3),
            server_entry("d", "/docker", &[("unix", "uid:1"), ("docker", "label:x")], 4),
            server_entry(
                "n",
                "/node",
                &[("spiffe_id", "spiffe://example.org/spire/agent/x")],
                5,
            ),
        ];
        let converted = converter.convert(&entries);
        let ids: Vec<&str> = converted.entries.iter().map(|e| e.spiffe_id.as_str()).collect();
        assert_eq!(
            ids,
            ["spiffe://example.org/web", "spiffe://example.org/ml/train/job"],
            "oldest first"
        );
        let web = &converted.entries[0];
        assert_eq!(&*web.owner, UNOWNED);
        assert_eq!(web.labels.get(ENTRY_ID_LABEL), Some("a"));
        assert_eq!(web.remote_entry.as_deref(), Some("a"));
        assert_eq!(web.location.to_string(), "spire-server spire:8081 entry a");
        assert_eq!(web.selectors.len(), 2);
        assert_eq!(
            &*converted.entries[1].owner, "train@example.org",
            "the longest prefix"
        );
        assert_eq!(converted.unowned, 1);
        assert_eq!(
            converted.unmatchable,
            BTreeMap::from([("docker:label".to_owned(), 1), ("k8s:ns".to_owned(), 1)])
        );
        assert_eq!(converted.skipped, 1, "the node alias");
    }
}

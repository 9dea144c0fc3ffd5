//! Builds entries from the config file and every `*.toml` of `entries_dir`,
//! resolving defaults and refusing duplicates.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::index::position;
use super::{Entry, EntryFiles, EntryId, Labels};
use crate::config::{Config, ConfigError, EntryConfig, SvidConfig};
use crate::selector::{Selector, SelectorSet};

/// The policy's entries in order: those of the config file, then those of
/// each file of `entries_dir` by name (only the files that changed since
/// `files` last read them are parsed again). Not yet checked for
/// duplicates: see [`refuse_duplicates`].
pub(super) fn entries(config: &Config, files: &mut EntryFiles) -> Result<Vec<Arc<Entry>>, ConfigError> {
    files.refresh(config)?;
    let mut entries: Vec<Arc<Entry>> = Vec::with_capacity(config.entries.len() + files.entry_count());
    let mut shared = Shared::default();
    entries.extend(
        config
            .entries
            .iter()
            .map(|raw| Arc::new(resolve(&config.svid, raw.clone(), &mut shared))),
    );
    entries.extend(files.entries().cloned());
    refuse_out_of_bounds(config, &entries)?;
    Ok(entries)
}

/// What no entry may say, whichever file it is in: a `federates_with`
/// trust domain the running daemon does not federate with (a reload keeps
/// the `[[federation]]` tables it started with), or the bundle endpoint's
/// own SPIFFE ID (a workload holding it could serve partners a bundle of
/// its choosing as ours).
fn refuse_out_of_bounds(config: &Config, entries: &[Arc<Entry>]) -> Result<(), ConfigError> {
    let federated = config.federated_trust_domains();
    let endpoint_id = config.bundle_endpoint.as_ref().and_then(|e| e.spiffe_id());
    for entry in entries {
        let error = |key: &str, message: String| ConfigError {
            file: entry.location.file.to_path_buf(),
            line: Some(entry.location.line),
            key: Some(key.into()),
            message,
        };
        if let Some(unknown) = entry.federates_with.iter().find(|td| !federated.contains(td)) {
            return Err(error(
                "federates_with",
                format!(
                    "{unknown} is not a [[federation]] trust domain of the running daemon \
                     (a new [[federation]] table takes effect at the next restart)"
                ),
            ));
        }
        if endpoint_id == Some(&entry.spiffe_id) {
            return Err(error(
                "spiffe_id",
                format!(
                    "{} is the bundle endpoint's own identity: no entry may grant it",
                    entry.spiffe_id
                ),
            ));
        }
    }
    Ok(())
}

/// Two entries with the same SPIFFE ID and selectors, in any files: the
/// later one is refused, naming where the first is written.
pub(super) fn refuse_duplicates(entries: &[Arc<Entry>]) -> Result<(), ConfigError> {
    let mut seen: HashMap<EntryId, u32> = HashMap::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match seen.entry(entry.id) {
            Slot::Vacant(slot) => {
                slot.insert(position(i));
            }
            Slot::Occupied(first) => return Err(duplicate_error(entry, &entries[*first.get() as usize])),
        }
    }
    Ok(())
}

/// One copy of the texts that entries repeat, per file: every entry of a
/// team names the same owner, often the same `unix:uid`, and each copy is
/// an allocation kept for as long as the policy.
#[derive(Debug, Default)]
pub(super) struct Shared {
    selectors: HashSet<Selector>,
    owners: HashSet<Arc<str>>,
}

impl Shared {
    fn selector(&mut self, selector: Selector) -> Selector {
        match self.selectors.get(&selector) {
            Some(shared) => shared.clone(),
            None => {
                self.selectors.insert(selector.clone());
                selector
            }
        }
    }

    fn owner(&mut self, owner: String) -> Arc<str> {
        match self.owners.get(owner.as_str()) {
            Some(shared) => Arc::clone(shared),
            None => {
                let owner: Arc<str> = owner.into();
                self.owners.insert(Arc::clone(&owner));
                owner
            }
        }
    }
}

/// An entry as written, with the defaults of `[svid]` filled in.
pub(super) fn resolve(defaults: &SvidConfig, raw: EntryConfig, shared: &mut Shared) -> Entry {
    let selectors: SelectorSet = raw
        .selectors
        .into_iter()
        .map(|selector| shared.selector(selector))
        .collect();
    Entry {
        id: entry_id(raw.spiffe_id.as_str(), &selectors),
        spiffe_id: raw.spiffe_id,
        selectors,
        owner: shared.owner(raw.owner),
        description: raw.description.map(String::into_boxed_str),
        labels: Labels::from(&raw.labels),
        x509_ttl: raw.x509_ttl.unwrap_or(defaults.x509_ttl).0,
        jwt_ttl: raw.jwt_ttl.unwrap_or(defaults.jwt_ttl).0,
        jwt_audiences: raw.jwt_audiences.into_boxed_slice(),
        dns_names: raw.dns_names.into_boxed_slice(),
        hint: raw.hint.map(String::into_boxed_str),
        federates_with: raw.federates_with.into_boxed_slice(),
        owner_expires: raw.owner_expires,
        tasks: raw.tasks.map(Box::new),
        may_ask_for_others: raw.may_ask_for_others,
        jwt_audiences_written_empty: raw.jwt_audiences_written_empty,
        remote_entry: None,
        location: raw.location,
    }
}

/// A short, stable digest of what makes an entry distinct: its SPIFFE ID
/// and its selectors (a set, so their order in the file does not matter).
fn entry_id(spiffe_id: &str, selectors: &SelectorSet) -> EntryId {
    let mut hasher = Sha256::new();
    hasher.update(spiffe_id.as_bytes());
    for selector in selectors {
        hasher.update(b"\n");
        hasher.update(selector.as_str().as_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    EntryId(u64::from_be_bytes(first))
}

fn duplicate_error(entry: &Entry, first: &Entry) -> ConfigError {
    ConfigError {
        file: entry.location.file.to_path_buf(),
        line: Some(entry.location.line),
        key: Some("entry".into()),
        message: format!(
            "duplicate of the entry at {} (same spiffe_id {} and selectors)",
            first.location, entry.spiffe_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(config: &Config) -> Result<Vec<Arc<Entry>>, ConfigError> {
        let loaded = entries(config, &mut EntryFiles::default())?;
        refuse_duplicates(&loaded)?;
        Ok(loaded)
    }

    #[test]
    fn loads_entries_dir_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let entry = "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\nowner = \"o\"\n";
        std::fs::write(dir.path().join("a.toml"), entry).unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "junk").unwrap();
        let text = format!("trust_domain = \"example.org\"\nentries_dir = {:?}\n", dir.path());
        let config = Config::parse(Path::new("main.toml"), &text).unwrap();
        let loaded = load(&config).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].x509_ttl, config.svid.x509_ttl.0);

        std::fs::write(dir.path().join("b.toml"), entry).unwrap();
        let err = load(&config).unwrap_err();
        assert!(
            err.to_string()
                .contains("b.toml:1: entry: duplicate of the entry at"),
            "{err}"
        );
        assert!(err.to_string().contains("a.toml:1 (same spiffe_id"), "{err}");
    }

    #[test]
    fn the_id_is_a_digest_of_the_spiffe_id_and_the_selector_set() {
        let selectors = |list: &[&str]| -> SelectorSet {
            list.iter()
                .map(|s| crate::selector::Selector::parse(s).unwrap())
                .collect()
        };
        let id = entry_id(
            "spiffe://example.org/a",
            &selectors(&["unix:uid:1", "unix:gid:2"]),
        );
        assert_eq!(
            id,
            entry_id(
                "spiffe://example.org/a",
                &selectors(&["unix:gid:2", "unix:uid:1"])
            ),
            "the selectors' order does not matter"
        );
        assert_ne!(
            id,
            entry_id(
                "spiffe://example.org/b",
                &selectors(&["unix:uid:1", "unix:gid:2"])
            )
        );
        assert_ne!(
            id,
            entry_id("spiffe://example.org/a", &selectors(&["unix:uid:1"]))
        );
        // The audit trail names entries by id: it must not change between
        // versions (the first 8 bytes of the SHA-256, in hex).
        assert_eq!(id.to_string(), "da180781052ae229");
    }
}

//! Builds entries from the config file and every `*.toml` of `entries_dir`,
//! resolving defaults and refusing duplicates.

use std::collections::HashMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::Entry;
use crate::config::{self, Config, ConfigError, EntryConfig, Location};
use crate::selector::SelectorSet;

pub(super) fn entries(config: &Config) -> Result<Vec<Entry>, ConfigError> {
    let mut raw = config.entries.clone();
    for file in entry_files(config)? {
        raw.extend(config::load_entries_file(&file, &config.trust_domain)?);
    }
    let mut seen: HashMap<String, Location> = HashMap::new();
    let mut entries = Vec::with_capacity(raw.len());
    for entry in raw {
        let entry = resolve(config, entry);
        if let Some(first) = seen.insert(entry.id.clone(), entry.location.clone()) {
            return Err(duplicate_error(&entry, &first));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// The `*.toml` files of `entries_dir`, sorted so policy order is stable.
fn entry_files(config: &Config) -> Result<Vec<PathBuf>, ConfigError> {
    let Some(dir) = &config.entries_dir else {
        return Ok(Vec::new());
    };
    let read_error = |e: std::io::Error| ConfigError {
        file: dir.clone(),
        line: None,
        key: Some("entries_dir".into()),
        message: format!("cannot read directory: {e}"),
    };
    let mut files = Vec::new();
    for item in std::fs::read_dir(dir).map_err(read_error)? {
        let path = item.map_err(read_error)?.path();
        if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn resolve(config: &Config, raw: EntryConfig) -> Entry {
    let selectors: SelectorSet = raw.selectors.into_iter().collect();
    Entry {
        id: entry_id(raw.spiffe_id.as_str(), &selectors),
        spiffe_id: raw.spiffe_id,
        selectors,
        owner: raw.owner,
        description: raw.description,
        labels: raw.labels,
        x509_ttl: raw.x509_ttl.unwrap_or(config.svid.x509_ttl).0,
        jwt_ttl: raw.jwt_ttl.unwrap_or(config.svid.jwt_ttl).0,
        jwt_audiences: raw.jwt_audiences,
        dns_names: raw.dns_names,
        hint: raw.hint,
        owner_expires: raw.owner_expires,
        tasks: raw.tasks,
        may_ask_for_others: raw.may_ask_for_others,
        location: raw.location,
    }
}

/// A short, stable digest of what makes an entry distinct: its SPIFFE ID
/// and its selectors (a set, so their order in the file does not matter).
fn entry_id(spiffe_id: &str, selectors: &SelectorSet) -> String {
    let mut hasher = Sha256::new();
    hasher.update(spiffe_id.as_bytes());
    for selector in selectors {
        hasher.update(b"\n");
        hasher.update(selector.as_str().as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

fn duplicate_error(entry: &Entry, first: &Location) -> ConfigError {
    ConfigError {
        file: entry.location.file.clone(),
        line: Some(entry.location.line),
        key: Some("entry".into()),
        message: format!(
            "duplicate of the entry at {first} (same spiffe_id {} and selectors)",
            entry.spiffe_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn loads_entries_dir_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let entry = "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\nowner = \"o\"\n";
        std::fs::write(dir.path().join("a.toml"), entry).unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "junk").unwrap();
        let text = format!("trust_domain = \"example.org\"\nentries_dir = {:?}\n", dir.path());
        let config = Config::parse(Path::new("main.toml"), &text).unwrap();
        let loaded = entries(&config).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].x509_ttl, config.svid.x509_ttl.0);

        std::fs::write(dir.path().join("b.toml"), entry).unwrap();
        let err = entries(&config).unwrap_err();
        assert!(
            err.to_string()
                .contains("b.toml:1: entry: duplicate of the entry at"),
            "{err}"
        );
    }
}

//! Live policy: the entries of the config file and of `entries_dir` are
//! re-read on SIGHUP and whenever those files change (inotify through the
//! `notify` crate). Only the files of `entries_dir` that changed are parsed
//! again (see [`EntryFiles`]); the new policy is validated as a whole
//! (duplicates across files included) and swapped in atomically. Requests
//! are answered from the previous policy while the next one is built, off
//! the async runtime. A broken file keeps the previous policy, is logged
//! with its file:line, and counted. Settings other than entries and SVID
//! lifetimes need a restart: a change to them is logged and ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::signal::unix::Signal;

use super::{EntryFiles, Policy, Registry};
use crate::config::Config;
use crate::file_changes::FileChanges;
use crate::telemetry::{ReloadOutcome, metrics};

/// Reloads the policy of `registry` on `sighup` and on file changes, until
/// the process ends. `files` holds the entry files the policy in effect was
/// loaded from.
pub async fn keep_current(running: Config, registry: Arc<Registry>, files: EntryFiles, mut sighup: Signal) {
    let mut changes = watch_files(&running).unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot watch policy files; reload with SIGHUP");
        FileChanges::none()
    });
    let running = Arc::new(running);
    let mut files = Some(files);
    loop {
        tokio::select! {
            Some(()) = changes.settled() => tracing::info!("policy files changed: reloading"),
            Some(()) = sighup.recv() => tracing::info!("SIGHUP: reloading policy"),
            else => return,
        }
        // Parsing and indexing take milliseconds to seconds: off the async
        // runtime, which keeps answering from the policy in effect.
        let mut taken = files.take().unwrap_or_default();
        let (running, registry) = (Arc::clone(&running), Arc::clone(&registry));
        let reloaded = tokio::task::spawn_blocking(move || {
            reload(&running, &mut taken, &registry);
            taken
        })
        .await;
        // A reload that panicked left nothing to keep: the next one reads
        // every file.
        files = reloaded.ok();
    }
}

/// Re-reads the files that changed and swaps in the new policy if it is
/// valid and different.
pub fn reload(running: &Config, files: &mut EntryFiles, registry: &Registry) -> ReloadOutcome {
    let started = Instant::now();
    let outcome = match next_policy(running, files) {
        Err(error) => {
            tracing::error!(%error, "policy reload failed; keeping the previous policy");
            ReloadOutcome::Failed
        }
        Ok(policy) if policy.entries() == registry.policy().entries() => ReloadOutcome::Unchanged,
        Ok(policy) => {
            let entries = policy.entries().len();
            let previous = registry.replace(policy);
            tracing::info!(
                entries,
                files_parsed = files.parsed(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "new policy in effect"
            );
            drop(previous);
            let policy = registry.policy();
            policy.build_lookups();
            // After the swap: linting never delays the new policy.
            crate::policy_check::log_warnings(running, &policy);
            ReloadOutcome::Applied
        }
    };
    metrics().policy_reload(outcome);
    outcome
}

fn next_policy(running: &Config, files: &mut EntryFiles) -> Result<Policy, crate::config::ConfigError> {
    let fresh = Config::load(&running.source)?;
    if fresh.restart_settings() != running.restart_settings() {
        tracing::warn!(
            "settings other than entries and [svid] changed: they take effect at the next restart"
        );
    }
    // Only the live part of the new file applies.
    let effective = Config {
        entries: fresh.entries,
        svid: fresh.svid,
        ..running.clone()
    };
    Policy::load_with(&effective, files)
}

/// Watches the directory of the config file and `entries_dir` (directories,
/// not files: editors replace files by renaming).
fn watch_files(config: &Config) -> notify::Result<FileChanges> {
    let config_file = absolute(&config.source);
    let entries_dir = config.entries_dir.as_deref().map(absolute);
    let relevant = {
        let config_file = config_file.clone();
        let entries_dir = entries_dir.clone();
        move |path: &Path| {
            path == config_file
                || entries_dir.as_deref().is_some_and(|dir| {
                    path.parent() == Some(dir) && path.extension().is_some_and(|ext| ext == "toml")
                })
        }
    };
    let dirs: Vec<&Path> = config_file
        .parent()
        .into_iter()
        .chain(entries_dir.as_deref())
        .collect();
    FileChanges::watch(&dirs, relevant)
}

/// The path with symlinks resolved, as notify reports it (the path itself
/// if it cannot be resolved).
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "trust_domain = \"example.org\"\n";
    const ENTRY: &str =
        "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\nowner = \"o\"\n";

    #[test]
    fn reload_applies_valid_policy_and_keeps_the_old_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attestd.toml");
        std::fs::write(&path, HEAD).unwrap();
        let running = Config::load(&path).unwrap();
        let registry = Registry::new(Policy::load(&running).unwrap());
        let files = &mut EntryFiles::default();

        assert_eq!(reload(&running, files, &registry), ReloadOutcome::Unchanged);
        std::fs::write(&path, format!("{HEAD}{ENTRY}")).unwrap();
        assert_eq!(reload(&running, files, &registry), ReloadOutcome::Applied);
        assert_eq!(registry.policy().entries().len(), 1);

        std::fs::write(&path, format!("{HEAD}{ENTRY}selectors = [\"bogus\"]\n")).unwrap();
        assert_eq!(reload(&running, files, &registry), ReloadOutcome::Failed);
        assert_eq!(registry.policy().entries().len(), 1, "previous policy kept");

        // A restart-only setting is ignored; the entries still apply.
        std::fs::write(&path, format!("{HEAD}socket_path = \"/elsewhere.sock\"\n")).unwrap();
        assert_eq!(reload(&running, files, &registry), ReloadOutcome::Applied);
        assert!(registry.policy().entries().is_empty());
    }

    /// A config with an `entries_dir` of three files, each of two entries
    /// (uids 10 + 2 * file and 11 + 2 * file), loaded as the daemon does.
    struct Fixture {
        _dir: tempfile::TempDir,
        entries_dir: PathBuf,
        running: Config,
        files: EntryFiles,
        registry: Registry,
    }

    fn file_text(uids: &[u32]) -> String {
        uids.iter()
            .map(|uid| {
                format!(
                    "[[entry]]\nspiffe_id = \"spiffe://example.org/u{uid}\"\nselectors = [\"unix:uid:{uid}\"]\nowner = \"o\"\n"
                )
            })
            .collect()
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let entries_dir = dir.path().join("entries.d");
            std::fs::create_dir(&entries_dir).unwrap();
            for file in 0..3 {
                let uids = [10 + 2 * file, 11 + 2 * file];
                std::fs::write(entries_dir.join(format!("{file}.toml")), file_text(&uids)).unwrap();
            }
            let config = dir.path().join("attestd.toml");
            std::fs::write(&config, format!("{HEAD}entries_dir = {entries_dir:?}\n")).unwrap();
            let running = Config::load(&config).unwrap();
            let mut files = EntryFiles::default();
            let registry = Registry::new(Policy::load_with(&running, &mut files).unwrap());
            assert_eq!(files.parsed(), 3);
            Self {
                _dir: dir,
                entries_dir,
                running,
                files,
                registry,
            }
        }

        fn write(&self, name: &str, uids: &[u32]) {
            std::fs::write(self.entries_dir.join(name), file_text(uids)).unwrap();
        }

        fn reload(&mut self) -> ReloadOutcome {
            reload(&self.running, &mut self.files, &self.registry)
        }

        fn uids(&self) -> Vec<String> {
            let policy = self.registry.policy();
            policy
                .entries()
                .iter()
                .map(|e| e.spiffe_id.path().trim_start_matches("/u").to_owned())
                .collect()
        }
    }

    #[test]
    fn a_changed_file_alone_is_parsed_and_the_other_entries_are_kept_as_they_were() {
        let mut fixture = Fixture::new();
        let before = fixture.registry.policy();
        assert_eq!(fixture.reload(), ReloadOutcome::Unchanged);
        assert_eq!(fixture.files.parsed(), 0, "nothing changed, nothing parsed");

        fixture.write("1.toml", &[12, 13, 20]);
        assert_eq!(fixture.reload(), ReloadOutcome::Applied);
        assert_eq!(fixture.files.parsed(), 1);
        assert_eq!(fixture.uids(), ["10", "11", "12", "13", "20", "14", "15"]);
        let after = fixture.registry.policy();
        for (old, new) in [(0, 0), (1, 1), (4, 5), (5, 6)] {
            assert!(
                Arc::ptr_eq(&before.entries()[old], &after.entries()[new]),
                "entry {old} of an unchanged file is the same entry"
            );
        }
        let caller = [crate::selector::Selector::parse("unix:uid:20").unwrap()]
            .into_iter()
            .collect();
        assert_eq!(after.matching(&caller).len(), 1, "the new entry is indexed");
    }

    #[test]
    fn an_added_file_and_a_removed_one_are_applied() {
        let mut fixture = Fixture::new();
        fixture.write("3.toml", &[30]);
        assert_eq!(fixture.reload(), ReloadOutcome::Applied);
        assert_eq!(fixture.files.parsed(), 1);
        assert_eq!(fixture.uids(), ["10", "11", "12", "13", "14", "15", "30"]);

        std::fs::remove_file(fixture.entries_dir.join("0.toml")).unwrap();
        assert_eq!(fixture.reload(), ReloadOutcome::Applied);
        assert_eq!(fixture.files.parsed(), 0);
        assert_eq!(fixture.uids(), ["12", "13", "14", "15", "30"]);
    }

    #[test]
    fn a_change_that_duplicates_an_entry_of_another_file_keeps_the_previous_policy() {
        let mut fixture = Fixture::new();
        fixture.write("2.toml", &[14, 10]);
        assert_eq!(fixture.reload(), ReloadOutcome::Failed);
        assert_eq!(
            fixture.uids(),
            ["10", "11", "12", "13", "14", "15"],
            "previous policy kept"
        );
        let error = Policy::load_with(&fixture.running, &mut fixture.files).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}:5: entry: duplicate of the entry at {}:1 (same spiffe_id spiffe://example.org/u10 and selectors)",
                fixture.entries_dir.join("2.toml").display(),
                fixture.entries_dir.join("0.toml").display()
            )
        );

        // Removing the duplicate from the other file resolves it.
        fixture.write("0.toml", &[11]);
        assert_eq!(fixture.reload(), ReloadOutcome::Applied);
        assert_eq!(fixture.uids(), ["11", "12", "13", "14", "10"]);
    }

    #[test]
    fn a_broken_file_keeps_the_previous_policy_until_it_is_fixed() {
        let mut fixture = Fixture::new();
        std::fs::write(
            fixture.entries_dir.join("1.toml"),
            file_text(&[12]).replace("unix:uid:12", "unix:uid:x"),
        )
        .unwrap();
        assert_eq!(fixture.reload(), ReloadOutcome::Failed);
        assert_eq!(fixture.uids(), ["10", "11", "12", "13", "14", "15"]);
        let error = Policy::load_with(&fixture.running, &mut fixture.files).unwrap_err();
        assert_eq!(
            (error.file, error.line, error.key.as_deref()),
            (
                fixture.entries_dir.join("1.toml"),
                Some(3),
                Some("entry[0].selectors[0]")
            )
        );

        fixture.write("1.toml", &[12]);
        assert_eq!(fixture.reload(), ReloadOutcome::Applied);
        assert_eq!(fixture.uids(), ["10", "11", "12", "14", "15"]);
    }

    #[test]
    fn a_rewrite_of_the_same_size_at_once_is_seen() {
        // Both writes fall within the file system clock's tick, so the
        // stamp may not change: the content decides.
        let mut fixture = Fixture::new();
        fixture.write("0.toml", &[16, 17]);
        assert_eq!(fixture.reload(), ReloadOutcome::Applied);
        fixture.write("0.toml", &[18, 19]);
        assert_eq!(fixture.reload(), ReloadOutcome::Applied);
        assert_eq!(fixture.uids(), ["18", "19", "12", "13", "14", "15"]);
        // Read again (its stamp is not settled yet) but not parsed.
        assert_eq!(fixture.reload(), ReloadOutcome::Unchanged);
        assert_eq!(fixture.files.parsed(), 0);
    }

    #[test]
    fn new_svid_defaults_resolve_every_entry_again() {
        let mut fixture = Fixture::new();
        let source = fixture.running.source.clone();
        let text = std::fs::read_to_string(&source).unwrap();
        std::fs::write(&source, format!("{text}[svid]\nx509_ttl = \"10m\"\n")).unwrap();
        assert_eq!(fixture.reload(), ReloadOutcome::Applied);
        assert_eq!(fixture.files.parsed(), 3);
        let policy = fixture.registry.policy();
        assert!(
            policy
                .entries()
                .iter()
                .all(|e| e.x509_ttl == std::time::Duration::from_secs(600))
        );
    }
}

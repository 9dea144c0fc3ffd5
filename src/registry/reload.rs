//! Live policy: the entries of the config file and of `entries_dir` are
//! re-read on SIGHUP and whenever those files change (inotify through the
//! `notify` crate). The new policy is validated as a whole and swapped in
//! atomically; a broken file keeps the previous policy, is logged with its
//! file:line, and counted. Settings other than entries and SVID lifetimes
//! need a restart: a change to them is logged and ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::Signal;

use super::{Policy, Registry};
use crate::config::Config;
use crate::file_changes::FileChanges;
use crate::telemetry::{ReloadOutcome, metrics};

/// Reloads the policy of `registry` on `sighup` and on file changes, until
/// the process ends.
pub async fn keep_current(running: Config, registry: Arc<Registry>, mut sighup: Signal) {
    let mut changes = watch_files(&running).unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot watch policy files; reload with SIGHUP");
        FileChanges::none()
    });
    loop {
        tokio::select! {
            Some(()) = changes.settled() => tracing::info!("policy files changed: reloading"),
            Some(()) = sighup.recv() => tracing::info!("SIGHUP: reloading policy"),
            else => return,
        }
        reload(&running, &registry);
    }
}

/// Re-reads the files and swaps in the new policy if it is valid and
/// different.
pub fn reload(running: &Config, registry: &Registry) -> ReloadOutcome {
    let outcome = match next_policy(running) {
        Err(error) => {
            tracing::error!(%error, "policy reload failed; keeping the previous policy");
            ReloadOutcome::Failed
        }
        Ok(policy) if policy.entries() == registry.policy().entries() => ReloadOutcome::Unchanged,
        Ok(policy) => {
            tracing::info!(entries = policy.entries().len(), "new policy in effect");
            registry.replace(policy);
            ReloadOutcome::Applied
        }
    };
    metrics().policy_reload(outcome);
    outcome
}

fn next_policy(running: &Config) -> Result<Policy, crate::config::ConfigError> {
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
    Policy::load(&effective)
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

        assert_eq!(reload(&running, &registry), ReloadOutcome::Unchanged);
        std::fs::write(&path, format!("{HEAD}{ENTRY}")).unwrap();
        assert_eq!(reload(&running, &registry), ReloadOutcome::Applied);
        assert_eq!(registry.policy().entries().len(), 1);

        std::fs::write(&path, format!("{HEAD}{ENTRY}selectors = [\"bogus\"]\n")).unwrap();
        assert_eq!(reload(&running, &registry), ReloadOutcome::Failed);
        assert_eq!(registry.policy().entries().len(), 1, "previous policy kept");

        // A restart-only setting is ignored; the entries still apply.
        std::fs::write(&path, format!("{HEAD}socket_path = \"/elsewhere.sock\"\n")).unwrap();
        assert_eq!(reload(&running, &registry), ReloadOutcome::Applied);
        assert!(registry.policy().entries().is_empty());
    }
}

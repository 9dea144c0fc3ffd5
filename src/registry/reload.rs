//! Live policy: the entries of the config file and of `entries_dir` are
//! re-read on SIGHUP and whenever those files change (inotify through the
//! `notify` crate). The new policy is validated as a whole and swapped in
//! atomically; a broken file keeps the previous policy, is logged with its
//! file:line, and counted. Settings other than entries and SVID lifetimes
//! need a restart: a change to them is logged and ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;

use super::{Policy, Registry};
use crate::config::Config;
use crate::telemetry::{ReloadOutcome, metrics};

/// Editors and `cp` produce several events per save: wait this long for the
/// burst to end before reloading once.
const SETTLE: Duration = Duration::from_millis(150);

/// Reloads the policy of `registry` on `sighup` and on file changes, until
/// the process ends.
pub async fn keep_current(running: Config, registry: Arc<Registry>, mut sighup: Signal) {
    let (changed_tx, mut changed) = mpsc::unbounded_channel();
    let _watcher = match watch_files(&running, changed_tx) {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(%error, "cannot watch policy files; reload with SIGHUP");
            None
        }
    };
    loop {
        tokio::select! {
            Some(()) = changed.recv() => {
                tokio::time::sleep(SETTLE).await;
                while changed.try_recv().is_ok() {}
                tracing::info!("policy files changed: reloading");
            }
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
fn watch_files(config: &Config, changed: mpsc::UnboundedSender<()>) -> notify::Result<impl Watcher> {
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
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, EventKind::Access(_))
            && event.paths.iter().any(|p| relevant(p))
        {
            let _ = changed.send(());
        }
    })?;
    if let Some(dir) = config_file.parent() {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    if let Some(dir) = &entries_dir {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
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

//! Live policies, with the rules of the entries (see `registry::reload`):
//! the `*.cedar` files are re-read on SIGHUP and whenever they change
//! (inotify on `policy_dir`), and also whenever the entries reload, since
//! the schema (label keys, one action per allowed tool) comes from them.
//! The new set is validated whole and swapped in at once; a broken file
//! keeps the previous set, is logged with its file:line, and counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::Signal;

use super::{Authz, AuthzError, PolicyBook};
use crate::file_changes::FileChanges;
use crate::registry::Registry;
use crate::telemetry::{ReloadOutcome, metrics};

/// Reloads the policies of `authz` from `dir` on `sighup`, on file changes
/// and on every new entries policy of `registry`, until the process ends.
/// The watches are in place when this returns (a change made right after
/// start-up is not missed); the future does the reloading.
pub fn keep_current(
    dir: Option<PathBuf>,
    authz: Arc<Authz>,
    registry: Arc<Registry>,
    mut sighup: Signal,
) -> impl Future<Output = ()> {
    let mut changes = match dir.as_deref().map(watch_dir) {
        Some(Ok(changes)) => changes,
        Some(Err(error)) => {
            tracing::warn!(%error, "cannot watch policy_dir; reload policies with SIGHUP");
            FileChanges::none()
        }
        None => FileChanges::none(),
    };
    let mut entries = registry.subscribe();
    async move {
        loop {
            tokio::select! {
                Some(()) = changes.settled() => tracing::info!("policy files changed: reloading policies"),
                Some(()) = sighup.recv() => tracing::info!("SIGHUP: reloading policies"),
                Ok(()) = entries.changed() => tracing::info!("entries changed: revalidating policies"),
                else => return,
            }
            // Parsing and validating thousands of policies takes seconds:
            // off the async runtime.
            let (dir, authz, registry) = (dir.clone(), Arc::clone(&authz), Arc::clone(&registry));
            let _ = tokio::task::spawn_blocking(move || reload(dir.as_deref(), &authz, &registry)).await;
        }
    }
}

/// Loads the policies of `dir` against the current entries and swaps them
/// in if they are valid; else keeps the set in effect.
pub fn reload(dir: Option<&Path>, authz: &Authz, registry: &Registry) -> ReloadOutcome {
    let outcome = match PolicyBook::load(dir, registry.policy().entries()) {
        Ok(book) => {
            tracing::info!(policies = book.len(), "new policy set in effect");
            authz.replace(book);
            ReloadOutcome::Applied
        }
        Err(AuthzError::Policies(problems)) => {
            for problem in &problems {
                tracing::error!("policy error: {problem}");
            }
            tracing::error!(
                errors = problems.len(),
                policies = authz.book().len(),
                "policy reload failed; keeping the previous policy set"
            );
            ReloadOutcome::Failed
        }
        Err(error) => {
            tracing::error!(%error, "policy reload failed; keeping the previous policy set");
            ReloadOutcome::Failed
        }
    };
    metrics().policy_set_reload(outcome);
    outcome
}

/// Watches `dir` itself (editors replace files by renaming them).
fn watch_dir(dir: &Path) -> notify::Result<FileChanges> {
    let watched = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let relevant = {
        let watched = watched.clone();
        move |path: &Path| {
            path.parent() == Some(&watched) && path.extension().is_some_and(|ext| ext == "cedar")
        }
    };
    FileChanges::watch(&[&watched], relevant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::decide::tests::FakeTokens;
    use crate::config::Config;
    use crate::registry::Policy;

    const CONFIG: &str = "trust_domain = \"example.org\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\nowner = \"o\"\n";
    const TOOLS: &str = "tasks = { tools = [\"jira.comment\"] }\n";
    const POLICY: &str = "permit(principal, action == Attestd::Action::\"jira.comment\", resource);\n";

    #[test]
    fn a_broken_file_or_an_entries_change_that_breaks_a_policy_keeps_the_set_in_effect() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("attestd.toml");
        std::fs::write(&config_path, format!("{CONFIG}{TOOLS}")).unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("a.cedar"), POLICY).unwrap();
        let config = Config::load(&config_path).unwrap();
        let registry = Registry::new(Policy::load(&config).unwrap());
        let book = PolicyBook::load(Some(&policies), registry.policy().entries()).unwrap();
        let authz = Authz::new(book, Arc::new(FakeTokens::default()));

        std::fs::write(policies.join("b.cedar"), POLICY).unwrap();
        assert_eq!(reload(Some(&policies), &authz, &registry), ReloadOutcome::Applied);
        assert_eq!(authz.book().len(), 2);

        std::fs::write(policies.join("c.cedar"), "permit(principal,").unwrap();
        assert_eq!(reload(Some(&policies), &authz, &registry), ReloadOutcome::Failed);
        assert_eq!(authz.book().len(), 2, "the previous set stays");
        std::fs::remove_file(policies.join("c.cedar")).unwrap();

        // The entries stop allowing the tool the policies name: the
        // policies no longer validate, and the set in effect stays.
        std::fs::write(&config_path, CONFIG).unwrap();
        crate::registry::reload(&config, &mut crate::registry::EntryFiles::default(), &registry);
        assert_eq!(reload(Some(&policies), &authz, &registry), ReloadOutcome::Failed);
        assert!(authz.book().has_action("jira.comment"));
    }
}

//! Debounced file-change notices for live reload (entries, Cedar
//! policies): inotify through the `notify` crate, on directories rather
//! than files, since editors replace files by renaming them.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Editors and `cp` produce several events per save, a few milliseconds
/// apart at most: a burst has ended once no event came for this long, and
/// the reload (one per burst) starts then. (A writer that pauses longer in
/// the middle of a file gets a reload of the partial file: it fails, the
/// policy in effect stays, and the end of the write reloads again.)
const QUIET: Duration = Duration::from_millis(30);

/// A burst that never pauses (a file rewritten over and over) is reported
/// this long after it began all the same.
const LONGEST_BURST: Duration = Duration::from_secs(1);

/// Changes to the files of some directories that a reload cares about.
#[derive(Debug)]
pub struct FileChanges {
    // Watching for as long as this lives.
    _watcher: Option<RecommendedWatcher>,
    changed: mpsc::UnboundedReceiver<()>,
}

impl FileChanges {
    /// Watches `dirs` (not recursively) for changes to the paths `relevant`
    /// accepts (paths as notify reports them: symlinks resolved). The
    /// watches are in place when this returns.
    pub fn watch(dirs: &[&Path], relevant: impl Fn(&Path) -> bool + Send + 'static) -> notify::Result<Self> {
        let (changed_tx, changed) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !matches!(event.kind, EventKind::Access(_))
                && event.paths.iter().any(|p| relevant(p))
            {
                let _ = changed_tx.send(());
            }
        })?;
        for dir in dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(Self {
            _watcher: Some(watcher),
            changed,
        })
    }

    /// No watch (it could not be set up, or there is nothing to watch):
    /// [`Self::settled`] never reports a change.
    pub fn none() -> Self {
        let (_, changed) = mpsc::unbounded_channel();
        Self {
            _watcher: None,
            changed,
        }
    }

    /// The next change, once its burst of events has settled; `None` when
    /// nothing is watched (a `select!` branch then stays disabled). If
    /// another branch wins while a burst settles, the change it consumed is
    /// covered by that branch's reload, which checks every file.
    pub async fn settled(&mut self) -> Option<()> {
        self.changed.recv().await?;
        let give_up = Instant::now() + LONGEST_BURST;
        while Instant::now() < give_up {
            let quiet_until = (Instant::now() + QUIET).min(give_up);
            match tokio::time::timeout_at(quiet_until, self.changed.recv()).await {
                // Another event of the burst: wait for quiet again.
                Ok(Some(())) => continue,
                // Quiet (or the watcher is gone): the burst is over.
                Ok(None) | Err(_) => return Some(()),
            }
        }
        // The burst went on too long: report it, and what it queued.
        while self.changed.try_recv().is_ok() {}
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_events_is_one_change() {
        let (changed_tx, changed) = mpsc::unbounded_channel();
        let mut changes = FileChanges {
            _watcher: None,
            changed,
        };
        for _ in 0..5 {
            changed_tx.send(()).unwrap();
        }
        assert_eq!(changes.settled().await, Some(()));
        assert!(
            changes.changed.try_recv().is_err(),
            "the burst's events are consumed"
        );

        changed_tx.send(()).unwrap();
        drop(changed_tx);
        assert_eq!(
            changes.settled().await,
            Some(()),
            "a change before the watch ended"
        );
        assert_eq!(changes.settled().await, None, "then nothing more");
        assert_eq!(FileChanges::none().settled().await, None);
    }
}

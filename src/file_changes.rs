//! Debounced file-change notices for live reload (entries, Cedar
//! policies): inotify through the `notify` crate, on directories rather
//! than files, since editors replace files by renaming them.

use std::path::Path;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Editors and `cp` produce several events per save: wait this long for the
/// burst to end before reloading once.
const SETTLE: Duration = Duration::from_millis(150);

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
    /// covered by that branch's reload, which re-reads every file.
    pub async fn settled(&mut self) -> Option<()> {
        self.changed.recv().await?;
        tokio::time::sleep(SETTLE).await;
        while self.changed.try_recv().is_ok() {}
        Some(())
    }
}

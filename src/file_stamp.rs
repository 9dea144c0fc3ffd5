//! What `stat(2)` says about a file's identity and last change: caches of
//! what a file held (the registry's parsed entry files, user and group
//! names) compare stamps to tell whether it was edited or replaced since.
//!
//! Equal stamps can miss a change: two writes of the same size within one
//! tick of the file system's clock leave the same times. Each cache says
//! how it bounds that.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A file's device, inode, size, and modification and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Device of the file system.
    pub dev: u64,
    /// Inode: a replacing rename changes it.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Change time (seconds, nanoseconds): every write, rename or change of
    /// owner or mode sets it.
    pub ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file at `path` (following symlinks).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// When the file last changed (its change time); `None` before 1970, a
    /// clock gone wrong.
    pub fn changed_at(&self) -> Option<SystemTime> {
        let (seconds, nanos) = self.ctime;
        let seconds = u64::try_from(seconds).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos.clamp(0, 999_999_999) as u32))
    }
}

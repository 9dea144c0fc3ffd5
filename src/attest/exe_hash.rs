//! sha256 of executables, cached by the identity of the file that was
//! actually hashed: (device, inode, size, mtime, ctime) taken with fstat on
//! the very fd being read. A rewritten binary changes mtime/ctime and is
//! hashed again; an unchanged one is hashed once for all its processes.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Executables larger than this are not hashed: `unix:sha256` is then not
/// emitted and the caller can only match on other selectors.
pub const DEFAULT_MAX_HASH_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Hashes executables, remembering each file's digest.
#[derive(Debug)]
pub struct ExeHasher {
    max_bytes: u64,
    // std Mutex: held only for a map lookup or insert, never across I/O.
    cache: Mutex<HashMap<FileKey, String>>,
}

impl Default for ExeHasher {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_HASH_BYTES)
    }
}

impl ExeHasher {
    /// A hasher that skips files over `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The lowercase hex sha256 of `file`, or `None` when it is over the size
    /// limit.
    pub fn digest(&self, file: &File) -> std::io::Result<Option<String>> {
        let meta = file.metadata()?;
        if meta.len() > self.max_bytes {
            tracing::warn!(
                size = meta.len(),
                limit = self.max_bytes,
                "executable too large to hash; unix:sha256 not emitted"
            );
            return Ok(None);
        }
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        };
        if let Some(hit) = self.lock().get(&key) {
            return Ok(Some(hit.clone()));
        }
        let digest = hash_file(file)?;
        self.lock().insert(key, digest.clone());
        Ok(Some(digest))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, String>> {
        // A panic while holding this lock leaves the map consistent (single
        // inserts), so a poisoned lock is still safe to use.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn hash_file(mut file: &File) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hashes_and_respects_limit() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"test").unwrap();
        let file = File::open(f.path()).unwrap();
        let digest = ExeHasher::default().digest(&file).unwrap().unwrap();
        assert_eq!(
            digest,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(ExeHasher::new(3).digest(&file).unwrap(), None);
    }
}

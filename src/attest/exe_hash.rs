//! sha256 of executables, cached by the identity of the file that was
//! actually hashed: (device, inode, size, mtime, ctime) taken with fstat on
//! the very fd being read. A rewritten binary changes mtime/ctime and is
//! hashed again; an unchanged one is hashed once for all its processes, and
//! concurrent attestations of one binary wait for a single hash.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{AtFlags, CWD, Statx, StatxFlags, makedev, statx};
use sha2::{Digest, Sha256};

/// Default for `[attestation] max_exe_hash_bytes`.
pub const DEFAULT_MAX_HASH_BYTES: u64 = 1 << 30;
/// Distinct binaries remembered; beyond this the cache starts afresh.
const MAX_CACHED: usize = 4096;

/// Which file an executable is: what `exe` pointed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file, as the kernel holds it: `statx` with
    /// `AT_STATX_DONT_SYNC`, so a network or FUSE file system is not asked
    /// (a plain `stat` of a file on FUSE waits for its server, which may
    /// never answer, and this runs at accept, on a runtime thread). A
    /// file's device and inode never change, so the kernel's copy is exact.
    pub fn of(file: &File) -> std::io::Result<Self> {
        let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
        Ok(Self::from(statx(file, c"", flags, StatxFlags::INO)?))
    }

    /// The identity of the file `path` leads to (following every link, the
    /// `/proc/<pid>/exe` magic link included), from the kernel's copy as
    /// in [`Self::of`]: one system call where opening the file takes three.
    pub fn at(path: &Path) -> std::io::Result<Self> {
        Ok(Self::from(statx(
            CWD,
            path,
            AtFlags::STATX_DONT_SYNC,
            StatxFlags::INO,
        )?))
    }
}

impl From<Statx> for FileId {
    fn from(stat: Statx) -> Self {
        Self {
            dev: makedev(stat.stx_dev_major, stat.stx_dev_minor),
            ino: stat.stx_ino,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    id: FileId,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The outcome of hashing one executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Digest256 {
    /// Lowercase hex sha256.
    Hex(String),
    /// Not hashed: the file is larger than the limit (its size).
    TooLarge(u64),
}

/// One cache slot; its mutex is held while the file is hashed, so a second
/// caller for the same file waits instead of hashing again.
type Slot = Arc<Mutex<Option<String>>>;

/// Hashes executables, remembering each file's digest.
#[derive(Debug)]
pub struct ExeHasher {
    max_bytes: u64,
    // std Mutex: held only to find or insert a slot, never during I/O.
    cache: Mutex<HashMap<FileKey, Slot>>,
    hashed: AtomicU64,
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
            hashed: AtomicU64::new(0),
        }
    }

    /// How many files were actually read and hashed (cache misses).
    pub fn files_hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// The sha256 of `file`, from the cache when this very file version was
    /// hashed before.
    pub fn digest(&self, file: &File) -> std::io::Result<Digest256> {
        let meta = file.metadata()?;
        if meta.len() > self.max_bytes {
            return Ok(Digest256::TooLarge(meta.len()));
        }
        let key = FileKey {
            id: FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        };
        let slot = self.slot(key);
        let mut digest = lock(&slot);
        if let Some(hit) = digest.as_ref() {
            return Ok(Digest256::Hex(hit.clone()));
        }
        let hex = hash_file(file)?;
        self.hashed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            dev = key.id.dev,
            ino = key.id.ino,
            size = key.size,
            "hashed executable"
        );
        *digest = Some(hex.clone());
        Ok(Digest256::Hex(hex))
    }

    fn slot(&self, key: FileKey) -> Slot {
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED && !cache.contains_key(&key) {
            cache.clear();
        }
        Arc::clone(cache.entry(key).or_default())
    }
}

/// Every critical section leaves its data consistent (single inserts), so a
/// poisoned lock is still safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    use std::io::{Seek, Write};

    const TEST_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    /// By path through the `exe` magic link, or by an open file: one
    /// identity, and another file's is another.
    #[test]
    fn a_file_has_one_identity_by_path_or_by_descriptor() {
        let exe = Path::new("/proc/self/exe");
        let by_path = FileId::at(exe).unwrap();
        assert_eq!(by_path, FileId::of(&File::open(exe).unwrap()).unwrap());
        let other = tempfile::NamedTempFile::new().unwrap();
        assert_ne!(by_path, FileId::at(other.path()).unwrap());
        assert!(FileId::at(Path::new("/proc/self/no-such-file")).is_err());
    }

    #[test]
    fn hashes_once_per_file_version_and_respects_limit() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"test").unwrap();
        let hasher = ExeHasher::default();
        let path = f.path().to_owned();
        let open = || File::open(&path).unwrap();
        assert_eq!(
            hasher.digest(&open()).unwrap(),
            Digest256::Hex(TEST_SHA256.into())
        );
        assert_eq!(
            hasher.digest(&open()).unwrap(),
            Digest256::Hex(TEST_SHA256.into())
        );
        assert_eq!(hasher.files_hashed(), 1, "second digest came from the cache");

        // Rewritten in place: same inode, new mtime/ctime → hashed again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        f.as_file_mut().rewind().unwrap();
        f.as_file_mut().write_all(b"TEST").unwrap();
        assert_ne!(
            hasher.digest(&open()).unwrap(),
            Digest256::Hex(TEST_SHA256.into())
        );
        assert_eq!(hasher.files_hashed(), 2);

        assert_eq!(ExeHasher::new(3).digest(&open()).unwrap(), Digest256::TooLarge(4));
    }

    #[test]
    fn concurrent_digests_of_one_file_hash_it_once() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; 8 << 20]).unwrap();
        let hasher = ExeHasher::default();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| hasher.digest(&File::open(f.path()).unwrap()).unwrap());
            }
        });
        assert_eq!(hasher.files_hashed(), 1);
    }
}

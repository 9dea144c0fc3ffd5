//! The helper's files in `cert_dir`, laid out so that the certificate and
//! its key are replaced in one atomic step.
//!
//! Renaming each file into place keeps each file whole, but two renames are
//! two moments: a reader that opens the certificate before a rotation and
//! the key after it gets a pair that does not match, whatever the order of
//! the writes. So each X.509 update goes into a fresh generation directory,
//! and one rename of the `..data` symbolic link publishes all of its files
//! at once (the layout Kubernetes uses for mounted secrets, which file
//! watchers such as Envoy's already understand):
//!
//! ```text
//! cert_dir/svid.pem        -> ..data/svid.pem
//! cert_dir/svid_key.pem    -> ..data/svid_key.pem
//! cert_dir/svid_bundle.pem -> ..data/svid_bundle.pem
//! cert_dir/..data          -> ..gen-Xa81f0      (replaced by rename(2) on rotation)
//! cert_dir/..gen-Xa81f0/   the current files
//! cert_dir/..gen-b4c7d2/   the previous files, kept until the next rotation
//! ```
//!
//! What a reader gets:
//! - every file is always complete and has its final mode;
//! - the files reached through one resolution of `..data` (a directory
//!   opened once, or any reads between two rotations) always belong
//!   together;
//! - a reader that opens `svid.pem` and `svid_key.pem` by name one after the
//!   other can straddle a rotation; reading the first file again tells, since
//!   generations never come back: if it is unchanged, the pair matches;
//! - the previous generation stays until the next rotation, so a reader that
//!   resolved it just before a swap can still open the rest of its files;
//! - the program is signalled only after the swap.
//!
//! Single files (JWT-SVIDs, the JWT bundle) are replaced by one rename each.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::atomic_file;

/// The link that names the current generation.
const CURRENT: &str = "..data";
/// Generation directories are named this plus a random suffix.
const GENERATION_PREFIX: &str = "..gen-";
/// Generation directories must not hide their files' own modes.
const GENERATION_MODE: u32 = 0o755;

/// One file to write.
#[derive(Debug, Clone, Copy)]
pub struct File<'a> {
    /// Its name in `cert_dir`.
    pub name: &'a str,
    /// Its contents.
    pub contents: &'a [u8],
    /// Its permission bits.
    pub mode: u32,
}

/// The directory the helper writes into.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    /// Uses `dir`, creating it (0755) if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        atomic_file::create_dir(dir, 0o755)?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Replaces one file atomically.
    pub fn write(&self, file: File<'_>) -> io::Result<()> {
        atomic_file::write(&self.path(file.name), file.contents, file.mode)
    }

    /// Publishes `files` as one new generation: all of them become visible
    /// in the same instant (see the module documentation).
    pub fn publish(&self, files: &[File<'_>]) -> io::Result<()> {
        let generation = self.new_generation()?;
        for file in files {
            atomic_file::write(&generation.join(file.name), file.contents, file.mode)?;
        }
        let current = self.path(CURRENT);
        let previous = std::fs::read_link(&current).ok();
        // A relative target, so the directory still works when moved or
        // mounted elsewhere.
        let generation_name = generation.file_name().map(PathBuf::from).unwrap_or_default();
        atomic_file::symlink(&generation_name, &current)?;
        for file in files {
            self.link_through_current(file.name)?;
        }
        let keep = [Some(generation_name), previous];
        if let Err(error) = self.remove_generations_except(&keep) {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot remove old generations");
        }
        Ok(())
    }

    fn new_generation(&self) -> io::Result<PathBuf> {
        let generation = tempfile::Builder::new()
            .prefix(GENERATION_PREFIX)
            .tempdir_in(&self.dir)?
            .keep();
        std::fs::set_permissions(&generation, std::fs::Permissions::from_mode(GENERATION_MODE))?;
        Ok(generation)
    }

    /// Makes `cert_dir/name` a link to `..data/name` (once: the link itself
    /// never changes afterwards).
    fn link_through_current(&self, name: &str) -> io::Result<()> {
        let target = Path::new(CURRENT).join(name);
        let link = self.path(name);
        if std::fs::read_link(&link).is_ok_and(|existing| existing == target) {
            return Ok(());
        }
        atomic_file::symlink(&target, &link)
    }

    fn remove_generations_except(&self, keep: &[Option<PathBuf>]) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = PathBuf::from(entry.file_name());
            let is_generation = name.to_string_lossy().starts_with(GENERATION_PREFIX);
            if is_generation && !keep.iter().flatten().any(|k| *k == name) {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files<'a>(cert: &'a [u8], key: &'a [u8]) -> [File<'a>; 2] {
        [
            File {
                name: "svid.pem",
                contents: cert,
                mode: 0o644,
            },
            File {
                name: "svid_key.pem",
                contents: key,
                mode: 0o600,
            },
        ]
    }

    fn generations(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(GENERATION_PREFIX)
            })
            .count()
    }

    #[test]
    fn publishes_generations_and_keeps_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        // A plain file from before (e.g. written by spiffe-helper) is replaced.
        std::fs::write(dir.path().join("svid.pem"), "old").unwrap();
        let cert_dir = CertDir::open(dir.path()).unwrap();
        for round in 0..4 {
            let cert = format!("cert {round}");
            let key = format!("key {round}");
            cert_dir.publish(&files(cert.as_bytes(), key.as_bytes())).unwrap();
            assert_eq!(
                std::fs::read_to_string(dir.path().join("svid.pem")).unwrap(),
                cert
            );
            assert_eq!(
                std::fs::read_to_string(dir.path().join("svid_key.pem")).unwrap(),
                key
            );
            assert_eq!(generations(dir.path()), (round + 1).min(2));
        }
        assert_eq!(
            std::fs::read_link(dir.path().join("svid_key.pem")).unwrap(),
            Path::new("..data/svid_key.pem")
        );
        let key_mode = std::fs::metadata(dir.path().join("svid_key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let generation = dir
            .path()
            .join(std::fs::read_link(dir.path().join(CURRENT)).unwrap());
        let generation_mode = std::fs::metadata(generation).unwrap().permissions().mode();
        assert_eq!(generation_mode & 0o777, GENERATION_MODE);
    }

    #[test]
    fn single_files_are_plain() {
        let dir = tempfile::tempdir().unwrap();
        let cert_dir = CertDir::open(&dir.path().join("new")).unwrap();
        cert_dir
            .write(File {
                name: "jwt.token",
                contents: b"token",
                mode: 0o600,
            })
            .unwrap();
        let path = cert_dir.path("jwt.token");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read(&path).unwrap(), b"token");
    }
}

//! The mount namespace `unix:path` is judged in.
//!
//! `/proc/<pid>/exe` reads as the path in the CALLER's mount namespace. A
//! user with `unshare -Urm` (or a rootless container) can bind-mount its
//! own program over a path an entry trusts and exec it: the link then names
//! the trusted path, but the file is the user's. So a path is only a fact
//! when, resolved in a mount namespace the caller does not control, it is
//! the very file the caller runs (same device and inode).
//!
//! That namespace is PID 1's (of attestd's pid namespace: the host's, or
//! when attestd runs in a container, the container's), reached through
//! `/proc/1/root`, because the systemd unit gives attestd a mount namespace
//! of its own (`ProtectSystem=`, `ProtectHome=`: `/home` is empty there).
//! Where PID 1's root cannot be opened (a PID 1 whose capabilities exceed
//! attestd's denies it ptrace access, as on some VMs), attestd's own root
//! stands in: it is set up by root, never by a caller, so it is equally
//! beyond a caller's reach.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;

use super::exe_hash::FileId;

/// A directory fd on the root of the reference mount namespace.
#[derive(Debug)]
pub struct HostRoot {
    dir: Option<OwnedFd>,
    origin: &'static str,
}

impl HostRoot {
    /// Opens `<proc_root>/1/root`, or attestd's own `/` when that is denied.
    pub fn open(proc_root: &Path) -> Self {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let pid1 = proc_root.join("1/root");
        match open(&pid1, flags, Mode::empty()) {
            Ok(dir) => Self {
                dir: Some(dir),
                origin: "PID 1's mount namespace",
            },
            Err(error) => {
                tracing::info!(%error, "cannot open {}: unix:path is resolved in attestd's own mount namespace", pid1.display());
                Self {
                    dir: open("/", flags, Mode::empty()).ok(),
                    origin: "attestd's mount namespace",
                }
            }
        }
    }

    /// Ok when `path`, resolved in the reference namespace, is the file
    /// `exe`; else why not (for the audit record's notes).
    pub fn names(&self, path: &Path, exe: FileId) -> Result<(), String> {
        let dir = self.dir.as_ref().ok_or("no root directory to resolve it in")?;
        // RESOLVE_IN_ROOT: absolute symlinks and ".." stay inside that root;
        // no magic links (a /proc/<pid>/fd path names no fixed file).
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let found = openat2(dir, path, how)
            .map_err(|e| format!("{} does not resolve in {}: {e}", path.display(), self.origin))?;
        let found = FileId::of(&File::from(found)).map_err(|e| format!("{}: {e}", path.display()))?;
        if found != exe {
            return Err(format!(
                "{} in {} is another file than the one the caller runs (a mount in the caller's namespace?)",
                path.display(),
                self.origin
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_its_own_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let id = |p: &Path| FileId::of(&File::open(p).unwrap()).unwrap();
        let root = HostRoot::open(Path::new("/proc"));
        root.names(&a, id(&a)).unwrap();
        let error = root.names(&a, id(&b)).unwrap_err();
        assert!(error.contains("another file"), "{error}");
        let error = root.names(&dir.path().join("missing"), id(&a)).unwrap_err();
        assert!(error.contains("does not resolve"), "{error}");
    }

    /// A fixture `/proc` with no PID 1: attestd's own root stands in.
    #[test]
    fn without_pid_1_attestds_own_root_is_used() {
        let fixture = tempfile::tempdir().unwrap();
        let root = HostRoot::open(fixture.path());
        assert_eq!(root.origin, "attestd's mount namespace");
        let exe = std::env::current_exe().unwrap();
        root.names(&exe, FileId::of(&File::open(&exe).unwrap()).unwrap())
            .unwrap();
    }
}

//! Workload attestation: from the kernel's facts about a socket peer to the
//! set of selectors that registration entries are matched against.
//!
//! Everything here is bound to the process pinned at accept time
//! ([`PeerIdentity`]): `/proc/<pid>` is opened as a directory and confirmed to
//! belong to the pinned process before anything is read through it, and the
//! pin is checked again once every fact is read. A caller that exits (and
//! whose pid may be reused) is refused rather than mistaken for another.
//! This module knows nothing of gRPC.

mod exe_hash;
mod peer;
mod process;

use std::path::{Path, PathBuf};

pub use exe_hash::ExeHasher;
pub use peer::{PeerIdentity, ProcessPin};

use crate::selector::{Selector, SelectorSet};

/// Why a caller could not be attested. None of these says the caller is not
/// entitled to anything: they say attestd could not learn who it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The socket peer has no pid (it is outside our pid namespace).
    #[error("the peer's pid is not visible in attestd's pid namespace")]
    NoPeerPid,
    /// The pinned process exited, before or during attestation.
    #[error("process {pid} exited before attestation completed")]
    ProcessGone {
        /// The caller's pid at connect time.
        pid: i32,
    },
    /// `/proc` could not be read.
    #[error("reading {what} of process {pid}: {source}")]
    Proc {
        /// The caller's pid.
        pid: i32,
        /// Which fact was being read.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What attestation learned about a caller: the facts for the audit trail and
/// the selectors for matching.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The caller's pid at connect time.
    pub pid: i32,
    /// Effective uid at connect time (SO_PEERCRED).
    pub uid: u32,
    /// Effective gid at connect time (SO_PEERCRED).
    pub gid: u32,
    /// The executable's path, when it still exists under that name.
    pub exe_path: Option<PathBuf>,
    /// Lowercase hex sha256 of the executable, hashed through `/proc/<pid>/exe`.
    pub sha256: Option<String>,
    /// Every selector the caller has.
    pub selectors: SelectorSet,
}

/// Attests socket peers by reading `/proc` under a configurable root (tests
/// point it at fixture trees).
#[derive(Debug)]
pub struct Attestor {
    proc_root: PathBuf,
    hasher: ExeHasher,
}

impl Default for Attestor {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl Attestor {
    /// An attestor reading the process tree at `proc_root`.
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            hasher: ExeHasher::default(),
        }
    }

    /// The `/proc` root this attestor reads.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// Attests a peer. Blocking (reads `/proc`, hashes the executable): call
    /// it from `spawn_blocking`.
    pub fn attest(&self, peer: &PeerIdentity) -> Result<Workload, AttestError> {
        let pid = peer.pid;
        let proc_dir = peer.open_proc_dir(&self.proc_root)?;
        // Only once the pin says the process is still alive do we know the
        // directory we just opened is its own and not a successor's.
        peer.ensure_alive()?;

        let status = proc_dir.status()?;
        let exe = proc_dir.executable(&self.hasher)?;

        let mut selectors = SelectorSet::new();
        unix_id_selectors(&mut selectors, peer.uid, peer.gid, &status.supplementary_gids);
        if let Some(path) = &exe.path {
            selectors.insert(Selector::new("unix", "path", path.display()));
        }
        if let Some(digest) = &exe.sha256 {
            selectors.insert(Selector::new("unix", "sha256", digest));
        }

        // Facts read from a process that has since exited could belong to
        // anything: refuse instead of issuing on them.
        peer.ensure_alive()?;
        Ok(Workload {
            pid,
            uid: peer.uid,
            gid: peer.gid,
            exe_path: exe.path,
            sha256: exe.sha256,
            selectors,
        })
    }
}

/// The `unix:` identity selectors: numeric ids always, names where the host's
/// user database knows them.
fn unix_id_selectors(selectors: &mut SelectorSet, uid: u32, gid: u32, supplementary: &[u32]) {
    use nix::unistd::{Gid, Group, Uid, User};
    selectors.insert(Selector::new("unix", "uid", uid));
    selectors.insert(Selector::new("unix", "gid", gid));
    if let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) {
        selectors.insert(Selector::new("unix", "user", user.name));
    }
    if let Ok(Some(group)) = Group::from_gid(Gid::from_raw(gid)) {
        selectors.insert(Selector::new("unix", "group", group.name));
    }
    for &sgid in supplementary {
        selectors.insert(Selector::new("unix", "supplementary_gid", sgid));
        if let Ok(Some(group)) = Group::from_gid(Gid::from_raw(sgid)) {
            selectors.insert(Selector::new("unix", "supplementary_group", group.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attests_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = PeerIdentity::from_socket(&a).unwrap();
        let workload = Attestor::default().attest(&peer).unwrap();
        assert_eq!(workload.pid, std::process::id() as i32);
        assert_eq!(workload.uid, nix::unistd::geteuid().as_raw());
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&exe));
        assert_eq!(workload.sha256.as_deref(), Some(digest.as_str()));
        let uid_selector = Selector::new("unix", "uid", workload.uid);
        assert!(workload.selectors.contains(&uid_selector));
    }
}

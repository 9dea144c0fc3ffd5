//! Workload attestation: from the kernel's facts about a socket peer to the
//! set of selectors that registration entries are matched against.
//!
//! Everything here is bound to the process pinned at accept time
//! ([`PeerIdentity`]): `/proc/<pid>` is opened as a directory and confirmed to
//! belong to the pinned process before anything is read through it, and the
//! pin is checked again once every fact is read. A caller that exits (and
//! whose pid may be reused) is refused rather than mistaken for another.
//! This module knows nothing of gRPC.

mod accounts;
mod cgroup;
mod exe_fs;
mod exe_hash;
mod host_root;
mod peer;
mod process;
mod reach;
mod socket_holders;

use std::path::{Path, PathBuf};

pub use cgroup::{CgroupError, CgroupFacts, DelegatedFacts, parse as parse_cgroup};
pub use exe_hash::{DEFAULT_MAX_HASH_BYTES, ExeHasher, FileId};
pub use peer::{ConnectCredentials, ConnectionSocket, PeerIdentity, ProcessPin};
/// `/proc/<pid>/status` parsing, for the fuzz targets (fuzz/).
#[doc(hidden)]
pub use process::{Status as ProcStatus, parse_status as parse_proc_status};
pub use reach::Reach;
pub use socket_holders::HolderError;

use crate::selector::{Selector, SelectorSet};
use accounts::{Accounts, Lookup, NotRemembered};
use cgroup::CgroupMounts;
use exe_hash::Digest256;
use host_root::HostRoot;
use process::{Executable, Status};

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
    /// The cgroup file contradicts itself.
    #[error("cgroup: {0}")]
    Cgroup(CgroupError),
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
    /// Lowercase hex sha256 of the executable, hashed through `/proc/<pid>/exe`
    /// (only when the policy names `unix:sha256`, see [`Hashing`]).
    pub sha256: Option<String>,
    /// Every selector the caller has.
    pub selectors: SelectorSet,
    /// Facts withheld from the selectors, and why (for logs and the audit).
    pub notes: Vec<String>,
    /// The audit login uid: `Some` when the caller descends from a login
    /// session (an interactive user), `None` for services.
    pub login_uid: Option<u32>,
}

/// Whether `unix:path`/`unix:sha256` must be proven bound to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExeBinding {
    /// Over the socket, for a policy that names executables: emit them only
    /// if the process runs the executable it ran when accepted and is the
    /// only holder of the connection.
    Verify,
    /// Emit them as read (the policy does not use them, or `explain`).
    Trust,
}

/// Whether to hash the executable. Hashing a large binary costs CPU that
/// any local user can make attestd spend (one new binary per call), so it
/// is done only when the policy names `unix:sha256` (and for `explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hashing {
    /// Hash it (cached per file version).
    Hash,
    /// Do not read the executable at all.
    Skip,
}

/// What attestation reads of the caller's executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExeFacts {
    /// Only the path the `exe` link names, for the audit trail: the policy
    /// names neither `unix:path` nor `unix:sha256`. The file itself is not
    /// reached, nor its file system (which a FUSE server may stall).
    PathOnly,
    /// The `unix:path` and (with [`Hashing::Hash`]) `unix:sha256` selectors.
    Selectors(ExeBinding, Hashing),
}

/// Attestation that would have had to block: a user or group name was not
/// remembered and only NSS knows it.
#[derive(Debug)]
enum Halt {
    Failed(AttestError),
    WouldBlock,
}

impl From<AttestError> for Halt {
    fn from(error: AttestError) -> Self {
        Self::Failed(error)
    }
}

impl From<NotRemembered> for Halt {
    fn from(_: NotRemembered) -> Self {
        Self::WouldBlock
    }
}

/// Attests socket peers by reading `/proc` under a configurable root (tests
/// point it at fixture trees).
#[derive(Debug)]
pub struct Attestor {
    proc_root: PathBuf,
    hasher: ExeHasher,
    /// Where `unix:path` is resolved (see [`host_root`]).
    host_root: HostRoot,
    /// Who owns which cgroup directory (delegated subtrees).
    cgroups: CgroupMounts,
    /// User and group names.
    accounts: Accounts,
}

impl Default for Attestor {
    fn default() -> Self {
        Self::new("/proc", DEFAULT_MAX_HASH_BYTES)
    }
}

impl Attestor {
    /// An attestor reading the process tree at `proc_root`, hashing
    /// executables up to `max_hash_bytes`.
    pub fn new(proc_root: impl Into<PathBuf>, max_hash_bytes: u64) -> Self {
        let proc_root = proc_root.into();
        Self {
            hasher: ExeHasher::new(max_hash_bytes),
            host_root: HostRoot::open(&proc_root),
            cgroups: CgroupMounts::discover(&proc_root),
            accounts: Accounts::default(),
            proc_root,
        }
    }

    /// The `/proc` root this attestor reads.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// Attests a peer. Blocking (reads `/proc`, may ask NSS for names, hash
    /// the executable, scan `/proc/*/fd`): call it from `spawn_blocking`.
    pub fn attest(&self, peer: &PeerIdentity, exe: ExeFacts) -> Result<Workload, AttestError> {
        match self.attest_with(peer, exe, Lookup::Resolve) {
            Ok(workload) => Ok(workload),
            Err(Halt::Failed(error)) => Err(error),
            // Not expected (names are resolved here, never only
            // remembered); refused rather than issued on a partial read.
            Err(Halt::WouldBlock) => Err(AttestError::Proc {
                pid: peer.pid,
                what: "user and group names",
                source: std::io::Error::other("not remembered"),
            }),
        }
    }

    /// Attests a peer with [`ExeFacts::PathOnly`] without blocking, so on a
    /// runtime thread: it reads only procfs (whose files the kernel writes
    /// as they are read), the `exe` link, and user and group names already
    /// remembered. `None` when a name is not remembered: then attest with
    /// [`Self::attest`] off the runtime.
    pub fn attest_in_place(&self, peer: &PeerIdentity) -> Option<Result<Workload, AttestError>> {
        if test_hooks::attestation_delayed() {
            return None;
        }
        match self.attest_with(peer, ExeFacts::PathOnly, Lookup::RememberedOnly) {
            Ok(workload) => Some(Ok(workload)),
            Err(Halt::Failed(error)) => Some(Err(error)),
            Err(Halt::WouldBlock) => None,
        }
    }

    fn attest_with(&self, peer: &PeerIdentity, exe: ExeFacts, lookup: Lookup) -> Result<Workload, Halt> {
        let started = std::time::Instant::now();
        // The directory is the pinned process's own only if that process is
        // still alive after it was opened: the check at the end, after the
        // facts are read, proves that for the directory and the facts at
        // once (a live process keeps its pid from being reused).
        let proc_dir = peer.open_proc_dir(&self.proc_root)?;
        test_hooks::delay_attestation();

        let mut workload = Workload {
            pid: peer.pid,
            uid: peer.uid,
            gid: peer.gid,
            exe_path: None,
            sha256: None,
            selectors: SelectorSet::new(),
            notes: Vec::new(),
            login_uid: proc_dir.login_uid(),
        };
        let names = UnixNames {
            accounts: &self.accounts,
            lookup,
        };
        unix_id_selectors(&mut workload, peer, &proc_dir.status()?, names)?;
        match exe {
            ExeFacts::PathOnly => workload.exe_path = proc_dir.executable_path()?,
            ExeFacts::Selectors(binding, hashing) => {
                let hasher = (hashing == Hashing::Hash).then_some(&self.hasher);
                let executable = proc_dir.executable(hasher)?;
                self.exe_selectors(&mut workload, peer, executable, binding);
            }
        }
        let cgroup = proc_dir.cgroup(&self.cgroups)?;
        cgroup.selectors(&mut workload.selectors);
        workload.notes.extend(cgroup.notes);

        // Facts read from a process that has since exited could belong to
        // anything (its pid reused): refuse instead of issuing on them.
        peer.ensure_alive()?;
        for note in &workload.notes {
            tracing::info!(pid = peer.pid, note, "attestation withheld a selector");
        }
        tracing::debug!(
            pid = peer.pid,
            ?exe,
            elapsed_us = started.elapsed().as_micros() as u64,
            "attested"
        );
        Ok(workload)
    }

    /// `unix:path` and `unix:sha256`, when they are sound for this
    /// connection: the file lives on a trusted file system, is bound to the
    /// connection (when asked), and for the path, the path names that very
    /// file in a mount namespace the caller does not control.
    fn exe_selectors(
        &self,
        workload: &mut Workload,
        peer: &PeerIdentity,
        exe: Executable,
        binding: ExeBinding,
    ) {
        workload.exe_path = exe.path;
        let file = match exe.file {
            Ok(file) => file,
            Err(reason) => {
                workload
                    .notes
                    .push(format!("unix:path and unix:sha256 withheld: {reason}"));
                return;
            }
        };
        workload.sha256 = match file.digest {
            Some(Digest256::Hex(hex)) => Some(hex),
            Some(Digest256::TooLarge(size)) => {
                workload.notes.push(format!(
                    "unix:sha256 not emitted: the executable is {size} bytes, over the hashing limit"
                ));
                None
            }
            None => None,
        };
        if binding == ExeBinding::Verify
            && let Err(reason) = self.exe_bound_to_connection(peer, file.id)
        {
            workload
                .notes
                .push(format!("unix:path and unix:sha256 withheld: {reason}"));
            return;
        }
        if let Some(path) = &workload.exe_path {
            match self.host_root.names(path, file.id) {
                Ok(()) => workload
                    .selectors
                    .insert(Selector::new("unix", "path", path.display())),
                Err(reason) => workload.notes.push(format!("unix:path withheld: {reason}")),
            }
        }
        if let Some(digest) = &workload.sha256 {
            workload.selectors.insert(Selector::new("unix", "sha256", digest));
        }
    }

    /// The executable is the one accepted, and nobody else holds the
    /// caller's end of the connection (no inherited or passed socket).
    fn exe_bound_to_connection(&self, peer: &PeerIdentity, exe: FileId) -> Result<(), String> {
        if peer.exe_at_accept != Some(exe) {
            return Err("the process exec'd another executable since it connected".into());
        }
        let socket = peer.socket.as_ref().ok_or("the connection's socket is unknown")?;
        let remote = socket.remote_inode().map_err(|e| e.to_string())?;
        let holders = socket_holders::holders(&self.proc_root, remote).map_err(|e| e.to_string())?;
        if holders != [peer.pid] {
            return Err(format!(
                "the connection is held by processes {holders:?}, not by {} alone",
                peer.pid
            ));
        }
        Ok(())
    }
}

/// Where user and group names come from, and whether NSS may be asked.
#[derive(Clone, Copy)]
struct UnixNames<'a> {
    accounts: &'a Accounts,
    lookup: Lookup,
}

/// The `unix:` identity selectors: the connect-time credentials, only while
/// the process still has them (a setuid since connecting voids them), and
/// names where the host's user database knows them.
fn unix_id_selectors(
    workload: &mut Workload,
    peer: &PeerIdentity,
    status: &Status,
    names: UnixNames<'_>,
) -> Result<(), NotRemembered> {
    let UnixNames { accounts, lookup } = names;
    let selectors = &mut workload.selectors;
    if status.effective_uid == Some(peer.uid) {
        selectors.insert(Selector::new("unix", "uid", peer.uid));
        if let Some(user) = accounts.user(peer.uid, lookup)? {
            selectors.insert(Selector::new("unix", "user", user));
        }
    } else {
        workload.notes.push(format!(
            "unix:uid withheld: uid {} at connect, {:?} now",
            peer.uid, status.effective_uid
        ));
    }
    if status.effective_gid == Some(peer.gid) {
        selectors.insert(Selector::new("unix", "gid", peer.gid));
        if let Some(group) = accounts.group(peer.gid, lookup)? {
            selectors.insert(Selector::new("unix", "group", group));
        }
    } else {
        workload.notes.push(format!(
            "unix:gid withheld: gid {} at connect, {:?} now",
            peer.gid, status.effective_gid
        ));
    }
    for &sgid in &status.supplementary_gids {
        selectors.insert(Selector::new("unix", "supplementary_gid", sgid));
        if let Some(group) = accounts.group(sgid, lookup)? {
            selectors.insert(Selector::new("unix", "supplementary_group", group));
        }
    }
    Ok(())
}

/// Test-only fault injection, compiled in with the `test-hooks` feature
/// (the test command enables it; release builds never have it).
mod test_hooks {
    /// Sleeps `ATTESTD_TEST_ATTEST_DELAY_MS` after the caller is pinned, so
    /// tests can make a caller exit mid-attestation deterministically.
    #[cfg(feature = "test-hooks")]
    pub fn delay_attestation() {
        if let Some(ms) = std::env::var("ATTESTD_TEST_ATTEST_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }

    /// Whether the delay is set: then attestation always runs off the
    /// runtime, where the delay stalls no one else.
    #[cfg(feature = "test-hooks")]
    pub fn attestation_delayed() -> bool {
        std::env::var_os("ATTESTD_TEST_ATTEST_DELAY_MS").is_some()
    }

    #[cfg(not(feature = "test-hooks"))]
    pub fn delay_attestation() {}

    #[cfg(not(feature = "test-hooks"))]
    pub fn attestation_delayed() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attests_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = PeerIdentity::from_socket(&a).unwrap();
        let workload = Attestor::default()
            .attest(&peer, ExeFacts::Selectors(ExeBinding::Trust, Hashing::Hash))
            .unwrap();
        assert_eq!(workload.pid, std::process::id() as i32);
        assert_eq!(workload.uid, nix::unistd::geteuid().as_raw());
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&exe));
        assert_eq!(workload.sha256.as_deref(), Some(digest.as_str()));
        let uid_selector = Selector::new("unix", "uid", workload.uid);
        assert!(workload.selectors.contains(&uid_selector));
        assert!(workload.selectors.iter().any(|s| s.kind() == "cgroup:path"));
    }

    #[test]
    fn a_socketpair_shared_by_no_one_else_binds_the_executable() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = PeerIdentity::from_socket(&a).unwrap();
        let workload = Attestor::default()
            .attest(&peer, ExeFacts::Selectors(ExeBinding::Verify, Hashing::Hash))
            .unwrap();
        // Our own process holds both ends: it is the only holder.
        assert!(
            workload.selectors.iter().any(|s| s.kind() == "unix:sha256"),
            "{:?}",
            workload.notes
        );
        assert!(workload.notes.is_empty(), "{:?}", workload.notes);
    }

    /// A whole attestation over a fixture `/proc` tree: a Kubernetes pod's
    /// process, as the kernel would show it.
    #[test]
    fn attests_a_fixture_process_tree() {
        const ID: &str = "3f4b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
        let root = tempfile::tempdir().unwrap();
        let proc_dir = root.path().join("4242");
        std::fs::create_dir(&proc_dir).unwrap();
        std::fs::write(proc_dir.join("stat"), "4242 (agent) S 1 4242 4242 0 -1\n").unwrap();
        std::fs::write(
            proc_dir.join("status"),
            "Name:\tagent\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t27 \n",
        )
        .unwrap();
        let cgroup = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{ID}.scope\n"
        );
        std::fs::write(proc_dir.join("cgroup"), cgroup).unwrap();
        let binary = root.path().join("agent-binary");
        std::fs::write(&binary, b"test").unwrap();
        std::os::unix::fs::symlink(&binary, proc_dir.join("exe")).unwrap();

        let peer = PeerIdentity {
            pid: 4242,
            uid: 1000,
            gid: 1000,
            pin: ProcessPin::ProcDir(process::ProcDir::open(root.path(), 4242).unwrap()),
            socket: None,
            exe_at_accept: None,
        };
        let attestor = Attestor::new(root.path(), DEFAULT_MAX_HASH_BYTES);
        let workload = attestor
            .attest(&peer, ExeFacts::Selectors(ExeBinding::Trust, Hashing::Hash))
            .unwrap();
        let has = |text: &str| workload.selectors.contains(&Selector::parse(text).unwrap());
        assert!(has("unix:uid:1000") && has("unix:gid:1000") && has("unix:supplementary_gid:27"));
        assert!(has(&format!("unix:path:{}", binary.display())));
        assert!(has(
            "unix:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        ));
        assert!(has(&format!("container:id:{ID}")));
        assert!(has(&format!("systemd:id:cri-containerd-{ID}.scope")));
        assert!(has("systemd:slice:kubepods-besteffort-pod1.slice"));
        assert!(workload.selectors.iter().any(|s| s.kind() == "cgroup:path"));

        // Two containers in one process's cgroups: an error, not a guess.
        let other = "0000000000000000000000000000000000000000000000000000000000000001";
        let two = format!("3:cpu:/docker/{ID}\n0::/system.slice/docker-{other}.scope\n");
        std::fs::write(proc_dir.join("cgroup"), two).unwrap();
        assert!(matches!(
            attestor.attest(&peer, ExeFacts::Selectors(ExeBinding::Trust, Hashing::Hash)),
            Err(AttestError::Cgroup(_))
        ));

        // An executable over the hashing limit: no unix:sha256, and a note.
        let small = Attestor::new(root.path(), 3);
        std::fs::write(proc_dir.join("cgroup"), "0::/\n").unwrap();
        let workload = small
            .attest(&peer, ExeFacts::Selectors(ExeBinding::Trust, Hashing::Hash))
            .unwrap();
        assert!(!workload.selectors.iter().any(|s| s.kind() == "unix:sha256"));
        assert!(
            workload.notes.iter().any(|n| n.contains("hashing limit")),
            "{:?}",
            workload.notes
        );
    }

    /// Credentials changed since connect (a setuid): the connect-time uid is
    /// withheld rather than trusted.
    #[test]
    fn changed_credentials_are_withheld() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut peer = PeerIdentity::from_socket(&a).unwrap();
        peer.uid = 4321;
        let workload = Attestor::default()
            .attest(&peer, ExeFacts::Selectors(ExeBinding::Trust, Hashing::Hash))
            .unwrap();
        assert!(!workload.selectors.iter().any(|s| s.kind() == "unix:uid"));
        assert!(workload.notes.iter().any(|n| n.contains("unix:uid withheld")));
    }
}

//! The caller as the kernel saw it at connect time: SO_PEERCRED plus a pin on
//! the process (a pidfd from SO_PEERPIDFD, or on kernels before 6.5 a
//! `/proc/<pid>` directory fd), so later reads cannot be redirected to
//! another process that reuses the pid.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{UnixCredentials, getsockopt, sockopt};

use nix::sys::stat::fstat;

use super::AttestError;
use super::exe_hash::FileId;
use super::process::ProcDir;
use super::socket_holders::{HolderError, peer_inode};

/// What pins the caller's process.
#[derive(Debug)]
pub enum ProcessPin {
    /// A pidfd: becomes readable once the process exits.
    Pidfd(OwnedFd),
    /// Older kernels: `/proc/<pid>` opened at accept time. Reads through it
    /// fail with ESRCH once that process is gone, even if the pid is reused.
    ProcDir(ProcDir),
}

/// The two ends of a connection: attestd's socket, and the caller's, asked
/// of the kernel on first need and then kept (it never changes, and streams
/// re-attest before every push).
#[derive(Debug)]
pub struct ConnectionSocket {
    local_inode: u64,
    remote_inode: OnceLock<u64>,
}

impl ConnectionSocket {
    /// The connection whose attestd end has inode `local_inode`.
    pub fn new(local_inode: u64) -> Self {
        Self {
            local_inode,
            remote_inode: OnceLock::new(),
        }
    }

    /// Inode of the caller's end.
    pub fn remote_inode(&self) -> Result<u64, HolderError> {
        if let Some(inode) = self.remote_inode.get() {
            return Ok(*inode);
        }
        let inode = peer_inode(self.local_inode)?;
        Ok(*self.remote_inode.get_or_init(|| inode))
    }
}

/// SO_PEERCRED of an accepted connection, asked of the kernel once.
#[derive(Debug)]
pub struct ConnectCredentials(nix::Result<UnixCredentials>);

impl ConnectCredentials {
    /// The credentials the kernel recorded when the peer connected.
    pub fn of(socket: &impl AsFd) -> Self {
        Self(getsockopt(socket, sockopt::PeerCredentials))
    }

    /// The uid whose connection cap the connection counts against; peers
    /// without credentials share one bucket (`u32::MAX` is no uid).
    pub fn limits_uid(&self) -> u32 {
        self.0.as_ref().map_or(u32::MAX, |cred| cred.uid())
    }
}

/// A socket peer: its credentials at connect time and the pin on it.
#[derive(Debug)]
pub struct PeerIdentity {
    /// The caller's pid (in attestd's pid namespace).
    pub pid: i32,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// The pin that proves later reads concern this very process.
    pub pin: ProcessPin,
    /// The connection (to find every process holding the caller's end).
    pub socket: Option<ConnectionSocket>,
    /// The executable the caller ran when attestd accepted it; an exec since
    /// then voids executable-bound selectors.
    pub exe_at_accept: Option<FileId>,
}

impl PeerIdentity {
    /// Reads the peer's credentials and pins its process. Call this right
    /// after accept, before the peer has time to exit.
    pub fn from_socket(socket: &impl AsFd) -> Result<Self, AttestError> {
        Self::pin(socket, ConnectCredentials::of(socket))
    }

    /// Pins the process of the peer whose credentials `cred` were read from
    /// `socket` (once: a listener needs the uid before it admits the
    /// connection).
    pub fn pin(socket: &impl AsFd, cred: ConnectCredentials) -> Result<Self, AttestError> {
        let cred = cred.0.map_err(|e| AttestError::Proc {
            pid: 0,
            what: "peer credentials",
            source: e.into(),
        })?;
        let pid = cred.pid();
        if pid <= 0 {
            return Err(AttestError::NoPeerPid);
        }
        let pin = pin_process(getsockopt(socket, sockopt::PeerPidfd), pid, Path::new("/proc"))?;
        let mut peer = Self {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
            pin,
            socket: fstat(socket.as_fd())
                .ok()
                .map(|stat| ConnectionSocket::new(stat.st_ino)),
            exe_at_accept: None,
        };
        peer.exe_at_accept = peer.current_executable();
        Ok(peer)
    }

    /// A process found by pid rather than by a connection (for `attestd
    /// explain`): pinned by its `/proc` directory, with its current
    /// effective ids standing in for connect-time credentials.
    pub fn for_process(proc_root: &Path, pid: i32) -> Result<Self, AttestError> {
        let dir = ProcDir::open(proc_root, pid)?;
        let status = dir.status()?;
        let (Some(uid), Some(gid)) = (status.effective_uid, status.effective_gid) else {
            return Err(AttestError::Proc {
                pid,
                what: "status",
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no Uid/Gid lines"),
            });
        };
        Ok(Self {
            pid,
            uid,
            gid,
            exe_at_accept: dir.executable_id().ok(),
            pin: ProcessPin::ProcDir(dir),
            socket: None,
        })
    }

    /// The executable the pinned process runs now, if it can be told. With
    /// a pidfd, the `exe` link is followed by pid, then the pin is checked:
    /// alive afterwards, the pid was still this process's throughout.
    fn current_executable(&self) -> Option<FileId> {
        let id = match &self.pin {
            ProcessPin::Pidfd(_) => FileId::at(Path::new(&format!("/proc/{}/exe", self.pid))).ok()?,
            ProcessPin::ProcDir(pinned) => pinned.executable_id().ok()?,
        };
        self.ensure_alive().ok()?;
        Some(id)
    }

    /// Opens the pinned process's `/proc` directory under `proc_root`. With a
    /// pidfd pin the directory is opened by pid, so it is the pinned
    /// process's own only if [`Self::ensure_alive`] succeeds afterwards.
    pub(super) fn open_proc_dir(&self, proc_root: &Path) -> Result<ProcDir, AttestError> {
        match &self.pin {
            ProcessPin::Pidfd(_) => ProcDir::open(proc_root, self.pid),
            ProcessPin::ProcDir(pinned) => pinned.try_clone(),
        }
    }

    /// Fails with [`AttestError::ProcessGone`] unless the pinned process is
    /// still running.
    pub fn ensure_alive(&self) -> Result<(), AttestError> {
        let alive = match &self.pin {
            ProcessPin::Pidfd(pidfd) => pidfd_alive(pidfd),
            ProcessPin::ProcDir(pinned) => pinned.is_alive(),
        };
        if alive {
            Ok(())
        } else {
            Err(AttestError::ProcessGone { pid: self.pid })
        }
    }
}

/// The pin from SO_PEERPIDFD's answer. Only a kernel without the option
/// (ENOPROTOOPT: before 6.5) falls back to opening `/proc/<pid>`. Any other
/// failure may mean the peer was already reaped, and its pid may then name
/// another process: the connection's attestation is refused.
fn pin_process(pidfd: nix::Result<OwnedFd>, pid: i32, proc_root: &Path) -> Result<ProcessPin, AttestError> {
    match pidfd {
        Ok(pidfd) => Ok(ProcessPin::Pidfd(pidfd)),
        Err(Errno::ENOPROTOOPT) => Ok(ProcessPin::ProcDir(ProcDir::open(proc_root, pid)?)),
        Err(Errno::ESRCH) => Err(AttestError::ProcessGone { pid }),
        Err(errno) => Err(AttestError::Proc {
            pid,
            what: "peer pidfd",
            source: errno.into(),
        }),
    }
}

/// A pidfd polls readable once its process has exited (zombies included).
fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => true,
        // Readable, hung up, or poll itself failed: treat as gone (fail closed).
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::process::{Command, Stdio};

    #[test]
    fn peer_of_a_socketpair_is_ourselves_and_alive() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = PeerIdentity::from_socket(&a).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert!(matches!(peer.pin, ProcessPin::Pidfd(_)));
        peer.ensure_alive().unwrap();
    }

    #[test]
    fn exited_peer_is_detected_through_its_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        // A child that connects, then waits for its stdin to close.
        let mut child = Command::new("python3")
            .arg("-c")
            .arg("import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);sys.stdin.read()")
            .arg(&path)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let (conn, _) = listener.accept().unwrap();
        let peer = PeerIdentity::from_socket(&conn).unwrap();
        assert_eq!(peer.pid, child.id() as i32);
        peer.ensure_alive().unwrap();
        child.stdin.take().unwrap().write_all(b"").unwrap();
        child.wait().unwrap();
        assert!(matches!(
            peer.ensure_alive(),
            Err(AttestError::ProcessGone { .. })
        ));
    }

    /// Only ENOPROTOOPT (no SO_PEERPIDFD in the kernel) falls back to
    /// `/proc/<pid>`; any other failure refuses, since that pid may already
    /// be another process's.
    #[test]
    fn only_a_kernel_without_peer_pidfds_falls_back_to_proc() {
        let me = std::process::id() as i32;
        let proc_root = Path::new("/proc");
        assert!(matches!(
            pin_process(Err(Errno::ENOPROTOOPT), me, proc_root),
            Ok(ProcessPin::ProcDir(_))
        ));
        assert!(matches!(
            pin_process(Err(Errno::ESRCH), me, proc_root),
            Err(AttestError::ProcessGone { .. })
        ));
        for errno in [Errno::EINVAL, Errno::EMFILE, Errno::ENOMEM] {
            assert!(
                matches!(
                    pin_process(Err(errno), me, proc_root),
                    Err(AttestError::Proc {
                        what: "peer pidfd",
                        ..
                    })
                ),
                "{errno}"
            );
        }
    }

    /// The pre-6.5 fallback: a `/proc/<pid>` directory fd taken while the
    /// process lives stops working once it is gone.
    #[test]
    fn proc_dir_pin_detects_exit() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let peer = PeerIdentity {
            pid,
            uid: 0,
            gid: 0,
            pin: ProcessPin::ProcDir(ProcDir::open(Path::new("/proc"), pid).unwrap()),
            socket: None,
            exe_at_accept: None,
        };
        peer.ensure_alive().unwrap();
        let dir = peer.open_proc_dir(Path::new("/proc")).unwrap();
        assert!(dir.is_alive());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(
            peer.ensure_alive(),
            Err(AttestError::ProcessGone { .. })
        ));
        assert!(!dir.is_alive());
    }
}

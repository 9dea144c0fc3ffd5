//! Who holds the caller's end of a connection. SO_PEERCRED names the
//! process that called connect(), but the socket can since have been
//! inherited by a child or passed with SCM_RIGHTS, and the connecting
//! process can have exec'd another binary. Identities bound to an
//! executable are only sound if the process attested is the only one holding
//! the socket, so this module finds the peer socket (sock_diag UNIX_DIAG)
//! and every process with it open (a bounded scan of `/proc/*/fd`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};

/// A scan that would visit more file descriptors than this is abandoned:
/// exclusivity is then unproven, and exe-bound selectors are withheld.
pub const MAX_FDS_SCANNED: usize = 1_000_000;

/// Why the holders of a socket could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HolderError {
    /// The sock_diag query failed.
    #[error("sock_diag query: {0}")]
    Diag(io::Error),
    /// The kernel reported no peer for our socket (the caller hung up).
    #[error("the connection has no peer socket")]
    NoPeer,
    /// `/proc` could not be scanned completely.
    #[error("scanning {path}: {source}")]
    Scan {
        /// What could not be read.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The scan exceeded [`MAX_FDS_SCANNED`].
    #[error("more than {MAX_FDS_SCANNED} file descriptors on the host; scan abandoned")]
    TooManyFds,
}

/// The inode of the socket connected to our socket `local_inode`, asked of
/// the kernel through NETLINK_SOCK_DIAG.
pub fn peer_inode(local_inode: u64) -> Result<u64, HolderError> {
    let inode = u32::try_from(local_inode).map_err(|_| HolderError::NoPeer)?;
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(HolderError::Diag)?;
    socket.bind_auto().map_err(HolderError::Diag)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(HolderError::Diag)?;

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let request = SockDiagMessage::UnixRequest(UnixRequest {
        state_flags: StateFlags::all(),
        inode,
        show_flags: ShowFlags::PEER,
        // All 0xff: look the socket up by inode alone.
        cookie: [0xff; 8],
    });
    let mut packet = NetlinkMessage::new(header, request.into());
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(HolderError::Diag)?;

    let mut reply = vec![0u8; 8192];
    let size = socket.recv(&mut &mut reply[..], 0).map_err(HolderError::Diag)?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[..size])
        .map_err(|e| HolderError::Diag(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(response)) => {
            response.peer().map(u64::from).ok_or(HolderError::NoPeer)
        }
        NetlinkPayload::Error(error) => Err(HolderError::Diag(io::Error::other(format!("{error:?}")))),
        _ => Err(HolderError::NoPeer),
    }
}

/// Every process (thread-group leader) under `proc_root` with socket
/// `inode` open, ascending.
pub fn holders(proc_root: &Path, inode: u64) -> Result<Vec<i32>, HolderError> {
    let target = format!("socket:[{inode}]");
    let scan_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| HolderError::Scan { path, source }
    };
    let mut found = Vec::new();
    let mut budget = MAX_FDS_SCANNED;
    for entry in std::fs::read_dir(proc_root).map_err(scan_error(proc_root))? {
        let entry = entry.map_err(scan_error(proc_root))?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if holds(&entry.path().join("fd"), target.as_bytes(), &mut budget)? {
            found.push(pid);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Whether the fd directory `fd_dir` has a link to `target`. A process that
/// exits mid-scan holds nothing. A process attestd may not inspect even as
/// root with CAP_SYS_PTRACE (one outside its user namespace, such as a
/// container runtime's supervisor) is beyond what any caller attestd serves
/// could control, and is skipped; any other read error makes the scan
/// incomplete.
fn holds(fd_dir: &Path, target: &[u8], budget: &mut usize) -> Result<bool, HolderError> {
    let entries = match std::fs::read_dir(fd_dir) {
        Ok(entries) => entries,
        Err(e) if is_gone(&e) || is_forbidden(&e) => return Ok(false),
        Err(source) => {
            return Err(HolderError::Scan {
                path: fd_dir.display().to_string(),
                source,
            });
        }
    };
    for entry in entries {
        let Ok(entry) = entry else { return Ok(false) };
        *budget = budget.checked_sub(1).ok_or(HolderError::TooManyFds)?;
        match std::fs::read_link(entry.path()) {
            Ok(link) if OsStr::as_bytes(link.as_os_str()) == target => return Ok(true),
            Ok(_) => {}
            // The fd was closed meanwhile: it is not held.
            Err(e) if is_gone(&e) => {}
            Err(e) if is_forbidden(&e) => return Ok(false),
            Err(source) => {
                return Err(HolderError::Scan {
                    path: entry.path().display().to_string(),
                    source,
                });
            }
        }
    }
    Ok(false)
}

fn is_forbidden(error: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        Errno::from_raw(error.raw_os_error().unwrap_or(0)),
        Errno::EACCES | Errno::EPERM
    )
}

fn is_gone(error: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        Errno::from_raw(error.raw_os_error().unwrap_or(0)),
        Errno::ENOENT | Errno::ESRCH
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn finds_the_peer_socket_and_its_holders() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        let client = UnixStream::connect(dir.path().join("s")).unwrap();
        let (server, _) = listener.accept().unwrap();
        let server_inode = std::fs::File::from(std::os::fd::OwnedFd::from(server.try_clone().unwrap()))
            .metadata()
            .unwrap()
            .ino();
        let client_inode = std::fs::File::from(std::os::fd::OwnedFd::from(client.try_clone().unwrap()))
            .metadata()
            .unwrap()
            .ino();
        assert_eq!(peer_inode(server_inode).unwrap(), client_inode);
        let me = std::process::id() as i32;
        assert_eq!(holders(Path::new("/proc"), client_inode).unwrap(), vec![me]);
        assert_eq!(holders(Path::new("/proc"), 1).unwrap(), Vec::<i32>::new());
    }
}

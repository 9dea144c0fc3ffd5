//! Who holds the caller's end of a connection. SO_PEERCRED names the
//! process that called connect(), but the socket can since have been
//! inherited by a child or passed with SCM_RIGHTS, and the connecting
//! process can have exec'd another binary. Identities bound to an
//! executable are only sound if the process attested is the only one holding
//! the socket, so this module finds the peer socket (sock_diag UNIX_DIAG)
//! and every process with it open (a bounded scan of `/proc/*/fd` and of
//! every thread's `/proc/*/task/*/fd`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use nix::errno::Errno;

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
        if process_holds(&entry.path(), pid, target.as_bytes(), &mut budget)? {
            found.push(pid);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Whether process `pid` (its `/proc` directory `dir`) holds `target`: in
/// its own fd table, or in any of its threads'. A thread created without
/// CLONE_FILES (or after unshare(CLONE_FILES)) has a table of its own, and
/// once the main thread has exited `/proc/<pid>/fd` shows nothing at all;
/// `/proc/<pid>/task/<tid>/fd` shows each thread's.
fn process_holds(dir: &Path, pid: i32, target: &[u8], budget: &mut usize) -> Result<bool, HolderError> {
    if holds(&dir.join("fd"), target, budget)? {
        return Ok(true);
    }
    let tasks = dir.join("task");
    if !has_other_threads(&tasks)? {
        return Ok(false);
    }
    let Some(threads) = read_dir_of_process(&tasks)? else {
        return Ok(false);
    };
    for thread in threads {
        let Ok(thread) = thread else { return Ok(false) };
        let tid = thread
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok());
        let Some(tid) = tid.filter(|tid| *tid != pid) else {
            continue;
        };
        // Every thread costs the shared budget, so a process with many
        // threads cannot make the scan unbounded.
        *budget = budget.checked_sub(1).ok_or(HolderError::TooManyFds)?;
        // The main thread's table was scanned above; a thread that shares
        // it (the usual case: threads are created with CLONE_FILES) holds
        // nothing else. kcmp needs the same ptrace access as reading fd
        // links, so where it is refused although it works (for attestd's
        // own threads), the process is one attestd may not inspect, and is
        // skipped as `holds` skips it. When the kernel cannot tell (an
        // exited main thread, a system call filter), the thread's own table
        // is read.
        match crate::sys::same_fd_table(pid, tid) {
            Ok(true) => continue,
            Err(Errno::EPERM | Errno::EACCES) if crate::sys::fd_tables_comparable() => return Ok(false),
            _ => {}
        }
        if holds(&thread.path().join("fd"), target, budget)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the process whose `/proc/<pid>/task` is `tasks` has more than
/// one thread. procfs counts a task directory's links as 2 plus the number
/// of threads, so one stat spares listing the directory of the many
/// single-threaded processes (listing it was most of the scan's cost).
fn has_other_threads(tasks: &Path) -> Result<bool, HolderError> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(tasks) {
        Ok(meta) => Ok(meta.nlink() > 3),
        Err(e) if is_gone(&e) || is_forbidden(&e) => Ok(false),
        Err(source) => Err(HolderError::Scan {
            path: tasks.display().to_string(),
            source,
        }),
    }
}

/// Whether the fd directory `fd_dir` has a link to `target`. A process that
/// exits mid-scan holds nothing. A process attestd may not inspect even as
/// root with CAP_SYS_PTRACE (one outside its user namespace, such as a
/// container runtime's supervisor) is beyond what any caller attestd serves
/// could control, and is skipped; any other read error makes the scan
/// incomplete.
fn holds(fd_dir: &Path, target: &[u8], budget: &mut usize) -> Result<bool, HolderError> {
    let Some(entries) = read_dir_of_process(fd_dir)? else {
        return Ok(false);
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

/// The entries of `dir`, a directory of one process's `/proc` entry; `None`
/// if the process is gone or may not be inspected (see [`holds`]).
fn read_dir_of_process(dir: &Path) -> Result<Option<std::fs::ReadDir>, HolderError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if is_gone(&e) || is_forbidden(&e) => Ok(None),
        Err(source) => Err(HolderError::Scan {
            path: dir.display().to_string(),
            source,
        }),
    }
}

fn is_forbidden(error: &io::Error) -> bool {
    matches!(
        Errno::from_raw(error.raw_os_error().unwrap_or(0)),
        Errno::EACCES | Errno::EPERM
    )
}

fn is_gone(error: &io::Error) -> bool {
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

    /// Runs a Python `script` that prints the inode of a socket it holds
    /// and keeps it until its stdin closes; returns the child and the inode.
    fn python_socket_holder(script: &str) -> (std::process::Child, u64) {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (child, line.trim().parse().unwrap())
    }

    /// A thread with a file table of its own (unshare(CLONE_FILES)) holds
    /// a socket that the process's `/proc/<pid>/fd` does not show. Python
    /// makes the thread, so the test needs no unsafe code.
    #[test]
    fn finds_a_socket_held_only_in_a_threads_own_fd_table() {
        let script = r#"
import ctypes, os, socket, sys, threading
CLONE_FILES = 0x400
def own_table():
    assert ctypes.CDLL(None, use_errno=True).unshare(CLONE_FILES) == 0
    s = socket.socket(socket.AF_UNIX)
    print(os.fstat(s.fileno()).st_ino, flush=True)
    sys.stdin.read()
t = threading.Thread(target=own_table)
t.start()
t.join()
"#;
        let (mut child, inode) = python_socket_holder(script);
        let pid = child.id() as i32;
        let main_table = Path::new("/proc").join(pid.to_string()).join("fd");
        let mut budget = MAX_FDS_SCANNED;
        assert!(!holds(&main_table, format!("socket:[{inode}]").as_bytes(), &mut budget).unwrap());
        let found = holders(Path::new("/proc"), inode).unwrap();
        drop(child.stdin.take());
        child.wait().unwrap();
        assert_eq!(found, vec![pid]);
    }

    /// Once the main thread has exited, `/proc/<pid>/fd` lists nothing; the
    /// socket is still found through the thread that lives on.
    #[test]
    fn finds_a_socket_held_after_the_main_thread_exited() {
        let script = r#"
import ctypes, os, socket, sys, threading
s = socket.socket(socket.AF_UNIX)
threading.Thread(target=lambda: sys.stdin.read()).start()
print(os.fstat(s.fileno()).st_ino, flush=True)
ctypes.CDLL(None).pthread_exit(None)
"#;
        let (mut child, inode) = python_socket_holder(script);
        let pid = child.id() as i32;
        let status = Path::new("/proc").join(pid.to_string()).join("status");
        let zombie_leader = || std::fs::read_to_string(&status).unwrap().contains("State:\tZ");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie_leader() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(zombie_leader(), "the main thread did not exit");
        let found = holders(Path::new("/proc"), inode).unwrap();
        let _ = child.kill();
        child.wait().unwrap();
        assert_eq!(found, vec![pid]);
    }
}

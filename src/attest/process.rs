//! Reading one process's `/proc` directory through a directory fd, so every
//! read concerns the process that directory was opened for: once it exits,
//! reads fail with ESRCH instead of reaching a process that reuses its pid.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat, readlinkat};
use nix::sys::stat::Mode;

use super::AttestError;
use super::cgroup::{self, CgroupFacts, MAX_CGROUP_FILE, OwnershipEvidence};
use super::exe_fs;
use super::exe_hash::{Digest256, ExeHasher, FileId};

/// The most read of a `/proc` file other than `cgroup`: `status` is about
/// 1.5 KiB, but lists every supplementary group (up to 65,536 of them).
const MAX_PROC_FILE: usize = 1024 * 1024;
/// The buffer a `/proc` read starts with.
const PROC_READ_CHUNK: usize = 4096;

/// `/proc/<pid>` opened as a directory.
#[derive(Debug)]
pub struct ProcDir {
    pid: i32,
    fd: OwnedFd,
}

/// The parts of `/proc/<pid>/status` attestation uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Effective uid now (it may differ from the one at connect time).
    pub effective_uid: Option<u32>,
    /// Effective gid now.
    pub effective_gid: Option<u32>,
    /// The `Groups:` line.
    pub supplementary_gids: Vec<u32>,
}

/// The caller's executable.
#[derive(Debug)]
pub(super) struct Executable {
    /// The path it was started from, unless it has since been deleted or
    /// replaced (then the name no longer denotes this file).
    pub path: Option<PathBuf>,
    /// The file, or why its identity is no fact (the file system it lives on
    /// serves whatever its server likes).
    pub file: Result<ExeFile, String>,
}

/// The file behind `/proc/<pid>/exe`, on a trusted file system.
#[derive(Debug)]
pub(super) struct ExeFile {
    /// Which file it is.
    pub id: FileId,
    /// Its sha256, or why there is none; `None` when not asked for.
    pub digest: Option<Digest256>,
}

impl ProcDir {
    /// Opens `<proc_root>/<pid>`.
    pub fn open(proc_root: &Path, pid: i32) -> Result<Self, AttestError> {
        let path = proc_root.join(pid.to_string());
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = open(&path, flags, Mode::empty()).map_err(|e| proc_error(pid, "/proc entry", e))?;
        Ok(Self { pid, fd })
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> Result<Self, AttestError> {
        let fd = self.fd.try_clone().map_err(|source| AttestError::Proc {
            pid: self.pid,
            what: "/proc entry",
            source,
        })?;
        Ok(Self { pid: self.pid, fd })
    }

    /// Whether the process is still running (not exited, not a zombie).
    pub fn is_alive(&self) -> bool {
        match self.read("stat", "stat") {
            Ok(stat) => parse_state(&stat).is_some_and(|state| state != b'Z' && state != b'X'),
            Err(_) => false,
        }
    }

    /// The audit login uid (`loginuid`): set when the process descends
    /// from a login session (pam_loginuid), unset (None) for services and
    /// anything the kernel started. Only privileged processes can change it,
    /// and only once, so a caller cannot shed or forge it. A kernel built
    /// without audit support has no such file: unset.
    pub(super) fn login_uid(&self) -> Option<u32> {
        let text = self.read("loginuid", "loginuid").ok()?;
        parse_login_uid(&text)
    }

    pub(super) fn status(&self) -> Result<Status, AttestError> {
        let text = self.read("status", "status")?;
        Ok(parse_status(&text))
    }

    /// The path the executable was started from, as the `exe` link names
    /// it (`None` once deleted or replaced). Reading the link reaches no
    /// file system: the kernel spells the path from its own dentries.
    pub(super) fn executable_path(&self) -> Result<Option<PathBuf>, AttestError> {
        let link = readlinkat(&self.fd, "exe").map_err(|e| proc_error(self.pid, "exe link", e))?;
        Ok(live_exe_path(&link))
    }

    /// The executable, through the `exe` magic link (the very file the
    /// process runs, even in another mount namespace), hashed when `hasher`
    /// is given. A file on an untrusted file system is neither opened for
    /// reading nor hashed: its server could stall or lie to the read.
    pub(super) fn executable(&self, hasher: Option<&ExeHasher>) -> Result<Executable, AttestError> {
        let path = self.executable_path()?;
        // O_PATH reaches no file system's open() and needs no read permission.
        let untrusted = |path, reason| Executable {
            path,
            file: Err(reason),
        };
        let located = self.open_exe(OFlag::O_PATH)?;
        if let Err(reason) = exe_fs::check(&located) {
            return Ok(untrusted(path, reason));
        }
        let file = match hasher {
            None => located,
            Some(_) => {
                let opened = self.open_exe(OFlag::O_RDONLY)?;
                // The process may have exec'd between the two opens: judge
                // the file that is actually read.
                if let Err(reason) = exe_fs::check(&opened) {
                    return Ok(untrusted(path, reason));
                }
                opened
            }
        };
        let io_error = |source| AttestError::Proc {
            pid: self.pid,
            what: "executable",
            source,
        };
        let id = FileId::of(&file).map_err(io_error)?;
        let digest = hasher.map(|h| h.digest(&file)).transpose().map_err(io_error)?;
        Ok(Executable {
            path,
            file: Ok(ExeFile { id, digest }),
        })
    }

    /// Which file the process runs, without reading it.
    pub(super) fn executable_id(&self) -> Result<FileId, AttestError> {
        let file = self.open_exe(OFlag::O_PATH)?;
        FileId::of(&file).map_err(|source| AttestError::Proc {
            pid: self.pid,
            what: "executable",
            source,
        })
    }

    fn open_exe(&self, access: OFlag) -> Result<File, AttestError> {
        let fd = openat(&self.fd, "exe", access | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| proc_error(self.pid, "executable", e))?;
        Ok(File::from(fd))
    }

    /// The process's cgroups, read with a size bound; `evidence` tells who
    /// owns the cgroup directories (delegated subtrees).
    pub(super) fn cgroup(&self, evidence: &dyn OwnershipEvidence) -> Result<CgroupFacts, AttestError> {
        let text = self.read_bounded("cgroup", "cgroup", MAX_CGROUP_FILE + 1)?;
        cgroup::parse_with(&text, evidence).map_err(AttestError::Cgroup)
    }

    fn open_file(&self, name: &str, what: &'static str) -> Result<File, AttestError> {
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::empty()).map_err(|e| proc_error(self.pid, what, e))?;
        Ok(File::from(fd))
    }

    /// A whole `/proc` file; one larger than [`MAX_PROC_FILE`] is an error,
    /// never cut short (a cut `Groups:` line would end in a wrong gid).
    fn read(&self, name: &str, what: &'static str) -> Result<String, AttestError> {
        let text = self.read_bounded(name, what, MAX_PROC_FILE + 1)?;
        if text.len() > MAX_PROC_FILE {
            let too_large = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {MAX_PROC_FILE} bytes"),
            );
            return Err(AttestError::Proc {
                pid: self.pid,
                what,
                source: too_large,
            });
        }
        Ok(text)
    }

    /// Reads at most `limit` bytes of a `/proc` file. procfs reports no
    /// size, so `File::read_to_string` would stat, seek and grow its buffer
    /// from 32 bytes (eight reads for `status`): read through `take` into a
    /// page-sized buffer, these small files take one read plus the one that
    /// sees the end.
    fn read_bounded(&self, name: &str, what: &'static str, limit: usize) -> Result<String, AttestError> {
        let io_error = |source| AttestError::Proc {
            pid: self.pid,
            what,
            source,
        };
        let mut bytes = Vec::with_capacity(PROC_READ_CHUNK.min(limit));
        self.open_file(name, what)?
            .take(limit as u64)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        String::from_utf8(bytes)
            .map_err(|e| io_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }
}

/// `4294967295` ((uid_t)-1) means unset; anything unparsable is unset too.
fn parse_login_uid(text: &str) -> Option<u32> {
    text.trim().parse::<u32>().ok().filter(|&uid| uid != u32::MAX)
}

/// ENOENT/ESRCH on a pid directory means the process is gone, which callers
/// must tell apart from a broken `/proc`.
fn proc_error(pid: i32, what: &'static str, errno: Errno) -> AttestError {
    match errno {
        Errno::ENOENT | Errno::ESRCH => AttestError::ProcessGone { pid },
        _ => AttestError::Proc {
            pid,
            what,
            source: errno.into(),
        },
    }
}

/// The kernel appends " (deleted)" to the link of an unlinked executable;
/// its old path may now name a different file, so it is no selector.
fn live_exe_path(link: &OsStr) -> Option<PathBuf> {
    let bytes = link.as_bytes();
    if bytes.ends_with(b" (deleted)") || !bytes.starts_with(b"/") {
        return None;
    }
    Some(PathBuf::from(link))
}

/// The state letter of `/proc/<pid>/stat`: the field after the command name,
/// which is parenthesised and may itself contain ") ".
fn parse_state(stat: &str) -> Option<u8> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.trim_start().bytes().next()
}

/// The first `Uid:`, `Gid:` and `Groups:` lines; what does not parse is
/// left unset (the kernel writes them, but a caller's `comm` is its own).
pub fn parse_status(text: &str) -> Status {
    let field = |name: &str| text.lines().find_map(|line| line.strip_prefix(name));
    // "Uid:\treal\teffective\tsaved\tfs"
    let effective = |name: &str| field(name)?.split_whitespace().nth(1)?.parse().ok();
    let supplementary_gids = field("Groups:")
        .map(|groups| groups.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default();
    Status {
        effective_uid: effective("Uid:"),
        effective_gid: effective("Gid:"),
        supplementary_gids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups() {
        let text = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\t6\t6\t6\nGroups:\t4 24 27 \nNgid:\t0\n";
        let status = parse_status(text);
        assert_eq!(status.supplementary_gids, vec![4, 24, 27]);
        assert_eq!((status.effective_uid, status.effective_gid), (Some(0), Some(6)));
        assert_eq!(parse_status("Groups:\t\n").supplementary_gids, Vec::<u32>::new());
    }

    #[test]
    fn parses_state_after_hostile_comm() {
        assert_eq!(parse_state("42 (a) Z (b)) R 1 2"), Some(b'R'));
        assert_eq!(parse_state("42 (x) Z 1"), Some(b'Z'));
        assert_eq!(parse_state("garbage"), None);
    }

    #[test]
    fn deleted_exe_has_no_path() {
        assert_eq!(live_exe_path(OsStr::new("/usr/bin/x (deleted)")), None);
        assert_eq!(
            live_exe_path(OsStr::new("/usr/bin/x")),
            Some(PathBuf::from("/usr/bin/x"))
        );
    }

    #[test]
    fn missing_pid_is_process_gone() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            ProcDir::open(root.path(), 12345),
            Err(AttestError::ProcessGone { pid: 12345 })
        ));
    }
}

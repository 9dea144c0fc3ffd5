//! attestd's view of the cgroup hierarchies (from its own mount table), as
//! evidence of who owns each cgroup directory.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, fstat};

use super::delegation::{Hierarchy, Ownership, OwnershipEvidence};

/// A mount table holding more lines than this is not read (it is attestd's
/// own, so this only bounds a misconfigured host).
const MAX_MOUNTS: usize = 100_000;

/// The cgroup hierarchies mounted in attestd's mount namespace.
#[derive(Debug, Default)]
pub struct CgroupMounts {
    mounts: Vec<Mount>,
}

#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// `None` for cgroup2; the super options (controllers among them) of a
    /// v1 hierarchy.
    v1_options: Option<Vec<String>>,
    point: PathBuf,
    /// The cgroup the mount's root shows, as segments.
    root: Vec<String>,
}

impl CgroupMounts {
    /// Reads `<proc_root>/self/mountinfo`; a table that cannot be read
    /// yields no mounts (and so no evidence).
    pub fn discover(proc_root: &Path) -> Self {
        match std::fs::read_to_string(proc_root.join("self/mountinfo")) {
            Ok(text) => Self::parse(&text),
            Err(error) => {
                tracing::warn!(%error, "cannot read the mount table: cgroup delegation is judged by unit names only");
                Self::default()
            }
        }
    }

    fn parse(mountinfo: &str) -> Self {
        let mounts = mountinfo
            .lines()
            .take(MAX_MOUNTS)
            .filter_map(Mount::parse)
            .collect();
        Self { mounts }
    }

    /// The mounts that show `hierarchy`, and the path below each one's root.
    fn candidates<'m, 's>(
        &'m self,
        hierarchy: Hierarchy<'_>,
        segments: &'s [&'s str],
    ) -> impl Iterator<Item = (&'m Mount, &'s [&'s str])> {
        let wanted: Vec<&str> = match hierarchy {
            Hierarchy::Unified => Vec::new(),
            Hierarchy::V1 { controllers } => controllers.split(',').collect(),
        };
        let unified = hierarchy == Hierarchy::Unified;
        self.mounts.iter().filter_map(move |mount| {
            let shows = match &mount.v1_options {
                None => unified,
                Some(options) => !unified && wanted.iter().all(|c| options.iter().any(|o| o == c)),
            };
            shows
                .then(|| below_root(&mount.root, segments))
                .flatten()
                .map(|below| (mount, below))
        })
    }
}

impl OwnershipEvidence for CgroupMounts {
    fn walk(&self, hierarchy: Hierarchy<'_>, segments: &[&str]) -> Ownership {
        if segments.iter().any(|s| *s == "." || *s == "..") {
            return Ownership::Unknown;
        }
        let Some((mount, below)) = self.candidates(hierarchy, segments).next() else {
            return Ownership::Unknown;
        };
        let Ok(mut dir) = open_dir(&mount.point) else {
            return Ownership::Unknown;
        };
        let above = segments.len() - below.len();
        for (i, segment) in below.iter().enumerate() {
            let depth = above + i + 1;
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            dir = match openat(&dir, *segment, flags, Mode::empty()) {
                Ok(next) => next,
                Err(_) => return Ownership::LostAt { depth },
            };
            match fstat(&dir) {
                Ok(stat) if stat.st_uid != 0 => {
                    return Ownership::DelegatedAt {
                        depth,
                        uid: stat.st_uid,
                    };
                }
                Ok(_) => {}
                Err(_) => return Ownership::LostAt { depth },
            }
        }
        Ownership::RootOwned
    }
}

/// The part of `segments` below a mount whose root is `root`.
fn below_root<'s>(root: &[String], segments: &'s [&'s str]) -> Option<&'s [&'s str]> {
    let within = root.len() <= segments.len() && root.iter().zip(segments).all(|(r, s)| r == s);
    within.then(|| &segments[root.len()..])
}

fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

impl Mount {
    /// One line of mountinfo: `id parent dev root point options [tags] -
    /// fstype source super_options`; other file systems are `None`.
    fn parse(line: &str) -> Option<Self> {
        let (before, after) = line.split_once(" - ")?;
        let before: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        let (root, point) = (before.get(3)?, before.get(4)?);
        let (fstype, _source, options) = (after.next()?, after.next()?, after.next()?);
        let v1_options = match fstype {
            "cgroup2" => None,
            "cgroup" => Some(options.split(',').map(str::to_owned).collect()),
            _ => return None,
        };
        Some(Self {
            v1_options,
            point: PathBuf::from(unescape(point)),
            root: unescape(root)
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| {
                std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| u8::from_str_radix(d, 8).ok())
            });
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
42 31 0:38 /sub\\040dir /mnt/cg\\040x rw - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_each_hierarchy_of_a_hybrid_host() {
        let mounts = CgroupMounts::parse(HYBRID);
        let point = |h| {
            mounts
                .candidates(h, &["a"])
                .next()
                .map(|(m, _)| m.point.display().to_string())
        };
        assert_eq!(
            point(Hierarchy::Unified).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            point(Hierarchy::V1 {
                controllers: "name=systemd"
            })
            .as_deref(),
            Some("/sys/fs/cgroup/systemd")
        );
        assert_eq!(
            point(Hierarchy::V1 {
                controllers: "cpu,cpuacct"
            })
            .as_deref(),
            Some("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            point(Hierarchy::V1 {
                controllers: "memory"
            }),
            None
        );
        // A mount of a subtree shows only the paths below its root.
        let sub = &mounts.mounts[3];
        assert_eq!(sub.point, Path::new("/mnt/cg x"));
        assert_eq!(sub.root, ["sub dir"]);
    }

    /// A real directory tree standing in for a cgroup hierarchy: ownership
    /// is read from the file system itself.
    #[test]
    fn walks_a_directory_tree_to_the_first_directory_not_owned_by_root() {
        let root = tempfile::tempdir().unwrap();
        let delegated = root.path().join("a.slice/agent.service");
        std::fs::create_dir_all(delegated.join("sub.service")).unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mounts = CgroupMounts {
            mounts: vec![Mount {
                v1_options: None,
                point: root.path().to_owned(),
                root: Vec::new(),
            }],
        };
        let path = ["a.slice", "agent.service", "sub.service"];
        let owner = nix::unistd::geteuid().as_raw();
        let expected = match owner {
            0 => Ownership::RootOwned,
            uid => Ownership::DelegatedAt { depth: 1, uid },
        };
        assert_eq!(mounts.walk(Hierarchy::Unified, &path), expected);
        if owner == 0 {
            nix::unistd::chown(&delegated, Some(nix::unistd::Uid::from_raw(1000)), None).unwrap();
            assert_eq!(
                mounts.walk(Hierarchy::Unified, &path),
                Ownership::DelegatedAt { depth: 2, uid: 1000 }
            );
        }
        assert_eq!(
            mounts.walk(Hierarchy::Unified, &["a.slice", "gone.service"]),
            Ownership::LostAt { depth: 2 }
        );
        assert_eq!(mounts.walk(Hierarchy::Unified, &["..", "x"]), Ownership::Unknown);
        assert_eq!(
            mounts.walk(Hierarchy::V1 { controllers: "cpu" }, &path),
            Ownership::Unknown
        );
    }
}

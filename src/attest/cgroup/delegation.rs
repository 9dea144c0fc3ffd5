//! Where a cgroup path stops being named by root.
//!
//! systemd (and any root process) may hand a cgroup subtree to a user:
//! `Delegate=` chowns the unit's directory to the unit's user, and the
//! user's own manager (`user@N.service`), `systemd-run --user` and rootless
//! container runtimes then create cgroups with ANY names below it, e.g.
//! `.../user@1000.service/system.slice/nginx.service`. Names below that
//! boundary are the user's claims, not the system's facts, so attestation
//! reports them under selectors that carry the delegating uid.
//!
//! The boundary is the first of:
//! - a `user@N.service` segment, counted from the root: systemd's user
//!   manager for uid N, which only root's systemd creates and a user cannot
//!   create outside its own subtree (which is then already below a boundary);
//! - the first directory on the path, in attestd's view of that hierarchy,
//!   owned by a uid other than root: the kernel's own record of a delegation
//!   (a user can only create cgroups below a directory it was given).

/// Which hierarchy a line of `/proc/<pid>/cgroup` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy<'a> {
    /// cgroup v2 (`0::/…`).
    Unified,
    /// A v1 hierarchy, by its controllers (`cpu,cpuacct`, `name=systemd`).
    V1 {
        /// The line's comma-separated controllers.
        controllers: &'a str,
    },
}

/// What the cgroup file system says about the owners of the directories
/// along a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Every directory along the path is owned by root.
    RootOwned,
    /// The directory `depth` segments deep is the first one owned by `uid`,
    /// not root: the path below it is named by that user.
    DelegatedAt {
        /// Segments from the root up to and including that directory.
        depth: usize,
        /// Its owner.
        uid: u32,
    },
    /// The directory `depth` segments deep could not be inspected (removed
    /// since the cgroup file was read, say): nothing from it on is believed.
    LostAt {
        /// Segments from the root up to and including that directory.
        depth: usize,
    },
    /// The hierarchy is not mounted where attestd can inspect it.
    Unknown,
}

/// A source of ownership evidence for cgroup directories.
pub trait OwnershipEvidence {
    /// Walks `segments` from the hierarchy's root and stops at the first
    /// directory not owned by root.
    fn walk(&self, hierarchy: Hierarchy<'_>, segments: &[&str]) -> Ownership;
}

/// No evidence at all: only unit names mark a boundary (fixtures, fuzzing).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvidence;

impl OwnershipEvidence for NoEvidence {
    fn walk(&self, _: Hierarchy<'_>, _: &[&str]) -> Ownership {
        Ownership::Unknown
    }
}

/// How a path divides into the part root named and the part below a
/// delegation boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// The first `root_named` segments were named by root (all of them when
    /// nothing was delegated).
    pub root_named: usize,
    /// Who named the rest: the delegating uid, or `None` when it cannot be
    /// told (then the rest is not believed at all).
    pub delegate: Option<u32>,
    /// Whether the cgroup file system confirmed the split (else it rests on
    /// unit names alone).
    pub verified: bool,
}

/// Splits `segments` at its delegation boundary.
pub fn split(segments: &[&str], hierarchy: Hierarchy<'_>, evidence: &dyn OwnershipEvidence) -> Split {
    let by_name = segments
        .iter()
        .enumerate()
        .find_map(|(i, segment)| user_manager_uid(segment).map(|uid| (i + 1, uid)));
    // Directories below a named boundary are the user's anyway: the walk
    // stops there, so a user's deep subtree costs attestd nothing.
    let walked = by_name.map_or(segments.len(), |(depth, _)| depth);
    let named = |verified| match by_name {
        Some((depth, uid)) => Split {
            root_named: depth,
            delegate: Some(uid),
            verified,
        },
        None => Split {
            root_named: segments.len(),
            delegate: None,
            verified,
        },
    };
    if segments.is_empty() {
        // The hierarchy's root: nothing below it for anyone to have named,
        // so nothing to ask the file system (a call in the root cgroup
        // costs no directory opens).
        return named(true);
    }
    match evidence.walk(hierarchy, &segments[..walked]) {
        Ownership::RootOwned => named(true),
        Ownership::Unknown => named(false),
        // The kernel's owner wins over the name where both mark one segment.
        Ownership::DelegatedAt { depth, uid } => Split {
            root_named: depth,
            delegate: Some(uid),
            verified: true,
        },
        Ownership::LostAt { depth } => Split {
            root_named: depth - 1,
            delegate: None,
            verified: true,
        },
    }
}

/// `user@N.service`: systemd's per-user manager for uid N.
fn user_manager_uid(segment: &str) -> Option<u32> {
    let uid = segment.strip_prefix("user@")?.strip_suffix(".service")?;
    if uid.starts_with('+') {
        return None;
    }
    uid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Owners of fixture directories by their path from the root.
    struct Owners(HashMap<&'static str, u32>);

    impl OwnershipEvidence for Owners {
        fn walk(&self, _: Hierarchy<'_>, segments: &[&str]) -> Ownership {
            for depth in 1..=segments.len() {
                let path = format!("/{}", segments[..depth].join("/"));
                match self.0.get(path.as_str()) {
                    None => return Ownership::LostAt { depth },
                    Some(0) => {}
                    Some(&uid) => return Ownership::DelegatedAt { depth, uid },
                }
            }
            Ownership::RootOwned
        }
    }

    fn segments(path: &str) -> Vec<&str> {
        path.split('/').filter(|s| !s.is_empty()).collect()
    }

    #[test]
    fn user_manager_names_the_boundary() {
        let path = segments("/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope");
        let split = split(&path, Hierarchy::Unified, &NoEvidence);
        assert_eq!(
            split,
            Split {
                root_named: 3,
                delegate: Some(1000),
                verified: false
            }
        );
        for lookalike in [
            "user@.service",
            "user@x.service",
            "user@+1.service",
            "user@1000.scope",
        ] {
            assert_eq!(user_manager_uid(lookalike), None, "{lookalike}");
        }
    }

    /// Evidence that must not be asked.
    struct Unasked;

    impl OwnershipEvidence for Unasked {
        fn walk(&self, _: Hierarchy<'_>, segments: &[&str]) -> Ownership {
            panic!("the file system was asked about {segments:?}");
        }
    }

    #[test]
    fn the_root_cgroup_needs_no_evidence() {
        let expected = Split {
            root_named: 0,
            delegate: None,
            verified: true,
        };
        assert_eq!(split(&segments("/"), Hierarchy::Unified, &Unasked), expected);
    }

    #[test]
    fn the_first_boundary_from_the_root_counts() {
        // A user who was delegated a subtree names a "user@0.service" below it.
        let path = segments("/system.slice/agent.service/user@0.service/x.service");
        let owners = Owners(HashMap::from([
            ("/system.slice", 0),
            ("/system.slice/agent.service", 1000),
        ]));
        let split = split(&path, Hierarchy::Unified, &owners);
        assert_eq!((split.root_named, split.delegate), (2, Some(1000)));
    }

    #[test]
    fn root_owned_paths_are_not_split() {
        let path = segments("/system.slice/nginx.service");
        let owners = Owners(HashMap::from([
            ("/system.slice", 0),
            ("/system.slice/nginx.service", 0),
        ]));
        assert_eq!(
            split(&path, Hierarchy::Unified, &owners),
            Split {
                root_named: 2,
                delegate: None,
                verified: true
            }
        );
    }

    #[test]
    fn a_vanished_directory_voids_what_lies_below() {
        let path = segments("/a.slice/gone.service/x.service");
        let owners = Owners(HashMap::from([("/a.slice", 0)]));
        assert_eq!(
            split(&path, Hierarchy::Unified, &owners),
            Split {
                root_named: 1,
                delegate: None,
                verified: true
            }
        );
    }
}

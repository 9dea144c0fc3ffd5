//! `/proc/<pid>/cgroup` → selectors: the cgroup path, the systemd unit and
//! slices it sits in, and the container it belongs to.
//!
//! Lines are `hierarchy-id:controllers:path`. The path used is the cgroup v2
//! one (`0::/…`), or on v1-only hosts the `name=systemd` hierarchy's. Paths
//! are as the kernel shows them to attestd, i.e. relative to attestd's
//! cgroup namespace.
//!
//! The file is written by the kernel, but its paths are named by whoever
//! creates cgroups (systemd, container runtimes, and any process with a
//! delegated subtree), so nothing here trusts their shape: unparseable
//! lines are skipped (fewer selectors can only mean fewer matches), and
//! evidence of two different containers is an error, never a guess. Names
//! below a delegation boundary (see [`delegation`]) are the delegated
//! user's, and are reported apart, with that user's uid. Names below a
//! container's cgroup are the container's, and are not reported as units or
//! slices at all.

mod delegation;
mod mounts;

pub use delegation::OwnershipEvidence;
pub use mounts::CgroupMounts;

use crate::selector::{Selector, SelectorSet};
use delegation::{Hierarchy, NoEvidence, Split};

/// Lines beyond this many bytes in all are not believed to come from the
/// kernel; the file is refused.
pub const MAX_CGROUP_FILE: usize = 64 * 1024;

/// Why a cgroup file yields no selectors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// The process's cgroups name two different containers.
    #[error("cgroups name two containers ({0} and {1}); refusing to guess")]
    AmbiguousContainer(String, String),
    /// The file is larger than [`MAX_CGROUP_FILE`].
    #[error("cgroup file larger than {MAX_CGROUP_FILE} bytes")]
    TooLarge,
}

/// What the cgroup file says about a process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupFacts {
    /// The v2 path, or the v1 `name=systemd` path (whole: a user cannot
    /// create a path outside its subtree, and the path shows the delegation).
    pub path: Option<String>,
    /// The innermost `.service` or `.scope` unit of that path named by root,
    /// no deeper than its outermost container's cgroup.
    pub systemd_unit: Option<String>,
    /// Every `.slice` of that path named by root, no deeper than its
    /// outermost container's cgroup, outermost first.
    pub systemd_slices: Vec<String>,
    /// The container id (64 lowercase hex) a root-named cgroup shows.
    pub container_id: Option<String>,
    /// Units and slices named below the path's delegation boundary (and no
    /// deeper than its outermost container's cgroup).
    pub delegated: Option<DelegatedFacts>,
    /// A container id named below a delegation boundary: (uid, id).
    pub user_container_id: Option<(u32, String)>,
    /// Facts withheld or judged on weaker evidence, and why.
    pub notes: Vec<String>,
}

/// Units and slices a delegated user named.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DelegatedFacts {
    /// The uid the subtree was delegated to.
    pub uid: u32,
    /// The innermost unit below the boundary.
    pub systemd_unit: Option<String>,
    /// Every slice below the boundary, outermost first.
    pub systemd_slices: Vec<String>,
}

impl CgroupFacts {
    /// The selectors these facts support.
    pub fn selectors(&self, into: &mut SelectorSet) {
        if let Some(path) = &self.path {
            into.insert(Selector::new("cgroup", "path", path));
        }
        if let Some(unit) = &self.systemd_unit {
            into.insert(Selector::new("systemd", "id", unit));
        }
        for slice in &self.systemd_slices {
            into.insert(Selector::new("systemd", "slice", slice));
        }
        if let Some(id) = &self.container_id {
            into.insert(Selector::new("container", "id", id));
        }
        if let Some(delegated) = &self.delegated {
            let uid = delegated.uid;
            if let Some(unit) = &delegated.systemd_unit {
                into.insert(Selector::new("systemd", "user_unit", format!("{uid}:{unit}")));
            }
            for slice in &delegated.systemd_slices {
                into.insert(Selector::new("systemd", "user_slice", format!("{uid}:{slice}")));
            }
        }
        if let Some((uid, id)) = &self.user_container_id {
            into.insert(Selector::new("container", "user_id", format!("{uid}:{id}")));
        }
    }
}

/// Parses the contents of `/proc/<pid>/cgroup`, with unit names as the only
/// evidence of delegation.
pub fn parse(text: &str) -> Result<CgroupFacts, CgroupError> {
    parse_with(text, &NoEvidence)
}

/// Parses the contents of `/proc/<pid>/cgroup`, asking `evidence` who owns
/// the cgroup directories to find delegated subtrees.
pub fn parse_with(text: &str, evidence: &dyn OwnershipEvidence) -> Result<CgroupFacts, CgroupError> {
    if text.len() > MAX_CGROUP_FILE {
        return Err(CgroupError::TooLarge);
    }
    let lines: Vec<Line<'_>> = text.lines().filter_map(Line::parse).collect();
    let main = lines
        .iter()
        .find(|l| l.hierarchy() == Hierarchy::Unified)
        .or_else(|| {
            lines
                .iter()
                .find(|l| l.controllers.split(',').any(|c| c == "name=systemd"))
        });
    let mut facts = CgroupFacts::default();
    if let Some(line) = main {
        systemd_facts(&mut facts, line, evidence);
    }
    for line in &lines {
        container_facts(&mut facts, line, evidence)?;
    }
    Ok(facts)
}

/// The path, and the units and slices on it down to its outermost
/// container's cgroup, on either side of its delegation boundary.
fn systemd_facts(facts: &mut CgroupFacts, line: &Line<'_>, evidence: &dyn OwnershipEvidence) {
    facts.path = Some(line.path.to_owned());
    let all_segments = line.segments();
    let split = delegation::split(&all_segments, line.hierarchy(), evidence);
    let segments = named_outside_containers(facts, line.path, &all_segments);
    let (system, user) = segments.split_at(split.root_named.min(segments.len()));
    facts.systemd_unit = innermost_unit(system);
    facts.systemd_slices = slices(system);
    if !split.verified && (facts.systemd_unit.is_some() || !facts.systemd_slices.is_empty()) {
        facts.notes.push(format!(
            "systemd selectors judged by unit names only: attestd cannot inspect the {} hierarchy",
            line.hierarchy_name()
        ));
    }
    let (unit, user_slices) = (innermost_unit(user), slices(user));
    if unit.is_none() && user_slices.is_empty() {
        return;
    }
    match split.delegate {
        Some(uid) => {
            facts.delegated = Some(DelegatedFacts {
                uid,
                systemd_unit: unit,
                systemd_slices: user_slices,
            });
        }
        None => facts.notes.push(lost_note(line.path, split)),
    }
}

/// The segments of `path` down to and including its outermost container's
/// cgroup; what lies below is left out, with a note when it held units or
/// slices.
///
/// A container without a user namespace that may create cgroups in its own
/// subtree (podman `--systemd=always`, docker in docker) names them as it
/// likes: its systemd makes `system.slice/nginx.service` there. Those names
/// are the container's, whoever's uid owns the directories, so they come out
/// under no selector at all rather than under one of their own carrying the
/// container id (`systemd:container_unit:<id>:<unit>`): a container id is new
/// with every container, so such an entry could only be written for one
/// container instance, which `container:id` already names; and the
/// container's root moves its processes among its own cgroups at will, so
/// the name would add nothing the container could not claim. The container's
/// own segment (`libpod-<id>.scope`, `docker-<id>.scope`) was named by the
/// host's runtime or systemd, and stays, as do the units and slices above it
/// (podman's own unit with `--cgroups=split`). A payload child such as
/// `libpod-<id>.scope/container` is no unit name and needs no note.
fn named_outside_containers<'s, 'a>(
    facts: &mut CgroupFacts,
    path: &str,
    segments: &'s [&'a str],
) -> &'s [&'a str] {
    let Some((index, id)) = outermost_container(segments) else {
        return segments;
    };
    let (outside, inside) = segments.split_at(index + 1);
    if innermost_unit(inside).is_some() || !slices(inside).is_empty() {
        facts.notes.push(format!(
            "systemd names below container {id}'s cgroup (segment {} of {path}) withheld: the container named them",
            index + 1
        ));
    }
    outside
}

/// A container id of one line: a system one if root named it, else the
/// delegated user's. Two different ids on either side are an error.
fn container_facts(
    facts: &mut CgroupFacts,
    line: &Line<'_>,
    evidence: &dyn OwnershipEvidence,
) -> Result<(), CgroupError> {
    let segments = line.segments();
    let Some((index, named)) = outermost_container(&segments) else {
        return Ok(());
    };
    let split = delegation::split(&segments, line.hierarchy(), evidence);
    // The outermost container is the only one: any other lies inside it.
    if index < split.root_named {
        return agree(&mut facts.container_id, named);
    }
    match split.delegate {
        Some(uid) => {
            let seen = facts
                .user_container_id
                .get_or_insert_with(|| (uid, named.clone()));
            if *seen != (uid, named.clone()) {
                return Err(CgroupError::AmbiguousContainer(seen.1.clone(), named));
            }
        }
        None => facts.notes.push(lost_note(line.path, split)),
    }
    Ok(())
}

/// Records `id` in `slot` unless another id is already there.
fn agree(slot: &mut Option<String>, id: String) -> Result<(), CgroupError> {
    match slot {
        Some(seen) if *seen != id => Err(CgroupError::AmbiguousContainer(seen.clone(), id)),
        _ => {
            *slot = Some(id);
            Ok(())
        }
    }
}

fn lost_note(path: &str, split: Split) -> String {
    format!(
        "cgroup names below segment {} of {path} withheld: that cgroup could not be inspected",
        split.root_named
    )
}

fn innermost_unit(segments: &[&str]) -> Option<String> {
    segments
        .iter()
        .rev()
        .find(|s| is_unit(s, ".service") || is_unit(s, ".scope"))
        .map(|s| (*s).to_owned())
}

fn slices(segments: &[&str]) -> Vec<String> {
    segments
        .iter()
        .filter(|s| is_unit(s, ".slice"))
        .map(|s| (*s).to_owned())
        .collect()
}

struct Line<'a> {
    id: &'a str,
    controllers: &'a str,
    path: &'a str,
}

impl<'a> Line<'a> {
    /// `id:controllers:path`; the path may itself contain ':' and must be
    /// absolute. Anything else is not a kernel-written line.
    fn parse(line: &'a str) -> Option<Self> {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
            return None;
        }
        Some(Self {
            id,
            controllers,
            path,
        })
    }

    fn hierarchy(&self) -> Hierarchy<'a> {
        if self.id == "0" && self.controllers.is_empty() {
            Hierarchy::Unified
        } else {
            Hierarchy::V1 {
                controllers: self.controllers,
            }
        }
    }

    fn hierarchy_name(&self) -> &'a str {
        match self.hierarchy() {
            Hierarchy::Unified => "cgroup2",
            Hierarchy::V1 { controllers } => controllers,
        }
    }

    fn segments(&self) -> Vec<&'a str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// A systemd unit name: a non-empty name plus the suffix, no control
/// characters.
fn is_unit(segment: &str, suffix: &str) -> bool {
    segment.len() > suffix.len() && segment.ends_with(suffix) && !segment.chars().any(char::is_control)
}

/// How runtimes name the cgroup of the container itself:
/// `<prefix><64 hex><suffix>`. The monitors (`libpod-conmon-<id>.scope`,
/// `crio-conmon-<id>[.scope]`) do not match: what follows the prefix is not
/// bare hex. Where each form comes from: tests/fixtures/cgroup/README.md.
const CONTAINER_CGROUP_NAMES: &[(&str, &str)] = &[
    // podman, cgroupfs manager: `/libpod_parent/libpod-<id>` (seen on real
    // containers in the e2e tests); with `--cgroups=split`,
    // `<podman's own cgroup>/libpod-payload-<id>`.
    ("libpod-", ""),
    ("libpod-payload-", ""),
    // podman, systemd manager: `machine.slice/libpod-<id>.scope`.
    ("libpod-", ".scope"),
    // docker, systemd driver: `system.slice/docker-<id>.scope`.
    ("docker-", ".scope"),
    // containerd (CRI), systemd driver.
    ("cri-containerd-", ".scope"),
    // cri-o: `crio-<id>.scope` (systemd), `crio-<id>` (cgroupfs).
    ("crio-", ".scope"),
    ("crio-", ""),
];

/// The outermost container that the cgroup path `segments` names: a segment
/// of one of the [`CONTAINER_CGROUP_NAMES`] forms, or a bare 64-hex segment
/// directly under `docker` (docker, cgroupfs driver) or a kubelet `pod<uid>`
/// directory (containerd and docker, cgroupfs driver).
///
/// The OUTERMOST match wins. A container's cgroup was created by the
/// runtime on the host, but what lies below it may be created by the
/// container itself (podman `--systemd=always` hands it its subtree, a
/// nested runtime creates its own `docker-<id>.scope` there): an id named
/// inside a container is that container's claim, and must never pass for
/// a container of the host's runtime. The innermost match would let a
/// container name any other container's id.
///
/// Returns the segment's index with the id: the one rule that both the
/// container id and the end of the host-named units rest on.
fn outermost_container(segments: &[&str]) -> Option<(usize, String)> {
    segments.iter().enumerate().find_map(|(i, segment)| {
        let named = CONTAINER_CGROUP_NAMES.iter().find_map(|(prefix, suffix)| {
            segment
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .filter(|id| is_container_id(id))
        });
        let bare =
            (i > 0 && is_container_id(segment) && is_container_parent(segments[i - 1])).then_some(*segment);
        named.or(bare).map(|id| (i, id.to_owned()))
    })
}

/// A directory whose 64-hex children are containers: docker's cgroupfs
/// parent, or a kubelet pod (`pod` + the pod's UID, with `-`; the systemd
/// driver's `…-pod<uid>.slice` holds `.scope`s instead). Not
/// `libpod_parent`: podman's 64-hex children there are pods (their conmon
/// sits in `<pod id>/conmon`), and its containers are `libpod-<id>`.
fn is_container_parent(segment: &str) -> bool {
    segment == "docker"
        || segment
            .strip_prefix("pod")
            .is_some_and(|uid| uid.len() == 36 && uid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()))
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::delegation::Ownership;
    use super::*;

    const ID: &str = "3f4b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
    const OTHER: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn facts(text: &str) -> CgroupFacts {
        parse(text).unwrap()
    }

    /// Evidence of a cgroup path delegated to uid `.1` from its `.0`-th
    /// segment on (root-owned above it).
    struct DelegatedAt(usize, u32);

    impl OwnershipEvidence for DelegatedAt {
        fn walk(&self, _: Hierarchy<'_>, segments: &[&str]) -> Ownership {
            match segments.len() >= self.0 {
                true => Ownership::DelegatedAt {
                    depth: self.0,
                    uid: self.1,
                },
                false => Ownership::RootOwned,
            }
        }
    }

    #[test]
    fn cgroup_v2_systemd_service() {
        let f = facts("0::/system.slice/nginx.service\n");
        assert_eq!(f.path.as_deref(), Some("/system.slice/nginx.service"));
        assert_eq!(f.systemd_unit.as_deref(), Some("nginx.service"));
        assert_eq!(f.systemd_slices, ["system.slice"]);
        assert_eq!(f.container_id, None);
    }

    /// A user session: root's systemd named everything down to the user's
    /// manager; below it, the user's manager (or the user) named the rest.
    #[test]
    fn user_session_units_below_the_user_manager_are_the_users() {
        let f = facts("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-agent-42.scope\n");
        assert_eq!(f.systemd_unit.as_deref(), Some("user@1000.service"));
        assert_eq!(f.systemd_slices, ["user.slice", "user-1000.slice"]);
        assert_eq!(
            f.delegated,
            Some(DelegatedFacts {
                uid: 1000,
                systemd_unit: Some("app-agent-42.scope".into()),
                systemd_slices: vec!["app.slice".into()],
            })
        );
        let mut selectors = SelectorSet::new();
        f.selectors(&mut selectors);
        let has = |text: &str| selectors.contains(&Selector::parse(text).unwrap());
        assert!(has("systemd:user_unit:1000:app-agent-42.scope"));
        assert!(has("systemd:user_slice:1000:app.slice"));
        assert!(has("systemd:id:user@1000.service") && has("systemd:slice:user-1000.slice"));
        assert!(!has("systemd:id:app-agent-42.scope") && !has("systemd:slice:app.slice"));
    }

    /// The attack: a user names a system unit, or a container, inside its
    /// own subtree. Neither may come out as the system's.
    #[test]
    fn names_forged_in_a_users_subtree_are_not_the_systems() {
        let forged = facts("0::/user.slice/user-1000.slice/user@1000.service/system.slice/nginx.service\n");
        assert_eq!(forged.systemd_unit.as_deref(), Some("user@1000.service"));
        assert!(!forged.systemd_slices.contains(&"system.slice".to_owned()));
        let delegated = forged.delegated.unwrap();
        assert_eq!(delegated.systemd_unit.as_deref(), Some("nginx.service"));

        // Rootless podman under the user's manager.
        let rootless = facts(&format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
        ));
        assert_eq!(rootless.container_id, None);
        assert_eq!(rootless.user_container_id, Some((1000, ID.to_owned())));
        let mut selectors = SelectorSet::new();
        rootless.selectors(&mut selectors);
        assert!(selectors.contains(&Selector::parse(&format!("container:user_id:1000:{ID}")).unwrap()));
        assert!(!selectors.iter().any(|s| s.kind() == "container:id"));
    }

    /// A v1-only host: the `name=systemd` hierarchy carries the same
    /// boundary.
    #[test]
    fn v1_name_systemd_paths_are_split_too() {
        let text = "2:cpu:/user.slice\n1:name=systemd:/user.slice/user-42.slice/user@42.service/app.slice/x.service\n";
        let f = facts(text);
        assert_eq!(f.systemd_unit.as_deref(), Some("user@42.service"));
        let delegated = f.delegated.unwrap();
        assert_eq!(delegated.uid, 42);
        assert_eq!(delegated.systemd_unit.as_deref(), Some("x.service"));
        assert_eq!(delegated.systemd_slices, ["app.slice"]);
    }

    /// The kernel's evidence: a directory chowned for delegation (systemd's
    /// `Delegate=` with `User=`) marks the boundary with no telltale name.
    #[test]
    fn a_directory_owned_by_a_user_marks_a_delegation() {
        let text =
            format!("0::/system.slice/ci.service/system.slice/nginx.service\n1:name=systemd:/docker/{ID}\n");
        let f = parse_with(&text, &DelegatedAt(2, 1000)).unwrap();
        assert_eq!(f.systemd_unit.as_deref(), Some("ci.service"));
        assert_eq!(f.systemd_slices, ["system.slice"]);
        let delegated = f.delegated.unwrap();
        assert_eq!(delegated.uid, 1000);
        assert_eq!(delegated.systemd_unit.as_deref(), Some("nginx.service"));
        assert_eq!(delegated.systemd_slices, ["system.slice"]);
        // The id names the boundary directory itself, which root named: the
        // container is the system's. Below the boundary it is the user's.
        assert_eq!(f.container_id.as_deref(), Some(ID));
        let deep = format!("0::/system.slice/ci.service/docker-{ID}.scope\n");
        let f = parse_with(&deep, &DelegatedAt(2, 1000)).unwrap();
        assert_eq!(
            (f.container_id, f.user_container_id),
            (None, Some((1000, ID.to_owned())))
        );
        // A root-owned path is the system's all the way down.
        let f = parse_with(&deep, &DelegatedAt(9, 1000)).unwrap();
        assert_eq!(f.container_id.as_deref(), Some(ID));
        assert!(f.notes.is_empty(), "{:?}", f.notes);
    }

    /// A cgroup that vanished between reading the file and inspecting the
    /// directory: what lay below it is believed by no one.
    #[test]
    fn names_below_an_uninspectable_cgroup_are_withheld() {
        struct Lost;
        impl OwnershipEvidence for Lost {
            fn walk(&self, _: Hierarchy<'_>, _: &[&str]) -> Ownership {
                Ownership::LostAt { depth: 2 }
            }
        }
        let f = parse_with(
            &format!("0::/system.slice/gone.service/docker-{ID}.scope\n"),
            &Lost,
        )
        .unwrap();
        assert_eq!(f.systemd_unit, None);
        assert_eq!(f.systemd_slices, ["system.slice"]);
        assert_eq!(
            (f.container_id, f.user_container_id, f.delegated),
            (None, None, None)
        );
        assert!(
            f.notes.iter().any(|n| n.contains("could not be inspected")),
            "{:?}",
            f.notes
        );
    }

    #[test]
    fn cgroup_v1_uses_name_systemd_and_scans_all_hierarchies_for_containers() {
        let text = format!("12:pids:/docker/{ID}\n5:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        let f = facts(&text);
        assert_eq!(f.path, Some(format!("/docker/{ID}")));
        assert_eq!(f.container_id.as_deref(), Some(ID));
        assert_eq!(f.systemd_unit, None);
    }

    #[test]
    fn hybrid_prefers_the_unified_hierarchy() {
        let f = facts("1:name=systemd:/legacy.slice/a.service\n0::/system.slice/b.service\n");
        assert_eq!(f.systemd_unit.as_deref(), Some("b.service"));
    }

    #[test]
    fn every_runtime_format() {
        let cases = [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice/cri-containerd-{ID}.scope"
            ),
            format!("0::/kubepods.slice/kubepods-pod99.slice/crio-{ID}.scope"),
            format!("0::/kubepods/besteffort/pod0a1b2c3d-aaaa-bbbb-cccc-000000000000/crio-{ID}"),
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
            format!("0::/kubepods/besteffort/pod0a1b2c3d-aaaa-bbbb-cccc-000000000000/{ID}"),
            format!("0::/libpod_parent/libpod-{ID}"),
            format!("0::/libpod_parent/{OTHER}/libpod-{ID}"),
            format!("0::/system.slice/podman-agent.service/libpod-payload-{ID}"),
            format!("0::/docker/{ID}"),
        ];
        for case in &cases {
            assert_eq!(facts(case).container_id.as_deref(), Some(ID), "{case}");
        }
    }

    #[test]
    fn monitors_pods_and_lookalikes_are_not_containers() {
        for case in [
            format!("0::/machine.slice/libpod-conmon-{ID}.scope"),
            format!("0::/system.slice/crio-conmon-{ID}.scope"),
            format!("0::/kubepods/besteffort/pod0a1b2c3d-aaaa-bbbb-cccc-000000000000/crio-conmon-{ID}"),
            // podman's pod cgroup (cgroupfs) and its conmon: a pod id.
            format!("0::/libpod_parent/{ID}"),
            format!("0::/libpod_parent/{ID}/conmon"),
            format!("0::/user.slice/{ID}"),
            format!("0::/pods/{ID}"),
            format!("0::/podcast/{ID}"),
            format!("0::/docker/{}", &ID[..63]),
            format!("0::/docker/{}", ID.to_uppercase()),
            format!("0::/docker/{ID}x"),
            format!("0::/system.slice/docker-{ID}.service"),
            format!("0::/system.slice/docker-{ID}"),
            format!("0::/machine.slice/libpod-{ID}.scopex"),
        ] {
            assert_eq!(facts(&case).container_id, None, "{case}");
        }
    }

    /// What a container names inside its own cgroup is its claim: the
    /// outermost container, created by the host's runtime, is the one.
    #[test]
    fn ids_named_inside_a_container_do_not_count() {
        for case in [
            format!("0::/system.slice/docker-{ID}.scope/docker/{OTHER}"),
            format!("0::/machine.slice/libpod-{ID}.scope/container/docker-{OTHER}.scope"),
            format!("0::/docker/{ID}/kubepods/besteffort/pod0a1b2c3d-aaaa-bbbb-cccc-000000000000/{OTHER}"),
            format!("0::/libpod_parent/libpod-{ID}/libpod_parent/libpod-{OTHER}"),
        ] {
            assert_eq!(facts(&case).container_id.as_deref(), Some(ID), "{case}");
        }
    }

    /// Whole `/proc/<pid>/cgroup` files of real runtimes' layouts; where
    /// each comes from: tests/fixtures/cgroup/README.md.
    #[test]
    fn runtime_fixtures() {
        const PODMAN: &str = "e928b1c70508ede1ca533f0595f9015ba9e557694ce3d57a1e5b54d63d1f0390";
        const PODMAN_IN_POD: &str = "1a9ec6ec1aab719aa62de1c507985abe337e19a3125cffd22e280fc8d7bca303";
        const PODMAN_SPLIT: &str = "62153b09853021ba956ad1c0ee79097fd4ff519dba9b83c902f50ea9b9e6319f";
        const PODMAN_SYSTEMD: &str = "50441b5e7a2a26d2b8c70e8675122e3db74c157955230f1da5be639ee5e97267";
        const DOCKER: &str = "d548c5b83fa61d8e3bd86ad42a7ffea9b7c86e3f9d8095c1577d3e1270bb9420";
        const CONTAINERD: &str = "2397d068a8d1552a4c3f9147ba9c94e086bfd66fb2acb5bbaf47197105127d5f";
        const CRIO: &str = "c64064614423cb790e88b3e5492ff5ccf673b25ae823089f7a60c65cda24d809";
        macro_rules! fixture {
            ($name:literal) => {
                (
                    $name,
                    include_str!(concat!("../../tests/fixtures/cgroup/", $name)),
                )
            };
        }
        let cases = [
            (fixture!("podman-cgroupfs-hybrid"), Some(PODMAN)),
            (fixture!("podman-cgroupfs-v2"), Some(PODMAN)),
            (fixture!("podman-pod-cgroupfs-hybrid"), Some(PODMAN_IN_POD)),
            (fixture!("podman-conmon-cgroupfs-hybrid"), None),
            (fixture!("podman-pod-conmon-cgroupfs-hybrid"), None),
            (fixture!("podman-split-cgroupfs-hybrid"), Some(PODMAN_SPLIT)),
            (fixture!("podman-split-conmon-cgroupfs-hybrid"), None),
            (fixture!("podman-systemd-v1"), Some(PODMAN_SYSTEMD)),
            (fixture!("podman-systemd-v2"), Some(PODMAN_SYSTEMD)),
            (fixture!("podman-systemd-always-v2"), Some(PODMAN_SYSTEMD)),
            (
                fixture!("podman-systemd-always-unit-inside-v2"),
                Some(PODMAN_SYSTEMD),
            ),
            (fixture!("podman-systemd-conmon-v2"), None),
            (fixture!("podman-pod-systemd-v2"), Some(PODMAN_SYSTEMD)),
            (fixture!("docker-cgroupfs-v1"), Some(DOCKER)),
            (fixture!("docker-cgroupfs-v2"), Some(DOCKER)),
            (fixture!("docker-systemd-v1"), Some(DOCKER)),
            (fixture!("docker-systemd-v2"), Some(DOCKER)),
            (fixture!("docker-nested-v2"), Some(DOCKER)),
            (fixture!("containerd-kubepods-cgroupfs-v1"), Some(CONTAINERD)),
            (
                fixture!("containerd-kubepods-guaranteed-cgroupfs-v2"),
                Some(CONTAINERD),
            ),
            (fixture!("containerd-kubepods-systemd-v1"), Some(CONTAINERD)),
            (fixture!("containerd-kubepods-systemd-v2"), Some(CONTAINERD)),
            (fixture!("crio-systemd-v1"), Some(CRIO)),
            (fixture!("crio-systemd-v2"), Some(CRIO)),
            (fixture!("crio-conmon-systemd-v2"), None),
            (fixture!("crio-cgroupfs-v1"), Some(CRIO)),
            (fixture!("crio-cgroupfs-v2"), Some(CRIO)),
            (fixture!("crio-conmon-cgroupfs-v2"), None),
        ];
        for ((name, text), want) in cases {
            assert_eq!(facts(text).container_id.as_deref(), want, "{name}");
        }
    }

    fn selectors_of(facts: &CgroupFacts) -> SelectorSet {
        let mut selectors = SelectorSet::new();
        facts.selectors(&mut selectors);
        selectors
    }

    fn withheld_note(facts: &CgroupFacts) -> bool {
        facts
            .notes
            .iter()
            .any(|n| n.contains("below container") && n.contains("withheld"))
    }

    /// The attack: a container without a user namespace runs systemd
    /// (podman `--systemd=always`), which names `init.scope` and
    /// `system.slice/nginx.service` inside the container's cgroup. Neither
    /// may pass for the host's unit or slice; the container's own scope and
    /// the slices above it are the host's, and the container stays known.
    #[test]
    fn units_named_inside_a_container_are_withheld() {
        let cases = [
            // cgroupfs manager: the container's cgroup is no unit.
            (
                format!("0::/libpod_parent/libpod-{ID}/system.slice/nginx.service"),
                None,
                vec![],
            ),
            (
                format!("0::/machine.slice/libpod-{ID}.scope/system.slice/nginx.service"),
                Some(format!("libpod-{ID}.scope")),
                vec!["machine.slice"],
            ),
            (
                format!("0::/machine.slice/libpod-{ID}.scope/init.scope"),
                Some(format!("libpod-{ID}.scope")),
                vec!["machine.slice"],
            ),
            // The payload in a child of the scope (`--systemd=always` on v2).
            (
                format!("0::/machine.slice/libpod-{ID}.scope/container/system.slice/nginx.service"),
                Some(format!("libpod-{ID}.scope")),
                vec!["machine.slice"],
            ),
            // `--cgroups=split` under a host unit: that unit is the host's.
            (
                format!(
                    "0::/system.slice/podman-agent.service/libpod-payload-{ID}/system.slice/nginx.service"
                ),
                Some("podman-agent.service".to_owned()),
                vec!["system.slice"],
            ),
            // A nested container's units: still the outer container's names.
            (
                format!("0::/system.slice/docker-{ID}.scope/docker/{OTHER}/system.slice/nginx.service"),
                Some(format!("docker-{ID}.scope")),
                vec!["system.slice"],
            ),
            // v1-only host: the name=systemd line is the one.
            (
                format!(
                    "3:cpu:/libpod_parent/libpod-{ID}\n1:name=systemd:/libpod_parent/libpod-{ID}/system.slice/nginx.service"
                ),
                None,
                vec![],
            ),
        ];
        for (text, unit, slices) in cases {
            let f = facts(&text);
            assert_eq!(f.systemd_unit, unit, "{text}");
            assert_eq!(f.systemd_slices, slices, "{text}");
            assert_eq!(f.container_id.as_deref(), Some(ID), "{text}");
            assert!(withheld_note(&f), "{text}: {:?}", f.notes);
            let selectors = selectors_of(&f);
            assert!(
                !selectors.iter().any(|s| s.kind().starts_with("systemd:")
                    && (s.value().contains("nginx.service") || s.value().contains("init.scope"))),
                "{text}: {selectors:?}"
            );
            // The whole path stays: it shows where the process sits.
            assert!(f.path.unwrap().contains(ID));
        }
        let f = facts(include_str!(
            "../../tests/fixtures/cgroup/podman-systemd-always-unit-inside-v2"
        ));
        assert_eq!(f.systemd_unit.as_deref(), Some(PODMAN_SYSTEMD_UNIT));
        assert_eq!(f.systemd_slices, ["machine.slice"]);
        assert!(f.notes.iter().any(|n| n.contains("withheld")), "{:?}", f.notes);
        let f = facts(include_str!(
            "../../tests/fixtures/cgroup/podman-systemd-unit-inside-cgroupfs-hybrid"
        ));
        // Captured on a real container: only the v2 line was moved.
        assert_eq!((f.systemd_unit, f.systemd_slices), (None, vec![]));
        assert_eq!(
            f.container_id.as_deref(),
            Some("9c74fc0c71dc2ab33954e5d648f02c3507f00252317b4d86760bd16cc089b326")
        );
        assert!(f.notes.iter().any(|n| n.contains("withheld")), "{:?}", f.notes);
    }

    const PODMAN_SYSTEMD_UNIT: &str =
        "libpod-50441b5e7a2a26d2b8c70e8675122e3db74c157955230f1da5be639ee5e97267.scope";

    /// Where nothing but the runtime's own payload cgroup lies below the
    /// container's (`.../libpod-<id>.scope/container`, `--cgroups=split`),
    /// units above it are reported as ever, with no note.
    #[test]
    fn layouts_with_nothing_named_inside_the_container_lose_nothing() {
        let f = facts(include_str!(
            "../../tests/fixtures/cgroup/podman-systemd-always-v2"
        ));
        assert_eq!(f.systemd_unit.as_deref(), Some(PODMAN_SYSTEMD_UNIT));
        assert_eq!(f.systemd_slices, ["machine.slice"]);
        assert!(!withheld_note(&f), "{:?}", f.notes);
        let f = facts(&format!(
            "0::/system.slice/podman-agent.service/libpod-payload-{ID}\n"
        ));
        assert_eq!(f.systemd_unit.as_deref(), Some("podman-agent.service"));
        assert_eq!(f.systemd_slices, ["system.slice"]);
        assert!(!withheld_note(&f), "{:?}", f.notes);
        for fixture in [
            include_str!("../../tests/fixtures/cgroup/podman-cgroupfs-hybrid"),
            include_str!("../../tests/fixtures/cgroup/podman-split-cgroupfs-hybrid"),
            include_str!("../../tests/fixtures/cgroup/docker-systemd-v2"),
        ] {
            let notes = facts(fixture).notes;
            assert!(
                !notes.iter().any(|n| n.contains("withheld")),
                "{fixture}: {notes:?}"
            );
        }
    }

    /// Both boundaries on one path: whichever comes first, nothing below
    /// the container is reported, delegated or not, and the container id is
    /// judged by the same outermost segment.
    #[test]
    fn the_container_boundary_and_the_delegation_boundary_together() {
        // Rootless podman: the container lies in the user's subtree.
        let rootless = facts(&format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container/system.slice/nginx.service\n"
        ));
        assert_eq!(rootless.systemd_unit.as_deref(), Some("user@1000.service"));
        assert_eq!(
            rootless.delegated,
            Some(DelegatedFacts {
                uid: 1000,
                systemd_unit: Some(format!("libpod-{ID}.scope")),
                systemd_slices: vec!["user.slice".into()],
            })
        );
        assert_eq!(rootless.user_container_id, Some((1000, ID.to_owned())));
        assert!(withheld_note(&rootless), "{:?}", rootless.notes);

        // A container whose cgroup was chowned to its mapped root (podman
        // `--systemd=always` with a user namespace): the container is the
        // host's, and what its systemd names is withheld, not delegated.
        let text = format!("0::/machine.slice/libpod-{ID}.scope/system.slice/nginx.service\n");
        let f = parse_with(&text, &DelegatedAt(2, 200_000)).unwrap();
        assert_eq!(f.container_id.as_deref(), Some(ID));
        assert_eq!(f.systemd_unit, Some(format!("libpod-{ID}.scope")));
        assert_eq!((f.delegated.clone(), f.user_container_id.clone()), (None, None));
        assert!(withheld_note(&f), "{:?}", f.notes);
        // Delegated deeper inside the container: still nothing below it.
        let f = parse_with(&text, &DelegatedAt(3, 200_000)).unwrap();
        assert_eq!((f.delegated, f.user_container_id), (None, None));
        assert_eq!(f.systemd_slices, ["machine.slice"]);
    }

    #[test]
    fn two_containers_are_an_error() {
        let text = format!("3:cpu:/docker/{ID}\n0::/system.slice/docker-{OTHER}.scope\n");
        assert!(matches!(parse(&text), Err(CgroupError::AmbiguousContainer(..))));
    }

    #[test]
    fn hostile_input() {
        // Truncated, relative, garbage, odd characters, huge.
        assert_eq!(facts("0::"), CgroupFacts::default());
        assert_eq!(facts("0::relative/path\n"), CgroupFacts::default());
        assert_eq!(facts("garbage\n\n::\nx:y:/z\n"), CgroupFacts::default());
        // A unit name with a control character is no unit: the enclosing one counts.
        let odd = facts("0::/a b/ü:weird name.service/x\u{7}.scope\n");
        assert_eq!(odd.systemd_unit.as_deref(), Some("ü:weird name.service"));
        assert_eq!(
            odd.path.as_deref(),
            Some("/a b/ü:weird name.service/x\u{7}.scope")
        );
        let long = format!("0::/{}.service\n", "a".repeat(MAX_CGROUP_FILE));
        assert_eq!(parse(&long), Err(CgroupError::TooLarge));
        let deep = format!("0::{}\n", "/x.slice".repeat(4000));
        assert_eq!(facts(&deep).systemd_slices.len(), 4000);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any input: no panic, and whatever is concluded has the right shape.
        #[test]
        fn arbitrary_input_never_panics(input in "\\PC{0,400}") {
            check_shape(&input);
        }

        /// Kernel-shaped lines with hostile paths.
        #[test]
        fn kernel_shaped_lines(
            lines in proptest::collection::vec(("[0-9]{1,2}", "(|name=systemd|cpu,cpuacct)", "/[a-z0-9@:._ /-]{0,120}"), 0..8),
        ) {
            let text: String = lines.iter().map(|(id, ctl, path)| format!("{id}:{ctl}:{path}\n")).collect();
            check_shape(&text);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a container names below its cgroup (any mix of slices,
        /// units, nested containers, user managers), none of it comes out as
        /// a unit or slice, on either side of a delegation boundary.
        #[test]
        fn nothing_named_inside_a_container_is_a_unit(
            above in proptest::collection::vec("(machine\\.slice|system\\.slice|libpod_parent|podman\\.service|user@1000\\.service)", 0..4),
            runtime in 0usize..4,
            inside in proptest::collection::vec("(in-[a-z]{1,3}\\.(slice|service|scope)|container|user@0\\.service|docker|libpod-0{63}1\\.scope)", 0..6),
        ) {
            let container = [
                format!("libpod-{ID}"),
                format!("libpod-{ID}.scope"),
                format!("docker-{ID}.scope"),
                format!("libpod-payload-{ID}"),
            ][runtime].clone();
            let path = format!("/{}", above.iter().cloned().chain([container]).chain(inside.iter().cloned()).collect::<Vec<_>>().join("/"));
            let f = facts(&format!("0::{path}\n"));
            let selectors = selectors_of(&f);
            for selector in selectors.iter() {
                proptest::prop_assert!(
                    !selector.kind().starts_with("systemd:") || !(selector.as_str().contains(":in-") || selector.as_str().contains("user@0") || selector.as_str().contains(OTHER)),
                    "{path}: {selector:?}"
                );
            }
            let has_id = f.container_id.as_deref() == Some(ID) || f.user_container_id.as_ref().is_some_and(|(_, id)| id == ID);
            proptest::prop_assert!(has_id, "{path}: {f:?}");
        }
    }

    fn check_shape(input: &str) {
        if let Ok(facts) = parse(input) {
            if let Some(id) = &facts.container_id {
                assert!(is_container_id(id), "{id}");
            }
            if let Some(unit) = &facts.systemd_unit {
                assert!(unit.ends_with(".service") || unit.ends_with(".scope"), "{unit}");
            }
            assert!(facts.systemd_slices.iter().all(|s| s.ends_with(".slice")));
            assert!(facts.path.as_ref().is_none_or(|p| p.starts_with('/')));
        }
    }
}

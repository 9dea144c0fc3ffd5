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
//! evidence of two different containers is an error, never a guess.

use crate::selector::{Selector, SelectorSet};

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
    /// The v2 path, or the v1 `name=systemd` path.
    pub path: Option<String>,
    /// The innermost `.service` or `.scope` unit of that path.
    pub systemd_unit: Option<String>,
    /// Every `.slice` of that path, outermost first.
    pub systemd_slices: Vec<String>,
    /// The container id (64 lowercase hex), if any hierarchy names one.
    pub container_id: Option<String>,
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
    }
}

/// Parses the contents of `/proc/<pid>/cgroup`.
pub fn parse(text: &str) -> Result<CgroupFacts, CgroupError> {
    if text.len() > MAX_CGROUP_FILE {
        return Err(CgroupError::TooLarge);
    }
    let lines: Vec<Line<'_>> = text.lines().filter_map(Line::parse).collect();
    let path = lines
        .iter()
        .find(|l| l.id == "0" && l.controllers.is_empty())
        .or_else(|| {
            lines
                .iter()
                .find(|l| l.controllers.split(',').any(|c| c == "name=systemd"))
        })
        .map(|l| l.path);
    let mut facts = CgroupFacts {
        path: path.map(str::to_owned),
        ..CgroupFacts::default()
    };
    if let Some(path) = path {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        facts.systemd_unit = segments
            .iter()
            .rev()
            .find(|s| is_unit(s, ".service") || is_unit(s, ".scope"))
            .map(|s| (*s).to_owned());
        facts.systemd_slices = segments
            .iter()
            .filter(|s| is_unit(s, ".slice"))
            .map(|s| (*s).to_owned())
            .collect();
    }
    for line in &lines {
        if let Some(id) = container_id(line.path) {
            match &facts.container_id {
                Some(seen) if *seen != id => return Err(CgroupError::AmbiguousContainer(seen.clone(), id)),
                _ => facts.container_id = Some(id),
            }
        }
    }
    Ok(facts)
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

/// The container id named by a cgroup path: a segment of one of the
/// [`CONTAINER_CGROUP_NAMES`] forms, or a bare 64-hex segment directly under
/// `docker` (docker, cgroupfs driver) or a kubelet `pod<uid>` directory
/// (containerd and docker, cgroupfs driver).
///
/// The OUTERMOST match wins. A container's cgroup was created by the
/// runtime on the host, but what lies below it may be created by the
/// container itself (podman `--systemd=always` hands it its subtree, a
/// nested runtime creates its own `docker-<id>.scope` there): an id named
/// inside a container is that container's claim, and must never pass for
/// a container of the host's runtime. The innermost match would let a
/// container name any other container's id.
fn container_id(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    segments.iter().enumerate().find_map(|(i, segment)| {
        let named = CONTAINER_CGROUP_NAMES.iter().find_map(|(prefix, suffix)| {
            segment
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .filter(|id| is_container_id(id))
        });
        let bare =
            (i > 0 && is_container_id(segment) && is_container_parent(segments[i - 1])).then_some(*segment);
        named.or(bare).map(str::to_owned)
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
    use super::*;

    const ID: &str = "3f4b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
    const OTHER: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn facts(text: &str) -> CgroupFacts {
        parse(text).unwrap()
    }

    #[test]
    fn cgroup_v2_systemd_service() {
        let f = facts("0::/system.slice/nginx.service\n");
        assert_eq!(f.path.as_deref(), Some("/system.slice/nginx.service"));
        assert_eq!(f.systemd_unit.as_deref(), Some("nginx.service"));
        assert_eq!(f.systemd_slices, ["system.slice"]);
        assert_eq!(f.container_id, None);
    }

    #[test]
    fn user_session_innermost_unit_and_all_slices() {
        let f = facts("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-agent-42.scope\n");
        assert_eq!(f.systemd_unit.as_deref(), Some("app-agent-42.scope"));
        assert_eq!(f.systemd_slices, ["user.slice", "user-1000.slice", "app.slice"]);
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

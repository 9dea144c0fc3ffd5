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

/// Runtimes that name a container's cgroup `<prefix><id>.scope` (systemd
/// cgroup driver). `crio-conmon-` and `libpod-conmon-` are the monitors, not
/// the containers, and do not match: their remainder is not bare hex.
const SCOPE_PREFIXES: &[&str] = &["docker-", "cri-containerd-", "crio-", "libpod-"];

/// The container id named by a cgroup path: `<prefix><64 hex>.scope`, or a
/// bare 64-hex segment under `docker`, a kubepods `pod…` segment, or
/// `libpod_parent` (cgroupfs driver).
fn container_id(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    segments.iter().enumerate().rev().find_map(|(i, segment)| {
        let scoped = segment.strip_suffix(".scope").and_then(|name| {
            SCOPE_PREFIXES
                .iter()
                .find_map(|prefix| name.strip_prefix(prefix))
                .filter(|id| is_container_id(id))
        });
        let bare =
            (i > 0 && is_container_id(segment) && is_container_parent(segments[i - 1])).then_some(*segment);
        scoped.or(bare).map(str::to_owned)
    })
}

fn is_container_parent(segment: &str) -> bool {
    segment == "docker" || segment == "libpod_parent" || segment.starts_with("pod")
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
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
            format!("0::/kubepods/besteffort/pod0a1b2c3d-aaaa-bbbb-cccc-000000000000/{ID}"),
            format!("0::/libpod_parent/{ID}"),
            format!("0::/docker/{ID}"),
        ];
        for case in &cases {
            assert_eq!(facts(case).container_id.as_deref(), Some(ID), "{case}");
        }
    }

    #[test]
    fn monitors_and_lookalikes_are_not_containers() {
        for case in [
            format!("0::/machine.slice/libpod-conmon-{ID}.scope"),
            format!("0::/system.slice/crio-conmon-{ID}.scope"),
            format!("0::/user.slice/{ID}"),
            format!("0::/docker/{}", &ID[..63]),
            format!("0::/docker/{}", ID.to_uppercase()),
            format!("0::/system.slice/docker-{ID}.service"),
        ] {
            assert_eq!(facts(&case).container_id, None, "{case}");
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

//! Attestation depth against the real binary: cgroup-derived selectors of
//! processes placed in real cgroups, the executable hash cache, the hashing
//! size limit, and `attestd explain` on a live process.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::{Daemon, attestd_bin, cli_fetch_as, printed_ids, shell, unified_hierarchy};

/// A cgroup made for one test, removed (leaves first) when dropped.
struct TestCgroup {
    dirs: Vec<PathBuf>,
}

impl TestCgroup {
    /// Creates `relative` (and its parents) under the v2 hierarchy.
    fn create(relative: &str) -> Self {
        let base = unified_hierarchy();
        let mut dirs = Vec::new();
        let mut path = base.clone();
        for part in relative.split('/') {
            path.push(part);
            std::fs::create_dir(&path).unwrap_or_else(|e| {
                panic!(
                    "cannot create cgroup {} (root and a writable cgroup v2 hierarchy are needed): {e}",
                    path.display()
                )
            });
            dirs.push(path.clone());
        }
        Self { dirs }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `attestd api fetch x509` run from inside `cgroup` (the shell moves itself
/// in, then execs the client).
fn fetch_in_cgroup(daemon: &Daemon, cgroup: &TestCgroup) -> std::process::Output {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} api fetch x509 --socket {}",
        cgroup.leaf().display(),
        attestd_bin(),
        daemon.endpoint()
    );
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

#[test]
fn systemd_unit_slice_and_container_selectors_from_real_cgroups() {
    let tag = std::process::id();
    let container = format!("{:0>64}", format!("{tag:x}e2e"));
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/unit-agent"
selectors = ["systemd:id:agent-{tag}.service", "systemd:slice:attestd-e2e-{tag}.slice"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/container-agent"
selectors = ["container:id:{container}"]
owner = "platform@example.org"
"#
    ));
    let unit = TestCgroup::create(&format!("attestd-e2e-{tag}.slice/agent-{tag}.service"));
    let output = fetch_in_cgroup(&daemon, &unit);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(printed_ids(&output), ["spiffe://example.org/unit-agent"]);

    let docker = TestCgroup::create(&format!("attestd-e2e-{tag}-docker/docker-{container}.scope"));
    let output = fetch_in_cgroup(&daemon, &docker);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(printed_ids(&output), ["spiffe://example.org/container-agent"]);

    let records = daemon.audit_records();
    let selectors = records[1]["selectors"].to_string();
    assert!(
        selectors.contains(&format!(
            "cgroup:path:/attestd-e2e-{tag}-docker/docker-{container}.scope"
        )),
        "{selectors}"
    );
}

/// An entry no test process matches that names `unix:sha256`: executables
/// are hashed only while the policy names it.
pub const NAMES_SHA256: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/hashed"
selectors = ["unix:uid:4242", "unix:sha256:0000000000000000000000000000000000000000000000000000000000000000"]
owner = "platform@example.org"
"#;

/// Counts the daemon's "hashed executable" log lines for one inode.
pub fn hashes_of(daemon: &Daemon, path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).unwrap().ino();
    daemon
        .log()
        .lines()
        .filter(|line| line.contains("hashed executable") && line.contains(&format!("ino={ino} ")))
        .count()
}

#[test]
fn a_large_binary_is_hashed_once_and_again_only_when_modified() {
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/root"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
{NAMES_SHA256}"#
    ));
    // A private copy of the (debug, over 100 MB) attestd binary as the client.
    let client = daemon.dir.path().join("large-client");
    shell(&format!("cp {} {}", attestd_bin(), client.display()));
    assert!(
        std::fs::metadata(&client).unwrap().len() > 10 << 20,
        "want a large binary"
    );
    let fetch = || {
        let output = Command::new(&client)
            .args(["api", "fetch", "x509", "--socket", &daemon.endpoint()])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    fetch();
    fetch();
    fetch();
    assert_eq!(hashes_of(&daemon, &client), 1, "unchanged binary hashed once");

    // Rewrite it in place (same inode, new size and mtime).
    shell(&format!("printf modified >> {}", client.display()));
    fetch();
    assert_eq!(hashes_of(&daemon, &client), 2, "modified binary hashed again");
}

#[test]
fn executables_over_the_limit_get_no_digest_and_the_audit_says_why() {
    let daemon = Daemon::start(&format!(
        r#"
[attestation]
max_exe_hash_bytes = 1000000

[[entry]]
spiffe_id = "spiffe://example.org/root"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
{NAMES_SHA256}"#
    ));
    assert!(cli_fetch_as(&daemon, 0).status.success());
    let record = &daemon.audit_records()[0];
    assert!(record["sha256"].is_null(), "{record}");
    assert!(
        !record["selectors"].to_string().contains("unix:sha256"),
        "{record}"
    );
    assert!(
        record["attestation_notes"].to_string().contains("hashing limit"),
        "{record}"
    );
}

#[test]
fn explain_shows_selectors_matches_and_near_misses_of_a_live_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("attestd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
trust_domain = "example.org"
data_dir = "{}"

[[entry]]
spiffe_id = "spiffe://example.org/sleeper"
selectors = ["unix:uid:1000", "unix:path:/usr/bin/sleep"]
owner = "team@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/pinned-sleeper"
selectors = ["unix:uid:1000", "unix:sha256:{}"]
owner = "team@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/unrelated"
selectors = ["unix:uid:4242"]
owner = "team@example.org"
"#,
            dir.path().join("data").display(),
            "0".repeat(64)
        ),
    )
    .unwrap();
    let mut sleeper = Command::new("/usr/bin/sleep")
        .arg("30")
        .uid(1000)
        .gid(1000)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let output = Command::new(attestd_bin())
        .args(["explain", "--pid", &sleeper.id().to_string(), "-c"])
        .arg(&config)
        .output()
        .unwrap();
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let section = |name: &str| -> String {
        let start = text.find(name).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        text[start..].split("\n\n").next().unwrap().to_owned()
    };
    assert!(section("Selectors").contains("unix:uid:1000"), "{text}");
    assert!(
        section("Selectors").contains("unix:path:/usr/bin/sleep"),
        "{text}"
    );
    assert!(section("Selectors").contains("unix:sha256:"), "{text}");
    assert!(
        section("Matches (1)").contains("spiffe://example.org/sleeper"),
        "{text}"
    );
    let near = section("Near misses (1)");
    assert!(near.contains("spiffe://example.org/pinned-sleeper"), "{text}");
    assert!(
        near.contains(&format!("missing unix:sha256:{}", "0".repeat(64))),
        "{text}"
    );
    assert!(text.contains("Entries sharing no selector: 1"), "{text}");
}

//! Real containers: podman (Debian's package, the `runc` runtime, the
//! cgroupfs manager, no network) runs go-spiffe's client from an image
//! imported from a local tarball (tests/container/build-rootfs.sh), with
//! attestd's socket directory bind-mounted in and `SPIFFE_ENDPOINT_SOCKET`
//! pointing at it. The clients run as uid 1000 inside and outside.
//!
//! podman keeps its storage under target/ (the image is imported again only
//! when the tarball changed). If podman cannot run a container here, the
//! tests fail with podman's own error: they never skip.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{Daemon, has_selector, run_as, shared_tempdir};

const UID: u32 = 1000;

/// Where the image, podman's storage and the client binaries live.
fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("container")
}

/// The host's trusted binary (a copy of the client) that entries name by
/// `unix:path`; the image holds an attacker's program at the same path.
fn trusted_agent() -> PathBuf {
    cache_dir().join("trusted/agent")
}

/// Limits for every container: podman's default nofile limit is above
/// this machine's hard limit, and runc then fails to start the container.
pub(crate) const NOFILE: &str = "nofile=1024:1024";
const NPROC: &str = "nproc=256:256";

/// A containers.conf with the same limits as defaults: `podman create` gets
/// them explicitly, but a pod's infra container can only take them from here.
fn containers_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let path = cache_dir().join("containers.conf");
        std::fs::create_dir_all(cache_dir()).unwrap();
        let conf = format!("[containers]\ndefault_ulimits = [\"{NOFILE}\", \"{NPROC}\"]\n");
        std::fs::write(&path, conf).unwrap();
        path
    })
}

/// podman's run-time state: on tmpfs, as podman expects (it learns of a
/// reboot from this state vanishing), one directory per image cache.
fn podman_state_dir() -> PathBuf {
    let cache = cache_dir();
    let tag = hex::encode(&Sha256::digest(cache.as_os_str().as_encoded_bytes())[..6]);
    PathBuf::from("/run/attestd-e2e-podman").join(tag)
}

/// `podman` with the options every call needs: images under target/, runc,
/// the cgroupfs manager (no systemd as PID 1 here), events to a file.
pub(crate) fn podman() -> Command {
    let state = podman_state_dir();
    let mut command = Command::new("podman");
    command
        .env("CONTAINERS_CONF", containers_conf())
        .arg("--root")
        .arg(cache_dir().join("storage"))
        .arg("--runroot")
        .arg(state.join("run"))
        .arg("--tmpdir")
        .arg(state.join("tmp"))
        .args([
            "--runtime",
            "runc",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
        ]);
    command
}

/// Runs podman with `args`.
pub(crate) fn podman_output(args: &[&str]) -> Output {
    podman().args(args).output().unwrap_or_else(|e| {
        panic!("cannot run podman (tests/run-all.sh installs it: apt-get install podman): {e}")
    })
}

/// Runs podman with `args`; panics with podman's own error if it fails.
pub(crate) fn podman_ok(args: &[&str]) -> String {
    let output = podman_output(args);
    assert!(
        output.status.success(),
        "podman {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The test image, built and imported once per run (and only when its
/// content changed since the last run).
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let cache = cache_dir();
        let status = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/container/build-rootfs.sh"
        ))
        .arg(&cache)
        .status()
        .expect("running tests/container/build-rootfs.sh");
        assert!(
            status.success(),
            "building the container's root file system failed"
        );
        let tarball = cache.join("rootfs.tar");
        let digest = hex::encode(Sha256::digest(std::fs::read(&tarball).unwrap()));
        let image = format!("localhost/attestd-e2e-client:{}", &digest[..16]);
        if !podman_output(&["image", "exists", &image]).status.success() {
            podman_ok(&["import", "--quiet", tarball.to_str().unwrap(), &image]);
        }
        image
    })
}

/// go-spiffe's client of tests/interop/go, statically linked (built with
/// the image): it runs in any root file system.
pub(crate) fn static_client() -> PathBuf {
    image();
    cache_dir().join("client")
}

/// A directory for a daemon, with its socket directory made in advance:
/// containers mount it when they are created, before the daemon whose
/// entries name them starts.
fn daemon_dir() -> tempfile::TempDir {
    // Other uids (the clients) must reach the socket.
    let dir = shared_tempdir();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A container's network namespace.
#[derive(Clone, Copy)]
enum Net<'a> {
    /// Its own, empty one.
    None,
    /// The host's.
    Host,
    /// Its pod's (podman pod id).
    Pod(&'a str),
}

impl Net<'_> {
    fn arg(self) -> String {
        match self {
            Net::None => "--network=none".to_owned(),
            Net::Host => "--network=host".to_owned(),
            Net::Pod(id) => format!("--pod={id}"),
        }
    }
}

/// A created (not yet started) container, removed when dropped.
struct Container {
    id: String,
}

impl Container {
    /// `podman create`: as `user` ("uid:gid"), in network `net`, explicit
    /// limits, `dir`'s socket directory mounted read-only at /run/spiffe,
    /// running `command` in x509 mode (go-spiffe's client, which finds the
    /// socket through SPIFFE_ENDPOINT_SOCKET). `extra` goes before the image.
    fn create(dir: &Path, net: Net<'_>, user: &str, extra: &[&str], command: &[&str]) -> Self {
        let volume = format!("{}:/run/spiffe:ro", dir.join("run").display());
        let network = net.arg();
        let mut args = vec![
            "create",
            &network,
            "--ulimit",
            NOFILE,
            "--ulimit",
            NPROC,
            "--user",
            user,
            "--volume",
            &volume,
            "--env",
            "SPIFFE_ENDPOINT_SOCKET=unix:///run/spiffe/api.sock",
        ];
        args.extend_from_slice(extra);
        args.push(image());
        args.extend_from_slice(command);
        args.extend_from_slice(&["-mode", "x509", "-timeout", "10s"]);
        Self { id: podman_ok(&args) }
    }

    /// `podman start --attach`: runs it to the end.
    fn run(&self) -> Output {
        podman_output(&["start", "--attach", &self.id])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "0", &self.id]).output();
    }
}

/// The SPIFFE IDs that the Go client verified against the bundle
/// (x509svid.Verify) and printed.
fn verified_ids(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .inspect(|svid| assert_eq!(svid["verified"], true, "{svid}"))
        .map(|svid| svid["spiffe_id"].as_str().unwrap().to_owned())
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that `who` (a client's run) succeeded and verified exactly one
/// SVID, `spiffe_id`'s.
fn assert_served(output: &Output, who: &str, spiffe_id: &str) {
    assert!(output.status.success(), "{who} failed: {}", stderr(output));
    assert_eq!(verified_ids(output), [spiffe_id]);
}

/// Asserts that `who` (a client's run) got no identity: attestd answered
/// PermissionDenied.
fn assert_denied(output: &Output, who: &str) {
    assert!(!output.status.success(), "{who} got {:?}", verified_ids(output));
    assert!(stderr(output).contains("PermissionDenied"), "{}", stderr(output));
}

/// The audit records with `outcome`.
fn records(daemon: &Daemon, outcome: &str) -> Vec<Value> {
    daemon
        .audit_records()
        .into_iter()
        .filter(|r| r["outcome"] == outcome)
        .collect()
}

/// Done means: a real podman container gets its entry by `container:id`
/// (the id podman reports), go-spiffe inside it receives and verifies the
/// SVID, and the audit record carries the selector. attestd sees the host's
/// view: the client is PID 1 of its container, the record holds its host
/// pid, and the uid (no user namespace) is the one it runs as.
#[test]
fn a_real_podman_container_gets_its_entry_by_container_id() {
    let dir = daemon_dir();
    let container = Container::create(dir.path(), Net::None, "1000:1000", &[], &["/client"]);
    let other = Container::create(dir.path(), Net::None, "1000:1000", &[], &["/client"]);
    let daemon = Daemon::start_in(
        dir,
        &format!(
            r#"
[[entry]]
spiffe_id = "spiffe://example.org/container/agent"
selectors = ["container:id:{}", "unix:uid:{UID}"]
owner = "platform@example.org"
"#,
            container.id
        ),
    );

    assert_served(
        &container.run(),
        "the container's client",
        "spiffe://example.org/container/agent",
    );

    let issued = records(&daemon, "issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    let record = &issued[0];
    assert!(
        has_selector(record, &format!("container:id:{}", container.id)),
        "{record}"
    );
    assert_eq!(record["spiffe_id"], "spiffe://example.org/container/agent");
    assert_eq!(record["uid"], UID);
    let pid = record["pid"].as_i64().unwrap();
    assert!(
        pid > 1,
        "attestd saw the container's own pid, not the host's: {record}"
    );

    // Another container of the same image and uid is not that container.
    assert_denied(&other.run(), "another container of the same image and uid");
    let denied = records(&daemon, "denied");
    assert!(
        denied
            .iter()
            .any(|r| has_selector(r, &format!("container:id:{}", other.id))),
        "{denied:?}"
    );
}

/// Done means: a container whose in-container executable path is forged
/// gets nothing. The entry trusts the host binary at `trusted/agent` (for
/// uid 1000); the image holds an attacker's program at that very path.
/// attestd must see that the caller does not run the host's file (no
/// `unix:path`, a note in the audit record). Controls: the host binary run
/// on the host, and the host binary bind-mounted into a container at the
/// same path (the same inode), both get the identity.
///
/// The containers share the host's network namespace: attestd binds
/// `unix:path` to the connection only where the kernel's sock_diag answers
/// for the caller's socket, i.e. in attestd's own network namespace (see
/// README, Containers). In a container with its own, `unix:path` is
/// withheld whatever the path, and the attack would fail for that reason,
/// not for the one under test.
#[test]
fn a_forged_in_container_path_gets_nothing() {
    image();
    let trusted = trusted_agent();
    let trusted = trusted.to_str().unwrap();
    let dir = daemon_dir();
    let forged = Container::create(dir.path(), Net::Host, "1000:1000", &[], &[trusted]);
    let mount = format!("{trusted}:{trusted}:ro");
    let genuine = Container::create(
        dir.path(),
        Net::Host,
        "1000:1000",
        &["--volume", &mount],
        &[trusted],
    );
    let daemon = Daemon::start_in(
        dir,
        &format!(
            r#"
[[entry]]
spiffe_id = "spiffe://example.org/trusted-agent"
selectors = ["unix:path:{trusted}", "unix:uid:{UID}"]
owner = "platform@example.org"
"#
        ),
    );

    assert_denied(&forged.run(), "the attacker's program in the container");
    let denied = records(&daemon, "denied");
    let record = denied
        .iter()
        .find(|r| has_selector(r, &format!("container:id:{}", forged.id)))
        .unwrap_or_else(|| panic!("no denial of the forged container: {denied:?}"));
    assert!(!has_selector(record, &format!("unix:path:{trusted}")), "{record}");
    let notes = record["attestation_notes"].to_string();
    assert!(
        notes.contains("unix:path"),
        "no note on the withheld path: {record}"
    );

    let mut host = Command::new(trusted);
    host.args(["-addr", &daemon.endpoint(), "-mode", "x509", "-timeout", "10s"]);
    assert_served(
        &run_as(UID, UID, &mut host),
        "the host binary",
        "spiffe://example.org/trusted-agent",
    );
    assert_served(
        &genuine.run(),
        "the host binary mounted into a container",
        "spiffe://example.org/trusted-agent",
    );
    assert_eq!(records(&daemon, "issued").len(), 2);
}

/// A podman pod (cgroupfs: `/libpod_parent/<pod id>`), removed when dropped.
struct Pod {
    id: String,
}

impl Pod {
    /// `podman pod create` with no network; its infra container is podman's
    /// own pause image, which podman builds locally (catatonit).
    fn create() -> Self {
        Self {
            id: podman_ok(&["pod", "create", "--network=none"]),
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = podman()
            .args(["pod", "rm", "--force", "--time", "0", &self.id])
            .output();
        // podman 4.3 leaves the pod's (empty) cgroups behind in the
        // hierarchies it does not manage (name=systemd, and cgroup v2 on
        // hybrid hosts): remove them, innermost first.
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for hierarchy in hierarchies.flatten() {
            remove_cgroup_tree(&hierarchy.path().join("libpod_parent").join(&self.id));
        }
    }
}

/// Removes an empty cgroup and its empty descendants (a cgroup directory
/// holds no files that rmdir minds).
fn remove_cgroup_tree(dir: &Path) {
    let Ok(children) = std::fs::read_dir(dir) else {
        return;
    };
    for child in children.flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&child.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A container of a pod gets its entry by its own id. Its cgroup sits in
/// the pod's (a bare 64-hex directory, which the pod's conmon shares): an
/// entry naming the pod's id as a container is no match.
#[test]
fn a_container_in_a_podman_pod_is_identified_by_its_own_id() {
    image();
    let pod = Pod::create();
    let dir = daemon_dir();
    let container = Container::create(dir.path(), Net::Pod(&pod.id), "1000:1000", &[], &["/client"]);
    let daemon = Daemon::start_in(
        dir,
        &format!(
            r#"
[[entry]]
spiffe_id = "spiffe://example.org/pod/container"
selectors = ["container:id:{}", "unix:uid:{UID}"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/pod/as-a-container"
selectors = ["container:id:{}"]
owner = "platform@example.org"
"#,
            container.id, pod.id
        ),
    );

    assert_served(
        &container.run(),
        "the pod's client",
        "spiffe://example.org/pod/container",
    );
    let issued = records(&daemon, "issued");
    let record = &issued[0];
    let selectors = record["selectors"].to_string();
    assert!(
        selectors.contains(&format!("/{}/libpod-{}", pod.id, container.id)),
        "the container's cgroup is inside its pod's: {selectors}"
    );
    assert!(
        !has_selector(record, &format!("container:id:{}", pod.id)),
        "{record}"
    );
}

/// In a user namespace (`--uidmap`), the container's uid 1000 is another
/// uid on the host, and SO_PEERCRED reports the host's: an entry written
/// for the host's uid 1000 does not match it; one for the mapped uid does.
#[test]
fn a_user_namespaced_container_is_attested_under_its_host_uid() {
    const BASE: u32 = 200_000;
    image();
    let dir = daemon_dir();
    let map = format!("0:{BASE}:65536");
    let container = Container::create(
        dir.path(),
        Net::None,
        "1000:1000",
        &["--uidmap", &map, "--gidmap", &map],
        &["/client"],
    );
    let host_uid = BASE + UID;
    let daemon = Daemon::start_in(
        dir,
        &format!(
            r#"
[[entry]]
spiffe_id = "spiffe://example.org/userns/as-host-uid-1000"
selectors = ["container:id:{id}", "unix:uid:{UID}"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/userns/mapped"
selectors = ["container:id:{id}", "unix:uid:{host_uid}"]
owner = "platform@example.org"
"#,
            id = container.id
        ),
    );

    assert_served(
        &container.run(),
        "the container's client",
        "spiffe://example.org/userns/mapped",
    );
    let issued = records(&daemon, "issued");
    assert_eq!(issued[0]["uid"], host_uid, "{}", issued[0]);
}

/// podman's `--systemd=always` mounts the whole cgroup v1 `name=systemd`
/// hierarchy writable into a root container (no cgroup namespace on v1).
/// The container moves itself to the path of a host unit there, then asks.
/// On this hybrid host attestd takes the unit from the cgroup v2 line,
/// which stays the container's: the unit's entry is not issued, the
/// container's own is. (The attacker is the container's root, the one user
/// podman lets write there; on v1-only hosts the attack succeeds, see
/// README, Containers.)
#[test]
fn a_container_that_moves_itself_into_a_host_units_v1_cgroup_is_still_the_container() {
    image();
    let unit = format!("attestd-e2e-{}.service", std::process::id());
    let v1_unit = HostUnitCgroup::new(&unit);
    let script = format!(
        "mkdir -p {dir} && echo $$ > {dir}/cgroup.procs && exec /client \"$@\"",
        dir = Path::new("/sys/fs/cgroup/systemd")
            .join(&v1_unit.relative)
            .display()
    );
    let (container, daemon) = systemd_container_and_daemon(&script, &unit, "");

    let output = container.run();
    assert_served(&output, "the container's client", CONTAINER_ROOT);
    assert!(
        v1_unit.host_path().is_dir(),
        "the container did not reach the host's name=systemd hierarchy: {}",
        stderr(&output)
    );
    let issued = records(&daemon, "issued");
    assert!(
        !issued[0]["selectors"].to_string().contains(&unit),
        "{}",
        issued[0]
    );
}

/// The identity a root container with its own systemd gets by its id.
const CONTAINER_ROOT: &str = "spiffe://example.org/container/root";

/// A root container run with `--systemd=always` (no user namespace) that
/// runs `script` in busybox's sh, the script ending by exec'ing the client;
/// and a daemon on its directory whose policy names what the container must
/// not get: the host's unit `unit` (by `systemd:id`), then
/// `more_host_entries`; and last the container's own entry,
/// [`CONTAINER_ROOT`] by its `container:id`.
fn systemd_container_and_daemon(script: &str, unit: &str, more_host_entries: &str) -> (Container, Daemon) {
    let dir = daemon_dir();
    let container = Container::create(
        dir.path(),
        Net::None,
        "0:0",
        &["--systemd=always", "--volume", "/bin/busybox:/busybox:ro"],
        &["/busybox", "sh", "-c", script, "sh"],
    );
    let daemon = Daemon::start_in(
        dir,
        &format!(
            r#"
[[entry]]
spiffe_id = "spiffe://example.org/host-unit"
selectors = ["systemd:id:{unit}"]
owner = "platform@example.org"
{more_host_entries}
[[entry]]
spiffe_id = "{CONTAINER_ROOT}"
selectors = ["container:id:{}"]
owner = "platform@example.org"
"#,
            container.id
        ),
    );
    (container, daemon)
}

/// A host unit's cgroup in the v1 `name=systemd` hierarchy, as a test's
/// container creates it; removed (with `system.slice` if the test made it)
/// when dropped.
struct HostUnitCgroup {
    relative: PathBuf,
    made_slice: bool,
}

impl HostUnitCgroup {
    fn new(unit: &str) -> Self {
        let made_slice = !Path::new("/sys/fs/cgroup/systemd/system.slice").exists();
        Self {
            relative: Path::new("system.slice").join(unit),
            made_slice,
        }
    }

    fn host_path(&self) -> PathBuf {
        Path::new("/sys/fs/cgroup/systemd").join(&self.relative)
    }
}

impl Drop for HostUnitCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.host_path());
        if self.made_slice {
            let _ = std::fs::remove_dir("/sys/fs/cgroup/systemd/system.slice");
        }
    }
}

/// The attack of a container that runs its own systemd (podman
/// `--systemd=always`, root, no user namespace): it names units inside its
/// own cgroup, `system.slice/<unit>.service` among them. Here the test (root
/// on the host, as the container's systemd would be) creates that cgroup
/// below the container's in the cgroup v2 hierarchy and moves the
/// container's process into it; the process then asks. An entry written for
/// the host's `<unit>.service` (or `system.slice`) must not issue; the
/// container's own entry still does, and the audit record says what was
/// withheld.
#[test]
fn a_unit_named_inside_a_containers_cgroup_is_not_the_hosts() {
    image();
    let unit = format!("attestd-e2e-inside-{}.service", std::process::id());
    let script = format!(
        "i=0; until /busybox grep -q {unit} /proc/self/cgroup; do \
         i=$((i+1)); [ $i -gt 300 ] && exit 3; /busybox sleep 0.1; done; exec /client \"$@\""
    );
    let (container, daemon) = systemd_container_and_daemon(
        &script,
        &unit,
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/host-slice"
selectors = ["systemd:slice:system.slice"]
owner = "platform@example.org"
"#,
    );

    let client = podman()
        .args(["start", "--attach", &container.id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = running_pid(&container);
    let inside = UnitInsideContainer::create(pid, &unit);
    assert_served(
        &client.wait_with_output().unwrap(),
        "the container's client",
        CONTAINER_ROOT,
    );
    let issued = records(&daemon, "issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    let record = &issued[0];
    assert!(
        has_selector(record, &format!("cgroup:path:{}", inside.cgroup_path)),
        "the client did not ask from the cgroup named inside the container: {record}"
    );
    assert!(
        has_selector(record, &format!("container:id:{}", container.id)),
        "{record}"
    );
    assert!(!has_selector(record, &format!("systemd:id:{unit}")), "{record}");
    assert!(!has_selector(record, "systemd:slice:system.slice"), "{record}");
    let notes = record["attestation_notes"].to_string();
    assert!(
        notes.contains(&format!("below container {}'s cgroup", container.id)),
        "no note on the withheld names: {record}"
    );
}

/// The host pid of a container's first process, once podman reports it
/// running.
fn running_pid(container: &Container) -> u32 {
    for _ in 0..200 {
        let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &container.id]);
        if let Ok(pid) = pid.parse::<u32>()
            && pid > 0
        {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("container {} never ran", container.id);
}

/// The cgroup v2 mount: `unified/` on a hybrid host, else the root.
fn cgroup2_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid.to_owned()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// `system.slice/<unit>` created below a container's cgroup v2 cgroup, with
/// a process moved into it; removed (the process gone) when dropped.
struct UnitInsideContainer {
    /// Its path as `/proc/<pid>/cgroup` shows it.
    cgroup_path: String,
    slice_dir: PathBuf,
}

impl UnitInsideContainer {
    fn create(pid: u32, unit: &str) -> Self {
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let container_path = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .unwrap_or_else(|| panic!("no cgroup v2 line: {own}"));
        assert!(
            container_path.contains("libpod-"),
            "not in its container's cgroup: {own}"
        );
        let cgroup_path = format!("{container_path}/system.slice/{unit}");
        let slice_dir = cgroup2_root()
            .join(container_path.trim_start_matches('/'))
            .join("system.slice");
        let unit_dir = slice_dir.join(unit);
        std::fs::create_dir_all(&unit_dir).unwrap();
        let made = Self {
            cgroup_path,
            slice_dir,
        };
        std::fs::write(unit_dir.join("cgroup.procs"), pid.to_string()).unwrap();
        made
    }
}

impl Drop for UnitInsideContainer {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.slice_dir);
    }
}

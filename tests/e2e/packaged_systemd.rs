//! The Debian package under a real systemd: a Debian bookworm root file
//! system made by debootstrap (tests/packaging/build-systemd-rootfs.sh,
//! cached by recipe), imported with `podman import` and booted with
//! systemd as PID 1 (`--systemd=always`, runc, the cgroupfs manager, no
//! network, explicit limits). Inside it, the package built by
//! packaging/build-deb.sh (of the binary under test) is installed with
//! dpkg, and systemd runs the shipped unit: it starts, reports ready, serves
//! a caller of another uid by executable hash (go-spiffe's static client,
//! which verifies its SVID), reloads without /bin/kill, is restarted by the
//! watchdog and after a crash, stops, upgrades keeping its CA, and purges
//! leaving only the state an operator must opt in to delete.
//!
//! One container holds all of that (a boot costs seconds); a second one,
//! without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, checks what attestd says
//! at start when it cannot attest other users. If podman or systemd cannot
//! run here, the tests fail with podman's own error: they never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::container::{NOFILE, podman, podman_ok, podman_output, static_client};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The version of the package first installed, and of the upgrade.
const FIRST: &str = concat!(env!("CARGO_PKG_VERSION"), "-1");
const UPGRADE: &str = concat!(env!("CARGO_PKG_VERSION"), "-2");
/// The packaged default config; the caller's entry goes beside it.
const CONFIG: &str = "/etc/attestd/attestd.toml";
const AGENT_ENTRY: &str = "/etc/attestd/entries.d/agent.toml";
const AGENT_ID: &str = "spiffe://attestd.invalid/agent";
/// Where the client is mounted, read-only, inside the container.
const CLIENT: &str = "/usr/local/bin/spiffe-client";
/// How long a change systemd makes (a restart, a reload) may take before
/// the test gives up; never a measured figure.
const PATIENCE: Duration = Duration::from_secs(90);

/// Runs a helper script of the repository that prints one path.
fn script_output(script: &str, args: &[&str]) -> String {
    let output = Command::new(Path::new(REPO).join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The two packages of the binary under test (the dev build the e2e tests
/// run), versions FIRST and UPGRADE, in a directory the containers mount.
fn packages() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("packaged-systemd/debs");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // cargo-deb: $CARGO_DEB (tests/run-all.sh), else installed once
        // into the peer cache.
        let cargo_deb =
            std::env::var("CARGO_DEB").unwrap_or_else(|_| script_output("tests/packaging/cargo-deb.sh", &[]));
        for version in [FIRST, UPGRADE] {
            let output = Command::new(Path::new(REPO).join("packaging/build-deb.sh"))
                .args([
                    "--profile",
                    "dev",
                    "--no-build",
                    "--fast",
                    "--deb-version",
                    version,
                ])
                .arg("--output")
                .arg(&dir)
                .env("CARGO_DEB", &cargo_deb)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "packaging/build-deb.sh failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        dir
    })
}

/// The package file of `version` (the containers' path).
fn package(version: &str) -> String {
    let name = std::fs::read_dir(packages())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .find(|name| name.starts_with(&format!("attestd_{version}_")) && name.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no attestd_{version}_*.deb in {}", packages().display()));
    format!("/packages/{name}")
}

/// The bookworm image with systemd, imported once per root file system.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tarball = script_output("tests/packaging/build-systemd-rootfs.sh", &[]);
        let recipe = Path::new(&tarball).file_stem().unwrap().to_str().unwrap();
        let image = format!("localhost/attestd-e2e-{recipe}:latest");
        if !podman_output(&["image", "exists", &image]).status.success() {
            podman_ok(&["import", "--quiet", &tarball, &image]);
        }
        image
    })
}

/// A booted container with systemd as PID 1; removed when dropped.
struct Systemd {
    id: String,
}

impl Systemd {
    /// Boots one; `caps` are added to podman's default capabilities.
    fn boot(caps: Option<&str>) -> Self {
        let packages = format!("{}:/packages:ro", packages().display());
        let client = format!("{}:{CLIENT}:ro", static_client().display());
        let mut args = vec![
            "run",
            "--detach",
            "--systemd=always",
            "--net=none",
            "--ulimit",
            NOFILE,
            "--ulimit",
            "nproc=4096:4096",
            // A watchdog abort must not write a core file.
            "--ulimit",
            "core=0",
            "--volume",
            &packages,
            "--volume",
            &client,
        ];
        let cap_arg;
        if let Some(caps) = caps {
            cap_arg = format!("--cap-add={caps}");
            args.push(&cap_arg);
        }
        args.extend([image(), "/sbin/init"]);
        let container = Self { id: podman_ok(&args) };
        // "running", or "degraded" if some unit of the image failed: either
        // way systemd is up; print which. Until PID 1 listens, systemctl
        // cannot ask it and prints nothing.
        let mut state = String::new();
        container.wait_for("systemd up in the container", || {
            state = stdout(&container.sh("systemctl is-system-running --wait"));
            ["running", "degraded"].contains(&state.trim())
        });
        println!("systemd in the container: {}", state.trim());
        container
    }

    fn exec(&self, user: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", "--user", user, &self.id];
        all.extend_from_slice(args);
        podman_output(&all)
    }

    /// `sh -c script` as root.
    fn sh(&self, script: &str) -> Output {
        self.exec("0:0", &["sh", "-c", script])
    }

    /// `sh -c script` as root, which must succeed; its standard output.
    fn ok(&self, script: &str) -> String {
        let output = self.sh(script);
        assert!(
            output.status.success(),
            "`{script}` failed ({}):\n{}{}\nattestd's journal:\n{}",
            output.status,
            stdout(&output),
            stderr(&output),
            self.journal()
        );
        stdout(&output)
    }

    /// go-spiffe's client, as the non-root user agent (uid 1000).
    fn agent_fetch(&self) -> Output {
        self.exec(
            "1000:1000",
            &[
                "env",
                "SPIFFE_ENDPOINT_SOCKET=unix:///run/attestd/api.sock",
                CLIENT,
                "-mode",
                "x509",
                "-timeout",
                "10s",
            ],
        )
    }

    /// A property of the attestd unit (`systemctl show`).
    fn property(&self, name: &str) -> String {
        self.ok(&format!("systemctl show --property={name} --value attestd"))
            .trim()
            .to_owned()
    }

    fn journal(&self) -> String {
        stdout(&self.sh("journalctl --unit=attestd --no-pager --output=cat"))
    }

    /// The trust bundle attestd keeps (PEM), as the CLI prints it.
    fn bundle(&self) -> String {
        self.ok(&format!("attestd bundle show --config {CONFIG} --format pem"))
    }

    /// Every path on the container's own file system, but those dpkg, apt,
    /// the journal and the kernel change whatever a package does.
    fn files(&self) -> Vec<String> {
        let listing = self.ok(
            "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
             -o -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/cache -o -path /var/log/journal \
             -o -path /var/log/apt -o -path /var/log/dpkg.log -o -path /var/log/alternatives.log \
             -o -path /var/lib/systemd/catalog \\) -prune -o -print | sort",
        );
        listing.lines().map(str::to_owned).collect()
    }

    /// Waits until `ready` holds, panicking with `what` and the journal
    /// if it does not within PATIENCE.
    fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < PATIENCE,
                "{what}: not after {PATIENCE:?}; attestd's journal:\n{}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for a new main process (not `old_pid`), active and serving.
    fn wait_for_new_main_process(&self, old_pid: &str) -> String {
        self.wait_for("attestd running again under a new pid", || {
            self.property("ActiveState") == "active"
                && !["0", old_pid].contains(&self.property("MainPID").as_str())
        });
        self.property("MainPID")
    }

    fn assert_agent_served(&self, when: &str) {
        let output = self.agent_fetch();
        assert!(
            output.status.success(),
            "{when}: the agent was not served: {}\njournal:\n{}",
            stderr(&output),
            self.journal()
        );
        let svid: serde_json::Value = serde_json::from_str(stdout(&output).lines().next().unwrap()).unwrap();
        assert_eq!(svid["spiffe_id"], AGENT_ID, "{when}: {svid}");
        assert_eq!(svid["verified"], true, "{when}: {svid}");
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "0", &self.id]).output();
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The entry for the agent: uid 1000 running the client, by its hash.
fn agent_entry() -> String {
    let hash = hex::encode(Sha256::digest(std::fs::read(static_client()).unwrap()));
    format!(
        "[[entry]]\nspiffe_id = \"{AGENT_ID}\"\nselectors = [\"unix:uid:1000\", \"unix:sha256:{hash}\"]\n\
         owner = \"platform@example.org\"\n"
    )
}

/// Writes `content` to `path` in the container.
fn write_file(container: &Systemd, path: &str, content: &str) {
    container.ok(&format!(
        "mkdir -p \"$(dirname {path})\" && cat > {path} <<'EOF'\n{content}EOF"
    ));
}

/// The paths in `a` that are not in `b`.
fn missing_from(a: &[String], b: &[String]) -> Vec<String> {
    let b: std::collections::BTreeSet<_> = b.iter().collect();
    a.iter().filter(|path| !b.contains(path)).cloned().collect()
}

#[test]
fn the_package_installs_serves_reloads_restarts_upgrades_and_purges_under_systemd() {
    let start = Instant::now();
    let container = Systemd::boot(Some("SYS_PTRACE,DAC_READ_SEARCH"));
    // No kill binary: reload must not need one (procps is not in the image).
    container.ok("test ! -e /bin/kill && test ! -e /usr/bin/kill");
    let pristine = container.files();

    // Install: enabled, started, ready.
    container.ok(&format!("dpkg -i {}", package(FIRST)));
    assert_eq!(container.property("ActiveState"), "active");
    assert_eq!(container.property("UnitFileState"), "enabled");
    assert_eq!(container.property("StatusText"), "serving /run/attestd/api.sock");
    assert!(
        !container.journal().contains("cannot attest"),
        "{}",
        container.journal()
    );
    container.ok("attestd healthcheck --socket unix:///run/attestd/api.sock");
    // The unit's bounding set is what attestd holds: CAP_DAC_READ_SEARCH,
    // CAP_NET_BIND_SERVICE and CAP_SYS_PTRACE (bits 2, 10, 19), no more.
    let pid = container.property("MainPID");
    let effective = container.ok(&format!("sed -n 's/^CapEff:\\t//p' /proc/{pid}/status"));
    assert_eq!(effective.trim(), "0000000000080404");
    let bundle = container.bundle();
    assert!(bundle.contains("BEGIN CERTIFICATE"), "{bundle}");
    // The man pages and completions generated from the CLI: a page per
    // subcommand, and scripts each shell loads.
    container.ok("zcat /usr/share/man/man1/attestd.1.gz | grep -q '^attestd\\\\-reload'");
    container.ok("zcat /usr/share/man/man1/attestd-reload.1.gz | grep -q 'pid'");
    container.ok("bash -c '. /usr/share/bash-completion/completions/attestd && complete -p attestd'");
    container.ok("grep -q '#compdef attestd' /usr/share/zsh/vendor-completions/_attestd");
    container.ok("grep -q 'complete -c attestd' /usr/share/fish/vendor_completions.d/attestd.fish");
    // The starter policy gives nobody an identity.
    let refused = container.agent_fetch();
    assert!(!refused.status.success(), "{}", stdout(&refused));
    assert!(
        stderr(&refused).contains("PermissionDenied"),
        "{}",
        stderr(&refused)
    );

    // Reload (no /bin/kill): the new entry serves the agent by hash.
    write_file(&container, AGENT_ENTRY, &agent_entry());
    container.ok("systemctl reload attestd");
    container.wait_for("the reload's SIGHUP", || {
        container.journal().contains("SIGHUP: reloading policy")
    });
    container.wait_for("the agent served after the reload", || {
        container.agent_fetch().status.success()
    });
    container.assert_agent_served("after the reload");

    // Watchdog: a stopped daemon misses its keep-alives and is restarted.
    write_file(
        &container,
        "/etc/systemd/system/attestd.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=2s\n",
    );
    container.ok("systemctl daemon-reload && systemctl restart attestd");
    let restarts = container.property("NRestarts");
    let stopped = container.property("MainPID");
    container.ok(&format!("kill -STOP {stopped}"));
    let after_watchdog = container.wait_for_new_main_process(&stopped);
    assert!(
        container.journal().contains("Watchdog timeout"),
        "{}",
        container.journal()
    );
    assert_ne!(container.property("NRestarts"), restarts);
    container.assert_agent_served("after the watchdog's restart");
    container.ok("rm -r /etc/systemd/system/attestd.service.d && systemctl daemon-reload");

    // Restart on failure: SIGKILL; it comes back with the same CA.
    container.ok(&format!("kill -KILL {after_watchdog}"));
    container.wait_for_new_main_process(&after_watchdog);
    container.assert_agent_served("after SIGKILL");
    assert_eq!(container.bundle(), bundle, "the CA changed across a crash");

    // Stop: inactive, the socket gone.
    container.ok("systemctl stop attestd");
    assert_eq!(container.property("ActiveState"), "inactive");
    container.ok("test ! -e /run/attestd/api.sock");
    container.ok("systemctl start attestd");

    // Upgrade: restarted on the new version, same CA, still serving.
    let before_upgrade = container.property("MainPID");
    container.ok(&format!("dpkg -i {}", package(UPGRADE)));
    assert_eq!(
        container.ok("dpkg-query --show --showformat='${Version}' attestd"),
        UPGRADE
    );
    container.wait_for_new_main_process(&before_upgrade);
    assert_eq!(container.bundle(), bundle, "the upgrade changed the CA");
    container.assert_agent_served("after the upgrade");
    let verify = container.ok("attestd audit verify /var/log/attestd/audit.jsonl");
    println!("audit verify: {}", verify.trim());

    // Remove: stopped, the binary gone, the configuration kept.
    container.ok("apt-get remove --yes attestd");
    assert_eq!(container.property("ActiveState"), "inactive");
    container.ok(&format!(
        "test ! -e /usr/bin/attestd && test -f {CONFIG} && test -f {AGENT_ENTRY}"
    ));

    // Purge: nothing left but the CA, keys and audit trail.
    let purge = container.ok("apt-get purge --yes attestd 2>&1");
    assert!(purge.contains("kept /var/lib/attestd"), "{purge}");
    let left = container.files();
    let added = missing_from(&left, &pristine);
    let unexpected: Vec<_> = added
        .iter()
        .filter(|path| !path.starts_with("/var/lib/attestd") && !path.starts_with("/var/log/attestd"))
        .collect();
    assert!(unexpected.is_empty(), "purge left {unexpected:?}");
    println!("purge kept: {added:?}");
    for kept in ["/var/lib/attestd/bundle.json", "/var/log/attestd/audit.jsonl"] {
        assert!(
            added.iter().any(|path| path == kept),
            "purge deleted {kept}: {added:?}"
        );
    }
    assert_eq!(
        missing_from(&pristine, &left),
        Vec::<String>::new(),
        "purge deleted these"
    );
    assert!(container.sh("systemctl cat attestd").status.code() != Some(0));

    // Installed again, the kept CA is the one in use; purged with the
    // operator's consent, nothing at all is left.
    container.ok(&format!("dpkg -i {}", package(UPGRADE)));
    assert_eq!(container.bundle(), bundle, "the kept CA was not reused");
    let purge = container.ok("ATTESTD_PURGE_STATE=yes apt-get purge --yes attestd 2>&1");
    assert!(purge.contains("ATTESTD_PURGE_STATE=yes: deleted"), "{purge}");
    let left = container.files();
    assert_eq!(
        missing_from(&left, &pristine),
        Vec::<String>::new(),
        "left behind"
    );
    assert_eq!(missing_from(&pristine, &left), Vec::<String>::new(), "deleted");
    println!("packaged systemd checks took {:?}", start.elapsed());
}

#[test]
fn without_ptrace_and_dac_read_search_attestd_says_so_at_start() {
    // podman's default capabilities: neither of the two.
    let container = Systemd::boot(None);
    container.ok(&format!("dpkg -i {}", package(FIRST)));
    assert_eq!(container.property("ActiveState"), "active");
    let journal = container.journal();
    assert!(
        journal.contains(
            "attestd cannot attest processes of other users: its effective capabilities lack \
             CAP_SYS_PTRACE (open /proc/<pid>/exe and /proc/<pid>/fd of other users) and \
             CAP_DAC_READ_SEARCH (hash executables and walk /proc/<pid> of other users)"
        ),
        "{journal}"
    );
    assert!(
        journal.contains("--cap-add SYS_PTRACE,DAC_READ_SEARCH"),
        "{journal}"
    );
    assert_eq!(
        container.property("StatusText"),
        "serving /run/attestd/api.sock; cannot attest other users: missing CAP_SYS_PTRACE, \
         CAP_DAC_READ_SEARCH"
    );
    // What the warning foretells: the agent is refused, Unavailable.
    write_file(&container, AGENT_ENTRY, &agent_entry());
    container.ok("systemctl reload attestd");
    container.wait_for("the new entry in effect", || {
        container.journal().contains("new policy in effect entries=1")
    });
    let refused = container.agent_fetch();
    assert!(!refused.status.success(), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("Unavailable"), "{}", stderr(&refused));
}

//! The examples run against the real daemon, as other uids: `fetch` prints
//! the caller's identity; `mtls` connects two workloads that authorize each
//! other by SPIFFE ID, across rotations, and refuses the wrong peer.
//!
//! The example binaries are built by `cargo test --all-targets` (the test
//! command) before any test runs; a narrower `cargo test --test e2e` needs
//! `cargo build --examples` first.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{Daemon, attestd_bin, run_as};

/// `target/<profile>/examples/<name>`, next to the attestd binary.
pub fn example(name: &str) -> PathBuf {
    let path = PathBuf::from(attestd_bin())
        .parent()
        .expect("attestd sits in the target directory")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (cargo build --examples; cargo test --all-targets does)",
        path.display()
    );
    path
}

#[test]
fn examples_fetch_prints_the_callers_svid() {
    let daemon = Daemon::start(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/examples/fetch"
selectors = ["unix:uid:1000"]
owner = "platform@example.org"
"#,
    );
    let output = run_as(
        1000,
        1000,
        Command::new(example("fetch")).env("SPIFFE_ENDPOINT_SOCKET", daemon.endpoint()),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("SPIFFE ID: spiffe://example.org/examples/fetch"),
        "{stdout}"
    );
    assert!(stdout.contains("Expires:"), "{stdout}");
}

const SERVER_ID: &str = "spiffe://example.org/mtls/server";
const CLIENT_ID: &str = "spiffe://example.org/mtls/client";

/// The mtls server; its output lines arrive on a channel.
pub struct Server {
    child: Child,
    address: String,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the server as `uid` on `daemon`; it expects to be `own_id`
    /// and accepts only `peer`.
    pub fn start(daemon: &Daemon, uid: u32, own_id: &str, peer: &str) -> Self {
        Self::start_at(&daemon.endpoint(), uid, own_id, peer)
    }

    /// Like [`Self::start`], with its SVID from the Workload API at
    /// `endpoint` (another agent's).
    pub fn start_at(endpoint: &str, uid: u32, own_id: &str, peer: &str) -> Self {
        let mut child = Command::new(example("mtls"))
            .args(["--socket", endpoint, "server", "--listen", "127.0.0.1:0"])
            .args(["--expect-peer", peer])
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(15))
            .expect("the server prints its address");
        let address = first
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        assert!(first.ends_with(&format!("as {own_id}")), "{first}");
        Self {
            child,
            address,
            lines,
        }
    }

    /// Waits up to `timeout` for a printed line starting with `prefix`.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// The lines printed so far.
    pub fn printed(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the mtls client as `uid`, with its SVID from `daemon`, against
/// `server`; returns success, stdout and stderr.
pub fn client(
    daemon: &Daemon,
    server: &Server,
    uid: u32,
    expect: &str,
    rounds: u32,
) -> (bool, String, String) {
    client_at(&daemon.endpoint(), server, uid, expect, rounds)
}

/// Like [`client`], with its SVID from the Workload API at `endpoint`.
pub fn client_at(
    endpoint: &str,
    server: &Server,
    uid: u32,
    expect: &str,
    rounds: u32,
) -> (bool, String, String) {
    let mut command = Command::new(example("mtls"));
    command
        .args(["--socket", endpoint, "client", "--connect", &server.address])
        .args([
            "--expect-peer",
            expect,
            "--rounds",
            &rounds.to_string(),
            "--interval",
            "1s",
        ]);
    let output = run_as(uid, uid, &mut command);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The distinct values following `serial ` in `lines`, in order.
fn serials<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut serials: Vec<String> = lines
        .into_iter()
        .filter_map(|line| line.split(" serial ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    serials.dedup();
    serials
}

#[test]
fn examples_mtls_authorizes_by_spiffe_id_across_rotations() {
    let daemon = Daemon::start(&format!(
        r#"
[svid]
x509_ttl = "6s"

[[entry]]
spiffe_id = "{SERVER_ID}"
selectors = ["unix:uid:1000"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "{CLIENT_ID}"
selectors = ["unix:uid:1001"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/mtls/intruder"
selectors = ["unix:uid:1002"]
owner = "platform@example.org"
"#
    ));
    let server = Server::start(&daemon, 1000, SERVER_ID, CLIENT_ID);

    // A connection a second for 15 s: both sides rotate several times (6 s
    // lifetime, renewed at about half) and no process restarts.
    let (ok, stdout, stderr) = client(&daemon, &server, 1001, SERVER_ID, 15);
    assert!(ok, "client failed: {stderr}\n{stdout}");
    let rounds: Vec<&str> = stdout.lines().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(rounds.len(), 15, "{stdout}");
    let greeting = format!("replied \"hello {CLIENT_ID}, this is {SERVER_ID}\"");
    assert!(
        rounds
            .iter()
            .all(|r| r.contains(&format!("server {SERVER_ID} ")) && r.ends_with(&greeting)),
        "{stdout}"
    );
    let server_serials = serials(rounds.iter().copied());
    assert!(
        server_serials.len() >= 3,
        "the server's certificate rotated at least twice: {server_serials:?}"
    );

    // A client expecting another server refuses this one.
    let (ok, _, stderr) = client(&daemon, &server, 1001, "spiffe://example.org/mtls/other", 1);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "peer is {SERVER_ID}, expected spiffe://example.org/mtls/other"
        )),
        "{stderr}"
    );

    // The server refuses a client with another identity.
    let (ok, _, stderr) = client(&daemon, &server, 1002, SERVER_ID, 1);
    assert!(!ok, "the intruder was served");
    eprintln!("intruder: {stderr}");
    assert!(stderr.contains("alert"), "{stderr}");

    std::thread::sleep(Duration::from_millis(200));
    let printed = server.printed();
    let served: Vec<&str> = printed
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with(&format!("served {CLIENT_ID} serial ")))
        .collect();
    assert_eq!(served.len(), 15, "{printed:#?}");
    let client_serials = serials(served);
    eprintln!(
        "15 rounds: {} server and {} client certificates",
        server_serials.len(),
        client_serials.len()
    );
    assert!(
        client_serials.len() >= 3,
        "the client's certificate rotated at least twice: {printed:#?}"
    );
    assert!(
        printed
            .iter()
            .any(|l| l.contains("peer is spiffe://example.org/mtls/intruder, expected")),
        "{printed:#?}"
    );
}

//! Fleet mode against a real SPIRE Server (v1.13.3, built by
//! tests/spire/build.sh into target/spire-1.13.3, or `SPIRE_BIN_DIR`):
//! attestd joins it with a join token, serves the entries made with
//! `spire-server entry create` to matching local processes (go-spiffe and
//! the Rust `spiffe` crate verify them against the server's own bundle),
//! stops serving deleted entries, keeps its node identity across a
//! restart, and stops when the server bans it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::go_interop::go_client;
use crate::harness::{
    Daemon, assert_key_matches, free_loopback_port, pem_certificates, run_as, shared_tempdir, verify_chain,
    wait_for,
};

/// Entries reach an agent within the server's cache refresh (5 s) and the
/// agent's sync interval (5 s); generous, not a timing assertion.
const SYNCED: Duration = Duration::from_secs(60);
/// The uid the Go client runs as.
const WORKLOAD_UID: u32 = 1000;

/// The directory of the SPIRE binaries.
pub fn spire_bin_dir() -> PathBuf {
    match std::env::var_os("SPIRE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/spire-1.13.3")),
    }
}

fn spire_bin(name: &str) -> PathBuf {
    let path = spire_bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run tests/spire/build.sh (tests/run-all.sh does)",
        path.display()
    );
    path
}

/// A running spire-server on its own directory and port; killed on drop.
pub struct SpireServer {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub address: String,
}

impl SpireServer {
    /// Starts a server for example.org (sqlite, in-memory keys, the
    /// join_token attestor, a one-hour CA) and waits until it is healthy.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let address = free_loopback_port();
        let port = address.rsplit_once(':').unwrap().1;
        let d = dir.path().display();
        let config = format!(
            r#"
server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{d}/api.sock"
    trust_domain = "example.org"
    data_dir = "{d}/data"
    log_level = "DEBUG"
    ca_ttl = "1h"
    default_x509_svid_ttl = "10m"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{d}/data/datastore.sqlite3"
        }}
    }}
    KeyManager "memory" {{ plugin_data {{}} }}
    NodeAttestor "join_token" {{ plugin_data {{}} }}
}}
"#
        );
        std::fs::write(dir.path().join("server.conf"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(spire_bin("spire-server"))
            .arg("run")
            .arg("-config")
            .arg(dir.path().join("server.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Self { child, dir, address };
        wait_for(Duration::from_secs(60), "spire-server to be healthy", || {
            server.try_cli(&["healthcheck"]).ok()
        });
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// `spire-server <args> -socketPath ...`: its stdout, or its stderr on
    /// failure.
    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(spire_bin("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(self.socket())
            .output()
            .unwrap();
        match output.status.success() {
            true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|stderr| panic!("spire-server {args:?} failed: {stderr}\n{}", self.log()))
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-output", "json"]);
        serde_json::from_str(&self.cli(&args)).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The server's bundle (`spire-server bundle show`), written to a PEM
    /// file: what attestd is bootstrapped with and what clients verify
    /// against, independently of attestd.
    pub fn bundle_file(&self) -> PathBuf {
        let path = self.dir.path().join("bundle.pem");
        std::fs::write(&path, self.cli(&["bundle", "show"])).unwrap();
        path
    }

    /// The server's X.509 authorities now (DER).
    pub fn roots(&self) -> Vec<Vec<u8>> {
        pem_certificates(self.cli(&["bundle", "show"]).as_bytes())
    }

    /// A join token whose node gets the alias `node_id` too.
    pub fn join_token(&self, node_id: &str) -> String {
        let token = self.cli_json(&["token", "generate", "-spiffeID", node_id]);
        token["value"].as_str().unwrap().to_owned()
    }

    /// Creates an entry; returns its id.
    pub fn create_entry(&self, parent: &str, spiffe_id: &str, selectors: &[&str]) -> String {
        let mut args = vec!["entry", "create", "-parentID", parent, "-spiffeID", spiffe_id];
        for selector in selectors {
            args.extend(["-selector", selector]);
        }
        let created = self.cli_json(&args);
        let result = &created["results"][0];
        assert_eq!(result["status"]["code"], 0, "{created}");
        result["entry"]["id"].as_str().unwrap().to_owned()
    }

    pub fn delete_entry(&self, id: &str) {
        self.cli(&["entry", "delete", "-entryID", id]);
    }
}

impl Drop for SpireServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// attestd's `[server]` section for `server`.
fn server_section(server: &SpireServer, bundle: &Path, token: Option<&str>) -> String {
    let token = token
        .map(|t| format!("join_token = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "[server]\naddress = \"{}\"\ntrust_bundle_path = \"{}\"\nnode_attestor = \"join_token\"\n{token}",
        server.address,
        bundle.display()
    )
}

/// The go-spiffe client's X.509-SVIDs as `uid` (each verified by
/// go-spiffe against the bundle the Workload API served), or its error.
fn go_x509(daemon: &Daemon, uid: u32) -> Result<Vec<Value>, String> {
    let mut command = Command::new(go_client());
    command.args(["-addr", &daemon.endpoint(), "-timeout", "5s"]);
    let output = run_as(uid, uid, &mut command);
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// The SPIFFE IDs go-spiffe gets as `uid`; none if it is refused.
fn go_ids(daemon: &Daemon, uid: u32) -> Vec<String> {
    go_x509(daemon, uid)
        .unwrap_or_default()
        .iter()
        .map(|svid| {
            assert_eq!(svid["verified"], true);
            svid["spiffe_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_node_joined_with_a_join_token_serves_the_servers_entries_until_deleted_and_keeps_its_identity() {
    let server = SpireServer::start();
    let bundle = server.bundle_file();
    let node = "spiffe://example.org/fleet/node";
    let token = server.join_token(node);
    let app = server.create_entry(
        node,
        "spiffe://example.org/fleet/app",
        &[&format!("unix:uid:{WORKLOAD_UID}")],
    );
    let root = server.create_entry(node, "spiffe://example.org/fleet/root", &["unix:uid:0"]);
    // Never served: attestd produces no k8s selectors, and says so.
    server.create_entry(node, "spiffe://example.org/fleet/pod", &["k8s:ns:default"]);

    let daemon = Daemon::start_in(shared_tempdir(), &server_section(&server, &bundle, Some(&token)));
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    assert!(daemon.log().contains(&agent_id), "{}", daemon.log());

    // go-spiffe, as the entry's uid, within the sync interval.
    wait_for(SYNCED, "the server's entry to be served", || {
        (go_ids(&daemon, WORKLOAD_UID) == ["spiffe://example.org/fleet/app"]).then_some(())
    });
    assert!(go_ids(&daemon, 1001).is_empty(), "no entry for uid 1001");

    // The Rust spiffe crate, as root: the chain verifies against the
    // server's own bundle (not only the one attestd serves).
    let client = spiffe::WorkloadApiClient::connect_to(daemon.endpoint())
        .await
        .unwrap();
    let context = client.fetch_x509_context().await.unwrap();
    let ids: Vec<String> = context
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(ids, ["spiffe://example.org/fleet/root"]);
    let svid = &context.svids()[0];
    let chain: Vec<Vec<u8>> = svid.cert_chain().iter().map(|c| c.as_bytes().to_vec()).collect();
    verify_chain(&chain, &server.roots());
    assert_key_matches(&chain[0], svid.private_key().as_bytes());

    // JWT-SVIDs are the server's: go-spiffe validates one online and
    // offline against the JWT bundle attestd serves (the server's keys).
    let mut command = Command::new(go_client());
    command.args([
        "-addr",
        &daemon.endpoint(),
        "-mode",
        "jwt",
        "-audience",
        "https://api.example.org",
    ]);
    let output = run_as(WORKLOAD_UID, WORKLOAD_UID, &mut command);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let jwt: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(jwt["offline_subject"], "spiffe://example.org/fleet/app");
    assert_eq!(jwt["online_subject"], "spiffe://example.org/fleet/app");

    // The audit trail names the SPIRE entry of what it issued, unowned.
    let issued = daemon
        .audit_records()
        .into_iter()
        .find(|r| r["outcome"] == "issued" && r["spiffe_id"] == "spiffe://example.org/fleet/root")
        .expect("an issued record");
    assert_eq!(issued["labels"]["spire_entry_id"], root.as_str(), "{issued}");
    assert_eq!(issued["owner"], "unowned", "{issued}");
    assert!(
        daemon.log().contains("k8s:ns (1)"),
        "the unmatchable entry is reported"
    );

    // A deleted entry stops being served.
    server.delete_entry(&app);
    wait_for(SYNCED, "the deleted entry to stop being served", || {
        go_ids(&daemon, WORKLOAD_UID).is_empty().then_some(())
    });

    // Restarted without the (spent) token, attestd is the same node.
    let dir = daemon.crash();
    let state = std::fs::metadata(dir.path().join("data/agent/agent.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&state.permissions()) & 0o777,
        0o600
    );
    let daemon = Daemon::start_in(dir, &server_section(&server, &bundle, None));
    assert!(daemon.log().contains("node already attested"), "{}", daemon.log());
    assert!(daemon.log().contains(&agent_id));
    server.create_entry(
        node,
        "spiffe://example.org/fleet/again",
        &[&format!("unix:uid:{WORKLOAD_UID}")],
    );
    wait_for(SYNCED, "a new entry to be served after the restart", || {
        (go_ids(&daemon, WORKLOAD_UID) == ["spiffe://example.org/fleet/again"]).then_some(())
    });
}

#[tokio::test]
async fn a_banned_node_stops_serving_and_forgets_its_identity() {
    let server = SpireServer::start();
    let bundle = server.bundle_file();
    let token = server.join_token("spiffe://example.org/fleet/banned-node");
    let mut daemon = Daemon::start_in(shared_tempdir(), &server_section(&server, &bundle, Some(&token)));
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");

    server.cli(&["agent", "ban", "-spiffeID", &agent_id]);
    let status = daemon.wait_exit(SYNCED);
    assert!(!status.success());
    assert!(daemon.log().contains("banned"), "{}", daemon.log());
    assert!(
        !daemon.dir.path().join("data/agent/agent.json").exists(),
        "the banned agent SVID is deleted"
    );
}

#[test]
fn without_a_token_an_unattested_node_says_how_to_join() {
    let server = SpireServer::start();
    let bundle = server.bundle_file();
    let dir = shared_tempdir();
    let config = crate::harness::write_config(dir.path(), &server_section(&server, &bundle, None));
    let output = Command::new(crate::harness::attestd_bin())
        .args(["run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--join-token"), "{stderr}");
}

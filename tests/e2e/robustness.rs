//! Misbehaving clients never take the daemon down or disturb other clients;
//! SIGTERM ends open streams and removes the socket.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use spiffe::WorkloadApiClient;

use crate::harness::{Daemon, attestd_bin, cli_fetch_as};

const ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/steady"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;

async fn still_serves(daemon: &Daemon) {
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/steady");
}

#[tokio::test]
async fn garbage_disconnects_and_vanishing_callers_do_not_disturb_others() {
    let daemon = Daemon::start(ENTRY);
    // A watcher that must keep working throughout.
    let watcher = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let mut watch = watcher.stream_x509_contexts().await.unwrap();
    watch.next().await.unwrap().unwrap();

    // Bytes that are not HTTP/2, and a connection closed at once.
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xffu8; 4096][..], b""] {
        let mut raw = std::os::unix::net::UnixStream::connect(daemon.socket()).unwrap();
        let _ = raw.write_all(junk);
    }
    // Streams dropped right after their first message.
    for _ in 0..10 {
        let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
        let mut stream = client.stream_x509_contexts().await.unwrap();
        stream.next().await.unwrap().unwrap();
    }
    // Callers killed at random points of their request, some before
    // attestation completes.
    for i in 0..10u64 {
        let mut child = Command::new(attestd_bin())
            .args(["api", "fetch", "x509", "--socket"])
            .arg(daemon.endpoint())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(i * 3));
        let _ = child.kill();
        let _ = child.wait();
    }

    still_serves(&daemon).await;
    // The long-lived watcher's connection is unaffected: its stream is still open.
    let pending = tokio::time::timeout(Duration::from_millis(200), watch.next()).await;
    assert!(
        pending.is_err(),
        "watcher stream ended unexpectedly: {:?}",
        pending.map(|r| r.map(|c| c.is_ok()))
    );
}

#[tokio::test]
async fn sigterm_ends_streams_and_removes_the_socket() {
    let mut daemon = Daemon::start(ENTRY);
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let mut watch = client.stream_x509_contexts().await.unwrap();
    watch.next().await.unwrap().unwrap();

    let status = tokio::task::spawn_blocking({
        let socket = daemon.socket();
        move || {
            let status = daemon.stop_with(nix::sys::signal::Signal::SIGTERM);
            (status, socket.exists(), daemon)
        }
    });
    let (status, socket_exists, _daemon) = tokio::time::timeout(Duration::from_secs(10), status)
        .await
        .expect("attestd stops promptly despite an open stream")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket_exists, "socket removed on SIGTERM");
}

#[test]
fn a_uid_at_its_connection_cap_does_not_lock_out_others() {
    let daemon = Daemon::start(
        r#"
max_connections_per_uid = 3

[[entry]]
spiffe_id = "spiffe://example.org/root"
selectors = ["unix:uid:0"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/agent"
selectors = ["unix:uid:1000"]
owner = "platform@example.org"
"#,
    );
    // Root (this test process) holds three idle connections: its cap.
    let mut held: Vec<_> = (0..3).map(|_| served_connection(&daemon)).collect();
    let refused = cli_fetch_as(&daemon, 0);
    assert!(
        !refused.status.success(),
        "a fourth connection of uid 0 is refused"
    );
    assert!(daemon.log().contains("uid at its connection cap"));
    let other = cli_fetch_as(&daemon, 1000);
    assert!(
        other.status.success(),
        "other uids are served: {}",
        String::from_utf8_lossy(&other.stderr)
    );

    // Closing one frees a slot.
    held.pop();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cli_fetch_as(&daemon, 0).status.success() {
        assert!(std::time::Instant::now() < deadline, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection attestd has accepted and serves (its HTTP/2 SETTINGS came
/// back). One refused because the harness's readiness probe still held a
/// slot is retried.
fn served_connection(daemon: &Daemon) -> std::os::unix::net::UnixStream {
    use std::io::Read;
    for _ in 0..100 {
        let mut stream = std::os::unix::net::UnixStream::connect(daemon.socket()).unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        let mut frame_header = [0u8; 9];
        if stream.read_exact(&mut frame_header).is_ok() {
            return stream;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("attestd never served a connection");
}

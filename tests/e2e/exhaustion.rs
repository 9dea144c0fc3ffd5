//! Resource exhaustion (issue 9, classes 2 and 4), performed on the real
//! daemon by unprivileged uids through a raw HTTP/2 client
//! (`exhaustion_client.py`, hand-encoded frames): an HPACK block that
//! decodes to hundreds of MB, idle connections squatting every slot, and
//! more streams on one connection than allowed. Each test also shows a
//! legitimate caller of another uid served within a second meanwhile.
//! Also: one attestation reads one policy snapshot (issue 9, class 5 b),
//! and an executable on a stalled FUSE server stalls no one else. And: a
//! client's whole first request gets the server's opening frames with its
//! answer, through the same raw client.

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Daemon, attestd_bin, cli_fetch_as, printed_ids, shared_tempdir, write_config};

/// The legitimate caller: uid 1000 holds an entry.
const LEGIT_ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/legit"
selectors = ["unix:uid:1000"]
owner = "platform@example.org"
"#;

/// Debian's interpreter: every uid can reach it (a pyenv under /root is not).
const PYTHON: &str = "/usr/bin/python3";

/// The raw client, written (once, whole, by a rename) where every uid can
/// read it: clients started earlier may be reading it.
fn client_script(daemon: &Daemon) -> std::path::PathBuf {
    let path = daemon.dir.path().join("exhaustion_client.py");
    if !path.exists() {
        let partial = daemon.dir.path().join("exhaustion_client.py.partial");
        std::fs::write(&partial, include_str!("exhaustion_client.py")).unwrap();
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

/// The raw client as `uid`, its output piped.
fn raw_client(daemon: &Daemon, uid: u32, args: &[&str]) -> Command {
    let mut command = Command::new(PYTHON);
    command
        .arg(client_script(daemon))
        .arg(args[0])
        .arg(daemon.socket())
        .args(&args[1..])
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Runs the raw client as `uid` to the end; its stdout.
fn raw_client_output(daemon: &Daemon, uid: u32, args: &[&str]) -> String {
    let output = raw_client(daemon, uid, args).output().unwrap();
    assert!(output.status.success(), "raw client {args:?} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fetches as uid 1000 and checks it is served within a second (a
/// correctness bound with slack, not a benchmark: the CLI's own start-up is
/// included).
fn legit_caller_served_within_a_second(daemon: &Daemon) {
    let started = Instant::now();
    let output = cli_fetch_as(daemon, 1000);
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "the legitimate caller was refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(printed_ids(&output), ["spiffe://example.org/legit"]);
    assert!(elapsed < Duration::from_secs(1), "served after {elapsed:?}");
}

/// Audit records of FetchX509SVID issued to uid 1000, and all records.
fn audit_counts(daemon: &Daemon) -> (usize, usize) {
    let records = daemon.audit_records();
    let legit = records
        .iter()
        .filter(|r| r.to_string().contains("spiffe://example.org/legit"))
        .count();
    (legit, records.len())
}

/// Class 2: a 64 KB header block that enters a 4,000-byte header into the
/// HPACK dynamic table and names it ~61,000 times by 1-byte indexes would
/// decode to ~245 MB; one of 13,000 fields of one-byte Huffman strings
/// costs decoding work per field instead. attestd stops decoding at 16 KiB
/// of decoded headers (or 514 representations) and closes the connection.
/// Twenty such connections from uid 2001 leave the daemon's peak RSS
/// (VmHWM) within 32 MB of where it was, write nothing to the audit trail,
/// and uid 1000 is served within a second meanwhile.
#[test]
fn an_amplifying_header_block_closes_the_connection_with_bounded_memory() {
    let daemon = Daemon::start(LEGIT_ENTRY);
    legit_caller_served_within_a_second(&daemon);
    let peak_before = daemon.vm_kb("VmHWM:");
    let audit_before = audit_counts(&daemon);

    // Alternately: a block that decodes to ~260 MB, and one of 13,000
    // one-byte Huffman strings (0.6 s of decoding each with the HPACK
    // decoder attestd used before).
    let attack = {
        let mut memory = raw_client(&daemon, 2001, &["amplify", "4000", "65000"]);
        let mut work = raw_client(&daemon, 2001, &["amplify-huffman", "65000"]);
        std::thread::spawn(move || {
            (0..10)
                .flat_map(|_| [memory.output().unwrap(), work.output().unwrap()])
                .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
                .collect::<Vec<_>>()
        })
    };
    let mut legit_calls = 0;
    while !attack.is_finished() || legit_calls == 0 {
        legit_caller_served_within_a_second(&daemon);
        legit_calls += 1;
    }
    let outcomes = attack.join().unwrap();

    for outcome in &outcomes {
        // The server's SETTINGS (type 4) may come first; never a response
        // (HEADERS, type 1): the connection is closed, not served.
        let frames = outcome.trim().strip_prefix("closed frames=");
        assert!(
            frames.is_some_and(|frames| frames.split(',').all(|kind| kind != "1")),
            "the amplifying connection was not refused: {outcome}"
        );
    }
    amplification_left_no_trace(&daemon, peak_before, audit_before);
    assert!(daemon.log().contains("header list over 16384 bytes"));
}

/// Class 2, after a first request: a connection whose first request
/// carries a valid `:authority` passes through attestd's HPACK adapter
/// untouched from then on, so the same amplifying block sent as its second
/// request meets the HTTP/2 server's own bound (the same 16 KiB header
/// list): h2 stops buffering an over-size block past it and closes the
/// connection (GOAWAY). Twenty such connections leave the daemon's peak RSS
/// within 32 MB, the amplified stream is never served (no DATA on it),
/// attestd's adapter refuses none of them (h2 did), nothing is audited,
/// and uid 1000 is served within a second meanwhile.
#[test]
fn an_amplifying_block_after_a_passed_through_request_is_bounded_too() {
    let daemon = Daemon::start(LEGIT_ENTRY);
    legit_caller_served_within_a_second(&daemon);
    let peak_before = daemon.vm_kb("VmHWM:");
    let audit_before = audit_counts(&daemon);
    let attack = {
        let mut client = raw_client(&daemon, 2001, &["amplify-after-request", "4000", "65000"]);
        std::thread::spawn(move || {
            (0..20)
                .map(|_| String::from_utf8_lossy(&client.output().unwrap().stdout).into_owned())
                .collect::<Vec<_>>()
        })
    };
    while !attack.is_finished() {
        legit_caller_served_within_a_second(&daemon);
    }
    for outcome in attack.join().unwrap() {
        let frames = outcome
            .trim()
            .split_once("frames=")
            .map_or("", |(_, frames)| frames);
        assert!(
            outcome.starts_with("closed"),
            "the connection stayed open: {outcome}"
        );
        assert!(
            !frames.split(',').any(|frame| frame == "0/3"),
            "the amplified request was served: {outcome}"
        );
    }
    amplification_left_no_trace(&daemon, peak_before, audit_before);
    assert!(
        !daemon.log().contains("header list over"),
        "attestd's adapter decoded a block it should have passed through"
    );
}

/// After 20 amplifying connections: the daemon's peak RSS (VmHWM, in kB)
/// grew by less than 32 MB from `peak_before`, and the audit trail holds no
/// record beyond `audit_before` but the legitimate caller's.
fn amplification_left_no_trace(daemon: &Daemon, peak_before: u64, audit_before: (usize, usize)) {
    let grown_kb = daemon.vm_kb("VmHWM:").saturating_sub(peak_before);
    println!("VmHWM grew by {grown_kb} kB over 20 amplifying connections");
    assert!(
        grown_kb < 32 * 1024,
        "attestd's peak memory grew by {grown_kb} kB"
    );
    let (legit_after, total_after) = audit_counts(daemon);
    assert_eq!(
        total_after - audit_before.1,
        legit_after - audit_before.0,
        "the attack added audit records"
    );
}

/// Class 4: with 256 descriptors (prlimit), attestd derives a global cap of
/// 88 connections ((256 - 64 - 2 * 8) / 2) with a reserve of 11. Squatters
/// uids 2001..2008, started one after another, each try to hold 16 idle
/// connections (their per-uid cap): they take what lies outside the reserve
/// and no more (later uids get a reserve share of 2). A new uid is still
/// served within a second. Connections that never start a request are
/// closed after `first_request_timeout`, which frees the squatters' slots.
#[test]
fn squatting_uids_leave_room_for_a_new_one_and_idle_connections_time_out() {
    let dir = shared_tempdir();
    let config = write_config(
        dir.path(),
        &format!(
            "[limits]\nmax_connections_per_uid = 16\nfirst_request_timeout = \"6s\"\n\
             max_concurrent_attestations = 2\n{LEGIT_ENTRY}"
        ),
    );
    let daemon = Daemon::launch_command(
        dir,
        Command::new("prlimit")
            .arg("--nofile=256:256")
            .arg(attestd_bin())
            .args(["run", "-c"])
            .arg(&config),
        &[],
    );
    assert!(
        daemon.log().contains("max_connections=88 connection_reserve=11"),
        "budget not derived from RLIMIT_NOFILE: {}",
        daemon.log()
    );
    let audit_before = audit_counts(&daemon);
    let rss_before = daemon.vm_kb("VmRSS:");

    let mut squatters: Vec<(Child, BufReader<std::process::ChildStdout>)> = Vec::new();
    let mut held = Vec::new();
    for uid in 2001..=2008 {
        let mut child = raw_client(&daemon, uid, &["hold", "16", "30"]).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let count: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected squatter output {line:?}"));
        held.push(count);
        squatters.push((child, stdout));
    }
    println!("connections held by uids 2001..2008: {held:?}");
    let total: usize = held.iter().sum();
    assert!(
        total >= 88 - 11 - 1,
        "the squatters did not fill what lies outside the reserve: {held:?}"
    );

    legit_caller_served_within_a_second(&daemon);
    assert!(
        held[5..].iter().all(|&n| n <= 2),
        "past cap minus reserve, uids get at most their reserve share: {held:?}"
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count();
    assert!(
        fds >= 2 * (88 - 11 - 1),
        "the squatters' connections were already gone ({fds} fds) when the new uid was served"
    );
    let rss_kb = daemon.vm_kb("VmRSS:");
    println!("VmRSS {rss_before} kB before, {rss_kb} kB with the squatters");
    assert!(rss_kb < rss_before + 32 * 1024, "RSS grew to {rss_kb} kB");

    // The squatters never start a request: their connections are closed
    // once the timeout passes, not before.
    for (mut child, mut stdout) in squatters {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        child.wait().unwrap();
        let Some(after) = line.trim().strip_prefix("all closed after ") else {
            panic!("idle connections not closed: {line:?}");
        };
        let after: f64 = after.parse().unwrap();
        assert!(after < 20.0, "closed only after {after} s");
    }
    assert!(daemon.log().contains("no request in time"));
    let again = raw_client_output(&daemon, 2001, &["hold", "16", "0"]);
    assert!(
        again.starts_with("held 16 "),
        "the squatter's slots were not freed: {again}"
    );
    let (legit_after, total_after) = audit_counts(&daemon);
    assert_eq!(
        total_after - audit_before.1,
        legit_after - audit_before.0,
        "idle connections wrote audit records"
    );
}

/// A client that sends its whole first request at once (as tonic, grpc-go
/// and gRPC-core clients do) gets the server's SETTINGS ack, which the
/// server writes once it has read that request, in the same read as its
/// answer: held until the answer and written with it, instead of waking
/// the client for nothing in between. Each of ten connections is served.
#[test]
fn a_whole_first_request_gets_the_opening_frames_with_its_answer() {
    let daemon = Daemon::start(LEGIT_ENTRY);
    for _ in 0..10 {
        let reads = raw_client_output(&daemon, 1000, &["first-flight"]);
        let reads: Vec<Vec<&str>> = reads
            .split_whitespace()
            .map(|read| read.split(',').collect())
            .collect();
        let with_ack = reads
            .iter()
            .find(|read| read.contains(&"4/1/0"))
            .unwrap_or_else(|| panic!("no SETTINGS ack: {reads:?}"));
        let answer = |kind: &str| with_ack.iter().any(|f| f.starts_with(kind) && f.ends_with("/1"));
        assert!(
            answer("1/") && answer("0/"),
            "the ack came apart from the answer: {reads:?}"
        );
        assert!(
            reads[0].contains(&"4/0/0"),
            "the server's preface comes first: {reads:?}"
        );
    }
    let issued = daemon
        .audit_records()
        .iter()
        .filter(|r| r.to_string().contains("spiffe://example.org/legit"))
        .count();
    assert_eq!(issued, 10);
}

/// Runs the raw client as uid 2001 with `args` (a `bodies` run: it sends
/// what attestd lets it of its requests, prints a line, then holds them)
/// and, while it holds them, checks that a legitimate caller is served and
/// reads attestd's VmRSS. Returns the client's line, and the VmRSS before
/// and while held (kB).
fn held_requests(daemon: &Daemon, args: &[&str]) -> (String, u64, u64) {
    let rss_before = daemon.vm_kb("VmRSS:");
    let mut child = raw_client(daemon, 2001, args).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    legit_caller_served_within_a_second(daemon);
    let rss_kb = daemon.vm_kb("VmRSS:");
    child.wait().unwrap();
    println!(
        "client: {}; VmRSS {rss_before} kB before, {rss_kb} kB while held",
        line.trim()
    );
    (line, rss_before, rss_kb)
}

/// Class 4 (memory): uid 2001 starts 32 ValidateJWTSVID requests on two
/// connections, each declaring a 4,000,000-byte message, and sends all of
/// it but the last byte. tonic would buffer each whole (128 MB; 16 GiB at
/// the uid's caps); attestd decodes at most 256 KiB per message, so the
/// requests are refused at their 5-byte prefix and its RSS stays within
/// 32 MB of where it was. No request reaches attestation: no audit record.
#[test]
fn oversized_request_messages_are_refused_before_they_are_buffered() {
    let daemon = Daemon::start(LEGIT_ENTRY);
    let audit_before = audit_counts(&daemon);
    let (line, rss_before, rss_kb) = held_requests(&daemon, &["bodies", "2", "16", "4000000", "3"]);
    assert!(
        line.trim().ends_with("ended 32"),
        "the oversized requests were not refused: {line}"
    );
    assert!(rss_kb < rss_before + 32 * 1024, "RSS grew to {rss_kb} kB");
    let (legit_after, total_after) = audit_counts(&daemon);
    assert_eq!(
        total_after - audit_before.1,
        legit_after - audit_before.0,
        "refused messages were audited"
    );
}

/// Class 4 (memory): requests in flight are bounded per uid. uid 2001
/// starts 128 ValidateJWTSVID requests (8 connections of 16 streams) whose
/// 250,000-byte messages it sends all but the last byte of: 32 MB if
/// attestd took them all in. With `max_requests_per_uid = 4`, four are
/// taken in and the rest wait, their bodies unread beyond the HTTP/2
/// windows: RSS stays within 12 MB of where it was, and uid 1000 is served
/// within a second meanwhile.
#[test]
fn requests_in_flight_are_bounded_per_uid() {
    let daemon = Daemon::start(&format!("[limits]\nmax_requests_per_uid = 4\n{LEGIT_ENTRY}"));
    let (line, rss_before, rss_kb) = held_requests(&daemon, &["bodies", "8", "16", "250000", "3"]);
    assert!(line.starts_with("sent "), "{line}");
    assert!(rss_kb < rss_before + 12 * 1024, "RSS grew to {rss_kb} kB");
}

/// Class 4: one connection of uid 1000 starts ten FetchX509SVID streams at
/// once (each stays open: uid 1000 holds an entry); with
/// `max_concurrent_streams = 4`, four are served and six are refused with
/// REFUSED_STREAM.
#[test]
fn one_connection_is_held_to_its_stream_limit() {
    let daemon = Daemon::start(&format!("[limits]\nmax_concurrent_streams = 4\n{LEGIT_ENTRY}"));
    let outcome = raw_client_output(&daemon, 1000, &["streams", "10"]);
    assert_eq!(outcome.trim(), "open 4 refused 6 ended 0");
}

/// Class 4: uid 2001, holding no identity, floods attestd with 128
/// requests at once (8 connections of 16 streams); each attestation takes
/// 200 ms (test hook) and two may run at once. uid 2001 may hold only one
/// of them, so uid 1000 is still served within a second (without the
/// per-uid share it would queue behind ~12 s of the flood). Each hostile
/// request adds at most one audit record.
#[test]
fn a_request_flood_from_one_uid_leaves_attestations_for_others() {
    let daemon = Daemon::start_with_env(
        &format!("[limits]\nmax_concurrent_attestations = 2\n{LEGIT_ENTRY}"),
        &[("ATTESTD_TEST_ATTEST_DELAY_MS", "200")],
    );
    let audit_before = audit_counts(&daemon);
    let rss_before = daemon.vm_kb("VmRSS:");
    let flood: Vec<Child> = (0..8)
        .map(|_| raw_client(&daemon, 2001, &["streams", "16"]).spawn().unwrap())
        .collect();
    // Let the flood's requests queue up.
    std::thread::sleep(Duration::from_millis(500));
    legit_caller_served_within_a_second(&daemon);
    let rss_kb = daemon.vm_kb("VmRSS:");
    for child in flood {
        let output = child.wait_with_output().unwrap();
        let outcome = String::from_utf8_lossy(&output.stdout);
        assert!(outcome.starts_with("open "), "{outcome}");
    }
    println!("VmRSS {rss_before} kB before, {rss_kb} kB during the flood");
    assert!(rss_kb < rss_before + 64 * 1024, "RSS grew to {rss_kb} kB");
    let (legit_after, total_after) = audit_counts(&daemon);
    let hostile_records = (total_after - audit_before.1) - (legit_after - audit_before.0);
    assert!(
        hostile_records <= 128,
        "{hostile_records} audit records for 128 hostile requests"
    );
}

/// Class 5 (b): an attestation collects what its policy needs and is
/// matched against that same policy. uid 1000 shares its connection with a
/// child (two holders), and asks while policy P1 (no executable selectors:
/// nothing to verify) is in force; during its attestation (slowed by the
/// test hook) P2 replaces P1 with an entry that requires `unix:path`. Mixing
/// the two (P1's choice not to verify, P2's entries) would issue P2's entry
/// on an unverified path to a shared connection; one snapshot issues P1's,
/// and the open stream is then matched against P2 (and ends).
#[test]
fn one_attestation_sees_one_policy() {
    let python = std::fs::canonicalize(PYTHON).unwrap();
    let p1 = r#"
[[entry]]
spiffe_id = "spiffe://example.org/p1"
selectors = ["unix:uid:1000"]
owner = "platform@example.org"
"#;
    let p2 = format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/p2\"\n\
         selectors = [\"unix:uid:1000\", \"unix:path:{}\"]\nowner = \"platform@example.org\"\n",
        python.display()
    );
    let daemon = Daemon::start_with_env(p1, &[("ATTESTD_TEST_ATTEST_DELAY_MS", "1000")]);
    let client = raw_client(&daemon, 1000, &["streams", "1", "shared"])
        .spawn()
        .unwrap();
    // The request is in its attestation (1 s): swap the policy.
    std::thread::sleep(Duration::from_millis(300));
    write_config(daemon.dir.path(), &p2);
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let output = client.wait_with_output().unwrap();
    // Admitted under P1, the stream is matched against P2 at once, and
    // ends: under P2 a shared connection's executable is not believed.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "open 0 refused 0 ended 1"
    );
    // The swap ends the stream before the reload logs it.
    daemon.wait_for_log(Duration::from_secs(5), "new policy in effect");
    let issued: Vec<String> = daemon
        .audit_records()
        .iter()
        .filter(|r| r["outcome"] == "issued")
        .map(|r| r.to_string())
        .collect();
    assert!(
        !issued.iter().any(|r| r.contains("example.org/p2")),
        "P2's entry issued on P1's unverified attestation: {issued:?}"
    );
    assert!(
        issued.iter().any(|r| r.contains("example.org/p1")),
        "the request was not admitted under P1 as a whole: {issued:?}"
    );
}

/// Class 6: a caller runs an executable from a FUSE file system whose
/// server then stops answering, and connects. At accept attestd notes which
/// file the caller runs; it takes the file's identity from the kernel's
/// copy (statx with AT_STATX_DONT_SYNC), so the stalled server is never
/// asked and uid 1000 is still served (within 3 s). A plain stat would
/// wait for the server on the runtime thread that accepts connections:
/// nobody would be served until the server answered.
#[test]
fn an_executable_on_a_stalled_fuse_server_stalls_no_one() {
    let daemon = Daemon::start(LEGIT_ENTRY);
    let mount = tempfile::tempdir().unwrap();
    let fs =
        crate::power_cut_fs::PowerCutFs::mount(mount.path(), None).expect("a FUSE mount (root, /dev/fuse)");
    let agent = mount.path().join("agent");
    std::fs::copy(std::fs::canonicalize(PYTHON).unwrap(), &agent).unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = "import socket, sys, time\n\
                  print('ready', flush=True)\n\
                  sys.stdin.readline()\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  print('connected', flush=True)\n\
                  time.sleep(60)\n";
    let mut caller = Command::new(&agent)
        .args(["-c", script])
        .arg(daemon.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(caller.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // Past the attributes' lifetime (1 s): a stat now asks the server.
    std::thread::sleep(Duration::from_millis(1500));
    let stalled = fs.stall();
    writeln!(caller.stdin.as_ref().unwrap()).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");
    // Let attestd accept it.
    std::thread::sleep(Duration::from_millis(300));
    // The legitimate call runs beside the stall, so that a stalled attestd
    // fails the test instead of hanging it.
    let (done, served) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| done.send(cli_fetch_as(&daemon, 1000)).unwrap());
        let outcome = served.recv_timeout(Duration::from_secs(3));
        drop(stalled);
        caller.kill().unwrap();
        caller.wait().unwrap();
        let output = outcome.expect("uid 1000 not served while the FUSE server stalled");
        assert_eq!(printed_ids(&output), ["spiffe://example.org/legit"]);
    });
}

//! Audit flooding (issue 9, class 3), performed on the real daemon. A local
//! uid that holds no identity sends ValidateJWTSVID calls with huge tokens
//! and audiences and FetchJWTSVID calls with huge audience lists (through
//! attestd's own CLI, run as that uid, one connection per call), plus
//! ordinary refused calls. Every oversized request is refused with
//! InvalidArgument naming the limit; each record is bounded; beyond the
//! per-uid allowance the denials are only counted, and a summary record per
//! window carries the count (also in the metrics); meanwhile a legitimate
//! caller of another uid is served, and every issuance of a real identity
//! is recorded one by one.

use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use spiffe::WorkloadApiClient;

use crate::harness::{
    Daemon, assert_success, attestd_bin, cli_fetch_as, free_loopback_port, http_get, run_as, wait_for,
};

/// uid 1000 ("cloudsdk"): no entry names it.
const ATTACKER: u32 = 1000;
/// uid 65534 ("nobody"): a legitimate workload with an entry.
const LEGIT: u32 = 65534;
const PER_UID: u64 = 5;
const WINDOW: Duration = Duration::from_secs(4);
/// Rounds of the six hostile calls below.
const ROUNDS: usize = 20;
const HOSTILE_CALLS: u64 = 6 * ROUNDS as u64;
/// A hostile value: 100 KB (an argument may be up to 128 KiB).
const HUGE: usize = 100_000;
/// attestd's memory may not pass this while under attack (its VmHWM is
/// about 25 MB here, idle or attacked: requests are bounded by the gRPC
/// message limit and refused before attestation).
const MAX_DAEMON_HWM_KB: u64 = 128 * 1024;

fn config(health: &str, window: Duration) -> String {
    format!(
        r#"
[audit]
denial_records_per_uid = {PER_UID}
denial_window = "{}s"

[health]
listen = "{health}"

[[entry]]
spiffe_id = "spiffe://example.org/legit"
selectors = ["unix:uid:{LEGIT}"]
owner = "platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/root"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
        window.as_secs()
    )
}

/// `attestd api ARGS` as the attacker.
fn hostile(daemon: &Daemon, args: &[&str]) -> Output {
    let mut command = Command::new(attestd_bin());
    command
        .arg("api")
        .args(args)
        .args(["--socket", &daemon.endpoint()]);
    run_as(ATTACKER, ATTACKER, &mut command)
}

/// Asserts the call was refused with `code`, with `message` in the answer.
fn assert_refused(output: &Output, code: &str, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a hostile call succeeded");
    assert!(
        stderr.contains(&format!("{code}: {message}")),
        "expected {code} with {message:?}: {stderr}"
    );
}

/// One round of the attack: six calls, each a denial of a caller without
/// an identity.
fn attack_round(daemon: &Daemon) {
    let huge = "A".repeat(HUGE);
    let many: Vec<String> = (0..1000)
        .map(|i| format!("https://relying-party-{i}.example.org"))
        .collect();
    let many = many.join(",");
    let output = hostile(daemon, &["validate", "jwt", "--audience", "svc", "--svid", &huge]);
    assert_refused(
        &output,
        "InvalidArgument",
        "svid: at most 65536 bytes (got 100000)",
    );
    let output = hostile(
        daemon,
        &["validate", "jwt", "--audience", &huge, "--svid", "x.y.z"],
    );
    assert_refused(
        &output,
        "InvalidArgument",
        "audience: at most 2048 bytes (got 100000)",
    );
    let output = hostile(daemon, &["fetch", "jwt", "--audience", &many]);
    assert_refused(
        &output,
        "InvalidArgument",
        "audience: at most 16 values of at most 2048 bytes each (got 1000 values",
    );
    let output = hostile(daemon, &["fetch", "jwt", "--audience", &huge]);
    assert_refused(
        &output,
        "InvalidArgument",
        "audience: at most 16 values of at most 2048 bytes each",
    );
    // Within the caps, still refused: a forged token, and no entry.
    let output = hostile(
        daemon,
        &["validate", "jwt", "--audience", "svc", "--svid", "e30.e30.AAAA"],
    );
    assert_refused(&output, "InvalidArgument", "invalid JWT-SVID");
    let output = hostile(daemon, &["fetch", "x509"]);
    assert_refused(&output, "PermissionDenied", "no identity issued");
}

/// Audit records with the length of their line.
type Lines = Vec<(usize, Value)>;

fn audit_lines(daemon: &Daemon) -> Lines {
    std::fs::read_to_string(daemon.audit_path())
        .unwrap()
        .lines()
        .map(|line| (line.len(), serde_json::from_str(line).unwrap()))
        .collect()
}

/// The start of a record, for failure messages (a hostile one is huge).
fn head(record: &Value) -> String {
    record.to_string().chars().take(400).collect()
}

fn suppressed_count(record: &Value) -> u64 {
    record["suppressed"]["count"].as_u64().unwrap()
}

/// The attacker's records: (individual denials, summaries).
fn attacker_records(daemon: &Daemon) -> (Lines, Lines) {
    audit_lines(daemon)
        .into_iter()
        .filter(|(_, r)| r["uid"] == ATTACKER)
        .partition(|(_, r)| r["outcome"] != "suppressed")
}

/// Sums a Prometheus counter family over its labels.
fn counter_sum(metrics: &str, family: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_without_identity_cannot_flood_the_audit_trail() {
    let health = free_loopback_port();
    let daemon = Daemon::start(&config(&health, WINDOW));
    let before = std::fs::metadata(daemon.audit_path()).map_or(0, |m| m.len());

    let started = Instant::now();
    let attack = thread::scope(|scope| {
        let attack = scope.spawn(|| (0..ROUNDS).for_each(|_| attack_round(&daemon)));
        // While the attack runs: a legitimate caller of another uid is served
        // (within a second: a correctness bound with slack, not a benchmark).
        let mut served = 0;
        while !attack.is_finished() || served == 0 {
            let asked = Instant::now();
            let output = cli_fetch_as(&daemon, LEGIT);
            let took = asked.elapsed();
            assert_success(&output);
            assert!(
                took < Duration::from_secs(1),
                "the legitimate caller waited {took:?}"
            );
            served += 1;
        }
        attack.join().map(|()| served)
    });
    let served = attack.expect("attack round failed");
    let attack_took = started.elapsed();
    let hwm = daemon.vm_kb("VmHWM:");
    assert!(hwm < MAX_DAEMON_HWM_KB, "attestd's VmHWM reached {hwm} kB");

    // A real identity's issuances are never suppressed: one record each,
    // far beyond the denial allowance. Its rejected validations (a relying
    // party shown bad tokens) are recorded one by one too.
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    for _ in 0..3 * PER_UID {
        client.fetch_jwt_svid(["svc"], None).await.unwrap();
        client
            .validate_jwt_token("svc", "e30.e30.AAAA")
            .await
            .unwrap_err();
    }

    // Every hostile call is accounted for: written, or counted in a summary
    // that the window's timer writes after the attack has stopped.
    let (individual, summaries) = wait_for(WINDOW * 3, "the summary of the suppressed denials", || {
        let (individual, summaries) = attacker_records(&daemon);
        let counted: u64 = summaries.iter().map(|(_, r)| suppressed_count(r)).sum();
        (individual.len() as u64 + counted == HOSTILE_CALLS).then_some((individual, summaries))
    });
    let windows = (attack_took.as_secs_f64() / WINDOW.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        individual.len() as u64 <= PER_UID * windows,
        "{} denial records of the attacker in at most {windows} windows",
        individual.len()
    );
    assert!(!summaries.is_empty());
    let max_line = attestd::audit::MAX_RECORD_BYTES;
    for (len, record) in individual.iter().chain(&summaries) {
        assert!(*len <= max_line, "a {len}-byte record: {}", head(record));
    }
    // In all: at most the allowance of bounded records per window, plus one
    // summary per window.
    let attacker_bytes: usize = individual.iter().chain(&summaries).map(|(len, _)| len + 1).sum();
    let allowed = (windows * (PER_UID + 1)) as usize * max_line;
    assert!(
        attacker_bytes <= allowed,
        "{attacker_bytes} bytes of attacker records (bound {allowed})"
    );
    // Each hostile record is far smaller than what the attacker sent.
    for (len, record) in &individual {
        assert!(*len < 8 * 1024, "{len} bytes: {}", head(record));
        assert!(
            record["outcome"] == "denied" || record["outcome"] == "rejected",
            "{}",
            head(record)
        );
    }
    let truncated = individual
        .iter()
        .filter(|(_, r)| r["truncated"]["audience"].is_string())
        .count();
    let denied_before_attestation = individual
        .iter()
        .filter(|(_, r)| r["selectors"] == serde_json::json!([]))
        .count();
    assert!(
        denied_before_attestation > 0,
        "refusals for arguments are audited"
    );
    let summary = &summaries[0].1;
    assert_eq!(summary["rpc"], "*");
    assert!(
        summary["reason"]
            .as_str()
            .unwrap()
            .contains("denial records of uid 1000 left out"),
        "{summary}"
    );
    let by_rpc: u64 = summaries
        .iter()
        .flat_map(|(_, r)| {
            r["suppressed"]["rpcs"]
                .as_object()
                .unwrap()
                .values()
                .map(|n| n.as_u64().unwrap())
        })
        .sum();
    let suppressed: u64 = summaries.iter().map(|(_, r)| suppressed_count(r)).sum();
    assert_eq!(by_rpc, suppressed);
    let reasons: Vec<String> = summaries
        .iter()
        .flat_map(|(_, r)| {
            r["suppressed"]["reasons"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("svid: at most 65536 bytes")),
        "{reasons:?}"
    );

    // The metrics show the suppression.
    let (_, metrics) = http_get(&health, "/metrics");
    assert_eq!(
        counter_sum(&metrics, "attestd_audit_denials_suppressed_total"),
        suppressed,
        "{metrics}"
    );
    assert!(metrics.contains("attestd_requests_total{rpc=\"ValidateJWTSVID\",code=\"InvalidArgument\"}"));

    // The legitimate caller's issuances and the real identity's are all there.
    let records = audit_lines(&daemon);
    let issued = |id: &str, rpc: &str| {
        records
            .iter()
            .filter(|(_, r)| r["outcome"] == "issued" && r["spiffe_id"] == id && r["rpc"] == rpc)
            .count()
    };
    assert_eq!(issued("spiffe://example.org/legit", "FetchX509SVID"), served);
    assert_eq!(
        issued("spiffe://example.org/root", "FetchJWTSVID"),
        3 * PER_UID as usize
    );
    let root_rejections = records
        .iter()
        .filter(|(_, r)| r["uid"] == 0 && r["outcome"] == "rejected")
        .count();
    assert_eq!(root_rejections, 3 * PER_UID as usize);

    let growth = std::fs::metadata(daemon.audit_path()).unwrap().len() - before;
    let longest = individual
        .iter()
        .chain(&summaries)
        .map(|(len, _)| *len)
        .max()
        .unwrap_or(0);
    eprintln!(
        "attack: {HOSTILE_CALLS} hostile calls of ~100 KB in {attack_took:?}; {} attacker records written \
         ({truncated} with audiences shortened), {} summaries, {attacker_bytes} bytes, the longest {longest}; \
         trail grew {growth} bytes in all; legitimate fetches served: {served}; attestd VmHWM {hwm} kB",
        individual.len(),
        summaries.len()
    );
    let verify = Command::new(attestd_bin())
        .args(["audit", "verify"])
        .arg(daemon.audit_path())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[tokio::test]
async fn suppressed_denials_are_summarised_at_shutdown() {
    let health = free_loopback_port();
    let mut daemon = Daemon::start(&config(&health, Duration::from_secs(3600)));
    let calls = PER_UID + 4;
    for _ in 0..calls {
        let output = hostile(&daemon, &["fetch", "jwt", "--audience", &"A".repeat(HUGE)]);
        assert_refused(&output, "InvalidArgument", "audience: at most 16 values");
    }
    let (individual, summaries) = attacker_records(&daemon);
    assert_eq!(individual.len() as u64, PER_UID);
    assert!(summaries.is_empty(), "the window has not ended");

    assert!(daemon.stop_with(nix::sys::signal::Signal::SIGTERM).success());
    let (_, summaries) = attacker_records(&daemon);
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let summary = &summaries[0].1;
    assert_eq!(suppressed_count(summary), calls - PER_UID);
    assert_eq!(summary["suppressed"]["rpcs"]["FetchJWTSVID"], calls - PER_UID);
}

//! Every issued and every denied request leaves a well-formed audit record
//! carrying the kernel-attested facts and the accountable owner.

use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{Daemon, attestd_bin, cli_fetch_as};

#[tokio::test]
async fn issued_and_denied_requests_are_audited() {
    let daemon = Daemon::start(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/audited"
selectors = ["unix:uid:0"]
owner = "secops@example.org"
description = "audited agent"
labels = { agent = "auditor", version = "1.0" }

# Names unix:sha256, so that executables are hashed (and audited).
[[entry]]
spiffe_id = "spiffe://example.org/hashed"
selectors = ["unix:uid:4242", "unix:sha256:0000000000000000000000000000000000000000000000000000000000000000"]
owner = "secops@example.org"
"#,
    );
    let child = Command::new(attestd_bin())
        .args(["api", "fetch", "x509", "--socket"])
        .arg(daemon.endpoint())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let printed_serial = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Serial:"))
        .unwrap()
        .trim()
        .to_owned();
    let denied = cli_fetch_as(&daemon, 1002);
    assert!(!denied.status.success());

    let records = daemon.audit_records();
    assert_eq!(records.len(), 2, "{records:#?}");
    let binary = std::fs::canonicalize(attestd_bin()).unwrap();
    let digest = hex::encode(Sha256::digest(std::fs::read(&binary).unwrap()));

    let issued = &records[0];
    assert_eq!(issued["seq"], 0);
    assert_eq!(issued["prev"], attestd::audit::GENESIS);
    assert_eq!(records[1]["seq"], 1);
    assert_eq!(issued["outcome"], "issued");
    assert_eq!(issued["rpc"], "FetchX509SVID");
    assert_eq!(issued["pid"], pid);
    assert_eq!(issued["uid"], 0);
    assert_eq!(issued["gid"], 0);
    assert_eq!(issued["exe_path"], binary.display().to_string());
    assert_eq!(issued["sha256"], digest.as_str());
    let selectors = selectors_of(issued);
    assert!(selectors.contains(&"unix:uid:0".to_owned()));
    assert!(selectors.contains(&format!("unix:sha256:{digest}")));
    assert_eq!(issued["spiffe_id"], "spiffe://example.org/audited");
    assert_eq!(issued["owner"], "secops@example.org");
    assert_eq!(issued["description"], "audited agent");
    assert_eq!(issued["labels"]["agent"], "auditor");
    assert_eq!(issued["serial"], printed_serial.as_str());
    assert!(issued["entry"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(
        issued["entry_location"]
            .as_str()
            .unwrap()
            .ends_with("attestd.toml:5")
    );
    assert_timestamp(&issued["time"]);
    assert_timestamp(&issued["not_after"]);

    let refused = &records[1];
    assert_eq!(refused["outcome"], "denied");
    assert_eq!(refused["uid"], 1002);
    assert_eq!(refused["gid"], 1002);
    assert!(refused["pid"].as_u64().is_some());
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("no registration entry")
    );
    assert!(selectors_of(refused).contains(&"unix:uid:1002".to_owned()));
    assert!(refused["spiffe_id"].is_null() && refused["serial"].is_null());
    assert_timestamp(&refused["time"]);
}

fn selectors_of(record: &Value) -> Vec<String> {
    record["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("not a string: {value}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"));
}

fn verify_cli(files: &[std::path::PathBuf]) -> std::process::Output {
    Command::new(attestd_bin())
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap()
}

const ROOT_ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/audited"
selectors = ["unix:uid:0"]
owner = "secops@example.org"
"#;

#[tokio::test]
async fn the_chain_spans_rotated_files_and_verify_names_a_tampered_record() {
    let daemon = Daemon::start(&format!("[audit]\nmax_bytes = 4000\nkeep = 50\n{ROOT_ENTRY}"));
    for _ in 0..12 {
        assert!(cli_fetch_as(&daemon, 0).status.success());
        cli_fetch_as(&daemon, 1002);
    }
    let audit = daemon.audit_path();
    let mut files: Vec<_> = (1..=50)
        .map(|n| std::path::PathBuf::from(format!("{}.{n}", audit.display())))
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 2, "the trail rotated: {files:?}");
    files.reverse();
    files.push(audit.clone());

    let intact = verify_cli(&files);
    let stdout = String::from_utf8_lossy(&intact.stdout);
    assert!(intact.status.success(), "{stdout}");
    assert!(stdout.starts_with("intact: 24 records, seq 0..=23"), "{stdout}");

    // Edit a record in a rotated file: verify fails and names it.
    let victim = &files[0];
    let text = std::fs::read_to_string(victim).unwrap();
    std::fs::write(
        victim,
        text.replacen("\"outcome\":\"denied\"", "\"outcome\":\"issued\"", 1),
    )
    .unwrap();
    let broken = verify_cli(&files);
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(!broken.status.success());
    let edited_line = text
        .lines()
        .position(|l| l.contains("\"outcome\":\"denied\""))
        .unwrap()
        + 1;
    assert!(
        stdout.contains(&format!(
            "{}:{edited_line}): that record was edited",
            victim.display()
        )),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_unwritable_trail_refuses_issuance_by_default() {
    let daemon = Daemon::start(&format!("[audit]\npath = \"/dev/full\"\n{ROOT_ENTRY}"));
    let output = cli_fetch_as(&daemon, 0);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Unavailable: audit trail unavailable"),
        "{stderr}"
    );

    let daemon = Daemon::start(&format!(
        "[audit]\npath = \"/dev/full\"\non_failure = \"issue\"\n{ROOT_ENTRY}"
    ));
    let output = cli_fetch_as(&daemon, 0);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(daemon.log().contains("audit records lost"));
}

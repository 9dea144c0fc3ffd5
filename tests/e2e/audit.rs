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

//! `--output json` (and SPIRE's `-output json` spelling) of the `api` and
//! inspection commands against the real daemon: every document parses, the
//! fields agree with what the daemon issued and audited, the entry id in
//! `entry list` is the one audit records carry, and no key is printed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{Daemon, attestd_bin};

const SPIFFE_ID: &str = "spiffe://example.org/scripted";

/// `attestd ARGS` (as root, the entry's uid); its stdout as JSON.
fn json(args: &[&str]) -> Value {
    let output = Command::new(attestd_bin()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON document ({e}): {stdout}"))
}

#[test]
fn every_api_and_inspection_command_speaks_json() {
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "{SPIFFE_ID}"
selectors = ["unix:uid:0"]
owner = "scripts@example.org"
jwt_audiences = ["svc"]
"#
    ));
    let socket = daemon.endpoint();
    let config = daemon.config_path();
    let config = config.to_str().unwrap();

    // SPIRE's single-dash spelling.
    let x509 = json(&["api", "fetch", "x509", "--socket", &socket, "-output", "json"]);
    let svid = &x509["svids"][0];
    assert_eq!(svid["spiffe_id"], SPIFFE_ID);
    assert!(
        svid["certificates"][0]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(!x509.to_string().contains("PRIVATE KEY"), "never the key");
    let serial = svid["serial"].as_str().unwrap().to_owned();
    assert!(humantime::parse_rfc3339(svid["not_after"].as_str().unwrap()).is_ok());

    let jwt = json(&[
        "api",
        "fetch",
        "jwt",
        "--socket",
        &socket,
        "--audience",
        "svc",
        "--output",
        "json",
    ]);
    assert_eq!(jwt["svids"][0]["spiffe_id"], SPIFFE_ID);
    let token = jwt["svids"][0]["token"].as_str().unwrap();
    let valid = json(&[
        "api",
        "validate",
        "jwt",
        "--socket",
        &socket,
        "--audience",
        "svc",
        "--svid",
        token,
        "--output=json",
    ]);
    assert_eq!(
        (valid["valid"].as_bool(), valid["spiffe_id"].as_str()),
        (Some(true), Some(SPIFFE_ID))
    );
    assert_eq!(valid["claims"]["aud"], serde_json::json!(["svc"]));

    let health = json(&["healthcheck", "--socket", &socket, "--output", "json"]);
    assert_eq!(health["healthy"], true);

    // The entry id `entry list` shows is the audit records' `entry`.
    let listed = json(&["entry", "list", "-c", config, "--output", "json"]);
    assert_eq!(listed["count"], 1);
    let entry_id = listed["entries"][0]["id"].as_str().unwrap().to_owned();
    let text = Command::new(attestd_bin())
        .args(["entry", "list", "-c", config])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("id         {entry_id}")));
    let audit = std::fs::read_to_string(daemon.audit_path()).unwrap();
    let issued: Value = audit
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|record| record["serial"].as_str() == Some(serial.as_str()))
        .expect("the SVID printed has its audit record");
    assert_eq!(issued["entry"], entry_id.as_str());

    let check = json(&["entry", "check", "-c", config, "--output", "json"]);
    assert_eq!(check["ok"], true);
    assert!(check["warnings"].as_array().unwrap().is_empty(), "{check}");

    let verified = json(&[
        "audit",
        "verify",
        daemon.audit_path().to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(verified["intact"], true);
    assert!(verified["records"].as_u64().unwrap() >= 2, "{verified}");

    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let explained = json(&["explain", "--pid", &pid, "-c", config, "--output", "json"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(explained["process"]["uid"], 0);
    assert_eq!(explained["matches"][0]["id"], entry_id.as_str());

    // api watch: one JSON document per line.
    let mut watch = Command::new(attestd_bin())
        .args(["api", "watch", "--socket", &socket, "--output", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(watch.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    let update: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(update["svids"][0]["spiffe_id"], SPIFFE_ID);
}

//! The Python client for agents (clients/python, `attestd_agent`): a Python
//! agent process starts, lists and ends a task; two Python agents of one
//! uid, told apart only by their executables, get tasks with their own
//! SPIFFE IDs. The interpreters are copies of Debian's /usr/bin/python3
//! (one with a few bytes appended, so its sha256 differs), reaching grpcio
//! in the test venv through PYTHONPATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Daemon, assert_success, attestd_bin, shell};
use crate::tasks::venv_python;

const CLIENT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/python/task_agent.py");

/// The venv's site-packages (grpcio, protobuf), for interpreters outside it.
fn site_packages() -> PathBuf {
    let lib = venv_python().parent().unwrap().parent().unwrap().join("lib");
    let python = std::fs::read_dir(&lib)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().unwrap().to_string_lossy().starts_with("python3"))
        .expect("the venv's lib/python3.x");
    python.join("site-packages")
}

/// Copies /usr/bin/python3 to `dir/name`, appending `extra` bytes.
pub fn interpreter(dir: &Path, name: &str, extra: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    shell(&format!(
        "cp /usr/bin/python3 {0} && printf '{extra}' >> {0}",
        path.display()
    ));
    let digest = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
    (path, digest)
}

/// Runs the test agent with `python`, as root.
pub fn agent(python: &Path, daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(python)
        .arg(AGENT)
        .arg(daemon.endpoint())
        .args(args)
        .env(
            "PYTHONPATH",
            format!("{CLIENT_DIR}:{}", site_packages().display()),
        )
        .output()
        .unwrap()
}

pub fn json_of(output: &Output) -> Value {
    assert_success(output);
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn python_agents_told_apart_by_executable_start_and_end_their_own_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (python_a, sha_a) = interpreter(dir.path(), "agent-a", "");
    let (python_b, sha_b) = interpreter(dir.path(), "agent-b", "attestd");
    assert_ne!(sha_a, sha_b);
    let daemon = Daemon::start(&format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/agent/a"
selectors = ["unix:uid:0", "unix:sha256:{sha_a}"]
owner = "team-a@example.org"
tasks = {{ max_ttl = "5m", tools = ["github.comment"] }}

[[entry]]
spiffe_id = "spiffe://example.org/agent/b"
selectors = ["unix:uid:0", "unix:sha256:{sha_b}"]
owner = "team-b@example.org"
tasks = {{ max_ttl = "5m", tools = ["jira.comment"] }}
"#
    ));

    let a = json_of(&agent(
        &python_a,
        &daemon,
        &[
            "lifecycle",
            "--purpose",
            "triage",
            "--tool",
            "github.comment",
            "--resource",
            "repo:acme/web",
        ],
    ));
    let task_a = a["started"]["task_id"].as_str().unwrap();
    assert_eq!(a["started"]["spiffe_id"], "spiffe://example.org/agent/a");
    assert_eq!(a["listed"], json!([task_a]));
    assert_eq!(a["ended"], json!([task_a]));

    let b = json_of(&agent(
        &python_b,
        &daemon,
        &[
            "start",
            "--purpose",
            "file the report",
            "--tool",
            "jira.comment",
            "--audience",
            "gw",
        ],
    ));
    assert_eq!(b["spiffe_id"], "spiffe://example.org/agent/b");
    // Each agent only gets its own entry's tools.
    let refused = agent(
        &python_b,
        &daemon,
        &["start", "--purpose", "p", "--tool", "github.comment"],
    );
    assert_eq!(refused.status.code(), Some(3));
    let refusal: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(refusal["code"], "PERMISSION_DENIED");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("tool github.comment is not among the tools spiffe://example.org/agent/b"),
        "{refusal}"
    );

    // A's ended token is refused; B's live one validates.
    let validate = |token: &str, audience: &str| {
        Command::new(attestd_bin())
            .args(["api", "validate", "jwt", "--audience", audience, "--svid", token])
            .args(["--socket", &daemon.endpoint()])
            .output()
            .unwrap()
    };
    let ended = validate(
        a["started"]["token"].as_str().unwrap(),
        "spiffe://example.org/agent/a",
    );
    assert!(!ended.status.success());
    assert!(String::from_utf8_lossy(&ended.stderr).contains(&format!("task {task_a} ended")));
    assert_success(&validate(b["token"].as_str().unwrap(), "gw"));

    // The trail names each agent's executable with its task.
    let records = daemon.audit_records();
    let started = |id: &str| {
        records
            .iter()
            .find(|r| r["rpc"] == "StartTask" && r["outcome"] == "started" && r["task"]["id"] == id)
            .unwrap_or_else(|| panic!("no start record of {id}: {records:?}"))
            .clone()
    };
    assert_eq!(started(task_a)["sha256"], sha_a.as_str());
    assert_eq!(started(b["task_id"].as_str().unwrap())["sha256"], sha_b.as_str());
    assert!(
        records
            .iter()
            .any(|r| r["rpc"] == "EndTask" && r["outcome"] == "ended" && r["task"]["id"] == task_a)
    );
}

#[test]
fn generated_stubs_are_current() {
    let output = Command::new(venv_python())
        .arg(format!("{CLIENT_DIR}/generate.py"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn python_client_unit_tests() {
    let output = Command::new(venv_python())
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(CLIENT_DIR)
        .env("PYTHONPATH", CLIENT_DIR)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("OK"));
}

//! The enforcement point end to end: `examples/tool_gateway.rs` (a tool
//! server running as its own uid, with an entry that may ask for others)
//! acts on an agent's task token only when attestd allows it, and every
//! refusal lands in the trail with its reason: no token, a plain JWT-SVID,
//! a token addressed to another gateway, a tool the task did not declare,
//! and an ended task's token after attestd restarted. A Python agent (the
//! `attestd_agent` client) drives the same gateway, and `audit trace`
//! rebuilds a two-level task tree with every decision from the trail.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::agent_python::{agent, interpreter, json_of};
use crate::examples::example;
use crate::harness::{Daemon, assert_success, attestd_bin, audit_trace, run_as, shared_tempdir, wait_for};

const AGENT_UID: u32 = 1000;
const GATEWAY_UID: u32 = 65534;
const GATEWAY_ID: &str = "spiffe://example.org/gateway/notes";

/// One policy: the notes team's agents may write and read notes.
const POLICY: &str = r#"
@id("notes-team-writes-notes")
permit (principal, action == Attestd::Action::"notes.write", resource)
when { principal.owner == "notes-team@example.org" && resource.type == "note" };

@id("notes-team-reads-notes")
permit (principal, action == Attestd::Action::"notes.read", resource)
when { principal.owner == "notes-team@example.org" };
"#;

fn config(policies: &Path, agent_selector: &str) -> String {
    format!(
        r#"
policy_dir = "{policies}"

[[entry]]
spiffe_id = "spiffe://example.org/agent/writer"
selectors = ["{agent_selector}"]
owner = "notes-team@example.org"
tasks = {{ max_ttl = "10m", tools = ["notes.write", "notes.read"] }}

[[entry]]
spiffe_id = "{GATEWAY_ID}"
selectors = ["unix:uid:{GATEWAY_UID}"]
owner = "platform@example.org"
may_ask_for_others = true
"#,
        policies = policies.display()
    )
}

/// The gateway example as `GATEWAY_UID`, killed on drop.
struct Gateway {
    child: Child,
    addr: String,
    notes: tempfile::TempDir,
}

impl Gateway {
    fn start(daemon: &Daemon) -> Self {
        let notes = shared_tempdir();
        std::os::unix::fs::chown(notes.path(), Some(GATEWAY_UID), Some(GATEWAY_UID)).unwrap();
        let mut child = Command::new(example("tool_gateway"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--socket",
                &daemon.endpoint(),
                "--data-dir",
            ])
            .arg(notes.path())
            .uid(GATEWAY_UID)
            .gid(GATEWAY_UID)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // The gateway prints a line per call: keep reading, or it would
        // write into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let addr = line
            .trim()
            .strip_prefix("tool gateway listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, addr, notes }
    }

    /// POSTs a tool call; returns the status and the JSON answer.
    fn call(&self, tool: &str, token: Option<&str>, resource: &str, text: &str) -> (u16, Value) {
        let body = serde_json::json!({ "resource": resource, "args": { "text": text } }).to_string();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let mut stream = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            stream,
            "POST /tools/{tool} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    fn note(&self, name: &str) -> String {
        std::fs::read_to_string(self.notes.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policies() -> tempfile::TempDir {
    let dir = shared_tempdir();
    std::fs::write(dir.path().join("notes.cedar"), POLICY).unwrap();
    dir
}

/// `attestd task start --json` as the agent uid.
fn start_task(daemon: &Daemon, tools: &[&str], audiences: &[&str]) -> Value {
    let mut command = Command::new(attestd_bin());
    command
        .args(["task", "start", "--json", "--purpose", "write the release plan"])
        .args(["--socket", &daemon.endpoint()]);
    for audience in audiences {
        command.args(["--audience", audience]);
    }
    for tool in tools {
        command.args(["--tool", tool]);
    }
    let output = run_as(AGENT_UID, AGENT_UID, &mut command);
    assert_success(&output);
    serde_json::from_slice(&output.stdout).unwrap()
}

fn as_agent(daemon: &Daemon, args: &[&str]) -> Output {
    let mut command = Command::new(attestd_bin());
    command.args(args).args(["--socket", &daemon.endpoint()]);
    run_as(AGENT_UID, AGENT_UID, &mut command)
}

/// The Authorize record of a decision the gateway was answered with.
fn decision_record(daemon: &Daemon, answer: &Value) -> Value {
    let id = answer["decision_id"].as_str().expect("a decision id");
    daemon
        .audit_records()
        .into_iter()
        .find(|r| r["rpc"] == "Authorize" && r["decision"]["id"] == id)
        .unwrap_or_else(|| panic!("no Authorize record for decision {id}"))
}

fn assert_refused(daemon: &Daemon, (status, answer): (u16, Value), why: &str) {
    assert_eq!(status, 403, "{answer}");
    let refusal = answer["refusal"].as_str().unwrap_or_default();
    assert!(refusal.contains(why), "refusal {refusal:?} does not say {why:?}");
    let record = decision_record(daemon, &answer);
    assert_eq!(record["outcome"], "denied", "{record}");
    assert!(record["reason"].as_str().unwrap().contains(why), "{record}");
    assert_eq!(record["decision"]["asked_by"], GATEWAY_ID, "{record}");
}

#[test]
fn the_gateway_acts_only_on_live_task_tokens_addressed_to_it() {
    let policies = policies();
    let daemon = Daemon::start(&config(policies.path(), &format!("unix:uid:{AGENT_UID}")));
    let gateway = Gateway::start(&daemon);
    let task = start_task(&daemon, &["notes.write"], &[GATEWAY_ID]);
    let token = task["token"].as_str().unwrap();
    let task_id = task["task_id"].as_str().unwrap();

    // Allowed: the gateway acts, and the trail names the policy.
    let (status, answer) = gateway.call("notes.write", Some(token), "note:plan", "ship on friday");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(gateway.note("plan"), "ship on friday\n");
    let allowed = decision_record(&daemon, &answer);
    assert_eq!(allowed["outcome"], "allowed");
    assert_eq!(
        allowed["decision"]["policies"],
        serde_json::json!(["notes-team-writes-notes"])
    );
    assert_eq!(allowed["task"]["id"], task_id);

    // A tool outside the declared ones, though a policy permits it.
    assert_refused(
        &daemon,
        gateway.call("notes.read", Some(token), "note:plan", ""),
        "notes.read",
    );
    // No token, a plain JWT-SVID, a token for another gateway.
    assert_refused(
        &daemon,
        gateway.call("notes.write", None, "note:plan", "x"),
        "token",
    );
    let plain = as_agent(&daemon, &["api", "fetch", "jwt", "--audience", GATEWAY_ID]);
    assert_success(&plain);
    let plain = String::from_utf8_lossy(&plain.stdout)
        .split_whitespace()
        .find(|word| word.matches('.').count() == 2 && word.starts_with("ey"))
        .expect("a token in the fetch output")
        .to_owned();
    assert_refused(
        &daemon,
        gateway.call("notes.write", Some(&plain), "note:plan", "x"),
        "task",
    );
    let elsewhere = start_task(&daemon, &["notes.write"], &["spiffe://example.org/gateway/other"]);
    let elsewhere = elsewhere["token"].as_str().unwrap();
    assert_refused(
        &daemon,
        gateway.call("notes.write", Some(elsewhere), "note:plan", "x"),
        GATEWAY_ID,
    );
    assert_eq!(gateway.note("plan"), "ship on friday\n", "a refused call acted");

    // Ended, then attestd restarts: the token stays refused.
    assert_success(&as_agent(&daemon, &["task", "end", task_id]));
    let dir = daemon.crash();
    let daemon = Daemon::start_in(dir, &config(policies.path(), &format!("unix:uid:{AGENT_UID}")));
    let refused = wait_for(
        Duration::from_secs(10),
        "the gateway to reach the restarted attestd",
        || {
            let (status, answer) = gateway.call("notes.write", Some(token), "note:plan", "x");
            (status != 502).then_some((status, answer))
        },
    );
    assert_refused(&daemon, refused, &format!("task {task_id} ended"));
    assert_eq!(gateway.note("plan"), "ship on friday\n");

    let verify = Command::new(attestd_bin())
        .args(["audit", "verify"])
        .arg(daemon.audit_path())
        .output()
        .unwrap();
    assert_success(&verify);
}

#[test]
fn python_agents_told_apart_by_executable_get_different_decisions_at_the_gateway() {
    let interpreters = tempfile::tempdir().unwrap();
    let (writer, writer_sha) = interpreter(interpreters.path(), "writer", "");
    let (intern, intern_sha) = interpreter(interpreters.path(), "intern", "attestd");
    let policies = policies();
    // One uid (root runs both), one policy set; only the executables differ.
    let daemon = Daemon::start(&format!(
        r#"{}
[[entry]]
spiffe_id = "spiffe://example.org/agent/intern"
selectors = ["unix:uid:0", "unix:sha256:{intern_sha}"]
owner = "interns@example.org"
tasks = {{ max_ttl = "10m", tools = ["notes.write"] }}
"#,
        config(policies.path(), &format!("unix:sha256:{writer_sha}"))
    ));
    let gateway = Gateway::start(&daemon);
    let url = format!("http://{}", gateway.addr);
    let call = |python: &Path, text: &str| {
        json_of(&agent(
            python,
            &daemon,
            &[
                "call",
                "--purpose",
                "update the plan",
                "--tool",
                "notes.write",
                "--audience",
                GATEWAY_ID,
                "--gateway",
                &url,
                "--call",
                "notes.write",
                "--on",
                "note:plan",
                "--text",
                text,
            ],
        ))
    };

    let allowed = call(&writer, "from the writer");
    assert_eq!(allowed["status"], 200, "{allowed}");
    assert_eq!(allowed["task"]["spiffe_id"], "spiffe://example.org/agent/writer");
    let denied = call(&intern, "from the intern");
    assert_eq!(denied["status"], 403, "{denied}");
    assert_eq!(denied["task"]["spiffe_id"], "spiffe://example.org/agent/intern");
    assert_eq!(gateway.note("plan"), "from the writer\n");

    // The policy decided both: one permit named, and a deny that no policy permitted.
    let record = decision_record(&daemon, &allowed["answer"]);
    assert_eq!(
        record["decision"]["policies"],
        serde_json::json!(["notes-team-writes-notes"])
    );
    assert_eq!(record["owner"], "notes-team@example.org");
    let record = decision_record(&daemon, &denied["answer"]);
    assert_eq!(record["outcome"], "denied");
    assert_eq!(record["decision"]["policies"], serde_json::json!([]));
    assert_eq!(record["owner"], "interns@example.org");
}

/// The chain of action rebuilt from the trail: a planner's task, a
/// writer's sub-task started from its token, every decision the gateway
/// asked for under each, and the end of both.
#[test]
fn audit_trace_rebuilds_a_two_level_task_tree_with_every_decision() {
    let policies = policies();
    let daemon = Daemon::start(&format!(
        r#"{}
[[entry]]
spiffe_id = "spiffe://example.org/agent/sub-writer"
selectors = ["unix:uid:0"]
owner = "notes-team@example.org"
tasks = {{ max_ttl = "5m", tools = ["notes.write"] }}
"#,
        config(policies.path(), &format!("unix:uid:{AGENT_UID}"))
    ));
    let gateway = Gateway::start(&daemon);
    let root = start_task(
        &daemon,
        &["notes.write", "notes.read"],
        &[GATEWAY_ID, "spiffe://example.org/agent/sub-writer"],
    );
    let root_id = root["task_id"].as_str().unwrap();
    let root_token = root["token"].as_str().unwrap();
    let child = Command::new(attestd_bin())
        .args([
            "task",
            "start",
            "--json",
            "--purpose",
            "draft the plan",
            "--tool",
            "notes.write",
        ])
        .args([
            "--audience",
            GATEWAY_ID,
            "--parent-token",
            root_token,
            "--socket",
            &daemon.endpoint(),
        ])
        .output()
        .unwrap();
    assert_success(&child);
    let child: Value = serde_json::from_slice(&child.stdout).unwrap();
    let child_id = child["task_id"].as_str().unwrap();
    let child_token = child["token"].as_str().unwrap();

    let allowed = gateway.call("notes.write", Some(root_token), "note:plan", "a");
    let child_allowed = gateway.call("notes.write", Some(child_token), "note:plan", "b");
    let child_refused = gateway.call("notes.read", Some(child_token), "note:plan", "");
    assert_eq!((allowed.0, child_allowed.0, child_refused.0), (200, 200, 403));
    assert_success(&as_agent(&daemon, &["task", "end", root_id]));

    let (trace, found) = audit_trace(&daemon, &["--task", root_id]);
    assert!(found);
    let [tree] = &trace.trees[..] else {
        panic!("one tree: {trace:?}")
    };
    let task = &tree.task;
    assert_eq!(task.task_id, root_id);
    assert_eq!(task.process.as_ref().unwrap().uid, Some(AGENT_UID));
    let entry = task.entry.as_ref().unwrap();
    assert_eq!(
        entry.spiffe_id.as_deref(),
        Some("spiffe://example.org/agent/writer")
    );
    assert_eq!(entry.owner.as_deref(), Some("notes-team@example.org"));
    assert_eq!(task.intent.purpose, "write the release plan");
    assert_eq!(task.intent.tools, ["notes.read", "notes.write"]);
    assert_eq!(task.tokens.len(), 1);
    let decided = |node: &attestd::audit::trace::TaskNode| -> Vec<(String, String, String)> {
        node.decisions
            .iter()
            .map(|d| (d.decision.clone(), d.action.clone(), d.decision_id.clone()))
            .collect()
    };
    let id = |answer: &(u16, Value)| answer.1["decision_id"].as_str().unwrap().to_owned();
    assert_eq!(
        decided(task),
        [("allow".into(), "notes.write".into(), id(&allowed))]
    );
    assert!(task.ended.is_some());

    let [sub] = &task.subtasks[..] else {
        panic!("one sub-task: {task:?}")
    };
    assert_eq!(sub.task_id, child_id);
    assert_eq!(sub.parent_id.as_deref(), Some(root_id));
    assert_eq!(sub.process.as_ref().unwrap().uid, Some(0));
    assert_eq!(sub.intent.delegated_by, ["spiffe://example.org/agent/writer"]);
    assert_eq!(
        decided(sub),
        [
            ("allow".into(), "notes.write".into(), id(&child_allowed)),
            ("deny".into(), "notes.read".into(), id(&child_refused)),
        ]
    );
    assert!(
        sub.decisions
            .iter()
            .all(|d| d.asked_by.as_deref() == Some(GATEWAY_ID))
    );
    assert!(sub.ended.is_some());

    let verify = Command::new(attestd_bin())
        .args(["audit", "verify"])
        .arg(daemon.audit_path())
        .output()
        .unwrap();
    assert_success(&verify);
}

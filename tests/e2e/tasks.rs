//! Tasks, the per-task secret, on the real binary: `attestd task` as other
//! uids starts tasks whose tokens carry the pinned claims; entries bound
//! who may start them and with which tools; sub-tasks narrow, never widen,
//! and carry the RFC 8693 act chain; ending a task makes ValidateJWTSVID
//! refuse its tokens and its descendants', also after a restart; task
//! tokens validate with an independent JWT library (PyJWT) and with
//! go-spiffe; every start and end is audited with the task's facts.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::go_interop::go_client;
use crate::harness::{Daemon, assert_success, attestd_bin, run_as, wait_for};

const GATEWAY: &str = "spiffe://example.org/tools/gateway";

/// Three agents: lead (uid 1000), helper (uid 65534) and worker (uid 1001),
/// each allowed tasks; root holds an identity without tasks.
const AGENTS: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/agent/lead"
selectors = ["unix:uid:1000"]
owner = "lead-team@example.org"
tasks = { max_ttl = "10m", tools = ["github.create_pr", "github.comment", "jira.comment"] }

[[entry]]
spiffe_id = "spiffe://example.org/agent/helper"
selectors = ["unix:uid:65534"]
owner = "helper-team@example.org"
tasks = { max_ttl = "10m", tools = ["github.create_pr", "github.comment", "jira.comment"] }

[[entry]]
spiffe_id = "spiffe://example.org/agent/worker"
selectors = ["unix:uid:1001"]
owner = "worker-team@example.org"
tasks = { max_ttl = "10m", tools = ["github.comment"] }

[[entry]]
spiffe_id = "spiffe://example.org/ops"
selectors = ["unix:uid:0"]
owner = "ops@example.org"
"#;

const LEAD: u32 = 1000;
const HELPER: u32 = 65534;
const WORKER: u32 = 1001;

/// `attestd task ARGS --socket ...` as `uid`.
fn task_cli(daemon: &Daemon, uid: u32, args: &[&str]) -> Output {
    let mut command = Command::new(attestd_bin());
    command
        .arg("task")
        .args(args)
        .args(["--socket", &daemon.endpoint()]);
    run_as(uid, uid, &mut command)
}

/// `attestd task start ARGS --json` as `uid`: its JSON.
fn start(daemon: &Daemon, uid: u32, args: &[&str]) -> Value {
    let output = task_cli(daemon, uid, &[&["start", "--json"], args].concat());
    assert_success(&output);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The stderr of a `task start` that must fail.
fn refused(daemon: &Daemon, uid: u32, args: &[&str]) -> String {
    let output = task_cli(daemon, uid, &[&["start"], args].concat());
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn token(started: &Value) -> &str {
    started["token"].as_str().unwrap()
}

/// A JWS part as JSON, read without verification (the checks below are
/// about what the token says; the signature is checked by validators).
fn part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// `attestd api validate jwt` as root: Ok(claims) or Err(stderr).
fn validate(daemon: &Daemon, token: &str, audience: &str) -> Result<String, String> {
    let output = Command::new(attestd_bin())
        .args(["api", "validate", "jwt", "--audience", audience, "--svid", token])
        .args(["--socket", &daemon.endpoint()])
        .output()
        .unwrap();
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// Waits (up to the one second attestd promises) for ValidateJWTSVID to
/// refuse `token`; returns the reason.
fn refused_within_a_second(daemon: &Daemon, token: &str, audience: &str) -> String {
    wait_for(Duration::from_secs(1), "the token to be refused", || {
        validate(daemon, token, audience).err()
    })
}

fn records_of<'a>(records: &'a [Value], rpc: &str, outcome: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["rpc"] == rpc && r["outcome"] == outcome)
        .collect()
}

fn audit_verify(daemon: &Daemon) {
    let output = Command::new(attestd_bin())
        .args(["audit", "verify"])
        .arg(daemon.audit_path())
        .output()
        .unwrap();
    assert_success(&output);
}

#[test]
fn a_task_started_as_another_uid_carries_the_pinned_claims_and_is_audited() {
    let daemon = Daemon::start(AGENTS);
    let started = start(
        &daemon,
        LEAD,
        &[
            "--purpose",
            "open the release PR",
            "--tool",
            "jira.comment",
            "github.create_pr",
            "--resource",
            "repo:acme/web",
            "--audience",
            GATEWAY,
            "--ttl",
            "5m",
        ],
    );
    let task_id = started["task_id"].as_str().unwrap();
    assert_eq!(task_id.len(), 32, "{started}");
    assert_eq!(started["spiffe_id"], "spiffe://example.org/agent/lead");
    let expires_at = humantime::parse_rfc3339(started["expires_at"].as_str().unwrap()).unwrap();

    let header = part(token(&started), 0);
    assert_eq!(header["alg"], "ES256");
    assert!(
        header["kid"].as_str().is_some_and(|kid| !kid.is_empty()),
        "{header}"
    );
    let claims = part(token(&started), 1);
    let mut names: Vec<&str> = claims.as_object().unwrap().keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "attestation",
            "aud",
            "exp",
            "iat",
            "jti",
            "owner",
            "purpose",
            "resources",
            "sub",
            "task_id",
            "tools"
        ],
        "a top-level task has no task_parents and no act"
    );
    assert_eq!(claims["sub"], "spiffe://example.org/agent/lead");
    assert_eq!(claims["aud"], json!([GATEWAY]));
    assert_eq!(claims["task_id"], task_id);
    assert_eq!(claims["purpose"], "open the release PR");
    assert_eq!(claims["tools"], json!(["github.create_pr", "jira.comment"]));
    assert_eq!(claims["resources"], json!(["repo:acme/web"]));
    assert_eq!(claims["owner"], "lead-team@example.org");
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 300);
    assert_eq!(exp, attestd::wall_clock::unix_seconds(expires_at));

    // The audit record of the start: the caller's facts, its entry, the
    // task's intent, the token; the attestation claim is the digest of the
    // selectors attestation found.
    let records = daemon.audit_records();
    let starts = records_of(&records, "StartTask", "started");
    let [record] = starts.as_slice() else {
        panic!("one start record: {records:?}")
    };
    assert_eq!(record["uid"], LEAD);
    assert_eq!(record["spiffe_id"], "spiffe://example.org/agent/lead");
    assert_eq!(record["owner"], "lead-team@example.org");
    assert_eq!(record["jti"], claims["jti"]);
    assert_eq!(record["audience"], json!([GATEWAY]));
    assert_eq!(record["task"]["id"], task_id);
    assert_eq!(record["task"]["parent"], Value::Null);
    assert_eq!(record["task"]["purpose"], "open the release PR");
    assert_eq!(record["task"]["tools"], claims["tools"]);
    assert_eq!(record["task"]["resources"], claims["resources"]);
    let mut selectors: Vec<&str> = record["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(selectors.contains(&"unix:uid:1000"), "{selectors:?}");
    selectors.sort_unstable();
    let digest = hex::encode(Sha256::digest(selectors.join("\n").as_bytes()));
    assert_eq!(claims["attestation"], digest.as_str());
    assert_eq!(record["task"]["attestation"], digest.as_str());

    // A standard validator accepts it; a holder lists it; a caller without
    // an identity cannot.
    let valid = validate(&daemon, token(&started), GATEWAY).unwrap();
    assert!(valid.contains(task_id), "{valid}");
    let listed = task_cli(&daemon, LEAD, &["list", "--json"]);
    assert_success(&listed);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["task_id"], task_id);
    assert_eq!(listed[0]["ended_at"], Value::Null);
    let stranger = task_cli(&daemon, 1002, &["list"]);
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("no identity issued"));
    audit_verify(&daemon);
}

#[test]
fn entries_bound_who_starts_tasks_and_with_which_tools_and_lifetimes() {
    let daemon = Daemon::start(AGENTS);
    let error = refused(&daemon, 0, &["--purpose", "p", "--tool", "github.comment"]);
    assert!(
        error.contains("PermissionDenied") && error.contains("no identity of the caller may start tasks"),
        "{error}"
    );
    let error = refused(&daemon, WORKER, &["--purpose", "p", "--tool", "github.create_pr"]);
    assert!(
        error.contains(
            "tool github.create_pr is not among the tools spiffe://example.org/agent/worker may declare for tasks"
        ),
        "{error}"
    );
    let error = refused(
        &daemon,
        WORKER,
        &["--purpose", "p", "--tool", "github.comment", "--ttl", "11m"],
    );
    assert!(
        error.contains("a lifetime of 660s exceeds the entry's tasks.max_ttl of 600s"),
        "{error}"
    );
    let error = refused(&daemon, WORKER, &["--purpose", "p", "--tool", "bad tool"]);
    assert!(
        error.contains("InvalidArgument") && error.contains("is not a tool name"),
        "{error}"
    );

    // Each refusal of a caller with an identity is recorded with its reason.
    let records = daemon.audit_records();
    let reasons: Vec<&str> = records_of(&records, "StartTask", "denied")
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no identity of the caller may start tasks")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("tool github.create_pr is not among")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("exceeds the entry's tasks.max_ttl")),
        "{reasons:?}"
    );
    // The worker may still start what its entry allows; without an
    // audience the token is addressed to the worker itself.
    let started = start(&daemon, WORKER, &["--purpose", "p", "--tool", "github.comment"]);
    assert_eq!(
        part(token(&started), 1)["aud"],
        json!(["spiffe://example.org/agent/worker"])
    );
}

/// lead starts a task for helper; helper narrows it for worker.
struct Tree {
    root: Value,
    child: Value,
    grandchild: Value,
}

fn two_level_tree(daemon: &Daemon) -> Tree {
    let root = start(
        daemon,
        LEAD,
        &[
            "--purpose",
            "ship release 2.3",
            "--tool",
            "github.create_pr,github.comment",
            "--resource",
            "repo:acme/web",
            "--resource",
            "repo:acme/api",
            "--audience",
            "spiffe://example.org/agent/helper",
            "--ttl",
            "5m",
        ],
    );
    let child = start(
        daemon,
        HELPER,
        &[
            "--purpose",
            "comment on the web PR",
            "--tool",
            "github.comment",
            "--resource",
            "repo:acme/web",
            "--audience",
            "spiffe://example.org/agent/worker",
            "--parent-token",
            token(&root),
        ],
    );
    let grandchild = start(
        daemon,
        WORKER,
        &[
            "--purpose",
            "post the summary",
            "--tool",
            "github.comment",
            "--resource",
            "repo:acme/web",
            "--audience",
            GATEWAY,
            "--ttl",
            "1m",
            "--parent-token",
            token(&child),
        ],
    );
    Tree {
        root,
        child,
        grandchild,
    }
}

#[test]
fn sub_tasks_narrow_but_never_widen_and_carry_the_act_chain() {
    let daemon = Daemon::start(AGENTS);
    let Tree {
        root,
        child,
        grandchild,
    } = two_level_tree(&daemon);
    let (root_id, child_id) = (
        root["task_id"].as_str().unwrap(),
        child["task_id"].as_str().unwrap(),
    );

    let child_claims = part(token(&child), 1);
    assert_eq!(child_claims["sub"], "spiffe://example.org/agent/helper");
    assert_eq!(child_claims["owner"], "helper-team@example.org");
    assert_eq!(child_claims["task_parents"], json!([root_id]));
    assert_eq!(
        child_claims["act"],
        json!({"sub": "spiffe://example.org/agent/lead"})
    );
    // The default lifetime is cut to the parent's.
    assert!(child_claims["exp"].as_u64() <= part(token(&root), 1)["exp"].as_u64());
    let grand_claims = part(token(&grandchild), 1);
    assert_eq!(grand_claims["sub"], "spiffe://example.org/agent/worker");
    assert_eq!(grand_claims["task_parents"], json!([root_id, child_id]));
    assert_eq!(
        grand_claims["act"],
        json!({"sub": "spiffe://example.org/agent/helper", "act": {"sub": "spiffe://example.org/agent/lead"}})
    );
    for started in [&child, &grandchild] {
        assert!(
            validate(
                &daemon,
                token(started),
                part(token(started), 1)["aud"][0].as_str().unwrap()
            )
            .is_ok()
        );
    }

    // Widening anything is refused, naming what.
    let sub = |extra: &[&str]| {
        let args = [
            &[
                "--purpose",
                "p",
                "--audience",
                GATEWAY,
                "--parent-token",
                token(&root),
            ][..],
            extra,
        ]
        .concat();
        refused(&daemon, HELPER, &args)
    };
    let error = sub(&["--tool", "jira.comment", "--resource", "repo:acme/web"]);
    assert!(
        error.contains(
            "a sub-task may only narrow its parent: tool jira.comment is not among the parent task's tools"
        ),
        "{error}"
    );
    let error = sub(&["--tool", "github.comment", "--resource", "repo:acme/docs"]);
    assert!(
        error.contains("resource \"repo:acme/docs\" is not among the parent task's resources"),
        "{error}"
    );
    let error = sub(&["--tool", "github.comment"]);
    assert!(
        error.contains("the parent task declares resources, so a sub-task must declare some of them"),
        "{error}"
    );
    let error = sub(&[
        "--tool",
        "github.comment",
        "--resource",
        "repo:acme/web",
        "--ttl",
        "8m",
    ]);
    assert!(
        error.contains("a lifetime of 480s would outlast the parent task"),
        "{error}"
    );
    // A token addressed to someone else is not the worker's to narrow.
    let error = refused(
        &daemon,
        WORKER,
        &[
            "--purpose",
            "p",
            "--tool",
            "github.comment",
            "--resource",
            "repo:acme/web",
            "--parent-token",
            token(&root),
        ],
    );
    assert!(
        error.contains("held by spiffe://example.org/agent/lead and its token is not addressed to the caller's identities"),
        "{error}"
    );
    // A plain JWT-SVID is no parent.
    let plain = Command::new(attestd_bin())
        .args([
            "api",
            "fetch",
            "jwt",
            "--audience",
            "x",
            "--socket",
            &daemon.endpoint(),
        ])
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout);
    let plain = plain
        .lines()
        .find_map(|l| l.strip_prefix("Token:"))
        .unwrap()
        .trim()
        .to_owned();
    let error = refused(
        &daemon,
        LEAD,
        &[
            "--purpose",
            "p",
            "--tool",
            "github.comment",
            "--parent-token",
            &plain,
        ],
    );
    assert!(error.contains("parent token: not a task token"), "{error}");

    let records = daemon.audit_records();
    let starts = records_of(&records, "StartTask", "started");
    let grand_record = starts
        .iter()
        .find(|r| r["task"]["id"] == grandchild["task_id"])
        .unwrap();
    assert_eq!(grand_record["task"]["parent"], child_id);
    assert_eq!(
        grand_record["task"]["delegated_by"],
        json!([
            "spiffe://example.org/agent/lead",
            "spiffe://example.org/agent/helper"
        ])
    );
    let widening: Vec<_> = records_of(&records, "StartTask", "denied")
        .into_iter()
        .filter(|r| r["reason"].as_str().unwrap().contains("may only narrow"))
        .collect();
    assert_eq!(widening.len(), 4, "{widening:?}");
    audit_verify(&daemon);
}

#[test]
fn ending_a_task_refuses_its_tokens_and_its_descendants_also_after_a_restart() {
    let daemon = Daemon::start(AGENTS);
    let tree = two_level_tree(&daemon);
    let other = start(
        &daemon,
        LEAD,
        &[
            "--purpose",
            "other",
            "--tool",
            "jira.comment",
            "--audience",
            GATEWAY,
        ],
    );
    let root_id = tree.root["task_id"].as_str().unwrap().to_owned();

    // The child's holder may not end its parent; the parent's holder may.
    let denied = task_cli(&daemon, HELPER, &["end", &root_id]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .contains("is neither held nor delegated by the caller's identities")
    );
    let ended = task_cli(&daemon, LEAD, &["end", &root_id]);
    assert_success(&ended);
    let ended = String::from_utf8_lossy(&ended.stdout);
    for started in [&tree.root, &tree.child, &tree.grandchild] {
        assert!(ended.contains(started["task_id"].as_str().unwrap()), "{ended}");
    }

    let audience = |started: &Value| part(token(started), 1)["aud"][0].as_str().unwrap().to_owned();
    let check_refused = |daemon: &Daemon, started: &Value, ended_id: &str| {
        let reason = refused_within_a_second(daemon, token(started), &audience(started));
        assert!(reason.contains(&format!("task {ended_id} ended")), "{reason}");
    };
    for started in [&tree.root, &tree.child, &tree.grandchild] {
        check_refused(&daemon, started, started["task_id"].as_str().unwrap());
    }
    assert!(validate(&daemon, token(&other), GATEWAY).is_ok());
    let again = task_cli(&daemon, LEAD, &["end", &root_id]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("has already ended"));

    // One Ended record per task, with its facts and who ended it.
    let records = daemon.audit_records();
    let ends = records_of(&records, "EndTask", "ended");
    assert_eq!(ends.len(), 3, "{ends:?}");
    assert_eq!(ends[0]["task"]["id"], root_id.as_str());
    assert_eq!(ends[0]["reason"], "ended by spiffe://example.org/agent/lead");
    assert_eq!(ends[0]["uid"], LEAD);
    assert_eq!(
        ends[1]["reason"],
        format!("ended with its ancestor task {root_id}")
    );
    assert_eq!(ends[1]["task"]["parent"], root_id.as_str());
    assert_eq!(ends[1]["spiffe_id"], "spiffe://example.org/agent/helper");
    assert!(
        ends.iter()
            .all(|r| r["jti"].is_string() && r["task"]["purpose"].is_string())
    );

    // After a crash and a restart on the same state: still refused; the
    // live task still valid. Root (the host's admin) may end any task.
    let dir = daemon.crash();
    let daemon = Daemon::start_in(dir, AGENTS);
    for started in [&tree.root, &tree.grandchild] {
        check_refused(&daemon, started, started["task_id"].as_str().unwrap());
    }
    assert!(validate(&daemon, token(&other), GATEWAY).is_ok());
    let listed = task_cli(&daemon, 0, &["list", "--json"]);
    assert_success(&listed);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    assert_success(&task_cli(
        &daemon,
        0,
        &["end", other["task_id"].as_str().unwrap()],
    ));
    check_refused(&daemon, &other, other["task_id"].as_str().unwrap());
    let records = daemon.audit_records();
    let by_root = records_of(&records, "EndTask", "ended");
    assert_eq!(by_root.last().unwrap()["reason"], "ended by uid 0");
    audit_verify(&daemon);
}

#[test]
fn a_corrupt_task_store_stops_the_daemon_from_starting() {
    let daemon = Daemon::start(AGENTS);
    start(&daemon, LEAD, &["--purpose", "p", "--tool", "jira.comment"]);
    let dir = daemon.crash();
    std::fs::write(dir.path().join("data/tasks.json"), "{ corrupt").unwrap();
    let config = crate::harness::write_config(dir.path(), AGENTS);
    let output = Command::new(attestd_bin())
        .args(["run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("data/tasks.json") && stderr.contains("is corrupt"),
        "{stderr}"
    );
}

/// The venv the test command builds (tests/run-all.sh).
pub fn venv_python() -> PathBuf {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/interop-venv/bin/python"
    ));
    assert!(
        path.exists(),
        "{} is missing: run tests/run-all.sh",
        path.display()
    );
    path
}

#[tokio::test]
async fn task_tokens_validate_with_pyjwt_and_go_spiffe() {
    let body = AGENTS.replace(
        "selectors = [\"unix:uid:0\"]\nowner = \"ops@example.org\"",
        "selectors = [\"unix:uid:0\"]\nowner = \"ops@example.org\"\ntasks = { tools = [\"jira.comment\"] }",
    );
    let daemon = Daemon::start(&body);
    let started = start(
        &daemon,
        0,
        &[
            "--purpose",
            "check interop",
            "--tool",
            "jira.comment",
            "--audience",
            GATEWAY,
        ],
    );
    let task_id = started["task_id"].as_str().unwrap();

    // The JWKS as FetchJWTBundles serves it.
    let mut client = attestd::client::connect(&daemon.socket()).await.unwrap();
    let bundles = attestd::client::fetch_jwt_bundles(&mut client).await.unwrap();
    let jwks = &bundles.bundles["spiffe://example.org"];
    let jwks_file = daemon.dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks).unwrap();

    let output = Command::new(venv_python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/pyjwt_validate.py"
        ))
        .arg(&jwks_file)
        .args([token(&started), GATEWAY])
        .output()
        .unwrap();
    assert_success(&output);
    let claims: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(claims["task_id"], task_id);
    assert_eq!(claims["sub"], "spiffe://example.org/ops");
    assert_eq!(claims["tools"], json!(["jira.comment"]));
    // PyJWT refuses it for another audience: it really checks.
    let other = Command::new(venv_python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/pyjwt_validate.py"
        ))
        .arg(&jwks_file)
        .args([token(&started), "spiffe://example.org/other"])
        .output()
        .unwrap();
    assert!(!other.status.success());

    let output = Command::new(go_client())
        .args([
            "-addr",
            &daemon.endpoint(),
            "-mode",
            "jwt-validate",
            "-audience",
            GATEWAY,
        ])
        .args(["-token", token(&started)])
        .output()
        .unwrap();
    assert_success(&output);
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(parsed["spiffe_id"], "spiffe://example.org/ops");
    assert_eq!(parsed["audience"], json!([GATEWAY]));
    assert_eq!(parsed["claims"]["task_id"], task_id);
    assert_eq!(parsed["claims"]["purpose"], "check interop");
}

#[tokio::test]
async fn every_tasks_rpc_requires_the_security_header() {
    use attestd::proto::agent::tasks_client::TasksClient;
    use attestd::proto::agent::{EndTaskRequest, ListTasksRequest, StartTaskRequest};

    let daemon = Daemon::start(AGENTS);
    let mut raw = TasksClient::new(attestd::client::channel(&daemon.socket()).await.unwrap());
    let start = StartTaskRequest {
        purpose: "p".into(),
        tools: vec!["jira.comment".into()],
        ..StartTaskRequest::default()
    };
    let statuses = [
        raw.start_task(start).await.unwrap_err(),
        raw.end_task(EndTaskRequest {
            task_id: "0".repeat(32),
        })
        .await
        .unwrap_err(),
        raw.list_tasks(ListTasksRequest {}).await.unwrap_err(),
    ];
    for status in statuses {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), "security header missing from request");
    }
    // With the header, the same client is served.
    let mut client = attestd::client::tasks::connect(&daemon.socket()).await.unwrap();
    assert!(
        attestd::client::tasks::list(&mut client)
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
}

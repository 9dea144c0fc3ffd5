//! The policy decision point on the real binary: `Authorize` over gRPC
//! (through `attestd authz check`, run as other uids) and the AuthZEN front
//! over its Unix socket (a small Python HTTP client, run as other uids).
//! Every decision is bound to a live task, refused with its reason and
//! audited otherwise; policies reload live, a broken file keeps the old
//! set and is named by file:line.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    Daemon, attestd_bin, free_loopback_port, http_get, run_as, shared_tempdir, shell, wait_for,
};

const AGENT: &str = "spiffe://example.org/agent";
const GATEWAY: &str = "spiffe://example.org/gateway";
const PR: &str = "github.create_pr";

/// An agent (uid 1000) that may start tasks, and two gateways: uid 65534
/// without the right to ask for others unless `gateway_may_ask`.
fn entries(gateway_may_ask: bool) -> String {
    format!(
        r#"
[[entry]]
spiffe_id = "{AGENT}"
selectors = ["unix:uid:1000"]
owner = "ml-platform@example.org"
labels = {{ agent = "reviewer" }}
tasks = {{ max_ttl = "10m", tools = ["{PR}", "jira.comment"] }}

[[entry]]
spiffe_id = "{GATEWAY}"
selectors = ["unix:uid:65534"]
owner = "gateway-team@example.org"
may_ask_for_others = {gateway_may_ask}
"#
    )
}

const PERMIT_ALL: &str = "@id(\"all\")\npermit(principal, action, resource);\n";

/// A daemon with a policy directory and the AuthZEN front, both in a
/// directory other uids can enter.
struct Pdp {
    daemon: Daemon,
    extra: tempfile::TempDir,
}

impl Pdp {
    fn start(entries: &str, policies: &[(&str, &str)]) -> Self {
        Self::start_with(entries, policies, "")
    }

    fn start_with(entries: &str, policies: &[(&str, &str)], extra_config: &str) -> Self {
        let extra = shared_tempdir();
        let dir = extra.path().join("policies");
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in policies {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let body = format!(
            "policy_dir = \"{}\"\n{extra_config}\n[authz]\nlisten = \"{}\"\n{entries}",
            dir.display(),
            extra.path().join("run/authz.sock").display()
        );
        let daemon = Daemon::start(&body);
        let pdp = Self { daemon, extra };
        wait_for(Duration::from_secs(5), "the AuthZEN socket", || {
            pdp.authz_socket().exists().then_some(())
        });
        pdp
    }

    fn policy(&self, name: &str) -> PathBuf {
        self.extra.path().join("policies").join(name)
    }

    fn authz_socket(&self) -> PathBuf {
        self.extra.path().join("run/authz.sock")
    }

    /// `attestd authz check --json` as `uid` with `args`.
    fn check_as(&self, uid: u32, args: &[&str]) -> Output {
        let mut command = Command::new(attestd_bin());
        command
            .args(["authz", "check", "--json", "--socket"])
            .arg(self.daemon.endpoint())
            .args(args)
            .env_remove("ATTESTD_TASK_TOKEN");
        run_as(uid, uid, &mut command)
    }

    /// One HTTP request to the AuthZEN front as `uid`: the status and the
    /// body as JSON (null if it has none).
    fn authzen_as(&self, uid: u32, method: &str, path: &str, body: &str) -> (u16, Value) {
        // The body goes through a file: it may exceed what one argument can hold.
        let body_file = tempfile::NamedTempFile::new_in(self.extra.path()).unwrap();
        std::fs::write(body_file.path(), body).unwrap();
        std::fs::set_permissions(
            body_file.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let mut command = Command::new("/usr/bin/python3");
        command
            .args(["-c", HTTP_CLIENT])
            .arg(self.authz_socket())
            .args([method, path])
            .arg(body_file.path());
        let output = run_as(uid, uid, &mut command);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
        let body = serde_json::from_str(body).unwrap_or(Value::Null);
        (status.trim().parse().unwrap(), body)
    }

    /// Every decision record so far.
    fn decisions(&self) -> Vec<Value> {
        self.daemon
            .audit_records()
            .into_iter()
            .filter(|record| record["rpc"] == "Authorize")
            .collect()
    }

    /// The decision record named `id`.
    fn decision(&self, id: &Value) -> Value {
        self.decisions()
            .into_iter()
            .find(|record| &record["decision"]["id"] == id)
            .unwrap_or_else(|| panic!("no record of decision {id}"))
    }
}

/// An HTTP/1.1 client over a Unix socket, sending the body read from a
/// file: prints the status, a newline, the body. Raw, so that a server
/// answering before it has read the whole body (413) is still heard.
const HTTP_CLIENT: &str = r#"
import socket, sys
path, method, url, body_file = sys.argv[1:5]
body = open(body_file, "rb").read()
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(path)
head = (f"{method} {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
try:
    s.sendall(head + body)
except (BrokenPipeError, ConnectionResetError):
    pass
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
head, _, rest = data.partition(b"\r\n\r\n")
print(head.split(b" ")[1].decode())
print(rest.decode())
"#;

/// The JSON `attestd authz check --json` printed, and whether it exited 0.
fn decision_of(output: &Output) -> (bool, Value) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let printed = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), printed)
}

fn evaluation(subject: Value, action: &str, resource: (&str, &str), context: Value) -> String {
    json!({
        "subject": subject,
        "action": {"name": action},
        "resource": {"type": resource.0, "id": resource.1},
        "context": context,
    })
    .to_string()
}

/// A plain JWT-SVID of the agent (uid 1000), for `audience`.
fn plain_jwt_svid(daemon: &Daemon, audience: &str) -> String {
    let mut command = Command::new(attestd_bin());
    command
        .args(["api", "fetch", "jwt", "--audience", audience, "--socket"])
        .arg(daemon.endpoint());
    let output = run_as(1000, 1000, &mut command);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("Token:"))
        .map(|token| token.trim().to_owned())
        .expect("a token")
}

#[test]
fn without_a_task_token_or_with_a_plain_jwt_svid_every_decision_is_refused_and_audited() {
    let pdp = Pdp::start(&entries(false), &[("all.cedar", PERMIT_ALL)]);
    let resource = ["--action", PR, "--resource", "repo:attestd"];

    let (allowed, printed) = decision_of(&pdp.check_as(1000, &resource));
    assert!(!allowed, "exit 1 on deny");
    assert_eq!(printed["decision"], "deny");
    assert_eq!(printed["reasons"], json!([]));
    assert_eq!(
        printed["refusal"],
        "no task token: every decision is bound to a live task"
    );
    let record = pdp.decision(&printed["decision_id"]);
    assert_eq!(record["outcome"], "denied");
    assert_eq!(record["reason"], printed["refusal"]);
    assert_eq!(record["uid"], 1000);
    assert_eq!(record["spiffe_id"], AGENT);
    assert_eq!(record["owner"], "ml-platform@example.org");
    assert_eq!(record["decision"]["action"], PR);
    assert_eq!(record["decision"]["resource"], "repo:attestd");

    // A valid JWT-SVID of the caller, but not a task token: even a policy
    // permitting everything does not apply.
    let token = plain_jwt_svid(&pdp.daemon, GATEWAY);
    let mut with_token = resource.to_vec();
    with_token.extend(["--token", &token]);
    let (allowed, printed) = decision_of(&pdp.check_as(1000, &with_token));
    assert!(!allowed);
    let refusal = printed["refusal"].as_str().unwrap();
    assert!(refusal.starts_with("task token refused: "), "{refusal}");
    let record = pdp.decision(&printed["decision_id"]);
    assert_eq!(record["outcome"], "denied");
    assert_eq!(record["reason"], refusal);

    // Every decision has its own record (none rate-limited or summarised).
    for _ in 0..3 {
        pdp.check_as(1000, &resource);
    }
    assert_eq!(pdp.decisions().len(), 5);
    let verify = Command::new(attestd_bin())
        .args(["audit", "verify"])
        .arg(pdp.daemon.audit_path())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn a_gateway_without_may_ask_for_others_is_refused() {
    let pdp = Pdp::start(&entries(false), &[("all.cedar", PERMIT_ALL)]);
    let token = plain_jwt_svid(&pdp.daemon, GATEWAY);
    let body = evaluation(
        json!({"type": "task_token", "id": token}),
        PR,
        ("repo", "attestd"),
        json!({}),
    );
    let (status, answer) = pdp.authzen_as(65534, "POST", "/access/v1/evaluation", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], false);
    assert_eq!(
        answer["context"]["refusal"],
        format!("the caller ({GATEWAY}) may not ask for others: none of its entries sets may_ask_for_others")
    );
    let record = pdp.decision(&answer["context"]["decision_id"]);
    assert_eq!(record["outcome"], "denied");
    assert_eq!(record["uid"], 65534);
    assert_eq!(record["spiffe_id"], GATEWAY);
}

#[test]
fn the_authzen_front_answers_its_shape_and_refuses_what_it_cannot_decide() {
    let pdp = Pdp::start(&entries(true), &[("all.cedar", PERMIT_ALL)]);
    let evaluate = "/access/v1/evaluation";

    // The caller names itself, without a token: refused, with the shape.
    let itself = json!({"type": "spiffe_id", "id": AGENT});
    let body = evaluation(itself.clone(), PR, ("repo", "attestd"), json!({"branch": "main"}));
    let (status, answer) = pdp.authzen_as(1000, "POST", evaluate, &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], false);
    let context = answer["context"].as_object().unwrap();
    assert_eq!(context["decision_id"].as_str().unwrap().len(), 32);
    assert_eq!(context["reasons"], json!([]));
    assert_eq!(
        context["refusal"],
        "no task token: every decision is bound to a live task"
    );

    // A subject that is not the caller is never believed.
    let (_, answer) = pdp.authzen_as(65534, "POST", evaluate, &body);
    assert!(
        answer["context"]["refusal"]
            .as_str()
            .unwrap()
            .starts_with(&format!("the subject {AGENT} is not the caller")),
        "{answer}"
    );
    let record = pdp.decision(&answer["context"]["decision_id"]);
    assert_eq!(
        (record["uid"].clone(), record["outcome"].clone()),
        (json!(65534), json!("denied"))
    );

    // A token in the context that is not a task token.
    let token = plain_jwt_svid(&pdp.daemon, GATEWAY);
    let body = evaluation(itself, PR, ("repo", "attestd"), json!({"task_token": token}));
    let (_, answer) = pdp.authzen_as(1000, "POST", evaluate, &body);
    assert!(
        answer["context"]["refusal"]
            .as_str()
            .unwrap()
            .starts_with("task token refused: "),
        "{answer}"
    );

    // Requests that cannot be decided.
    let (status, answer) = pdp.authzen_as(1000, "POST", evaluate, "{not json");
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().starts_with("invalid request: "),
        "{answer}"
    );
    let deep = json!({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}});
    let body = evaluation(json!({"type": "task_token", "id": "t"}), PR, ("repo", "x"), deep);
    let (status, answer) = pdp.authzen_as(1000, "POST", evaluate, &body);
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "context: at most 8 levels deep (got 9)");
    let huge = evaluation(
        json!({"type": "task_token", "id": "t".repeat(200_000)}),
        PR,
        ("repo", "x"),
        json!({}),
    );
    assert_eq!(pdp.authzen_as(1000, "POST", evaluate, &huge).0, 413);
    assert_eq!(pdp.authzen_as(1000, "GET", evaluate, "").0, 405);
    assert_eq!(
        pdp.authzen_as(1000, "POST", "/access/v1/evaluations", "{}").0,
        404
    );
    // A caller without any identity gets none of it.
    let body = evaluation(
        json!({"type": "task_token", "id": "t"}),
        PR,
        ("repo", "x"),
        json!({}),
    );
    let (status, answer) = pdp.authzen_as(1001, "POST", evaluate, &body);
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"], "no identity issued");
}

#[test]
fn malformed_requests_are_refused_before_attestation() {
    let pdp = Pdp::start(&entries(false), &[]);
    let output = pdp.check_as(1000, &["--action", "two words", "--resource", "repo:x"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("InvalidArgument: action \"two words\""),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = pdp.check_as(1000, &["--action", PR, "--resource", "no-colon"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected type:id"));
    let deep = r#"{"a": [[[[[[[["too deep"]]]]]]]]}"#;
    let output = pdp.check_as(1000, &["--action", PR, "--resource", "repo:x", "--context", deep]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("levels deep"));
    // Recorded as denials of the connection's uid, without attestation.
    let refused: Vec<Value> = pdp
        .decisions()
        .into_iter()
        .filter(|r| r["decision"].is_null())
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r["uid"] == 1000 && r["selectors"] == json!([]))
    );
}

#[test]
fn a_broken_policy_file_keeps_the_set_in_effect_and_is_named_by_file_and_line() {
    let health = free_loopback_port();
    let pdp = Pdp::start_with(
        &entries(false),
        &[("all.cedar", PERMIT_ALL)],
        &format!("[health]\nlisten = \"{health}\""),
    );
    let failed = || {
        let (_, text) = http_get(&health, "/metrics");
        text.lines()
            .find(|line| line.starts_with("attestd_authz_policy_reloads_total{outcome=\"Failed\"}"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(failed(), 0);
    std::fs::write(
        pdp.policy("broken.cedar"),
        "// a policy with an attribute no agent has\npermit(principal, action, resource)\n  when { principal.nickname == \"x\" };\n",
    )
    .unwrap();
    let named = wait_for(
        Duration::from_secs(10),
        &format!("the broken file named in the log {}", pdp.daemon.log()),
        || {
            pdp.daemon
                .log()
                .lines()
                .find(|line| line.contains("broken.cedar:3: "))
                .map(str::to_owned)
        },
    );
    assert!(named.contains("nickname"), "{named}");
    // The summary line follows the file's own error line: wait for it too.
    pdp.daemon
        .wait_for_log(Duration::from_secs(5), "keeping the previous policy set");
    wait_for(Duration::from_secs(5), "the failed reload counted", || {
        (failed() >= 1).then_some(())
    });

    // Fixed: the new set takes effect, no restart.
    std::fs::write(pdp.policy("broken.cedar"), PERMIT_ALL.replace("all", "fixed")).unwrap();
    pdp.daemon
        .wait_for_log(Duration::from_secs(10), "new policy set in effect policies=2");

    // SIGHUP reloads too.
    std::fs::write(
        pdp.policy("dup.cedar"),
        "@id(\"fixed\")\nforbid(principal, action, resource);\n",
    )
    .unwrap();
    nix::sys::signal::kill(pdp.daemon.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    pdp.daemon.wait_for_log(
        Duration::from_secs(10),
        "dup.cedar:1: duplicate policy id \"fixed\"",
    );
}

#[test]
fn a_broken_policy_fails_the_start_with_its_file_and_line() {
    let extra = shared_tempdir();
    std::fs::write(
        extra.path().join("bad.cedar"),
        "\npermit(principal, action, resource) when { nope };\n",
    )
    .unwrap();
    let dir = shared_tempdir();
    let config = crate::harness::write_config(
        dir.path(),
        &format!("policy_dir = \"{}\"\n{}", extra.path().display(), entries(false)),
    );
    let output = Command::new(attestd_bin())
        .args(["run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.cedar:2: "), "{stderr}");
}

// ---- With task tokens: these need the tasks branch (`attestd task start`).

/// `attestd task start` as `uid` (the CLI given by `cli`): the task id and
/// its token.
fn start_task(daemon: &Daemon, cli: &str, uid: u32, args: &[&str]) -> (String, String) {
    let mut command = Command::new(cli);
    command
        .args(["task", "start", "--json", "--purpose", "review PR 7", "--socket"])
        .arg(daemon.endpoint())
        .args(args);
    let output = run_as(uid, uid, &mut command);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let started: Value = serde_json::from_slice(&output.stdout).unwrap();
    (
        started["task_id"].as_str().unwrap().to_owned(),
        started["token"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn a_policy_edit_changes_decisions_without_restart() {
    let pdp = Pdp::start(&entries(false), &[("all.cedar", PERMIT_ALL)]);
    let (_, token) = start_task(&pdp.daemon, attestd_bin(), 1000, &["--tool", PR]);
    let ask = || {
        decision_of(&pdp.check_as(
            1000,
            &["--action", PR, "--resource", "repo:attestd", "--token", &token],
        ))
    };
    let (allowed, printed) = ask();
    assert!(allowed, "{printed}");
    assert_eq!(printed["reasons"], json!(["all"]));
    let record = pdp.decision(&printed["decision_id"]);
    assert_eq!(record["outcome"], "allowed");
    assert_eq!(record["task"]["purpose"], "review PR 7");
    assert_eq!(record["decision"]["policies"], json!(["all"]));

    std::fs::write(
        pdp.policy("main-only.cedar"),
        "@id(\"no PRs on attestd\")\nforbid(principal, action == Attestd::Action::\"github.create_pr\", resource) when { resource.id == \"attestd\" };\n",
    )
    .unwrap();
    let printed = wait_for(Duration::from_secs(10), "the forbid in effect", || {
        let (allowed, printed) = ask();
        (!allowed).then_some(printed)
    });
    assert_eq!(printed["reasons"], json!(["no PRs on attestd"]));
    assert!(
        printed.get("refusal").is_none(),
        "a policy decision, not a refusal"
    );
}

#[test]
fn a_tool_outside_the_declared_tools_is_refused_even_where_policy_permits() {
    let pdp = Pdp::start(&entries(false), &[("all.cedar", PERMIT_ALL)]);
    let (_, token) = start_task(
        &pdp.daemon,
        attestd_bin(),
        1000,
        &["--tool", PR, "--resource", "repo:attestd"],
    );
    let ask = |action: &str, resource: &str| {
        decision_of(&pdp.check_as(
            1000,
            &["--action", action, "--resource", resource, "--token", &token],
        ))
    };
    let (allowed, printed) = ask("jira.comment", "repo:attestd");
    assert!(!allowed);
    assert!(
        printed["refusal"]
            .as_str()
            .unwrap()
            .starts_with("tool jira.comment is not among the task's declared tools"),
        "{printed}"
    );
    let (allowed, printed) = ask(PR, "repo:other");
    assert!(!allowed);
    assert!(
        printed["refusal"]
            .as_str()
            .unwrap()
            .starts_with("resource repo:other is not among")
    );
    assert!(ask(PR, "repo:attestd").0);
}

#[test]
fn two_agents_of_one_uid_are_told_apart_by_their_executable() {
    // Two copies of the CLI, one a byte longer: two executables, one uid.
    let bin = shared_tempdir();
    let (a, b) = (bin.path().join("agent-a"), bin.path().join("agent-b"));
    shell(&format!(
        "cp {cli} {a} && cp {cli} {b} && printf x >> {b} && chmod 755 {a} {b}",
        cli = attestd_bin(),
        a = a.display(),
        b = b.display()
    ));
    let sha = |path: &PathBuf| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
    };
    let entries = format!(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/agent-a"
selectors = ["unix:uid:1000", "unix:sha256:{}"]
owner = "a@example.org"
tasks = {{ tools = ["{PR}"] }}

[[entry]]
spiffe_id = "spiffe://example.org/agent-b"
selectors = ["unix:uid:1000", "unix:sha256:{}"]
owner = "b@example.org"
tasks = {{ tools = ["{PR}"] }}
"#,
        sha(&a),
        sha(&b)
    );
    let policy = format!(
        "@id(\"only agent a\")\npermit(principal, action, resource) when {{ principal has exe_sha256 && principal.exe_sha256 == \"{}\" }};\n",
        sha(&a)
    );
    let pdp = Pdp::start(&entries, &[("exe.cedar", &policy)]);
    let decide = |cli: &PathBuf| {
        let (_, token) = start_task(&pdp.daemon, cli.to_str().unwrap(), 1000, &["--tool", PR]);
        let mut command = Command::new(cli);
        command
            .args([
                "authz",
                "check",
                "--json",
                "--action",
                PR,
                "--resource",
                "repo:x",
                "--token",
                &token,
            ])
            .arg("--socket")
            .arg(pdp.daemon.endpoint());
        decision_of(&run_as(1000, 1000, &mut command))
    };
    let (allowed_a, printed_a) = decide(&a);
    let (allowed_b, printed_b) = decide(&b);
    assert!(allowed_a, "{printed_a}");
    assert!(!allowed_b, "{printed_b}");
    assert!(
        printed_b.get("refusal").is_none(),
        "denied by policy: {printed_b}"
    );
}

#[test]
fn a_gateway_asks_for_an_agent_with_a_token_addressed_to_it() {
    let pdp = Pdp::start(
        &entries(true),
        &[(
            "labels.cedar",
            "@id(\"reviewers\")\npermit(principal, action, resource) when { principal.labels has agent && principal.labels.agent == \"reviewer\" };\n",
        )],
    );
    let (task_id, token) = start_task(
        &pdp.daemon,
        attestd_bin(),
        1000,
        &["--tool", PR, "--audience", GATEWAY],
    );
    let body = evaluation(
        json!({"type": "task_token", "id": token}),
        PR,
        ("repo", "attestd"),
        json!({}),
    );
    let (status, answer) = pdp.authzen_as(65534, "POST", "/access/v1/evaluation", &body);
    assert_eq!(status, 200);
    assert_eq!(answer["decision"], true, "{answer}");
    assert_eq!(answer["context"]["reasons"], json!(["reviewers"]));
    let record = pdp.decision(&answer["context"]["decision_id"]);
    assert_eq!(record["spiffe_id"], AGENT, "the principal is the agent");
    assert_eq!(record["uid"], 65534, "the caller is the gateway");
    assert_eq!(record["decision"]["asked_by"], GATEWAY);
    assert_eq!(record["task"]["id"], task_id.as_str());

    // A token addressed to another gateway.
    let (_, elsewhere) = start_task(
        &pdp.daemon,
        attestd_bin(),
        1000,
        &["--tool", PR, "--audience", "spiffe://example.org/other-gateway"],
    );
    let body = evaluation(
        json!({"type": "task_token", "id": elsewhere}),
        PR,
        ("repo", "attestd"),
        json!({}),
    );
    let (_, answer) = pdp.authzen_as(65534, "POST", "/access/v1/evaluation", &body);
    assert_eq!(answer["decision"], false);
    assert!(
        answer["context"]["refusal"]
            .as_str()
            .unwrap()
            .starts_with("the task token is not addressed to the caller"),
        "{answer}"
    );

    // An ended task's token.
    let mut end = Command::new(attestd_bin());
    end.args(["task", "end", &task_id, "--socket"])
        .arg(pdp.daemon.endpoint());
    assert!(run_as(1000, 1000, &mut end).status.success());
    let body = evaluation(
        json!({"type": "task_token", "id": token}),
        PR,
        ("repo", "attestd"),
        json!({}),
    );
    let answer = wait_for(Duration::from_secs(10), "the ended task refused", || {
        let (_, answer) = pdp.authzen_as(65534, "POST", "/access/v1/evaluation", &body);
        (answer["decision"] == false).then_some(answer)
    });
    assert!(
        answer["context"]["refusal"]
            .as_str()
            .unwrap()
            .starts_with("task token refused: ")
    );
}

#[tokio::test]
async fn authorize_needs_the_security_header_and_an_identity() {
    use attestd::proto::agent::AuthorizeRequest;
    use attestd::proto::agent::authorization_client::AuthorizationClient;

    let pdp = Pdp::start(&entries(false), &[]);
    let request = || AuthorizeRequest {
        action: PR.into(),
        resource: "repo:x".into(),
        context: None,
        token: String::new(),
    };
    let channel = attestd::client::channel(&pdp.daemon.socket()).await.unwrap();
    let status = AuthorizationClient::new(channel)
        .authorize(request())
        .await
        .expect_err("no security header");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "security header missing from request");

    // This process (root) holds no identity here: nothing to decide about.
    let channel = attestd::client::channel(&pdp.daemon.socket()).await.unwrap();
    let status = AuthorizationClient::with_interceptor(channel, attestd::client::SecurityHeader)
        .authorize(request())
        .await
        .expect_err("no identity");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "no identity issued");
}

//! `attestd audit trace`: rebuilds from the audit trail the chain of action
//! of agents' tasks, as a tree an incident responder reads top-down: the
//! process that started a task (its kernel-attested facts), the entry and
//! its accountable owner, the declared intent, the token it got, every
//! policy decision made on the task, its sub-tasks nested under it with
//! their own decisions, and the end of each task.
//!
//! What is shown:
//! - `--task ID`: that task with everything under it; the tasks above it
//!   are summarised on one line each (`ancestors`), since their own
//!   decisions are not what was asked (trace the root for the whole tree);
//! - `--spiffe-id ID`: every task of that identity that is not itself under
//!   another of its tasks, each with everything under it (sub-tasks
//!   delegated to other agents included);
//! - `--since TIME`: only tasks active at or after TIME (started, decided
//!   on or ended), and in them only the decisions and events since; a task
//!   that started earlier keeps its start facts.
//!
//! A task's process, entry and token come from its `StartTask` record; a
//! task whose start is not in the files given (rotated away) is still shown
//! from its other records, with `started_at` null. The files are read in
//! the order given (oldest first, as for `audit verify`); a line that
//! cannot be read or is not a record is reported in `problems`, not fatal.
//! The trace does not check the hash chain: `audit verify` does.
//!
//! `--json` prints [`Trace`] as one JSON document; its field names are
//! stable, and `format` changes only if they do.

mod build;
mod read;
mod text;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::rfc3339;

/// The version of the JSON shape of [`Trace`].
pub const TRACE_FORMAT: u32 = 1;

/// Tasks nested deeper than this under the task shown are left out (and
/// reported): a trail is read on an operator's terminal, and a chain of
/// sub-tasks must not exhaust it.
pub const MAX_DEPTH: usize = 64;

/// What `--since` could not read.
#[derive(Debug, thiserror::Error)]
#[error("--since {0:?}: neither an RFC 3339 time (2030-06-01T12:00:00Z) nor a duration ago (2h)")]
pub struct SinceError(String);

/// The tasks to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// One task and everything under it.
    Task(String),
    /// Every task tree of one identity.
    SpiffeId(String),
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceQuery {
    /// Which tasks.
    pub select: Select,
    /// Only what happened at or after this.
    pub since: Option<SystemTime>,
}

/// The query as the output echoes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryFacts {
    /// `--task`.
    pub task: Option<String>,
    /// `--spiffe-id`.
    pub spiffe_id: Option<String>,
    /// `--since`, RFC 3339.
    pub since: Option<String>,
}

/// The trace: `audit trace --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// [`TRACE_FORMAT`].
    pub format: u32,
    /// What was asked.
    pub query: QueryFacts,
    /// Records read.
    pub records: u64,
    /// The task trees found, in the order they started.
    pub trees: Vec<TaskTree>,
    /// Lines and files that could not be read, and tasks left out.
    pub problems: Vec<TraceProblem>,
}

/// One tree: a task with everything under it, and the path above it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTree {
    /// The tasks above it, outermost first.
    pub ancestors: Vec<Ancestor>,
    /// The task.
    pub task: TaskNode,
}

/// A task above the one shown, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    /// Its id.
    pub task_id: String,
    /// The identity that held it (null if its start is not in the trail).
    pub spiffe_id: Option<String>,
    /// Its entry's owner (null likewise).
    pub owner: Option<String>,
    /// Its declared purpose (null if no record of it is in the trail).
    pub purpose: Option<String>,
}

/// One task: who started it, what it declared, what was decided on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNode {
    /// Its id.
    pub task_id: String,
    /// Its parent's id, for a sub-task.
    pub parent_id: Option<String>,
    /// `seq` of its `StartTask` record (or of its first record when that
    /// is not in the trail).
    pub seq: Option<u64>,
    /// When it started (null if its start is not in the trail).
    pub started_at: Option<String>,
    /// The process that started it.
    pub process: Option<Process>,
    /// The entry it was started under.
    pub entry: Option<EntryFacts>,
    /// What it declared.
    pub intent: Intent,
    /// The tokens issued for it.
    pub tokens: Vec<Token>,
    /// Every policy decision on it, in order.
    pub decisions: Vec<Decision>,
    /// Other records about it: refused requests, validations of its token.
    pub events: Vec<Event>,
    /// Its sub-tasks, in the order they started.
    pub subtasks: Vec<TaskNode>,
    /// Its end, once ended.
    pub ended: Option<Ended>,
}

/// The kernel-attested facts of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Its pid.
    pub pid: Option<i32>,
    /// Its uid.
    pub uid: Option<u32>,
    /// Its gid.
    pub gid: Option<u32>,
    /// Its executable.
    pub exe_path: Option<String>,
    /// Lowercase hex sha256 of its executable.
    pub sha256: Option<String>,
    /// Its systemd unit (`systemd:id`).
    pub systemd_unit: Option<String>,
    /// Its container (`container:id`).
    pub container_id: Option<String>,
    /// Every selector it had.
    pub selectors: Vec<String>,
}

/// The registration entry and its actor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryFacts {
    /// The identity.
    pub spiffe_id: Option<String>,
    /// The entry id.
    pub entry_id: Option<String>,
    /// Where the entry is written (`file:line`).
    pub location: Option<String>,
    /// The accountable owner.
    pub owner: Option<String>,
    /// The entry's description.
    pub description: Option<String>,
    /// The entry's labels.
    pub labels: BTreeMap<String, String>,
}

/// The intent a task declared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The declared purpose.
    pub purpose: String,
    /// The declared tools.
    pub tools: Vec<String>,
    /// The declared resources (empty: any the policy allows).
    pub resources: Vec<String>,
    /// The agents that delegated it, outermost first.
    pub delegated_by: Vec<String>,
    /// sha256 over the sorted selectors of the process it was started for.
    pub attestation: Option<String>,
}

/// A token issued for a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Its `jti`.
    pub jti: Option<String>,
    /// Its `exp`, RFC 3339.
    pub expires_at: Option<String>,
    /// Its `aud`.
    pub audience: Vec<String>,
}

/// A policy decision on a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// `seq` of its record.
    pub seq: Option<u64>,
    /// When, RFC 3339.
    pub time: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// The decision id returned to the asker.
    pub decision_id: String,
    /// The tool.
    pub action: String,
    /// The resource, `type:id`.
    pub resource: String,
    /// The ids of the policies that determined it.
    pub policies: Vec<String>,
    /// Policy evaluation errors.
    pub errors: Vec<String>,
    /// Why, as recorded.
    pub reason: String,
    /// The gateway that asked on the agent's behalf.
    pub asked_by: Option<String>,
    /// The pid of the process that asked.
    pub pid: Option<i32>,
}

/// Another record about a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `seq` of its record.
    pub seq: Option<u64>,
    /// When, RFC 3339.
    pub time: String,
    /// The RPC.
    pub rpc: String,
    /// The record's outcome.
    pub outcome: String,
    /// Its reason.
    pub reason: String,
    /// The pid of the caller.
    pub pid: Option<i32>,
    /// The identity the record names.
    pub spiffe_id: Option<String>,
}

/// A task's end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// `seq` of its record.
    pub seq: Option<u64>,
    /// When, RFC 3339.
    pub time: String,
    /// Why, as recorded.
    pub reason: String,
    /// The pid of the process that ended it.
    pub pid: Option<i32>,
}

/// A line or file that could not be read, or tasks left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceProblem {
    /// The file (empty for a problem with the tree).
    pub file: String,
    /// 1-based line (0: the whole file).
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for TraceProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.file.is_empty(), self.line) {
            (true, _) => write!(f, "{}", self.problem),
            (false, 0) => write!(f, "{}: {}", self.file, self.problem),
            (false, line) => write!(f, "{}:{line}: {}", self.file, self.problem),
        }
    }
}

/// Reads `files` (oldest first) and rebuilds the task trees `query` asks
/// for. Never fails: what cannot be read is in `problems`.
pub fn trace(files: &[PathBuf], query: &TraceQuery) -> Trace {
    let mut problems = Vec::new();
    let mut index = build::Index::default();
    let records = read::read(files, &mut problems, |line| index.add(line));
    let trees = index.select(query, &mut problems);
    Trace {
        format: TRACE_FORMAT,
        query: QueryFacts {
            task: match &query.select {
                Select::Task(id) => Some(id.clone()),
                Select::SpiffeId(_) => None,
            },
            spiffe_id: match &query.select {
                Select::SpiffeId(id) => Some(id.clone()),
                Select::Task(_) => None,
            },
            since: query.since.map(rfc3339),
        },
        records,
        trees,
        problems,
    }
}

/// `--since`: an RFC 3339 time (`2030-06-01T12:00:00Z`, an offset, or a
/// bare date for its UTC midnight), or a duration (`2h`, `1d`) before `now`.
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, SinceError> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return Ok(now.checked_sub(duration).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    text.parse::<toml::value::Datetime>()
        .ok()
        .and_then(|datetime| system_time(&datetime))
        .ok_or_else(|| SinceError(text.to_owned()))
}

/// A TOML (RFC 3339) date-time as a point in time; without an offset it is
/// taken as UTC.
fn system_time(datetime: &toml::value::Datetime) -> Option<SystemTime> {
    let day = datetime.date?;
    let date = time::Date::from_calendar_date(
        i32::from(day.year),
        time::Month::try_from(day.month).ok()?,
        day.day,
    )
    .ok()?;
    let clock = match datetime.time {
        Some(t) => time::Time::from_hms_nano(t.hour, t.minute, t.second, t.nanosecond).ok()?,
        None => time::Time::MIDNIGHT,
    };
    let offset_minutes = match datetime.offset {
        Some(toml::value::Offset::Custom { minutes }) => minutes,
        Some(toml::value::Offset::Z) | None => 0,
    };
    let offset = time::UtcOffset::from_whole_seconds(i32::from(offset_minutes) * 60).ok()?;
    let moment = time::PrimitiveDateTime::new(date, clock).assume_offset(offset);
    let seconds = u64::try_from(moment.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(seconds, moment.nanosecond()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::attest::Workload;
    use crate::audit::{AuditLog, DecisionFacts, OnAuditFailure, Outcome, Record, Rotation, TaskFacts};
    use crate::config::Config;
    use crate::registry::{Entry, Policy};
    use crate::selector::Selector;

    const POLICY: &str = r#"trust_domain = "example.org"
[[entry]]
spiffe_id = "spiffe://example.org/agent/reviewer"
selectors = ["unix:uid:1000", "systemd:id:reviewer.service"]
owner = "ml-platform@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/agent/commenter"
selectors = ["unix:uid:1001"]
owner = "support@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/gateway"
selectors = ["unix:uid:1002"]
owner = "platform@example.org"
may_ask_for_others = true
"#;
    const REVIEWER: &str = "spiffe://example.org/agent/reviewer";
    const COMMENTER: &str = "spiffe://example.org/agent/commenter";
    const GATEWAY: &str = "spiffe://example.org/gateway";

    struct Trail {
        entries: Vec<Arc<Entry>>,
        records: Vec<Record>,
    }

    fn workload(pid: i32, uid: u32, exe: &str, selectors: &[&str]) -> Workload {
        Workload {
            pid,
            uid,
            gid: uid,
            exe_path: Some(exe.into()),
            sha256: Some(format!("{pid:064x}")),
            selectors: selectors.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            notes: Vec::new(),
            login_uid: None,
        }
    }

    fn task(
        id: &str,
        parent: Option<&str>,
        purpose: &str,
        tools: &[&str],
        delegated_by: &[&str],
    ) -> TaskFacts {
        TaskFacts {
            id: id.into(),
            parent: parent.map(Into::into),
            purpose: purpose.into(),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            resources: vec!["repo:acme/app".into()],
            delegated_by: delegated_by.iter().map(|d| d.to_string()).collect(),
            attestation: Some("ab".repeat(32)),
        }
    }

    fn decision(
        id: &str,
        action: &str,
        resource: &str,
        policies: &[&str],
        asked_by: Option<&str>,
    ) -> DecisionFacts {
        DecisionFacts {
            id: id.into(),
            action: action.into(),
            resource: resource.into(),
            policies: policies.iter().map(|p| p.to_string()).collect(),
            errors: Vec::new(),
            asked_by: asked_by.map(Into::into),
        }
    }

    impl Trail {
        fn new() -> Self {
            let config = Config::parse(Path::new("policy.toml"), POLICY).unwrap();
            Self {
                entries: Policy::load(&config).unwrap().entries().to_vec(),
                records: Vec::new(),
            }
        }

        /// Adds a record at 2030-06-01T12:00:`second`Z.
        fn push(&mut self, second: u32, record: Record) {
            let mut record = record;
            record.time = format!("2030-06-01T12:00:{second:02}.000Z");
            self.records.push(record);
        }

        fn start(&mut self, second: u32, who: &Workload, entry: usize, facts: TaskFacts, jti: &str) {
            let exp = humantime::parse_rfc3339("2030-06-01T12:10:00Z").unwrap();
            let record = Record::new("StartTask", Outcome::Started, "task started", Some(who))
                .with_entry(&self.entries[entry])
                .with_task(facts)
                .with_audience(&[GATEWAY.to_owned()])
                .with_token(Some(jti), Some(exp));
            self.push(second, record);
        }

        fn decide(
            &mut self,
            second: u32,
            who: &Workload,
            entry: usize,
            (outcome, reason): (Outcome, &str),
            facts: TaskFacts,
            d: DecisionFacts,
        ) {
            let record = Record::new("Authorize", outcome, reason, Some(who))
                .with_entry(&self.entries[entry])
                .with_task(facts)
                .with_decision(d);
            self.push(second, record);
        }

        /// Writes the records with the real audit writer, rotating often,
        /// and returns the files oldest first.
        fn write(self, dir: &Path) -> Vec<PathBuf> {
            let path = dir.join("audit.jsonl");
            let rotation = Rotation {
                max_bytes: 4096,
                keep: 20,
            };
            let log = AuditLog::open(&path, rotation, OnAuditFailure::Refuse).unwrap();
            for record in self.records {
                log.write([record]).unwrap();
            }
            let mut files: Vec<PathBuf> = (1..=20)
                .rev()
                .map(|n| dir.join(format!("audit.jsonl.{n}")))
                .filter(|p| p.exists())
                .collect();
            assert!(files.len() >= 2, "the trail spans rotated files");
            files.push(path);
            files
        }
    }

    /// Two agents: the reviewer starts T1 and delegates sub-task T2 to the
    /// commenter; a gateway asks about T1's token; the commenter asks about
    /// its own; both end. The reviewer then starts T3.
    fn two_level_trail(dir: &Path) -> Vec<PathBuf> {
        let mut trail = Trail::new();
        let reviewer = workload(
            4242,
            1000,
            "/usr/bin/reviewer",
            &["unix:uid:1000", "systemd:id:reviewer.service"],
        );
        let commenter = workload(
            4343,
            1001,
            "/usr/bin/commenter",
            &["unix:uid:1001", &format!("container:id:{}", "c".repeat(64))],
        );
        let gateway = workload(5000, 1002, "/usr/bin/gateway", &["unix:uid:1002"]);
        let t1 = || {
            task(
                "T1",
                None,
                "review PR 42",
                &["github.create_pr", "jira.comment"],
                &[],
            )
        };
        let t2 = || {
            task(
                "T2",
                Some("T1"),
                "comment on JIRA-1",
                &["jira.comment"],
                &[REVIEWER],
            )
        };

        trail.push(
            0,
            Record::new("FetchX509SVID", Outcome::Issued, "fetched", Some(&reviewer))
                .with_entry(&trail.entries[0]),
        );
        trail.start(1, &reviewer, 0, t1(), "jti-1");
        let allowed = decision(
            "d-1",
            "github.create_pr",
            "repo:acme/app",
            &["policy0"],
            Some(GATEWAY),
        );
        trail.decide(
            2,
            &gateway,
            0,
            (Outcome::Allowed, "permitted by policy"),
            t1(),
            allowed,
        );
        trail.start(3, &commenter, 1, t2(), "jti-2");
        let refused = decision("d-2", "jira.comment", "issue:JIRA-1", &[], None);
        trail.decide(
            4,
            &commenter,
            1,
            (Outcome::Denied, "no policy permits it"),
            t2(),
            refused,
        );
        trail.push(
            5,
            Record::new("ValidateJWTSVID", Outcome::Validated, "valid", Some(&gateway))
                .with_subject(COMMENTER)
                .with_token(Some("jti-2"), None),
        );
        let widened = TaskFacts {
            id: String::new(),
            ..task("", Some("T2"), "widen", &["github.merge"], &[REVIEWER, COMMENTER])
        };
        trail.push(
            6,
            Record::new(
                "StartTask",
                Outcome::Denied,
                "github.merge is not among the parent's tools",
                Some(&commenter),
            )
            .with_entry(&trail.entries[1])
            .with_task(widened),
        );
        trail.push(
            7,
            Record::new("EndTask", Outcome::Ended, "ended by its holder", Some(&commenter))
                .with_entry(&trail.entries[1])
                .with_task(t2()),
        );
        trail.push(
            8,
            Record::new("EndTask", Outcome::Ended, "ended by its holder", Some(&reviewer))
                .with_entry(&trail.entries[0])
                .with_task(t1()),
        );
        trail.start(
            9,
            &reviewer,
            0,
            task("T3", None, "triage", &["jira.comment"], &[]),
            "jti-3",
        );
        let files = trail.write(dir);
        let last = files.last().unwrap();
        let mut text = std::fs::read_to_string(last).unwrap();
        text.push_str("{torn\n");
        std::fs::write(last, text).unwrap();
        files
    }

    fn query(select: Select, since: Option<&str>) -> TraceQuery {
        TraceQuery {
            select,
            since: since.map(|s| humantime::parse_rfc3339(s).unwrap()),
        }
    }

    #[test]
    fn rebuilds_a_two_level_task_tree_with_every_decision() {
        let dir = tempfile::tempdir().unwrap();
        let files = two_level_trail(dir.path());
        let trace = trace(&files, &query(Select::Task("T1".into()), None));

        assert_eq!(trace.records, 10);
        assert_eq!(trace.problems.len(), 1, "{:?}", trace.problems);
        assert_eq!(
            trace.problems[0].file,
            files.last().unwrap().display().to_string()
        );
        assert!(trace.problems[0].problem.starts_with("not an audit record"));

        assert_eq!(trace.trees.len(), 1);
        let tree = &trace.trees[0];
        assert!(tree.ancestors.is_empty());
        let t1 = &tree.task;
        assert_eq!(t1.task_id, "T1");
        let process = t1.process.as_ref().unwrap();
        assert_eq!((process.pid, process.uid), (Some(4242), Some(1000)));
        assert_eq!(process.systemd_unit.as_deref(), Some("reviewer.service"));
        let entry = t1.entry.as_ref().unwrap();
        assert_eq!(entry.spiffe_id.as_deref(), Some(REVIEWER));
        assert_eq!(entry.location.as_deref(), Some("policy.toml:2"));
        assert_eq!(entry.owner.as_deref(), Some("ml-platform@example.org"));
        assert_eq!(t1.intent.purpose, "review PR 42");
        assert_eq!(t1.tokens[0].jti.as_deref(), Some("jti-1"));
        assert_eq!(t1.tokens[0].audience, [GATEWAY]);
        assert_eq!(t1.decisions.len(), 1);
        assert_eq!(t1.decisions[0].decision, "allow");
        assert_eq!(t1.decisions[0].asked_by.as_deref(), Some(GATEWAY));
        assert_eq!(t1.decisions[0].pid, Some(5000));
        assert_eq!(t1.ended.as_ref().unwrap().reason, "ended by its holder");

        assert_eq!(t1.subtasks.len(), 1);
        let t2 = &t1.subtasks[0];
        assert_eq!((t2.task_id.as_str(), t2.parent_id.as_deref()), ("T2", Some("T1")));
        assert_eq!(t2.process.as_ref().unwrap().container_id, Some("c".repeat(64)));
        assert_eq!(t2.intent.delegated_by, [REVIEWER]);
        assert_eq!(t2.decisions[0].decision, "deny");
        assert_eq!(t2.decisions[0].reason, "no policy permits it");
        let events: Vec<(&str, &str)> = t2
            .events
            .iter()
            .map(|e| (e.rpc.as_str(), e.outcome.as_str()))
            .collect();
        assert_eq!(
            events,
            [("ValidateJWTSVID", "validated"), ("StartTask", "denied")]
        );
        assert!(t2.ended.is_some());
        assert!(
            t2.subtasks.is_empty(),
            "the refused sub-task is an event, not a task"
        );

        let (sha1, sha2, container) = (format!("{:064x}", 4242), format!("{:064x}", 4343), "c".repeat(64));
        let expected = format!(
            "task T1  started 2030-06-01T12:00:01.000Z
├─ process  pid 4242, uid 1000, gid 1000, exe /usr/bin/reviewer, sha256 {sha1}, unit reviewer.service
├─ entry    spiffe://example.org/agent/reviewer [policy.toml:2]
├─ owner    ml-platform@example.org
├─ intent   \"review PR 42\"; tools github.create_pr, jira.comment; resources repo:acme/app
├─ token    jti jti-1, expires 2030-06-01T12:10:00.000Z, audience spiffe://example.org/gateway
├─ 2030-06-01T12:00:02.000Z  ALLOW github.create_pr on repo:acme/app  policies policy0  reason \"permitted by policy\"  asked by spiffe://example.org/gateway  (decision d-1)
├─ sub-task T2  started 2030-06-01T12:00:03.000Z
│  ├─ process  pid 4343, uid 1001, gid 1001, exe /usr/bin/commenter, sha256 {sha2}, container {container}
│  ├─ entry    spiffe://example.org/agent/commenter [policy.toml:7]
│  ├─ owner    support@example.org
│  ├─ intent   \"comment on JIRA-1\"; tools jira.comment; resources repo:acme/app; delegated by spiffe://example.org/agent/reviewer
│  ├─ token    jti jti-2, expires 2030-06-01T12:10:00.000Z, audience spiffe://example.org/gateway
│  ├─ 2030-06-01T12:00:04.000Z  DENY  jira.comment on issue:JIRA-1  reason \"no policy permits it\"  (decision d-2)
│  ├─ 2030-06-01T12:00:05.000Z  ValidateJWTSVID validated (pid 5000): \"valid\"
│  ├─ 2030-06-01T12:00:06.000Z  StartTask denied (pid 4343): \"github.merge is not among the parent's tools\"
│  └─ 2030-06-01T12:00:07.000Z  ended: \"ended by its holder\"
└─ 2030-06-01T12:00:08.000Z  ended: \"ended by its holder\"
",
        );
        assert_eq!(trace.to_string(), expected);
    }

    #[test]
    fn a_sub_task_shows_the_path_above_it_and_an_identity_its_own_trees() {
        let dir = tempfile::tempdir().unwrap();
        let files = two_level_trail(dir.path());

        let t2 = trace(&files, &query(Select::Task("T2".into()), None));
        let ancestors = &t2.trees[0].ancestors;
        assert_eq!(ancestors.len(), 1);
        assert_eq!(ancestors[0].task_id, "T1");
        assert_eq!(ancestors[0].spiffe_id.as_deref(), Some(REVIEWER));
        assert_eq!(ancestors[0].purpose.as_deref(), Some("review PR 42"));
        assert!(
            t2.to_string().starts_with(
                "under task T1 \"review PR 42\" of spiffe://example.org/agent/reviewer\ntask T2  started"
            ),
            "{t2}"
        );

        let reviewer = trace(&files, &query(Select::SpiffeId(REVIEWER.into()), None));
        let roots: Vec<&str> = reviewer.trees.iter().map(|t| t.task.task_id.as_str()).collect();
        assert_eq!(roots, ["T1", "T3"], "T2 is the commenter's, nested in T1");
        assert_eq!(reviewer.trees[0].task.subtasks[0].task_id, "T2");

        let commenter = trace(&files, &query(Select::SpiffeId(COMMENTER.into()), None));
        let roots: Vec<&str> = commenter.trees.iter().map(|t| t.task.task_id.as_str()).collect();
        assert_eq!(roots, ["T2"]);
        assert_eq!(commenter.trees[0].ancestors[0].task_id, "T1");

        let nobody = trace(&files, &query(Select::SpiffeId(GATEWAY.into()), None));
        assert!(nobody.trees.is_empty());
        assert_eq!(
            nobody.to_string(),
            "no task of spiffe://example.org/gateway in 10 records\n"
        );
        let unknown = trace(&files, &query(Select::Task("T9".into()), None));
        assert_eq!(unknown.to_string(), "no task T9 in 10 records\n");
    }

    #[test]
    fn since_keeps_active_tasks_and_what_happened_since() {
        let dir = tempfile::tempdir().unwrap();
        let files = two_level_trail(dir.path());
        let since = Some("2030-06-01T12:00:03Z");
        let trace = trace(&files, &query(Select::SpiffeId(REVIEWER.into()), since));
        let t1 = &trace.trees[0].task;
        assert_eq!(t1.task_id, "T1");
        assert_eq!(
            t1.started_at.as_deref(),
            Some("2030-06-01T12:00:01.000Z"),
            "start facts kept"
        );
        assert!(t1.decisions.is_empty(), "the decision before --since is left out");
        assert_eq!(t1.subtasks[0].decisions.len(), 1);
        assert_eq!(trace.query.since.as_deref(), Some("2030-06-01T12:00:03.000Z"));

        let late = super::trace(
            &files,
            &query(Select::SpiffeId(REVIEWER.into()), Some("2030-06-01T12:00:09Z")),
        );
        let roots: Vec<&str> = late.trees.iter().map(|t| t.task.task_id.as_str()).collect();
        assert_eq!(roots, ["T3"], "T1 was not active since");
    }

    #[test]
    fn json_has_stable_names_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = two_level_trail(dir.path());
        let trace = trace(&files, &query(Select::Task("T1".into()), None));
        let json = serde_json::to_string(&trace).unwrap();
        assert_eq!(serde_json::from_str::<Trace>(&json).unwrap(), trace);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["format"], TRACE_FORMAT);
        assert_eq!(value["query"]["task"], "T1");
        let t1 = &value["trees"][0]["task"];
        assert_eq!(t1["process"]["systemd_unit"], "reviewer.service");
        assert_eq!(t1["entry"]["owner"], "ml-platform@example.org");
        assert_eq!(t1["intent"]["tools"][1], "jira.comment");
        assert_eq!(t1["tokens"][0]["expires_at"], "2030-06-01T12:10:00.000Z");
        assert_eq!(t1["decisions"][0]["decision_id"], "d-1");
        assert_eq!(t1["subtasks"][0]["decisions"][0]["decision"], "deny");
        assert_eq!(t1["ended"]["reason"], "ended by its holder");
        assert!(value["problems"][0]["line"].is_u64());
    }

    #[test]
    fn caller_chosen_text_cannot_forge_lines_on_the_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let mut trail = Trail::new();
        let evil = workload(1, 1000, "/tmp/x\n└─ 2030 ALLOW everything", &["unix:uid:1000"]);
        let facts = task("T1", None, "ok\u{1b}[2J\u{202e}", &["jira.comment"], &[]);
        trail.start(1, &evil, 0, facts.clone(), "jti");
        let d = decision("d", "jira.comment", "issue:1\nforged", &[], None);
        trail.decide(2, &evil, 0, (Outcome::Denied, "no"), facts, d);
        trail
            .records
            .extend((0..40).map(|_| Record::new("FetchX509SVID", Outcome::Issued, "x".repeat(100), None)));
        let files = trail.write(dir.path());
        let text = trace(&files, &query(Select::Task("T1".into()), None)).to_string();
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'), "{text}");
        assert_eq!(text.lines().count(), 7, "one line per item:\n{text}");
        assert!(text.contains("exe /tmp/x\\n└─ 2030 ALLOW everything"), "{text}");
        assert!(text.contains("on issue:1\\nforged"), "{text}");
    }

    #[test]
    fn since_reads_rfc3339_and_durations_ago() {
        let now = humantime::parse_rfc3339("2030-06-01T12:00:00Z").unwrap();
        let at = |text| rfc3339(parse_since(text, now).unwrap());
        assert_eq!(at("2h"), "2030-06-01T10:00:00.000Z");
        assert_eq!(at("1day"), "2030-05-31T12:00:00.000Z");
        assert_eq!(at("2030-05-01T08:30:00Z"), "2030-05-01T08:30:00.000Z");
        assert_eq!(at("2030-05-01T08:30:00.250+02:00"), "2030-05-01T06:30:00.250Z");
        assert_eq!(
            at("2030-05-01T08:30:00"),
            "2030-05-01T08:30:00.000Z",
            "no offset: UTC"
        );
        assert_eq!(at("2030-05-01"), "2030-05-01T00:00:00.000Z");
        for bad in ["yesterday", "2030-13-01", "12:00:00", ""] {
            let error = parse_since(bad, now).unwrap_err().to_string();
            assert!(error.contains("neither an RFC 3339 time"), "{bad}: {error}");
        }
    }
}

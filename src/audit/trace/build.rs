//! The task index: every record about a task, gathered by task id as the
//! trail is read, and the trees a query selects from it.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use super::read::{AuditLine, Line};
use super::{
    Ancestor, Decision, Ended, EntryFacts, Event, Intent, MAX_DEPTH, Process, Select, TaskNode, TaskTree,
    Token, TraceProblem, TraceQuery,
};
use crate::audit::TaskFacts;

/// Outcomes as the audit trail spells them.
const STARTED: &str = "started";
const ENDED: &str = "ended";
const ALLOWED: &str = "allowed";

/// Something that happened, with where and when it stands in the trail.
#[derive(Debug)]
struct Timed<T> {
    at: Option<SystemTime>,
    item: T,
}

/// What the `StartTask` record says.
#[derive(Debug)]
struct Start {
    seq: Option<u64>,
    time: String,
    process: Process,
    entry: Option<EntryFacts>,
}

/// Everything the trail says about one task.
#[derive(Debug, Default)]
struct Task {
    /// Position of its first record: the order tasks are shown in.
    first: u64,
    first_seq: Option<u64>,
    parent: Option<String>,
    intent: Option<Intent>,
    start: Option<Timed<Start>>,
    tokens: Vec<Token>,
    decisions: Vec<Timed<Decision>>,
    events: Vec<Timed<Event>>,
    end: Option<Timed<Ended>>,
}

impl Task {
    /// The identity that started it.
    fn holder(&self) -> Option<&str> {
        self.start.as_ref()?.item.entry.as_ref()?.spiffe_id.as_deref()
    }
}

/// The records of the trail, by task.
#[derive(Debug, Default)]
pub(super) struct Index {
    tasks: HashMap<String, Task>,
    /// Task token `jti` → task id: validations of a task's token are its
    /// events.
    by_jti: HashMap<String, String>,
}

impl Index {
    /// Files one record under the task it is about (if any).
    pub(super) fn add(&mut self, line: Line) {
        let Line {
            position,
            at,
            mut record,
        } = line;
        if let Some(facts) = record.task.take() {
            self.add_task_record(position, at, facts, record);
        } else if let Some(id) = record.jti.as_ref().and_then(|jti| self.by_jti.get(jti)).cloned() {
            let task = self.task(&id, position, record.seq);
            task.events.push(Timed {
                at,
                item: event(record),
            });
        }
    }

    fn add_task_record(
        &mut self,
        position: u64,
        at: Option<SystemTime>,
        facts: TaskFacts,
        record: AuditLine,
    ) {
        let started = record.outcome == STARTED && record.decision.is_none();
        let ended = record.outcome == ENDED && record.decision.is_none();
        // A record of no task of its own (a refused sub-task, say) is an
        // event of the task it was asked under.
        let own = !facts.id.is_empty()
            && (started || ended || record.decision.is_some() || self.tasks.contains_key(&facts.id));
        let id = match (own, &facts.parent) {
            (true, _) => facts.id.clone(),
            (false, Some(parent)) => parent.clone(),
            (false, None) if !facts.id.is_empty() => facts.id.clone(),
            (false, None) => return,
        };
        let task = self.task(&id, position, record.seq);
        if id == facts.id {
            if task.parent.is_none() {
                task.parent = facts.parent.clone();
            }
            if task.intent.is_none() || started {
                task.intent = Some(intent(&facts));
            }
        }
        if let Some(decision) = &record.decision {
            let item = Decision {
                seq: record.seq,
                time: record.time.clone(),
                decision: if record.outcome == ALLOWED {
                    "allow"
                } else {
                    "deny"
                }
                .to_owned(),
                decision_id: decision.id.clone(),
                action: decision.action.clone(),
                resource: decision.resource.clone(),
                policies: decision.policies.clone(),
                errors: decision.errors.clone(),
                reason: record.reason,
                asked_by: decision.asked_by.clone(),
                pid: record.pid,
            };
            task.decisions.push(Timed { at, item });
        } else if started && task.start.is_none() {
            let token = Token {
                jti: record.jti.clone(),
                expires_at: record.not_after.clone(),
                audience: record.audience.clone(),
            };
            if token.jti.is_some() || token.expires_at.is_some() {
                task.tokens.push(token);
            }
            if let Some(jti) = &record.jti {
                self.by_jti.insert(jti.clone(), id.clone());
            }
            let task = self.task(&id, position, record.seq);
            task.start = Some(Timed {
                at,
                item: Start {
                    seq: record.seq,
                    time: record.time.clone(),
                    process: process(&record),
                    entry: entry(&record),
                },
            });
        } else if ended && task.end.is_none() {
            let item = Ended {
                seq: record.seq,
                time: record.time,
                reason: record.reason,
                pid: record.pid,
            };
            task.end = Some(Timed { at, item });
        } else {
            task.events.push(Timed {
                at,
                item: event(record),
            });
        }
    }

    /// The task `id`, created at `position` if it is new.
    fn task(&mut self, id: &str, position: u64, seq: Option<u64>) -> &mut Task {
        self.tasks.entry(id.to_owned()).or_insert_with(|| Task {
            first: position,
            first_seq: seq,
            ..Task::default()
        })
    }

    /// The trees `query` asks for, in the order their tasks started.
    pub(super) fn select(&self, query: &TraceQuery, problems: &mut Vec<TraceProblem>) -> Vec<TaskTree> {
        let children = self.children();
        let selected: Vec<&str> = match &query.select {
            Select::Task(id) => self
                .tasks
                .get_key_value(id)
                .map(|(id, _)| id.as_str())
                .into_iter()
                .collect(),
            Select::SpiffeId(spiffe_id) => {
                self.in_order()
                    .into_iter()
                    .filter(|(id, task)| {
                        task.holder() == Some(spiffe_id.as_str())
                            && !self.ancestor_ids(id).iter().any(|a| {
                                self.tasks.get(*a).and_then(Task::holder) == Some(spiffe_id.as_str())
                            })
                    })
                    .map(|(id, _)| id)
                    .collect()
            }
        };
        selected
            .into_iter()
            .filter_map(|id| {
                let mut render = Render {
                    index: self,
                    children: &children,
                    since: query.since,
                    visited: HashSet::new(),
                    problems: &mut *problems,
                };
                let task = render.node(id, 0)?;
                Some(TaskTree {
                    ancestors: self.ancestors(id),
                    task,
                })
            })
            .collect()
    }

    /// Every task, in the order of its first record.
    fn in_order(&self) -> Vec<(&str, &Task)> {
        let mut all: Vec<(&str, &Task)> = self.tasks.iter().map(|(id, task)| (id.as_str(), task)).collect();
        all.sort_by_key(|(_, task)| task.first);
        all
    }

    /// Each task's sub-tasks, in the order they appear.
    fn children(&self) -> HashMap<&str, Vec<&str>> {
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for (id, task) in self.in_order() {
            if let Some(parent) = &task.parent {
                children.entry(parent.as_str()).or_default().push(id);
            }
        }
        children
    }

    /// The ids above `id`, nearest first (stopping at a cycle, a task not
    /// in the trail's records, or [`MAX_DEPTH`]).
    fn ancestor_ids<'a>(&'a self, id: &'a str) -> Vec<&'a str> {
        let mut seen = HashSet::from([id]);
        let mut out = Vec::new();
        let mut next = self.tasks.get(id).and_then(|task| task.parent.as_deref());
        while let Some(parent) = next {
            if !seen.insert(parent) || out.len() >= MAX_DEPTH {
                break;
            }
            out.push(parent);
            next = self.tasks.get(parent).and_then(|task| task.parent.as_deref());
        }
        out
    }

    /// The tasks above `id`, summarised, outermost first.
    fn ancestors(&self, id: &str) -> Vec<Ancestor> {
        let mut out: Vec<Ancestor> = self
            .ancestor_ids(id)
            .into_iter()
            .map(|ancestor| {
                let task = self.tasks.get(ancestor);
                let entry = task
                    .and_then(|t| t.start.as_ref())
                    .and_then(|s| s.item.entry.as_ref());
                Ancestor {
                    task_id: ancestor.to_owned(),
                    spiffe_id: entry.and_then(|e| e.spiffe_id.clone()),
                    owner: entry.and_then(|e| e.owner.clone()),
                    purpose: task.and_then(|t| t.intent.as_ref()).map(|i| i.purpose.clone()),
                }
            })
            .collect();
        out.reverse();
        out
    }
}

/// Turns the index into the nodes of one tree.
struct Render<'a> {
    index: &'a Index,
    children: &'a HashMap<&'a str, Vec<&'a str>>,
    since: Option<SystemTime>,
    /// Tasks already in this tree: parent links that loop are cut.
    visited: HashSet<&'a str>,
    problems: &'a mut Vec<TraceProblem>,
}

impl<'a> Render<'a> {
    /// The node of task `id` at `depth`, or `None` if neither it nor any
    /// task under it was active since `since`.
    fn node(&mut self, id: &'a str, depth: usize) -> Option<TaskNode> {
        let task = self.index.tasks.get(id)?;
        if !self.visited.insert(id) {
            self.problem(format!(
                "task {id} is its own ancestor (parent links loop): shown once"
            ));
            return None;
        }
        let subtasks = self.subtasks(id, depth);
        let since = |at: &Option<SystemTime>| self.since.is_none_or(|s| at.is_some_and(|at| at >= s));
        let decisions: Vec<Decision> = task
            .decisions
            .iter()
            .filter(|d| since(&d.at))
            .map(|d| d.item.clone())
            .collect();
        let events: Vec<Event> = task
            .events
            .iter()
            .filter(|e| since(&e.at))
            .map(|e| e.item.clone())
            .collect();
        let active = self.since.is_none()
            || task.start.as_ref().is_some_and(|s| since(&s.at))
            || task.end.as_ref().is_some_and(|e| since(&e.at))
            || !decisions.is_empty()
            || !events.is_empty()
            || !subtasks.is_empty();
        if !active {
            return None;
        }
        let start = task.start.as_ref().map(|s| &s.item);
        Some(TaskNode {
            task_id: id.to_owned(),
            parent_id: task.parent.clone(),
            seq: start.map_or(task.first_seq, |s| s.seq),
            started_at: start.map(|s| s.time.clone()),
            process: start.map(|s| s.process.clone()),
            entry: start.and_then(|s| s.entry.clone()),
            intent: task.intent.clone().unwrap_or_default(),
            tokens: task.tokens.clone(),
            decisions,
            events,
            subtasks,
            ended: task.end.as_ref().map(|e| e.item.clone()),
        })
    }

    fn subtasks(&mut self, id: &'a str, depth: usize) -> Vec<TaskNode> {
        let all: &'a HashMap<&'a str, Vec<&'a str>> = self.children;
        let children: &'a [&'a str] = all.get(id).map(Vec::as_slice).unwrap_or_default();
        if depth + 1 >= MAX_DEPTH && !children.is_empty() {
            self.problem(format!(
                "task {id}: {} sub-tasks deeper than {MAX_DEPTH} levels left out (trace them with --task)",
                children.len()
            ));
            return Vec::new();
        }
        children
            .iter()
            .filter_map(|&child| self.node(child, depth + 1))
            .collect()
    }

    fn problem(&mut self, problem: String) {
        self.problems.push(TraceProblem {
            file: String::new(),
            line: 0,
            problem,
        });
    }
}

fn intent(facts: &TaskFacts) -> Intent {
    Intent {
        purpose: facts.purpose.clone(),
        tools: facts.tools.clone(),
        resources: facts.resources.clone(),
        delegated_by: facts.delegated_by.clone(),
        attestation: facts.attestation.clone(),
    }
}

/// The caller's attested facts, with its unit and container picked out of
/// the selectors.
fn process(record: &AuditLine) -> Process {
    let selector = |prefix: &str| {
        record
            .selectors
            .iter()
            .find_map(|s| s.strip_prefix(prefix))
            .map(str::to_owned)
    };
    Process {
        pid: record.pid,
        uid: record.uid,
        gid: record.gid,
        exe_path: record.exe_path.clone(),
        sha256: record.sha256.clone(),
        systemd_unit: selector("systemd:id:"),
        container_id: selector("container:id:"),
        selectors: record.selectors.clone(),
    }
}

fn entry(record: &AuditLine) -> Option<EntryFacts> {
    if record.entry.is_none() && record.spiffe_id.is_none() {
        return None;
    }
    Some(EntryFacts {
        spiffe_id: record.spiffe_id.clone(),
        entry_id: record.entry.clone(),
        location: record.entry_location.clone(),
        owner: record.owner.clone(),
        description: record.description.clone(),
        labels: record.labels.clone(),
    })
}

fn event(record: AuditLine) -> Event {
    Event {
        seq: record.seq,
        time: record.time,
        rpc: record.rpc,
        outcome: record.outcome,
        reason: record.reason,
        pid: record.pid,
        spiffe_id: record.spiffe_id,
    }
}

//! The task store: every task attestd minted a token for and whose token
//! may still be valid somewhere, live or ended, kept in
//! `<data_dir>/tasks.json` (0600, replaced atomically). A task is forgotten
//! only once its token has expired past the validation leeway: until then
//! its ended state must survive restarts, or an ended task's token would
//! validate again.
//!
//! The store is bounded: live tasks per SPIFFE ID and host-wide, and the
//! bytes remembered (live and ended tasks) per SPIFFE ID and host-wide, so
//! an entitled agent that starts and ends tasks in a loop cannot make
//! attestd hold, or rewrite, more than that.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{AgentFacts, TaskError};
use crate::spiffe_id::SpiffeId;

/// The store's file in the data directory.
pub const FILE: &str = "tasks.json";
/// The file format this code writes and reads.
const FORMAT: u32 = 1;

/// One task, as attestd keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// The task's id.
    pub id: String,
    /// Its ancestors' ids, root first (empty for a top-level task).
    pub parents: Vec<String>,
    /// The agent holding it (its token's `sub`).
    pub spiffe_id: SpiffeId,
    /// The agents that delegated it, outermost first (its `act` chain).
    pub delegated_by: Vec<SpiffeId>,
    /// The id of the entry it was started under.
    pub entry: String,
    /// The entry's owner when it started.
    pub owner: String,
    /// The declared purpose.
    pub purpose: String,
    /// The declared tools.
    pub tools: Vec<String>,
    /// The declared resources (empty: any the policy allows).
    pub resources: Vec<String>,
    /// Its token's audiences.
    pub audience: Vec<String>,
    /// Its token's `jti`.
    pub jti: String,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds: its token's `exp`.
    pub expires_at: u64,
    /// Unix seconds; `None` while live.
    pub ended_at: Option<u64>,
    /// What attestation established about the agent that started it.
    pub agent: AgentFacts,
    /// The `attestation` claim: sha256 over the starter's sorted selectors.
    pub attestation: String,
}

impl Task {
    /// Whether the task has not ended (its token may still have expired).
    pub fn is_live(&self) -> bool {
        self.ended_at.is_none()
    }

    /// The parent task's id, for a sub-task.
    pub fn parent(&self) -> Option<&str> {
        self.parents.last().map(String::as_str)
    }
}

/// How much the store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLimits {
    /// Live tasks one SPIFFE ID may hold.
    pub live_per_spiffe_id: usize,
    /// Live tasks host-wide.
    pub live: usize,
    /// Bytes of tasks (live and ended, until their tokens expire) one
    /// SPIFFE ID may make attestd remember.
    pub bytes_per_spiffe_id: usize,
    /// Bytes of tasks host-wide: also what one change rewrites at most.
    pub bytes: usize,
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            live_per_spiffe_id: 256,
            live: 8192,
            bytes_per_spiffe_id: 4 << 20,
            bytes: 64 << 20,
        }
    }
}

/// A task and the bytes it takes in the file.
#[derive(Debug, Clone)]
struct Kept {
    task: Task,
    bytes: usize,
}

impl Kept {
    fn new(task: Task) -> Self {
        let bytes = weight(&task);
        Self { task, bytes }
    }
}

/// The bytes `task` takes in the file.
fn weight(task: &Task) -> usize {
    // A struct of strings and numbers always serializes.
    serde_json::to_vec(task).map_or(0, |json| json.len())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredTasks {
    format: u32,
    tasks: Vec<Task>,
}

/// The tasks, by id.
#[derive(Debug, Default)]
pub(super) struct Store {
    tasks: BTreeMap<String, Kept>,
}

impl Store {
    /// Reads the store's file (none yet: an empty store). A file that
    /// cannot be read or understood is an error: forgetting it would
    /// revive every task ended in it.
    pub fn load(path: &Path) -> Result<Self, TaskError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(TaskError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let corrupt = |reason: String| TaskError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let stored: StoredTasks = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if stored.format != FORMAT {
            return Err(corrupt(format!(
                "format {} (this attestd reads format {FORMAT})",
                stored.format
            )));
        }
        let tasks = stored
            .tasks
            .into_iter()
            .map(|task| (task.id.clone(), Kept::new(task)))
            .collect();
        Ok(Self { tasks })
    }

    /// The file's contents.
    pub fn to_json(&self) -> Vec<u8> {
        let stored = StoredTasks {
            format: FORMAT,
            tasks: self.tasks.values().map(|kept| kept.task.clone()).collect(),
        };
        // Strings, numbers and lists: serialization cannot fail.
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// Forgets tasks whose tokens expired before `horizon` (unix seconds):
    /// no validator accepts them any more. Returns whether any went.
    pub fn prune(&mut self, horizon: u64) -> bool {
        let before = self.tasks.len();
        self.tasks.retain(|_, kept| kept.task.expires_at >= horizon);
        self.tasks.len() != before
    }

    /// Why `task` may not be added, if the limits say so.
    pub fn refuse(&self, task: &Task, limits: &TaskLimits) -> Option<String> {
        let adding = weight(task);
        let (mut live, mut live_of_id, mut bytes, mut bytes_of_id) = (0, 0, adding, adding);
        for kept in self.tasks.values() {
            let same_id = kept.task.spiffe_id == task.spiffe_id;
            live += usize::from(kept.task.is_live());
            live_of_id += usize::from(kept.task.is_live() && same_id);
            bytes += kept.bytes;
            bytes_of_id += if same_id { kept.bytes } else { 0 };
        }
        let id = &task.spiffe_id;
        if live_of_id >= limits.live_per_spiffe_id {
            return Some(format!(
                "{id} holds {live_of_id} live tasks, the most one identity may: end some first"
            ));
        }
        if live >= limits.live {
            return Some(format!(
                "attestd holds {live} live tasks, the most it keeps: try again once some end"
            ));
        }
        if bytes_of_id > limits.bytes_per_spiffe_id {
            return Some(format!(
                "{id}'s tasks (live, and ended ones until their tokens expire) would take over \
                 {} bytes: try again once some expire, or declare less",
                limits.bytes_per_spiffe_id
            ));
        }
        if bytes > limits.bytes {
            return Some(format!(
                "attestd's tasks would take over {} bytes: try again once some expire",
                limits.bytes
            ));
        }
        None
    }

    pub fn insert(&mut self, task: Task) {
        self.tasks.insert(task.id.clone(), Kept::new(task));
    }

    pub fn remove(&mut self, id: &str) {
        self.tasks.remove(id);
    }

    pub fn get(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id).map(|kept| &kept.task)
    }

    /// Every task, by id.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|kept| &kept.task)
    }

    /// Ends task `id` and every live task below it at `now`; returns the
    /// tasks ended, `id` first and the others level by level (none if it
    /// had already ended).
    pub fn end(&mut self, id: &str, now: u64) -> Vec<Task> {
        let live = |kept: &&mut Kept| kept.task.is_live();
        let Some(task) = self.tasks.get_mut(id).filter(live) else {
            return Vec::new();
        };
        task.task.ended_at = Some(now);
        let mut ended = vec![task.task.clone()];
        for kept in self.tasks.values_mut() {
            if kept.task.is_live() && kept.task.parents.iter().any(|parent| parent == id) {
                kept.task.ended_at = Some(now);
                ended.push(kept.task.clone());
            }
        }
        ended.sort_by(|a, b| {
            (a.parents.len(), a.started_at, &a.id).cmp(&(b.parents.len(), b.started_at, &b.id))
        });
        ended
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A live task of `holder` below `parents`, expiring at `expires_at`.
    pub fn task(id: &str, parents: &[&str], holder: &str, expires_at: u64) -> Task {
        Task {
            id: id.into(),
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/{holder}")).unwrap(),
            delegated_by: Vec::new(),
            entry: "e".into(),
            owner: "o@example.org".into(),
            purpose: "p".into(),
            tools: vec!["t".into()],
            resources: Vec::new(),
            audience: vec!["a".into()],
            jti: format!("jti-{id}"),
            started_at: 100,
            expires_at,
            ended_at: None,
            agent: AgentFacts::default(),
            attestation: "ab".into(),
        }
    }

    #[test]
    fn ending_a_task_ends_its_live_descendants_only() {
        let mut store = Store::default();
        store.insert(task("root", &[], "a", 1000));
        store.insert(task("zchild", &["root"], "b", 1000));
        store.insert(task("grandchild", &["root", "zchild"], "c", 1000));
        store.insert(task("other", &[], "a", 1000));
        let ended: Vec<_> = store.end("zchild", 500).into_iter().map(|t| t.id).collect();
        assert_eq!(ended, ["zchild", "grandchild"]);
        let ended: Vec<_> = store.end("root", 600).into_iter().map(|t| t.id).collect();
        assert_eq!(ended, ["root"], "descendants already ended keep their time");
        assert_eq!(store.get("grandchild").unwrap().ended_at, Some(500));
        assert!(store.get("other").unwrap().is_live());
        assert!(store.end("root", 700).is_empty());
        // Level by level, whatever the ids.
        let mut tree = Store::default();
        tree.insert(task("root", &[], "a", 1000));
        tree.insert(task("zchild", &["root"], "b", 1000));
        tree.insert(task("grandchild", &["root", "zchild"], "c", 1000));
        let ended: Vec<_> = tree.end("root", 500).into_iter().map(|t| t.id).collect();
        assert_eq!(ended, ["root", "zchild", "grandchild"]);
        assert!(store.end("unknown", 700).is_empty());
    }

    #[test]
    fn it_survives_a_reload_and_prunes_expired_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut store = Store::default();
        store.insert(task("old", &[], "a", 100));
        store.insert(task("new", &[], "a", 200));
        store.end("new", 150);
        std::fs::write(&path, store.to_json()).unwrap();
        let mut loaded = Store::load(&path).unwrap();
        assert_eq!(loaded.get("new"), store.get("new"));
        assert!(loaded.prune(150));
        assert!(loaded.get("old").is_none() && loaded.get("new").is_some());
        assert!(!loaded.prune(150));
        assert!(
            Store::load(&dir.path().join("missing"))
                .unwrap()
                .get("new")
                .is_none()
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        for bad in [&b"{not json"[..], br#"{"format":2,"tasks":[]}"#] {
            std::fs::write(&path, bad).unwrap();
            let error = Store::load(&path).unwrap_err().to_string();
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
    }

    #[test]
    fn limits_bound_live_tasks_and_bytes_per_identity_and_host_wide() {
        let limits = TaskLimits {
            live_per_spiffe_id: 2,
            live: 3,
            bytes_per_spiffe_id: 10_000,
            bytes: 100_000,
        };
        let mut store = Store::default();
        store.insert(task("1", &[], "a", 1000));
        store.insert(task("2", &[], "a", 1000));
        let refusal = store.refuse(&task("3", &[], "a", 1000), &limits).unwrap();
        assert!(
            refusal.contains("spiffe://example.org/a holds 2 live tasks"),
            "{refusal}"
        );
        assert_eq!(store.refuse(&task("3", &[], "b", 1000), &limits), None);
        store.end("2", 10);
        assert_eq!(store.refuse(&task("3", &[], "a", 1000), &limits), None);
        store.insert(task("3", &[], "b", 1000));
        store.insert(task("4", &[], "c", 1000));
        let refusal = store.refuse(&task("5", &[], "d", 1000), &limits).unwrap();
        assert!(refusal.contains("attestd holds 3 live tasks"), "{refusal}");

        let mut big = task("big", &[], "a", 1000);
        big.purpose = "x".repeat(20_000);
        let refusal = Store::default().refuse(&big, &limits).unwrap();
        assert!(refusal.contains("would take over 10000 bytes"), "{refusal}");
        let host = TaskLimits {
            bytes_per_spiffe_id: 1 << 20,
            bytes: 10_000,
            ..limits
        };
        let refusal = Store::default().refuse(&big, &host).unwrap();
        assert!(
            refusal.contains("attestd's tasks would take over 10000 bytes"),
            "{refusal}"
        );
    }
}

//! Tasks: the per-task secret. An attested agent declares a task (purpose,
//! tools, resources) and gets a token bound to it: a JWT-SVID whose extra
//! claims carry the task. Sub-tasks narrow their parent, never widen it.
//! Ending a task (or an ancestor) makes attestd refuse its tokens at once,
//! in `ValidateJWTSVID` and in policy decisions, also after a restart.
//!
//! Token claims, besides the JWT-SVID's `sub`, `aud`, `exp`, `iat`, `jti`
//! (header `kid`, ES256):
//! - `task_id`: the task; `task_parents`: its ancestors' ids, root first
//!   (absent for a top-level task);
//! - `purpose`, `tools`, `resources` (the declared intent), `owner` (the
//!   entry's accountable owner);
//! - `attestation`: lowercase hex sha256 over the caller's sorted selector
//!   strings joined by newlines;
//! - `act` (RFC 8693), for a sub-task: the agent that delegated it, with
//!   its own `act` for the agent before it.
//!
//! The [`TaskRegistry`] keeps every task whose token may still be valid
//! (`store`), decides `StartTask` (`start`, after `request` bounds
//! it), ends tasks with their descendants, and [`TaskRegistry::verify`]
//! judges a presented task token for `ValidateJWTSVID` and for policy
//! decisions.

mod claims;
mod request;
mod start;
mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use rand::RngCore;

pub use claims::attestation_digest;
pub use request::{
    BadRequest, Intent, MAX_AUDIENCE_BYTES, MAX_AUDIENCES, MAX_PURPOSE_BYTES, MAX_RESOURCE_BYTES,
    MAX_RESOURCES, MAX_SPIFFE_ID_BYTES, MAX_TOKEN_BYTES, MAX_TOOLS, StartRequest, is_resource,
};
pub use start::MAX_DEPTH;
pub use store::{FILE, Task, TaskLimits};

use crate::atomic_file;
use crate::attest::Workload;
use crate::audit::TaskFacts;
use crate::authority::{AuthorityError, JwtAuthority, JwtError, ValidatedJwt};
use crate::registry::{Entry, Registry, owner_clock};
use crate::spiffe_id::SpiffeId;
use crate::wall_clock::{self, from_unix_seconds, unix_seconds};
use claims::{Actor, TaskClaims};
use store::Store;

/// A task token that verified: signed by our keys, unexpired, a task
/// token (not a plain JWT-SVID), its task and every ancestor still live,
/// and its subject still granted by a live entry whose owner has not
/// expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTask {
    /// The agent holding the token (`sub`).
    pub spiffe_id: SpiffeId,
    /// The token's audiences.
    pub audience: Vec<String>,
    /// The task's id.
    pub task_id: String,
    /// Its ancestors' ids, root first (empty for a top-level task).
    pub parents: Vec<String>,
    /// The declared purpose.
    pub purpose: String,
    /// The declared tools.
    pub tools: Vec<String>,
    /// The declared resources, `type:id` (empty: any the policy allows).
    pub resources: Vec<String>,
    /// The agents that delegated the task, outermost (root task's holder)
    /// first: the `act` chain.
    pub delegated_by: Vec<SpiffeId>,
    /// The entry owner named in the token.
    pub owner: String,
    /// The `attestation` claim.
    pub attestation: String,
    /// The token's `jti`.
    pub jti: String,
    /// The token's `exp`.
    pub expires_at: std::time::SystemTime,
    /// The facts attestation established about the agent when it started
    /// the task (kept by attestd with the task, not carried in the token).
    pub agent: AgentFacts,
}

impl VerifiedTask {
    /// The task's facts for an audit record.
    pub fn facts(&self) -> TaskFacts {
        TaskFacts {
            id: self.task_id.clone(),
            parent: self.parents.last().cloned(),
            purpose: self.purpose.clone(),
            tools: self.tools.clone(),
            resources: self.resources.clone(),
            delegated_by: self.delegated_by.iter().map(ToString::to_string).collect(),
            attestation: Some(self.attestation.clone()),
        }
    }
}

/// The attested facts of an agent that policies may refer to (the Cedar
/// principal's attributes besides its entry's owner and labels).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentFacts {
    /// Lowercase hex sha256 of its executable, when it was hashed.
    pub exe_sha256: Option<String>,
    /// Its systemd unit (`systemd:id`), when it runs in one.
    pub systemd_unit: Option<String>,
    /// Its container (`container:id`), when it runs in one.
    pub container_id: Option<String>,
    /// Whether it descends from a login session (its audit loginuid is set).
    pub interactive: bool,
}

impl AgentFacts {
    /// The facts attestation established about `workload`.
    pub fn of(workload: &Workload) -> Self {
        // Only facts attestation vouched for, i.e. emitted as selectors (a
        // hash of an executable whose binding was not proven is not one).
        let selector = |kind: &str| {
            workload
                .selectors
                .iter()
                .find(|s| s.kind() == kind)
                .map(|s| s.value().to_owned())
        };
        Self {
            exe_sha256: selector("unix:sha256"),
            systemd_unit: selector("systemd:id"),
            container_id: selector("container:id"),
            interactive: workload.login_uid.is_some(),
        }
    }
}

/// The task store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// Reading or writing the store's file failed.
    #[error("task store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The store's file exists but cannot be understood. attestd does not
    /// start without it: it records which task tokens were ended, and
    /// forgetting it would make them valid again.
    #[error(
        "task store {path} is corrupt ({reason}); attestd will not start without it, since it \
         records which task tokens were ended: restore it, or remove it to refuse every task \
         token issued so far"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a presented token is not a live task's. The messages are shown to
/// callers and recorded in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskRefusal {
    /// Not a valid JWT-SVID of this trust domain (signature, expiry,
    /// audience, ...).
    #[error("{0}")]
    Invalid(JwtError),
    /// A valid JWT-SVID that carries no task (no `task_id`).
    #[error("not a task token (a plain JWT-SVID carries no task)")]
    NotATask,
    /// It names a task, but its task claims are not a task token's.
    #[error("malformed task claims: {0}")]
    Malformed(String),
    /// attestd knows no such task (nor, for a sub-task, an ancestor): it
    /// was never started here, or it expired and was forgotten.
    #[error("task {task_id} is unknown to attestd")]
    Unknown {
        /// The unknown task.
        task_id: String,
    },
    /// The token is not the one attestd minted for the task it names.
    #[error("token was not issued for task {task_id}")]
    Mismatch {
        /// The task it names.
        task_id: String,
    },
    /// The task, or an ancestor of it, has ended.
    #[error("task {task_id} ended")]
    Ended {
        /// The task that ended: the token's own or an ancestor.
        task_id: String,
    },
    /// No entry of the current policy grants the token's subject tasks any
    /// more.
    #[error("{spiffe_id} is no longer granted tasks by any entry")]
    NotGranted {
        /// The token's subject.
        spiffe_id: SpiffeId,
    },
    /// The entries that grant the subject tasks are past their owner's
    /// `owner_expires`: tasks stop with the owner's term.
    #[error("the owner of {spiffe_id} has expired (owner_expires)")]
    OwnerExpired {
        /// The token's subject.
        spiffe_id: SpiffeId,
    },
}

/// Why `StartTask` was refused. The messages are shown to callers and
/// recorded in the audit trail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartRefusal {
    /// None of the caller's entries has `tasks`.
    #[error("no identity of the caller may start tasks (its entries have no `tasks`)")]
    NoTasks,
    /// The caller asked for an identity it does not hold.
    #[error("caller does not hold {0}")]
    NotHeld(SpiffeId),
    /// The identity asked for may not start tasks.
    #[error("{0} may not start tasks (its entry has no `tasks`)")]
    NoTasksFor(SpiffeId),
    /// A tool the entry's `tasks.tools` does not list.
    #[error("tool {tool} is not among the tools {spiffe_id} may declare for tasks")]
    ToolNotAllowed {
        /// The tool.
        tool: String,
        /// The identity starting the task.
        spiffe_id: SpiffeId,
    },
    /// An audience outside the entry's `jwt_audiences`.
    #[error("audience {0} is not in the entry's jwt_audiences")]
    AudienceNotAllowed(String),
    /// A lifetime beyond the entry's `tasks.max_ttl`.
    #[error("a lifetime of {requested}s exceeds the entry's tasks.max_ttl of {max}s")]
    TtlTooLong {
        /// Seconds asked for.
        requested: u64,
        /// Seconds allowed.
        max: u64,
    },
    /// The parent token is not a live task's.
    #[error("parent token: {0}")]
    Parent(TaskRefusal),
    /// The parent token is neither the caller's own nor addressed to it.
    #[error(
        "the parent task is held by {} and its token is not addressed to the caller's identities",
        holder.as_ref().map_or_else(|| "another agent".to_owned(), ToString::to_string)
    )]
    NotDelegated {
        /// The parent task's holder.
        holder: Option<SpiffeId>,
    },
    /// A sub-task asked for more than its parent has.
    #[error("a sub-task may only narrow its parent: {0}")]
    Widens(String),
    /// The task tree would grow deeper than [`MAX_DEPTH`].
    #[error("task trees are at most {max} levels deep")]
    TooDeep {
        /// The deepest a tree goes.
        max: usize,
    },
    /// The token would be larger than any validator here accepts.
    #[error("the task token would take {bytes} bytes, over {max}: declare less")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The most accepted.
        max: usize,
    },
    /// A limit of the task store (see [`TaskLimits`]).
    #[error("{0}")]
    Limit(String),
    /// The token could not be signed.
    #[error(transparent)]
    Mint(AuthorityError),
    /// The task could not be recorded in the store.
    #[error(transparent)]
    Store(TaskError),
}

/// Why `EndTask` was refused. The messages are shown to callers and
/// recorded in the audit trail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndRefusal {
    /// Not a task id attestd hands out.
    #[error("{0} is not a task id (32 lowercase hex digits)")]
    BadId(String),
    /// No such task (never started, or expired and forgotten).
    #[error("no task {0}")]
    Unknown(String),
    /// The caller neither holds nor delegated the task.
    #[error("task {0} is neither held nor delegated by the caller's identities")]
    NotAllowed(String),
    /// The task has ended already.
    #[error("task {0} has already ended")]
    AlreadyEnded(String),
    /// The end could not be recorded in the store (it holds in memory).
    #[error(transparent)]
    Store(TaskError),
}

/// Who asks to end or list tasks.
#[derive(Debug, Clone, Copy)]
pub enum TaskActor<'a> {
    /// uid 0, the host's administrator: sees and may end every task
    /// (ending only ever removes rights).
    HostAdmin,
    /// An agent with these identities: its tasks and those it delegated.
    Agent(&'a [SpiffeId]),
}

impl TaskActor<'_> {
    /// Whether the task is the actor's: held by one of its identities, or
    /// delegated by one (an ancestor's holder).
    fn reaches(&self, task: &Task) -> bool {
        match self {
            Self::HostAdmin => true,
            Self::Agent(ids) => ids
                .iter()
                .any(|id| &task.spiffe_id == id || task.delegated_by.contains(id)),
        }
    }
}

/// The caller of `StartTask`: as attested, with the entries it holds.
#[derive(Debug, Clone, Copy)]
pub struct Starter<'a> {
    /// What attestation established.
    pub workload: &'a Workload,
    /// Its entries, in policy order.
    pub entries: &'a [Arc<Entry>],
}

/// A task started: its record, the entry it started under, its token.
#[derive(Debug)]
pub struct Started {
    /// The task as kept.
    pub task: Task,
    /// The entry that granted it.
    pub entry: Arc<Entry>,
    /// The task token.
    pub token: String,
}

impl Task {
    /// The task's facts for an audit record.
    pub fn facts(&self) -> TaskFacts {
        TaskFacts {
            id: self.id.clone(),
            parent: self.parent().map(str::to_owned),
            purpose: self.purpose.clone(),
            tools: self.tools.clone(),
            resources: self.resources.clone(),
            delegated_by: self.delegated_by.iter().map(ToString::to_string).collect(),
            attestation: Some(self.attestation.clone()),
        }
    }
}

/// Whether `id` has the form of a task id attestd hands out.
pub fn is_task_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The store as it is now, for writing to its file.
struct Snapshot {
    version: u64,
    json: Vec<u8>,
}

#[derive(Debug)]
struct State {
    store: Store,
    /// Bumped by every change; the file holds some version's contents.
    version: u64,
}

impl State {
    fn snapshot(&mut self) -> Snapshot {
        self.version += 1;
        Snapshot {
            version: self.version,
            json: self.store.to_json(),
        }
    }

    /// Forgets tasks whose tokens no validator accepts any more.
    fn prune(&mut self, now: SystemTime) {
        let leeway = JwtAuthority::VALIDATION_LEEWAY.as_secs();
        self.store.prune(unix_seconds(now).saturating_sub(leeway));
    }
}

/// The tasks: started, ended, and verified here. Every change is in the
/// store's file before the call that made it returns.
#[derive(Debug)]
pub struct TaskRegistry {
    path: PathBuf,
    jwt: Arc<JwtAuthority>,
    registry: Arc<Registry>,
    limits: TaskLimits,
    // std Mutex: held to change or read the store in memory, never across
    // an await nor while the file is written.
    state: Mutex<State>,
    /// The version the file holds; held while writing it, so writes land
    /// in order and a stale snapshot never replaces a newer one.
    written: Mutex<u64>,
}

impl TaskRegistry {
    /// Loads `<data_dir>/tasks.json` (none yet: no tasks). Tokens are
    /// minted and checked with `jwt`; subjects are checked against the
    /// live policy of `registry`.
    pub fn open(data_dir: &Path, jwt: Arc<JwtAuthority>, registry: Arc<Registry>) -> Result<Self, TaskError> {
        let path = data_dir.join(FILE);
        let mut state = State {
            store: Store::load(&path)?,
            version: 0,
        };
        state.prune(wall_clock::now());
        Ok(Self {
            path,
            jwt,
            registry,
            limits: TaskLimits::default(),
            state: Mutex::new(state),
            written: Mutex::new(0),
        })
    }

    /// Replaces the default limits.
    pub fn with_limits(mut self, limits: TaskLimits) -> Self {
        self.limits = limits;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the store consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a task for `starter` and mints its token. Blocks while the
    /// store is written: call it off the async workers.
    pub fn start(&self, starter: Starter<'_>, request: &StartRequest) -> Result<Started, StartRefusal> {
        let now = wall_clock::now();
        let parent = request
            .parent_token
            .as_deref()
            .map(|token| self.verify(token, None))
            .transpose()
            .map_err(StartRefusal::Parent)?;
        let grant = start::choose_entry(
            starter.entries,
            request.spiffe_id.as_ref(),
            parent.as_ref(),
            owner_clock::now(),
        )?;
        let audience = start::audience(request, &grant);
        let lifetime = start::check_entry(request, &audience, &grant)?;
        let (expires_at, parents, delegated_by) = match &parent {
            Some(parent) => (
                start::check_parent(request, lifetime, parent, now)?,
                [parent.parents.clone(), vec![parent.task_id.clone()]].concat(),
                [parent.delegated_by.clone(), vec![parent.spiffe_id.clone()]].concat(),
            ),
            None => (now + lifetime, Vec::new(), Vec::new()),
        };
        let entry = grant.entry;
        // Like every SVID of the entry, the token ends with its owner's term.
        let expires_at = entry
            .owner_expiry()
            .map_or(expires_at, |term| expires_at.min(owner_clock::to_wall(term)));
        let intent = &request.intent;
        let claims = TaskClaims {
            task_id: new_task_id(),
            task_parents: parents,
            purpose: intent.purpose.clone(),
            tools: intent.tools.clone(),
            resources: intent.resources.clone(),
            owner: entry.owner.to_string(),
            attestation: attestation_digest(&starter.workload.selectors),
            act: Actor::chain(&delegated_by),
        };
        let svid = self
            .jwt
            .mint_with(&entry.spiffe_id, &audience, expires_at, &claims.to_map())
            .map_err(StartRefusal::Mint)?;
        if svid.token.len() > MAX_TOKEN_BYTES {
            return Err(StartRefusal::TooLarge {
                bytes: svid.token.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        let task = Task {
            id: claims.task_id,
            parents: claims.task_parents,
            spiffe_id: entry.spiffe_id.clone(),
            delegated_by,
            entry: entry.id.to_string(),
            owner: claims.owner,
            purpose: claims.purpose,
            tools: claims.tools,
            resources: claims.resources,
            audience,
            jti: svid.jti,
            started_at: unix_seconds(now),
            expires_at: unix_seconds(svid.expires_at),
            ended_at: None,
            agent: AgentFacts::of(starter.workload),
            attestation: claims.attestation,
        };
        self.insert(&task)?;
        Ok(Started {
            task,
            entry,
            token: svid.token,
        })
    }

    /// Adds a started task to the store and its file, unless a limit
    /// refuses it or an ancestor ended since its token was checked.
    fn insert(&self, task: &Task) -> Result<(), StartRefusal> {
        let snapshot = {
            let mut state = self.lock();
            state.prune(wall_clock::now());
            if let Some(refusal) = state.store.refuse(task, &self.limits) {
                return Err(StartRefusal::Limit(refusal));
            }
            // Checked again under the lock that ends tasks: a parent ended
            // meanwhile must not leave a live child behind.
            if let Err(refusal) = live_ancestors(&state.store, &task.parents) {
                return Err(StartRefusal::Parent(refusal));
            }
            state.store.insert(task.clone());
            state.snapshot()
        };
        self.persist(snapshot).map_err(|error| {
            // Its token is never handed out.
            self.lock().store.remove(&task.id);
            StartRefusal::Store(error)
        })
    }

    /// Forgets a started task whose token was never handed out (its start
    /// could not be recorded in the audit trail).
    pub fn discard(&self, task_id: &str) -> Result<(), TaskError> {
        let snapshot = {
            let mut state = self.lock();
            state.store.remove(task_id);
            state.snapshot()
        };
        self.persist(snapshot)
    }

    /// Ends a task and every live task below it; returns them, the task
    /// first. Blocks while the store is written: call it off the async
    /// workers.
    pub fn end(&self, task_id: &str, by: TaskActor<'_>) -> Result<Vec<Task>, EndRefusal> {
        if !is_task_id(task_id) {
            return Err(EndRefusal::BadId(request::quoted(task_id)));
        }
        let now = wall_clock::now();
        let (ended, snapshot) = {
            let mut state = self.lock();
            let task = state
                .store
                .get(task_id)
                .ok_or_else(|| EndRefusal::Unknown(task_id.to_owned()))?;
            if !by.reaches(task) {
                return Err(EndRefusal::NotAllowed(task_id.to_owned()));
            }
            if !task.is_live() {
                return Err(EndRefusal::AlreadyEnded(task_id.to_owned()));
            }
            let ended = state.store.end(task_id, unix_seconds(now));
            state.prune(now);
            (ended, state.snapshot())
        };
        self.persist(snapshot).map_err(EndRefusal::Store)?;
        Ok(ended)
    }

    /// The tasks `by` may see (live, and ended ones until their tokens
    /// expire), oldest first.
    pub fn list(&self, by: TaskActor<'_>) -> Vec<Task> {
        let mut tasks: Vec<Task> = self
            .lock()
            .store
            .tasks()
            .filter(|task| by.reaches(task))
            .cloned()
            .collect();
        tasks.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        tasks
    }

    /// Verifies a presented task token: signed by our keys and unexpired
    /// (addressed to `audience` when given; otherwise the caller must check
    /// the audience itself), a task token, its task and every ancestor
    /// known and not ended, and its subject still granted tasks by an
    /// entry of the current policy whose owner has not expired.
    pub fn verify(&self, token: &str, audience: Option<&str>) -> Result<VerifiedTask, TaskRefusal> {
        let validated = match audience {
            Some(audience) => self.jwt.validate(token, audience),
            None => self.jwt.validate_any_audience(token),
        }
        .map_err(TaskRefusal::Invalid)?;
        self.check(&validated)?.ok_or(TaskRefusal::NotATask)
    }

    /// The task checks of [`Self::verify`] for a token that already
    /// validated as a JWT-SVID: `None` for a plain JWT-SVID (no task).
    pub fn check(&self, token: &ValidatedJwt) -> Result<Option<VerifiedTask>, TaskRefusal> {
        let claims = match TaskClaims::of(&token.claims) {
            None => return Ok(None),
            Some(claims) => claims.map_err(TaskRefusal::Malformed)?,
        };
        let task = {
            let state = self.lock();
            let task = state
                .store
                .get(&claims.task_id)
                .ok_or_else(|| TaskRefusal::Unknown {
                    task_id: claims.task_id.clone(),
                })?;
            if token.jti() != Some(task.jti.as_str())
                || token.spiffe_id != task.spiffe_id
                || claims.task_parents != task.parents
                || claims.act.as_ref().map(Actor::delegators).unwrap_or_default() != task.delegated_by
            {
                return Err(TaskRefusal::Mismatch {
                    task_id: task.id.clone(),
                });
            }
            if !task.is_live() {
                return Err(TaskRefusal::Ended {
                    task_id: task.id.clone(),
                });
            }
            live_ancestors(&state.store, &task.parents)?;
            task.clone()
        };
        self.still_granted(&task.spiffe_id, owner_clock::now())?;
        Ok(Some(VerifiedTask {
            spiffe_id: task.spiffe_id,
            audience: task.audience,
            task_id: task.id,
            parents: task.parents,
            purpose: task.purpose,
            tools: task.tools,
            resources: task.resources,
            delegated_by: task.delegated_by,
            owner: task.owner,
            attestation: task.attestation,
            jti: task.jti,
            expires_at: from_unix_seconds(task.expires_at),
            agent: task.agent,
        }))
    }

    /// Whether an entry of the current policy still grants `spiffe_id`
    /// tasks, under an owner whose term has not ended.
    fn still_granted(&self, spiffe_id: &SpiffeId, now: SystemTime) -> Result<(), TaskRefusal> {
        let policy = self.registry.policy();
        let mut granting = policy
            .granting(spiffe_id)
            .filter(|entry| entry.tasks.is_some())
            .peekable();
        if granting.peek().is_none() {
            return Err(TaskRefusal::NotGranted {
                spiffe_id: spiffe_id.clone(),
            });
        }
        match granting.any(|entry| !entry.owner_expired(now)) {
            true => Ok(()),
            false => Err(TaskRefusal::OwnerExpired {
                spiffe_id: spiffe_id.clone(),
            }),
        }
    }

    /// Writes `snapshot` to the store's file unless a newer one is there.
    fn persist(&self, snapshot: Snapshot) -> Result<(), TaskError> {
        // Every write leaves the version consistent with the file.
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *written >= snapshot.version {
            return Ok(());
        }
        atomic_file::write(&self.path, &snapshot.json, 0o600).map_err(|source| TaskError::Io {
            path: self.path.clone(),
            source,
        })?;
        *written = snapshot.version;
        Ok(())
    }
}

/// Every ancestor known and live.
fn live_ancestors(store: &Store, parents: &[String]) -> Result<(), TaskRefusal> {
    for id in parents {
        match store.get(id) {
            None => return Err(TaskRefusal::Unknown { task_id: id.clone() }),
            Some(parent) if !parent.is_live() => return Err(TaskRefusal::Ended { task_id: id.clone() }),
            Some(_) => {}
        }
    }
    Ok(())
}

/// A fresh task id: 128 random bits, lowercase hex.
fn new_task_id() -> String {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    hex::encode(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::{Authority, JwtSettings};
    use crate::config::{CaConfig, Config};
    use crate::registry::Policy;
    use crate::selector::{Selector, SelectorSet};
    use crate::spiffe_id::TrustDomain;

    const POLICY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/lead"
selectors = ["unix:uid:1000"]
owner = "team@example.org"
tasks = { max_ttl = "10m", tools = ["a", "b"] }

[[entry]]
spiffe_id = "spiffe://example.org/helper"
selectors = ["unix:uid:1001"]
owner = "team@example.org"
tasks = { tools = ["a"] }

[[entry]]
spiffe_id = "spiffe://example.org/plain"
selectors = ["unix:uid:1002"]
owner = "team@example.org"

[[entry]]
spiffe_id = "spiffe://example.org/retired"
selectors = ["unix:uid:1003"]
owner = "gone@example.org"
owner_expires = 2020-01-01
tasks = { tools = ["a"] }
"#;

    struct Fixture {
        dir: tempfile::TempDir,
        authority: Arc<Authority>,
        registry: Arc<Registry>,
        tasks: TaskRegistry,
    }

    fn policy(body: &str) -> Policy {
        let config = Config::parse(
            Path::new("attestd.toml"),
            &format!("trust_domain = \"example.org\"\n{body}"),
        )
        .unwrap();
        Policy::load(&config).unwrap()
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let ca = CaConfig::default();
        let jwt = JwtSettings::without_issuer(ca.jwt_key_ttl.0);
        let authority = Arc::new(Authority::embedded(td, dir.path(), ca.ttl.0, jwt).unwrap());
        let registry = Arc::new(Registry::new(policy(POLICY)));
        let tasks =
            TaskRegistry::open(dir.path(), Arc::clone(authority.jwt()), Arc::clone(&registry)).unwrap();
        Fixture {
            dir,
            authority,
            registry,
            tasks,
        }
    }

    fn workload(uid: u32) -> Workload {
        let selectors: SelectorSet = [
            format!("unix:uid:{uid}"),
            format!("unix:sha256:{}", "ab".repeat(32)),
        ]
        .iter()
        .map(|s| s.parse::<Selector>().unwrap())
        .collect();
        Workload {
            pid: 1,
            uid,
            gid: uid,
            exe_path: None,
            sha256: None,
            selectors,
            notes: Vec::new(),
            login_uid: Some(uid),
        }
    }

    fn id(path: &str) -> SpiffeId {
        SpiffeId::new(&format!("spiffe://example.org/{path}")).unwrap()
    }

    fn request(tools: &[&str], audience: &[&str], parent: Option<&str>) -> StartRequest {
        let intent = Intent {
            purpose: "fix the build".into(),
            tools: tools.iter().map(|t| (*t).to_owned()).collect(),
            resources: Vec::new(),
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        };
        StartRequest::parse(intent, 0, parent.unwrap_or_default().to_owned(), "").unwrap()
    }

    impl Fixture {
        fn start(&self, uid: u32, request: &StartRequest) -> Result<Started, StartRefusal> {
            let workload = workload(uid);
            let entries = self.registry.policy().matching(&workload.selectors);
            self.tasks.start(
                Starter {
                    workload: &workload,
                    entries: &entries,
                },
                request,
            )
        }
    }

    #[test]
    fn a_started_task_token_carries_the_pinned_claims_and_verifies() {
        let f = fixture();
        let started = f.start(1000, &request(&["b", "a"], &["gw"], None)).unwrap();
        let claims: serde_json::Map<String, serde_json::Value> =
            jsonwebtoken::dangerous::insecure_decode_claims(&started.token).unwrap();
        let mut names: Vec<_> = claims.keys().map(String::as_str).collect();
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
            ]
        );
        assert_eq!(claims["sub"], "spiffe://example.org/lead");
        assert_eq!(claims["tools"], serde_json::json!(["a", "b"]));
        assert_eq!(claims["owner"], "team@example.org");
        assert_eq!(
            claims["attestation"],
            attestation_digest(&workload(1000).selectors).as_str()
        );
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            600
        );
        assert!(is_task_id(&started.task.id));

        let verified = f.tasks.verify(&started.token, Some("gw")).unwrap();
        assert_eq!(verified.task_id, started.task.id);
        assert_eq!(verified.spiffe_id, id("lead"));
        assert_eq!(verified.agent.exe_sha256, Some("ab".repeat(32)));
        assert!(verified.agent.interactive);
        assert!(f.tasks.verify(&started.token, None).is_ok());
        assert!(matches!(
            f.tasks.verify(&started.token, Some("other")),
            Err(TaskRefusal::Invalid(JwtError::AudienceMismatch(_)))
        ));
        let plain = f
            .authority
            .jwt()
            .mint(
                &id("lead"),
                &["gw".to_owned()],
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(f.tasks.verify(&plain.token, None), Err(TaskRefusal::NotATask));
    }

    #[test]
    fn entries_decide_who_may_start_tasks() {
        let f = fixture();
        assert!(matches!(
            f.start(1002, &request(&["a"], &["gw"], None)),
            Err(StartRefusal::NoTasks)
        ));
        assert!(matches!(
            f.start(1003, &request(&["a"], &["gw"], None)),
            Err(StartRefusal::NoTasks)
        ));
        assert!(matches!(
            f.start(1001, &request(&["b"], &["gw"], None)),
            Err(StartRefusal::ToolNotAllowed { .. })
        ));
    }

    #[test]
    fn ending_a_task_refuses_its_tokens_and_its_descendants_also_after_a_restart() {
        let f = fixture();
        let root = f
            .start(
                1000,
                &request(&["a", "b"], &["spiffe://example.org/helper"], None),
            )
            .unwrap();
        let child = f
            .start(1001, &request(&["a"], &["gw"], Some(&root.token)))
            .unwrap();
        let sibling = f.start(1000, &request(&["a"], &["gw"], None)).unwrap();
        let verified = f.tasks.verify(&child.token, None).unwrap();
        assert_eq!(verified.parents, std::slice::from_ref(&root.task.id));
        assert_eq!(verified.delegated_by, [id("lead")]);
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&child.token).unwrap();
        assert_eq!(
            claims["act"],
            serde_json::json!({"sub": "spiffe://example.org/lead"})
        );
        assert_eq!(claims["task_parents"], serde_json::json!([root.task.id]));

        // The child's holder may not end the parent; the parent's may end both.
        let helper = [id("helper")];
        assert!(matches!(
            f.tasks.end(&root.task.id, TaskActor::Agent(&helper)),
            Err(EndRefusal::NotAllowed(_))
        ));
        let lead = [id("lead")];
        assert_eq!(f.tasks.list(TaskActor::Agent(&helper)).len(), 1);
        assert_eq!(f.tasks.list(TaskActor::Agent(&lead)).len(), 3);
        let ended: Vec<_> = f
            .tasks
            .end(&root.task.id, TaskActor::Agent(&lead))
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ended, [root.task.id.clone(), child.task.id.clone()]);
        assert!(matches!(
            f.tasks.end(&root.task.id, TaskActor::HostAdmin),
            Err(EndRefusal::AlreadyEnded(_))
        ));
        assert!(matches!(
            f.tasks.end(&"0".repeat(32), TaskActor::HostAdmin),
            Err(EndRefusal::Unknown(_))
        ));
        assert!(matches!(
            f.tasks.end("nope", TaskActor::HostAdmin),
            Err(EndRefusal::BadId(_))
        ));
        let ended_root = TaskRefusal::Ended {
            task_id: root.task.id.clone(),
        };
        assert_eq!(f.tasks.verify(&root.token, None), Err(ended_root.clone()));
        assert_eq!(
            f.tasks.verify(&child.token, None),
            Err(TaskRefusal::Ended {
                task_id: child.task.id.clone()
            })
        );
        // A new sub-task of an ended parent is refused.
        assert!(matches!(
            f.start(1001, &request(&["a"], &["gw"], Some(&root.token))),
            Err(StartRefusal::Parent(refusal)) if refusal == ended_root
        ));

        let reopened = TaskRegistry::open(
            f.dir.path(),
            Arc::clone(f.authority.jwt()),
            Arc::clone(&f.registry),
        )
        .unwrap();
        assert_eq!(reopened.verify(&root.token, None), Err(ended_root));
        assert!(reopened.verify(&sibling.token, None).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f.dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A store that lost the task refuses its token.
        let elsewhere = tempfile::tempdir().unwrap();
        let forgetful = TaskRegistry::open(
            elsewhere.path(),
            Arc::clone(f.authority.jwt()),
            Arc::clone(&f.registry),
        )
        .unwrap();
        assert!(matches!(
            forgetful.verify(&sibling.token, None),
            Err(TaskRefusal::Unknown { .. })
        ));
    }

    #[test]
    fn a_policy_change_or_an_expired_owner_stops_tasks() {
        let f = fixture();
        let started = f.start(1001, &request(&["a"], &["gw"], None)).unwrap();
        f.registry.replace(policy(&POLICY.replace(
            "tasks = { tools = [\"a\"] }\n\n[[entry]]\nspiffe_id = \"spiffe://example.org/plain\"",
            "\n[[entry]]\nspiffe_id = \"spiffe://example.org/plain\"",
        )));
        assert_eq!(
            f.tasks.verify(&started.token, None),
            Err(TaskRefusal::NotGranted {
                spiffe_id: id("helper")
            })
        );
        f.registry.replace(policy(&POLICY.replace("tasks = { tools = [\"a\"] }\n\n[[entry]]\nspiffe_id = \"spiffe://example.org/plain\"", "owner_expires = 2020-01-01\ntasks = { tools = [\"a\"] }\n\n[[entry]]\nspiffe_id = \"spiffe://example.org/plain\"")));
        assert_eq!(
            f.tasks.verify(&started.token, None),
            Err(TaskRefusal::OwnerExpired {
                spiffe_id: id("helper")
            })
        );
    }

    #[test]
    fn a_corrupt_store_fails_opening_and_names_the_file() {
        let f = fixture();
        std::fs::write(f.dir.path().join(FILE), "[").unwrap();
        let error = TaskRegistry::open(
            f.dir.path(),
            Arc::clone(f.authority.jwt()),
            Arc::clone(&f.registry),
        )
        .unwrap_err();
        assert!(matches!(error, TaskError::Corrupt { .. }));
        assert!(error.to_string().contains("tasks.json"), "{error}");
    }

    #[test]
    fn limits_are_enforced_at_start() {
        let f = fixture();
        let tasks = TaskRegistry::open(
            f.dir.path(),
            Arc::clone(f.authority.jwt()),
            Arc::clone(&f.registry),
        )
        .unwrap()
        .with_limits(TaskLimits {
            live_per_spiffe_id: 1,
            ..TaskLimits::default()
        });
        let f = Fixture { tasks, ..f };
        f.start(1000, &request(&["a"], &["gw"], None)).unwrap();
        let refusal = f.start(1000, &request(&["a"], &["gw"], None)).unwrap_err();
        assert!(matches!(refusal, StartRefusal::Limit(_)), "{refusal}");
        assert!(f.start(1001, &request(&["a"], &["gw"], None)).is_ok());
    }
}

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

use crate::attest::Workload;
use crate::spiffe_id::SpiffeId;

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

//! One audit record: the decision, the kernel-attested facts about the
//! caller, the entry and its accountable owner, and what was issued.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::DenialSummary;
use crate::attest::Workload;
use crate::registry::Entry;
use crate::wall_clock::MAX_UNIX_SECONDS;

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An SVID was handed to the caller.
    Issued,
    /// The caller was refused.
    Denied,
    /// A presented JWT-SVID passed validation.
    Validated,
    /// A presented JWT-SVID failed validation.
    Rejected,
    /// Denial records beyond the rate limit were left out; `suppressed`
    /// counts them.
    Suppressed,
    /// A task was started and its token minted (`task` says which).
    Started,
    /// A task was ended (`task` says which).
    Ended,
    /// A policy decision allowed the action (`decision` says which).
    Allowed,
}

/// The task a record is about: its place in the task tree and the intent
/// it declared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TaskFacts {
    /// The task's id.
    pub id: String,
    /// Its parent task, for a sub-task.
    pub parent: Option<String>,
    /// The declared purpose.
    pub purpose: String,
    /// The declared tools.
    pub tools: Vec<String>,
    /// The declared resources (empty: any the policy allows).
    pub resources: Vec<String>,
    /// The agents that delegated it, outermost first (the token's `act`
    /// chain): empty for a top-level task.
    pub delegated_by: Vec<String>,
    /// sha256 over the sorted selectors of the caller the task was started
    /// for (the token's `attestation` claim).
    pub attestation: Option<String>,
}

/// A policy decision: what was asked and what was decided, by which
/// policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DecisionFacts {
    /// Names the decision (returned to the asker).
    pub id: String,
    /// The tool.
    pub action: String,
    /// The resource, `type:id`.
    pub resource: String,
    /// The ids of the policies that determined it.
    pub policies: Vec<String>,
    /// Policy evaluation errors.
    pub errors: Vec<String>,
    /// The gateway that asked on the agent's behalf (its SPIFFE ID), when
    /// the agent did not ask itself.
    pub asked_by: Option<String>,
}

/// One audit record. Every field is always present (null when it does not
/// apply), so consumers can rely on the shape.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Position in the trail, from 0, continuous across rotated files.
    pub seq: u64,
    /// Lowercase hex sha256 of the previous record's line (64 zeros for the
    /// first record): the hash chain.
    pub prev: String,
    /// RFC 3339 UTC time of the decision.
    pub time: String,
    /// The Workload API method.
    pub rpc: &'static str,
    /// What was decided.
    pub outcome: Outcome,
    /// Why (for denials) or what triggered it (for issuance).
    pub reason: String,
    /// Caller pid.
    pub pid: Option<i32>,
    /// Caller uid.
    pub uid: Option<u32>,
    /// Caller gid.
    pub gid: Option<u32>,
    /// Caller executable path.
    pub exe_path: Option<String>,
    /// Caller executable sha256.
    pub sha256: Option<String>,
    /// Every selector the caller had (their texts shared with the
    /// caller's selector set).
    pub selectors: Vec<Arc<str>>,
    /// Facts attestation withheld from the selectors, and why.
    pub attestation_notes: Vec<String>,
    /// Registration entry id.
    pub entry: Option<String>,
    /// Where the entry is written.
    pub entry_location: Option<String>,
    /// The entry's accountable owner.
    pub owner: Option<String>,
    /// The entry's description.
    pub description: Option<String>,
    /// The entry's labels.
    pub labels: BTreeMap<String, String>,
    /// The identity issued.
    pub spiffe_id: Option<String>,
    /// Serial of the certificate issued.
    pub serial: Option<String>,
    /// Audiences of a JWT-SVID issued, or the audience validated for.
    pub audience: Vec<String>,
    /// `jti` of a JWT-SVID issued or validated.
    pub jti: Option<String>,
    /// Expiry of what was issued (RFC 3339).
    pub not_after: Option<String>,
    /// Fields whose caller-controlled values were shortened or cut to bound
    /// the record, each with what was done (empty for most records).
    pub truncated: BTreeMap<String, String>,
    /// For a `suppressed` record: the denials it stands for.
    pub suppressed: Option<DenialSummary>,
    /// The task a task or decision record is about.
    pub task: Option<TaskFacts>,
    /// What a decision record decided.
    pub decision: Option<DecisionFacts>,
}

impl Record {
    /// A record about `workload` (if attestation got that far), with no
    /// entry yet.
    pub fn new(
        rpc: &'static str,
        outcome: Outcome,
        reason: impl Into<String>,
        workload: Option<&Workload>,
    ) -> Self {
        Self {
            seq: 0,
            prev: String::new(),
            time: rfc3339(crate::wall_clock::now()),
            rpc,
            outcome,
            reason: reason.into(),
            pid: workload.map(|w| w.pid),
            uid: workload.map(|w| w.uid),
            gid: workload.map(|w| w.gid),
            exe_path: workload.and_then(|w| w.exe_path.as_ref().map(|p| p.display().to_string())),
            sha256: workload.and_then(|w| w.sha256.clone()),
            selectors: workload.map(|w| w.selectors.shared_texts()).unwrap_or_default(),
            attestation_notes: workload.map(|w| w.notes.clone()).unwrap_or_default(),
            entry: None,
            entry_location: None,
            owner: None,
            description: None,
            labels: BTreeMap::new(),
            spiffe_id: None,
            serial: None,
            audience: Vec::new(),
            jti: None,
            not_after: None,
            truncated: BTreeMap::new(),
            suppressed: None,
            task: None,
            decision: None,
        }
    }

    /// Adds the caller's connect-time ids when attestation got no further.
    pub fn with_peer_ids(mut self, pid: i32, uid: u32, gid: u32) -> Self {
        self.pid = Some(pid);
        self.uid = Some(uid);
        self.gid = Some(gid);
        self
    }

    /// Adds the entry and its actor layer.
    pub fn with_entry(mut self, entry: &Entry) -> Self {
        self.entry = Some(entry.id.to_string());
        self.entry_location = Some(entry.location.to_string());
        self.owner = Some(entry.owner.to_string());
        self.description = entry.description.as_deref().map(str::to_owned);
        self.labels = entry.labels.to_map();
        self.spiffe_id = Some(entry.spiffe_id.to_string());
        self
    }

    /// Adds the audiences a token was asked for or validated against.
    pub fn with_audience(mut self, audience: &[String]) -> Self {
        self.audience = audience.to_vec();
        self
    }

    /// Adds a JWT-SVID's id and expiry.
    pub fn with_token(mut self, jti: Option<&str>, expires_at: Option<SystemTime>) -> Self {
        self.jti = jti.map(str::to_owned);
        self.not_after = expires_at.map(rfc3339);
        self
    }

    /// Adds the subject of a validated token.
    pub fn with_subject(mut self, spiffe_id: &str) -> Self {
        self.spiffe_id = Some(spiffe_id.to_owned());
        self
    }

    /// Adds the task the record is about.
    pub fn with_task(mut self, task: TaskFacts) -> Self {
        self.task = Some(task);
        self
    }

    /// Adds a policy decision.
    pub fn with_decision(mut self, decision: DecisionFacts) -> Self {
        self.decision = Some(decision);
        self
    }

    /// Adds what was issued.
    pub fn with_credential(mut self, serial: &str, not_after: SystemTime) -> Self {
        self.serial = Some(serial.to_owned());
        self.not_after = Some(rfc3339(not_after));
        self
    }
}

/// RFC 3339 UTC with milliseconds. RFC 3339 writes the years 0 to 9999:
/// a time before the Unix epoch is written as the epoch, one after 9999 as
/// its last millisecond (humantime's formatter fails on them, and
/// `to_string` would panic).
pub fn rfc3339(time: SystemTime) -> String {
    let latest = SystemTime::UNIX_EPOCH + Duration::from_millis(MAX_UNIX_SECONDS * 1000 + 999);
    humantime::format_rfc3339_millis(time.clamp(SystemTime::UNIX_EPOCH, latest)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_rfc3339_cannot_write_are_clamped_not_a_panic() {
        let at = |seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        assert_eq!(rfc3339(at(4_102_444_800)), "2100-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(253_402_300_800)), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(at(i64::MAX as u64 / 2)), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
    }
}

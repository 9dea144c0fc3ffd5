//! One decision, from the attested caller and what it asks to the verdict
//! and its audit record: who the principal is, the refusals that come
//! before any policy (in the order the module documentation gives), then
//! Cedar.

use std::sync::Arc;
use std::time::SystemTime;

use super::evaluate::{Principal, evaluate};
use super::request::DecisionRequest;
use super::{PolicyBook, TaskTokens};
use crate::attest::Workload;
use crate::audit::{DecisionFacts, Outcome, Record, TaskFacts};
use crate::registry::Entry;
use crate::spiffe_id::SpiffeId;
use crate::tasks::{AgentFacts, VerifiedTask};

/// The attested caller asking for a decision.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// What attestation established about it.
    pub workload: &'a Workload,
    /// The entries it holds (never empty: admission refuses callers without
    /// one).
    pub entries: &'a [Arc<Entry>],
    /// Every entry of the policy it was admitted under: where a gateway's
    /// agent's entry is found.
    pub all_entries: &'a [Arc<Entry>],
}

impl<'a> Asker<'a> {
    /// The caller's entry granting `id`, if it holds one.
    fn entry_for(&self, id: &str) -> Option<&'a Arc<Entry>> {
        self.entries.iter().find(|entry| entry.spiffe_id.as_str() == id)
    }

    /// The entries that let the caller ask about other agents' tokens.
    fn gateway_entries(&self) -> impl Iterator<Item = &'a Arc<Entry>> + use<'a> {
        self.entries.iter().filter(|entry| entry.may_ask_for_others)
    }

    /// The caller's SPIFFE IDs, for messages.
    fn ids(&self) -> String {
        let ids: Vec<&str> = self.entries.iter().map(|e| e.spiffe_id.as_str()).collect();
        ids.join(", ")
    }
}

/// Whom a request is about and which token binds it to a task.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// The token decides (gRPC): the caller itself when it holds the
    /// token's subject, else the token's agent, asked about by a gateway.
    /// Empty: no token.
    Token(&'a str),
    /// The caller itself, under this SPIFFE ID, with its own task token
    /// (AuthZEN `{"type": "spiffe_id"}`).
    Caller {
        /// The SPIFFE ID the request names; must be the caller's.
        spiffe_id: &'a str,
        /// The task token (AuthZEN `context.task_token`).
        token: Option<&'a str>,
    },
    /// The agent whose task token a gateway presents (AuthZEN
    /// `{"type": "task_token"}`).
    Agent(&'a str),
}

/// A decision: allowed or not, by which policies, or refused before any.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Names the decision in the audit trail.
    pub id: String,
    /// Whether the action is allowed.
    pub allowed: bool,
    /// The ids of the policies that determined the decision.
    pub reasons: Vec<String>,
    /// Policy evaluation errors.
    pub errors: Vec<String>,
    /// Why the request was refused before any policy was evaluated.
    pub refusal: Option<String>,
    action: String,
    resource: String,
    /// The principal's entry, or the caller's first one while the principal
    /// is not known.
    entry: Option<Arc<Entry>>,
    task: Option<VerifiedTask>,
    /// The gateway that asked on the agent's behalf.
    asked_by: Option<SpiffeId>,
}

impl Verdict {
    /// The audit record of the decision, about the caller `workload`.
    pub fn record(&self, rpc: &'static str, workload: &Workload) -> Record {
        let (outcome, reason) = match (self.allowed, &self.refusal) {
            (true, _) => (Outcome::Allowed, "allowed by policy".to_owned()),
            (false, Some(refusal)) => (Outcome::Denied, refusal.clone()),
            (false, None) if self.reasons.is_empty() => (Outcome::Denied, "no policy permits it".to_owned()),
            (false, None) => (Outcome::Denied, "forbidden by policy".to_owned()),
        };
        let mut record = Record::new(rpc, outcome, reason, Some(workload)).with_decision(DecisionFacts {
            id: self.id.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            policies: self.reasons.clone(),
            errors: self.errors.clone(),
            asked_by: self.asked_by.as_ref().map(ToString::to_string),
        });
        if let Some(entry) = &self.entry {
            record = record.with_entry(entry);
        }
        if let Some(task) = &self.task {
            record = record
                .with_task(task_facts(task))
                .with_token(Some(&task.jti), Some(task.expires_at));
        }
        record
    }

    /// The principal's SPIFFE ID, once known (else the caller's first).
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.entry.as_ref().map(|entry| &entry.spiffe_id)
    }
}

/// Decides `request` from `asker` about `subject` under `book`.
pub fn decide(
    book: &PolicyBook,
    tokens: &dyn TaskTokens,
    asker: Asker<'_>,
    subject: Subject<'_>,
    request: &DecisionRequest,
) -> Verdict {
    let mut verdict = Verdict {
        id: decision_id(),
        allowed: false,
        reasons: Vec::new(),
        errors: Vec::new(),
        refusal: None,
        action: request.action.clone(),
        resource: request.resource.as_str().to_owned(),
        entry: asker.entries.first().cloned(),
        task: None,
        asked_by: None,
    };
    if let Err(refusal) = judge(book, tokens, asker, subject, request, &mut verdict) {
        verdict.refusal = Some(refusal);
    }
    verdict
}

/// The refusals, then Cedar; fills `verdict` in as it learns.
fn judge(
    book: &PolicyBook,
    tokens: &dyn TaskTokens,
    asker: Asker<'_>,
    subject: Subject<'_>,
    request: &DecisionRequest,
    verdict: &mut Verdict,
) -> Result<(), String> {
    let (token, on_behalf) = match subject {
        Subject::Token(token) => (token, false),
        Subject::Caller { spiffe_id, token } => {
            if asker.entry_for(spiffe_id).is_none() {
                return Err(format!(
                    "the subject {spiffe_id} is not the caller (it holds {})",
                    asker.ids()
                ));
            }
            (token.unwrap_or_default(), false)
        }
        Subject::Agent(token) => {
            if asker.gateway_entries().next().is_none() {
                return Err(may_not_ask(asker));
            }
            (token, true)
        }
    };
    if token.is_empty() {
        return Err("no task token: every decision is bound to a live task".into());
    }
    let task = tokens
        .verify(token)
        .map_err(|reason| format!("task token refused: {reason}"))?;
    let task = &*verdict.task.insert(task);
    if let Subject::Caller { spiffe_id, .. } = subject
        && task.spiffe_id.as_str() != spiffe_id
    {
        return Err(format!(
            "the task token is held by {}, not by the subject {spiffe_id}",
            task.spiffe_id
        ));
    }

    let own_entry = match on_behalf {
        false => asker.entry_for(task.spiffe_id.as_str()),
        true => None,
    };
    let (entry, facts) = match own_entry {
        Some(entry) => (Arc::clone(entry), AgentFacts::of(asker.workload)),
        None => {
            let gateway = gateway_for(asker, task)?;
            verdict.asked_by = Some(gateway.spiffe_id.clone());
            let entry = principal_entry(asker.all_entries, task)
                .ok_or_else(|| format!("no entry grants {} any more", task.spiffe_id))?;
            (entry, task.agent.clone())
        }
    };
    verdict.entry = Some(Arc::clone(&entry));

    check_intent(book, task, request)?;
    let principal = Principal {
        spiffe_id: &entry.spiffe_id,
        entry: &entry,
        facts: &facts,
    };
    let evaluation = evaluate(book, principal, task, request, &verdict.id);
    verdict.allowed = evaluation.allowed;
    verdict.reasons = evaluation.reasons;
    verdict.errors = evaluation.errors;
    Ok(())
}

fn may_not_ask(asker: Asker<'_>) -> String {
    format!(
        "the caller ({}) may not ask for others: none of its entries sets may_ask_for_others",
        asker.ids()
    )
}

/// The caller's gateway identity the token is addressed to, when the token
/// is not its own.
fn gateway_for<'a>(asker: Asker<'a>, task: &VerifiedTask) -> Result<&'a Arc<Entry>, String> {
    let mut gateways = asker.gateway_entries().peekable();
    if gateways.peek().is_none() {
        return Err(format!(
            "the task token is held by {}, and {}",
            task.spiffe_id,
            may_not_ask(asker)
        ));
    }
    let gateway_ids: Vec<&str> = asker.gateway_entries().map(|e| e.spiffe_id.as_str()).collect();
    gateways
        .find(|gateway| task.audience.iter().any(|aud| aud == gateway.spiffe_id.as_str()))
        .ok_or_else(|| {
            format!(
                "the task token is not addressed to the caller: its audience [{}] names none of [{}]",
                task.audience.join(", "),
                gateway_ids.join(", ")
            )
        })
}

/// The entry of the agent a gateway asks about: one granting its SPIFFE ID
/// whose owner has not expired, preferably the owner the token names.
fn principal_entry(entries: &[Arc<Entry>], task: &VerifiedTask) -> Option<Arc<Entry>> {
    let now = SystemTime::now();
    let mut granting = entries
        .iter()
        .filter(|entry| entry.spiffe_id == task.spiffe_id && !entry.owner_expired(now));
    let first = granting.clone().next();
    granting.find(|entry| entry.owner == task.owner).or(first).cloned()
}

/// The task's declared intent bounds what policies may allow; and the tool
/// must still be one some entry allows.
fn check_intent(book: &PolicyBook, task: &VerifiedTask, request: &DecisionRequest) -> Result<(), String> {
    let action = &request.action;
    if !task.tools.contains(action) {
        return Err(format!(
            "tool {action} is not among the task's declared tools [{}]",
            task.tools.join(", ")
        ));
    }
    let resource = request.resource.as_str();
    if !task.resources.is_empty() && !task.resources.iter().any(|r| r == resource) {
        return Err(format!(
            "resource {resource} is not among the task's declared resources [{}]",
            task.resources.join(", ")
        ));
    }
    if !book.has_action(action) {
        return Err(format!(
            "no entry allows the tool {action} any more (the schema has no such action)"
        ));
    }
    Ok(())
}

/// The task as the audit trail records it.
fn task_facts(task: &VerifiedTask) -> TaskFacts {
    TaskFacts {
        id: task.task_id.clone(),
        parent: task.parents.last().cloned(),
        purpose: task.purpose.clone(),
        tools: task.tools.clone(),
        resources: task.resources.clone(),
        delegated_by: task.delegated_by.iter().map(ToString::to_string).collect(),
        attestation: Some(task.attestation.clone()),
    }
}

/// A fresh, unguessable decision id: 128 random bits, hex.
fn decision_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

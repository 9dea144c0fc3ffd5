//! One decision, from the attested caller and what it asks to the verdict
//! and its audit record: who the principal is, the refusals that come
//! before any policy (in the order the module documentation gives), then
//! Cedar.

use std::sync::Arc;

use super::evaluate::{Principal, evaluate};
use super::request::DecisionRequest;
use super::{PolicyBook, TaskTokens};
use crate::attest::Workload;
use crate::audit::{DecisionFacts, Outcome, Record};
use crate::registry::{Entry, Policy, owner_clock};
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
    /// The policy it was admitted under: where a gateway's agent's entry
    /// is found.
    pub policy: &'a Policy,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The token decides (gRPC): the caller itself when it holds the
    /// token's subject, else the token's agent, asked about by a gateway.
    /// Empty: no token.
    Token(String),
    /// The caller itself, under this SPIFFE ID, with its own task token
    /// (AuthZEN `{"type": "spiffe_id"}`).
    Caller {
        /// The SPIFFE ID the request names; must be the caller's.
        spiffe_id: String,
        /// The task token (AuthZEN `context.task_token`).
        token: Option<String>,
    },
    /// The agent whose task token a gateway presents (AuthZEN
    /// `{"type": "task_token"}`).
    Agent(String),
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
    /// The gateway that asked on the agent's behalf (while the principal
    /// is not known: the caller's first identity that may ask for others).
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
                .with_task(task.facts())
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
    subject: &Subject,
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
    subject: &Subject,
    request: &DecisionRequest,
    verdict: &mut Verdict,
) -> Result<(), String> {
    // Until the principal is known to be the caller itself, a caller that
    // may ask for others is taken to ask as a gateway: its refusals name it.
    if !matches!(subject, Subject::Caller { .. }) {
        verdict.asked_by = asker
            .gateway_entries()
            .next()
            .map(|entry| entry.spiffe_id.clone());
    }
    let (token, on_behalf) = match subject {
        Subject::Token(token) => (token.as_str(), false),
        Subject::Caller { spiffe_id, token } => {
            if asker.entry_for(spiffe_id).is_none() {
                return Err(format!(
                    "the subject {spiffe_id} is not the caller (it holds {})",
                    asker.ids()
                ));
            }
            (token.as_deref().unwrap_or_default(), false)
        }
        Subject::Agent(token) => {
            if asker.gateway_entries().next().is_none() {
                return Err(may_not_ask(asker));
            }
            (token.as_str(), true)
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
        && task.spiffe_id.as_str() != spiffe_id.as_str()
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
        Some(entry) => {
            verdict.asked_by = None;
            (Arc::clone(entry), AgentFacts::of(asker.workload))
        }
        None => {
            let gateway = gateway_for(asker, task)?;
            verdict.asked_by = Some(gateway.spiffe_id.clone());
            let entry = principal_entry(asker.policy, task)
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
fn principal_entry(policy: &Policy, task: &VerifiedTask) -> Option<Arc<Entry>> {
    let now = owner_clock::now();
    let mut granting = policy
        .granting(&task.spiffe_id)
        .filter(|entry| !entry.owner_expired(now));
    let first = granting.clone().next();
    granting
        .find(|entry| *entry.owner == *task.owner)
        .or(first)
        .cloned()
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

/// A fresh, unguessable decision id: 128 random bits, hex.
fn decision_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::authz::schema::tests::entry;
    use crate::selector::{Selector, SelectorSet};

    /// Task tokens for tests: each known token verifies to its task; any
    /// other is refused as a plain JWT-SVID. Counts verifications.
    #[derive(Debug, Default)]
    pub struct FakeTokens {
        pub tasks: HashMap<String, VerifiedTask>,
        pub verified: Mutex<usize>,
    }

    impl TaskTokens for FakeTokens {
        fn verify(&self, token: &str) -> Result<VerifiedTask, String> {
            *self.verified.lock().unwrap() += 1;
            self.tasks
                .get(token)
                .cloned()
                .ok_or_else(|| "not a task token (a plain JWT-SVID?)".to_owned())
        }
    }

    pub fn task(holder: &str, tools: &[&str], resources: &[&str], audience: &[&str]) -> VerifiedTask {
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        VerifiedTask {
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/{holder}")).unwrap(),
            audience: audience
                .iter()
                .map(|a| format!("spiffe://example.org/{a}"))
                .collect(),
            task_id: format!("task-of-{holder}"),
            parents: Vec::new(),
            purpose: "review PR 7".into(),
            tools: strings(tools),
            resources: strings(resources),
            delegated_by: Vec::new(),
            owner: format!("{holder}-owner@example.org"),
            attestation: "00".repeat(32),
            jti: format!("jti-of-{holder}"),
            expires_at: SystemTime::now() + Duration::from_secs(600),
            agent: AgentFacts {
                exe_sha256: Some(format!("{holder}-exe")),
                ..AgentFacts::default()
            },
        }
    }

    pub fn workload(exe: &str) -> Workload {
        let selectors: SelectorSet = [
            Selector::new("unix", "uid", 1000),
            Selector::new("unix", "sha256", exe),
        ]
        .into_iter()
        .collect();
        Workload {
            pid: 4242,
            uid: 1000,
            gid: 1000,
            exe_path: None,
            sha256: Some(exe.to_owned()),
            selectors,
            notes: Vec::new(),
            login_uid: Some(1000),
        }
    }

    fn gateway() -> Arc<Entry> {
        let mut gateway = (*entry("gateway", &[], &[])).clone();
        gateway.may_ask_for_others = true;
        Arc::new(gateway)
    }

    struct World {
        entries: Vec<Arc<Entry>>,
        policy: Policy,
        book: PolicyBook,
        tokens: FakeTokens,
        _dir: tempfile::TempDir,
    }

    impl World {
        fn new(policies: &str) -> Self {
            let entries = vec![
                entry(
                    "reviewer",
                    &[("agent", "reviewer")],
                    &["github.create_pr", "jira.comment"],
                ),
                entry("other", &[], &[]),
                gateway(),
            ];
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("p.cedar"), policies).unwrap();
            let book = PolicyBook::load(Some(dir.path()), &entries).unwrap();
            let mut tokens = FakeTokens::default();
            for (token, task) in [
                (
                    "reviewer-token",
                    task("reviewer", &["github.create_pr"], &[], &["gateway"]),
                ),
                (
                    "scoped-token",
                    task("reviewer", &["github.create_pr", "rm"], &["repo:a"], &[]),
                ),
            ] {
                tokens.tasks.insert(token.into(), task);
            }
            let policy = Policy::from_entries(entries.clone());
            Self {
                entries,
                policy,
                book,
                tokens,
                _dir: dir,
            }
        }

        fn entry(&self, name: &str) -> &Arc<Entry> {
            self.entries
                .iter()
                .find(|e| e.spiffe_id.as_str().ends_with(&format!("/{name}")))
                .unwrap()
        }

        fn ask(
            &self,
            holds: &[&str],
            workload: &Workload,
            subject: Subject,
            action: &str,
            resource: &str,
        ) -> Verdict {
            let entries: Vec<Arc<Entry>> = holds.iter().map(|name| Arc::clone(self.entry(name))).collect();
            let asker = Asker {
                workload,
                entries: &entries,
                policy: &self.policy,
            };
            let request = DecisionRequest::parse(action, resource, serde_json::Map::new()).unwrap();
            decide(&self.book, &self.tokens, asker, &subject, &request)
        }
    }

    const PERMIT_ALL: &str = "@id(\"all\")\npermit(principal, action, resource);\n";

    fn refusal(verdict: &Verdict) -> &str {
        assert!(!verdict.allowed);
        verdict
            .refusal
            .as_deref()
            .unwrap_or_else(|| panic!("not refused: {verdict:?}"))
    }

    #[test]
    fn refusals_come_in_order_before_any_policy() {
        let world = World::new(PERMIT_ALL);
        let me = workload("reviewer-exe");
        let ask = |subject, action, resource| world.ask(&["reviewer"], &me, subject, action, resource);
        let pr = "github.create_pr";
        assert_eq!(
            refusal(&ask(Subject::Token("".into()), pr, "repo:a")),
            "no task token: every decision is bound to a live task"
        );
        assert_eq!(
            refusal(&ask(Subject::Token("plain.jwt.svid".into()), pr, "repo:a")),
            "task token refused: not a task token (a plain JWT-SVID?)"
        );
        // Policy permits everything, yet the task did not declare the tool.
        assert!(
            refusal(&ask(
                Subject::Token("reviewer-token".into()),
                "jira.comment",
                "repo:a"
            ))
            .starts_with("tool jira.comment is not among the task's declared tools [github.create_pr]")
        );
        assert!(
            refusal(&ask(Subject::Token("scoped-token".into()), pr, "repo:b"))
                .starts_with("resource repo:b is not among the task's declared resources [repo:a]")
        );
        // Declared by the task, but no entry allows it (any more).
        assert!(
            refusal(&ask(Subject::Token("scoped-token".into()), "rm", "repo:a"))
                .starts_with("no entry allows the tool rm")
        );

        let allowed = ask(Subject::Token("scoped-token".into()), pr, "repo:a");
        assert!(allowed.allowed && allowed.refusal.is_none(), "{allowed:?}");
        assert_eq!(allowed.reasons, ["all"]);
        assert_eq!(
            allowed.spiffe_id().unwrap().as_str(),
            "spiffe://example.org/reviewer"
        );
    }

    #[test]
    fn no_policy_permits_means_deny_and_a_forbid_wins() {
        let world = World::new("");
        let me = workload("reviewer-exe");
        let verdict = world.ask(
            &["reviewer"],
            &me,
            Subject::Token("reviewer-token".into()),
            "github.create_pr",
            "repo:a",
        );
        assert!(!verdict.allowed && verdict.refusal.is_none() && verdict.reasons.is_empty());
        assert_eq!(verdict.record("Authorize", &me).reason, "no policy permits it");

        let world = World::new(&format!(
            "{PERMIT_ALL}@id(\"not interactive\")\nforbid(principal, action, resource) when {{ principal.interactive }};\n"
        ));
        let verdict = world.ask(
            &["reviewer"],
            &me,
            Subject::Token("reviewer-token".into()),
            "github.create_pr",
            "repo:a",
        );
        assert!(!verdict.allowed);
        assert_eq!(verdict.reasons, ["not interactive"]);
        assert_eq!(verdict.record("Authorize", &me).reason, "forbidden by policy");
    }

    #[test]
    fn two_agents_of_one_entry_are_told_apart_by_their_executable() {
        let world = World::new(
            "permit(principal, action, resource) when { principal has exe_sha256 && principal.exe_sha256 == \"good\" };\n",
        );
        let ask = |exe: &str| {
            world
                .ask(
                    &["reviewer"],
                    &workload(exe),
                    Subject::Token("reviewer-token".into()),
                    "github.create_pr",
                    "repo:a",
                )
                .allowed
        };
        assert!(ask("good"));
        assert!(!ask("evil"));
    }

    #[test]
    fn a_gateway_asks_for_the_agent_holding_the_token() {
        let world = World::new(
            "@id(\"agent exe\")\npermit(principal, action, resource) when { principal has exe_sha256 && principal.exe_sha256 == \"reviewer-exe\" && principal.labels has agent && principal.labels.agent == \"reviewer\" };\n",
        );
        let gw = workload("gateway-exe");
        // The token's holder is not the caller, and the caller may not ask
        // for others.
        let verdict = world.ask(
            &["other"],
            &gw,
            Subject::Token("reviewer-token".into()),
            "github.create_pr",
            "repo:a",
        );
        assert_eq!(
            refusal(&verdict),
            "the task token is held by spiffe://example.org/reviewer, and the caller (spiffe://example.org/other) may not ask for others: none of its entries sets may_ask_for_others"
        );
        // A gateway: the principal is the agent, with the facts of its task.
        let verdict = world.ask(
            &["gateway"],
            &gw,
            Subject::Token("reviewer-token".into()),
            "github.create_pr",
            "repo:a",
        );
        assert!(verdict.allowed, "{verdict:?}");
        assert_eq!(verdict.reasons, ["agent exe"]);
        let record = verdict.record("Authorize", &gw);
        let decision = record.decision.as_ref().unwrap();
        assert_eq!(decision.asked_by.as_deref(), Some("spiffe://example.org/gateway"));
        assert_eq!(record.spiffe_id.as_deref(), Some("spiffe://example.org/reviewer"));
        assert_eq!(record.owner.as_deref(), Some("reviewer-owner@example.org"));
        assert_eq!(
            record.sha256.as_deref(),
            Some("gateway-exe"),
            "the caller's own facts"
        );
        assert_eq!(record.jti.as_deref(), Some("jti-of-reviewer"));
        assert_eq!(record.task.as_ref().unwrap().id, "task-of-reviewer");

        // Addressed to someone else: refused.
        let verdict = world.ask(
            &["gateway"],
            &gw,
            Subject::Token("scoped-token".into()),
            "github.create_pr",
            "repo:a",
        );
        assert!(
            refusal(&verdict).starts_with("the task token is not addressed to the caller"),
            "{verdict:?}"
        );
        // Refusals before the principal is known name the gateway that asked.
        for token in ["scoped-token", "", "plain.jwt.svid"] {
            let verdict = world.ask(
                &["gateway"],
                &gw,
                Subject::Token(token.into()),
                "github.create_pr",
                "repo:a",
            );
            let record = verdict.record("Authorize", &gw);
            assert_eq!(
                record.decision.unwrap().asked_by.as_deref(),
                Some("spiffe://example.org/gateway"),
                "{token:?}"
            );
        }
        // An agent asking with its own token asks for nobody else.
        let both = ["reviewer", "gateway"];
        let verdict = world.ask(
            &both,
            &gw,
            Subject::Token("reviewer-token".into()),
            "github.create_pr",
            "repo:a",
        );
        assert!(verdict.refusal.is_none(), "{verdict:?}");
        assert_eq!(verdict.record("Authorize", &gw).decision.unwrap().asked_by, None);
    }

    #[test]
    fn authzen_subjects_are_checked_against_the_caller() {
        let world = World::new(PERMIT_ALL);
        let me = workload("reviewer-exe");
        let reviewer = "spiffe://example.org/reviewer";
        let caller = |spiffe_id: &str, token: Option<&str>| Subject::Caller {
            spiffe_id: spiffe_id.into(),
            token: token.map(Into::into),
        };
        let ask = |holds: &[&str], subject| world.ask(holds, &me, subject, "github.create_pr", "repo:a");
        assert!(
            refusal(&ask(&["other"], caller(reviewer, Some("reviewer-token"))))
                .starts_with("the subject spiffe://example.org/reviewer is not the caller")
        );
        assert!(refusal(&ask(&["reviewer"], caller(reviewer, None))).starts_with("no task token"));
        assert!(ask(&["reviewer"], caller(reviewer, Some("reviewer-token"))).allowed);
        let both = ["other", "reviewer"];
        assert_eq!(
            refusal(&ask(
                &both,
                caller("spiffe://example.org/other", Some("reviewer-token"))
            )),
            "the task token is held by spiffe://example.org/reviewer, not by the subject spiffe://example.org/other"
        );

        // A task_token subject: the caller must be a gateway, checked before
        // the token is even verified.
        let before = *world.tokens.verified.lock().unwrap();
        let verdict = ask(&["other"], Subject::Agent("reviewer-token".into()));
        assert!(
            refusal(&verdict).starts_with("the caller (spiffe://example.org/other) may not ask for others")
        );
        assert_eq!(*world.tokens.verified.lock().unwrap(), before);
        assert!(ask(&["gateway"], Subject::Agent("reviewer-token".into())).allowed);
    }

    #[test]
    fn every_verdict_has_a_record_naming_the_decision() {
        let world = World::new(PERMIT_ALL);
        let me = workload("reviewer-exe");
        let refused = world.ask(
            &["reviewer"],
            &me,
            Subject::Token("".into()),
            "github.create_pr",
            "repo:a",
        );
        let record = refused.record("Authorize", &me);
        assert_eq!(record.outcome, Outcome::Denied);
        assert_eq!(record.reason, refused.refusal.clone().unwrap());
        assert_eq!(
            record.spiffe_id.as_deref(),
            Some("spiffe://example.org/reviewer"),
            "the caller's entry"
        );
        assert!(record.task.is_none() && record.jti.is_none());
        let decision = record.decision.unwrap();
        assert_eq!(
            (decision.action.as_str(), decision.resource.as_str()),
            ("github.create_pr", "repo:a")
        );
        assert_eq!(decision.id, refused.id);
        assert_eq!(decision.id.len(), 32);

        let allowed = world.ask(
            &["reviewer"],
            &me,
            Subject::Token("reviewer-token".into()),
            "github.create_pr",
            "repo:a",
        );
        let record = allowed.record("Authorize", &me);
        assert_eq!(record.outcome, Outcome::Allowed);
        assert_eq!(record.decision.as_ref().unwrap().policies, ["all"]);
        assert_eq!(record.task.as_ref().unwrap().purpose, "review PR 7");
        assert_ne!(allowed.id, refused.id);
    }
}

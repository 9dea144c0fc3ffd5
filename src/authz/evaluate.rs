//! One Cedar evaluation: the entities of a decision built from attested
//! facts, the entry and the verified task, and the request over them.
//!
//! Entities are built without schema checks (attestd builds them, typed by
//! construction, and a unit test holds them to the schema): the schema of a
//! kept policy set may lag an entries reload by a moment, and a label key
//! new to it must not turn every decision into an error. The request itself
//! is checked against the schema.

use std::collections::HashMap;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, Response,
    RestrictedExpression,
};
use serde_json::Value;

use super::PolicyBook;
use super::request::DecisionRequest;
use super::schema::NAMESPACE;
use crate::registry::Entry;
use crate::spiffe_id::SpiffeId;
use crate::tasks::{AgentFacts, VerifiedTask};

/// At most this many evaluation errors are reported (and recorded) per
/// decision, each cut to [`MAX_ERROR_BYTES`]: their text may quote values
/// the caller chose.
const MAX_ERRORS: usize = 16;
const MAX_ERROR_BYTES: usize = 512;

/// Who the decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    /// Its SPIFFE ID (the entity's id).
    pub spiffe_id: &'a SpiffeId,
    /// Its entry in the current policy (owner and labels).
    pub entry: &'a Entry,
    /// What attestation established about it.
    pub facts: &'a AgentFacts,
}

/// What Cedar decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// Allowed: some policy permits and none forbids.
    pub allowed: bool,
    /// The ids of the policies that determined the decision, sorted.
    pub reasons: Vec<String>,
    /// Evaluation errors (a policy that errors does not apply), sorted.
    pub errors: Vec<String>,
}

impl Evaluation {
    fn failed(error: String) -> Self {
        Self {
            allowed: false,
            reasons: Vec::new(),
            errors: vec![bounded(error)],
        }
    }
}

/// Evaluates `request` for `principal` within `task` under `book`. A
/// request that cannot be built is a deny, with the reason as its error.
pub fn evaluate(
    book: &PolicyBook,
    principal: Principal<'_>,
    task: &VerifiedTask,
    request: &DecisionRequest,
    decision_id: &str,
) -> Evaluation {
    match build(book, principal, task, request, decision_id) {
        Ok((cedar_request, entities)) => {
            let authorizer = Authorizer::new();
            let responses: Vec<Response> = book
                .slices(&request.action)
                .into_iter()
                .filter(|slice| slice.num_of_policies() > 0)
                .map(|slice| authorizer.is_authorized(&cedar_request, slice, &entities))
                .collect();
            combine(&responses)
        }
        Err(error) => Evaluation::failed(error),
    }
}

/// The decision of a policy set from the decisions of its disjoint slices,
/// as Cedar would have made it over the whole: a deny naming policies is a
/// forbid that applies, and any forbid wins (the reasons are every forbid
/// that applies); else the set allows if a permit applies (the reasons are
/// every permit that applies); else it denies, naming none.
fn combine(responses: &[Response]) -> Evaluation {
    let forbidding: Vec<&Response> = responses
        .iter()
        .filter(|r| r.decision() == Decision::Deny && r.diagnostics().reason().next().is_some())
        .collect();
    let (allowed, deciding) = match forbidding.is_empty() {
        false => (false, forbidding),
        true => {
            let allowing: Vec<&Response> = responses
                .iter()
                .filter(|r| r.decision() == Decision::Allow)
                .collect();
            (!allowing.is_empty(), allowing)
        }
    };
    let mut reasons: Vec<String> = deciding
        .iter()
        .flat_map(|r| r.diagnostics().reason())
        .map(ToString::to_string)
        .collect();
    reasons.sort();
    let mut errors: Vec<String> = responses
        .iter()
        .flat_map(|r| r.diagnostics().errors())
        .take(MAX_ERRORS)
        .map(|error| bounded(error.to_string()))
        .collect();
    errors.sort();
    Evaluation {
        allowed,
        reasons,
        errors,
    }
}

/// The Cedar request and entities of a decision.
fn build(
    book: &PolicyBook,
    principal: Principal<'_>,
    task: &VerifiedTask,
    request: &DecisionRequest,
    decision_id: &str,
) -> Result<(Request, Entities), String> {
    let [agent, task_entity, resource, args] = entities(principal, task, request, decision_id)?;
    let context = Context::from_pairs([
        (
            "task".to_owned(),
            RestrictedExpression::new_entity_uid(task_entity.uid()),
        ),
        (
            "args".to_owned(),
            RestrictedExpression::new_entity_uid(args.uid()),
        ),
    ])
    .map_err(|e| format!("context: {e}"))?;
    let cedar_request = Request::new(
        agent.uid(),
        uid("Action", &request.action)?,
        resource.uid(),
        context,
        Some(book.schema()),
    )
    .map_err(|e| format!("request does not fit the schema: {e}"))?;
    let entities = Entities::from_entities([agent, task_entity, resource, args], None)
        .map_err(|e| format!("entities: {e}"))?;
    Ok((cedar_request, entities))
}

/// The principal, the task, the resource and the arguments.
fn entities(
    principal: Principal<'_>,
    task: &VerifiedTask,
    request: &DecisionRequest,
    decision_id: &str,
) -> Result<[Entity; 4], String> {
    Ok([
        agent(principal)?,
        task_entity(task)?,
        resource(request)?,
        args(&request.args, decision_id)?,
    ])
}

/// `Attestd::<kind>::"<id>"`.
fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let name: EntityTypeName = format!("{NAMESPACE}::{kind}")
        .parse()
        .map_err(|e| format!("entity type {kind}: {e}"))?;
    Ok(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(values.into_iter().map(string))
}

fn agent(principal: Principal<'_>) -> Result<Entity, String> {
    let labels = RestrictedExpression::new_record(
        principal
            .entry
            .labels
            .iter()
            .map(|(key, value)| (key.to_owned(), string(value))),
    )
    .map_err(|e| format!("labels: {e}"))?;
    let facts = principal.facts;
    let mut attrs = HashMap::from([
        ("owner".to_owned(), string(&principal.entry.owner)),
        ("labels".to_owned(), labels),
        (
            "interactive".to_owned(),
            RestrictedExpression::new_bool(facts.interactive),
        ),
    ]);
    for (name, value) in [
        ("exe_sha256", &facts.exe_sha256),
        ("systemd_unit", &facts.systemd_unit),
        ("container_id", &facts.container_id),
    ] {
        if let Some(value) = value {
            attrs.insert(name.to_owned(), string(value));
        }
    }
    Entity::new(
        uid("Agent", principal.spiffe_id.as_str())?,
        attrs,
        Default::default(),
    )
    .map_err(|e| format!("agent: {e}"))
}

fn task_entity(task: &VerifiedTask) -> Result<Entity, String> {
    let depth = i64::try_from(task.delegated_by.len()).unwrap_or(i64::MAX);
    let attrs = HashMap::from([
        ("purpose".to_owned(), string(&task.purpose)),
        ("tools".to_owned(), strings(task.tools.iter().map(String::as_str))),
        (
            "resources".to_owned(),
            strings(task.resources.iter().map(String::as_str)),
        ),
        (
            "delegated_by".to_owned(),
            strings(task.delegated_by.iter().map(SpiffeId::as_str)),
        ),
        (
            "delegation_depth".to_owned(),
            RestrictedExpression::new_long(depth),
        ),
    ]);
    Entity::new(uid("Task", &task.task_id)?, attrs, Default::default()).map_err(|e| format!("task: {e}"))
}

fn resource(request: &DecisionRequest) -> Result<Entity, String> {
    let resource = &request.resource;
    let attrs = HashMap::from([
        ("type".to_owned(), string(resource.kind())),
        ("id".to_owned(), string(resource.id())),
    ]);
    Entity::new(uid("Resource", resource.as_str())?, attrs, Default::default())
        .map_err(|e| format!("resource: {e}"))
}

/// The caller's arguments as the tags of an `Args` entity named after the
/// decision: a string as it is, anything else as compact JSON.
fn args(args: &serde_json::Map<String, Value>, decision_id: &str) -> Result<Entity, String> {
    let tags = args.iter().map(|(key, value)| {
        let text = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        (key.clone(), RestrictedExpression::new_string(text))
    });
    Entity::new_with_tags(uid("Args", decision_id)?, [], [], tags).map_err(|e| format!("args: {e}"))
}

/// `text` cut to [`MAX_ERROR_BYTES`] (on a character boundary).
fn bounded(mut text: String) -> String {
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::authz::decide::tests::task;
    use crate::authz::schema::tests::entry;

    fn book(policies: &str) -> (PolicyBook, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.cedar"), policies).unwrap();
        let entries = [entry(
            "reviewer",
            &[("agent", "reviewer"), ("team", "ml")],
            &["github.create_pr", "jira.comment"],
        )];
        (PolicyBook::load(Some(dir.path()), &entries).unwrap(), dir)
    }

    fn request(args: serde_json::Value) -> DecisionRequest {
        DecisionRequest::parse(
            "github.create_pr",
            "repo:attestd",
            args.as_object().unwrap().clone(),
        )
        .unwrap()
    }

    fn facts() -> AgentFacts {
        AgentFacts {
            exe_sha256: Some("ab".repeat(32)),
            systemd_unit: Some("agent.service".into()),
            container_id: None,
            interactive: true,
        }
    }

    #[test]
    fn the_entities_attestd_builds_fit_the_schema() {
        let (book, _dir) = book("");
        let entry = entry("reviewer", &[("agent", "reviewer")], &["github.create_pr"]);
        let facts = facts();
        let mut task = task("reviewer", &["github.create_pr"], &["repo:attestd"], &[]);
        task.delegated_by = vec![SpiffeId::new("spiffe://example.org/lead").unwrap()];
        let principal = Principal {
            spiffe_id: &entry.spiffe_id,
            entry: &entry,
            facts: &facts,
        };
        let request = request(json!({"branch": "main", "n": 3, "nested": {"a": [1, null]}}));
        let entities = entities(principal, &task, &request, "d1").unwrap();
        Entities::from_entities(entities, Some(book.schema())).unwrap();
        build(&book, principal, &task, &request, "d1").unwrap();
    }

    #[test]
    fn policies_see_the_facts_the_task_and_the_arguments() {
        let (book, _dir) = book(
            r#"@id("facts")
permit(principal, action == Attestd::Action::"github.create_pr", resource is Attestd::Resource)
when {
  principal.owner == "reviewer-owner@example.org" &&
  principal.labels has agent && principal.labels.agent == "reviewer" &&
  principal has systemd_unit && principal.systemd_unit == "agent.service" &&
  !(principal has container_id) && principal.interactive &&
  resource.type == "repo" && resource.id == "attestd" &&
  context.task.purpose == "review PR 7" && context.task.tools.contains("github.create_pr") &&
  context.task.delegation_depth == 0 &&
  context.args.hasTag("branch") && context.args.getTag("branch") == "main" &&
  context.args.hasTag("n") && context.args.getTag("n") == "3" &&
  context.args.hasTag("nested") && context.args.getTag("nested") == "{\"a\":[1,null]}"
};
"#,
        );
        let entry = entry("reviewer", &[("agent", "reviewer")], &["github.create_pr"]);
        let facts = facts();
        let principal = Principal {
            spiffe_id: &entry.spiffe_id,
            entry: &entry,
            facts: &facts,
        };
        let task = task("reviewer", &["github.create_pr"], &[], &[]);
        let args = json!({"branch": "main", "n": 3, "nested": {"a": [1, null]}});
        let evaluation = evaluate(&book, principal, &task, &request(args), "d1");
        assert_eq!(
            evaluation,
            Evaluation {
                allowed: true,
                reasons: vec!["facts".into()],
                errors: Vec::new()
            }
        );
        let evaluation = evaluate(&book, principal, &task, &request(json!({"branch": "dev"})), "d2");
        assert!(!evaluation.allowed && evaluation.reasons.is_empty());
    }

    #[test]
    fn a_policy_that_errors_does_not_apply_and_the_error_is_reported() {
        let (book, _dir) = book(
            "@id(\"overflows\")\npermit(principal, action, resource) when { context.task.delegation_depth + 9223372036854775807 + 1 > 0 };\n",
        );
        let entry = entry("reviewer", &[], &["github.create_pr"]);
        let facts = AgentFacts::default();
        let principal = Principal {
            spiffe_id: &entry.spiffe_id,
            entry: &entry,
            facts: &facts,
        };
        let task = task("reviewer", &["github.create_pr"], &[], &[]);
        let evaluation = evaluate(&book, principal, &task, &request(json!({})), "d1");
        assert!(!evaluation.allowed);
        assert_eq!(evaluation.errors.len(), 1, "{evaluation:?}");
        assert!(evaluation.errors[0].contains("overflows"), "{evaluation:?}");
    }

    /// Deciding over the slices of the action is deciding over the whole
    /// set: same decision, same reasons, same errors.
    #[test]
    fn slices_decide_as_the_whole_set_does() {
        let (book, _dir) = book(
            r#"@id("any permit") permit(principal, action, resource) when { context.args.hasTag("open") };
@id("pr permit") permit(principal, action == Attestd::Action::"github.create_pr", resource) when { context.args.hasTag("pr") };
@id("list permit") permit(principal, action in [Attestd::Action::"github.create_pr", Attestd::Action::"jira.comment"], resource) when { context.args.hasTag("list") };
@id("comment forbid") forbid(principal, action == Attestd::Action::"jira.comment", resource) when { context.args.hasTag("no") };
@id("any forbid") forbid(principal, action, resource) when { context.args.hasTag("never") };
@id("errs") permit(principal, action == Attestd::Action::"github.create_pr", resource) when { context.task.delegation_depth + 9223372036854775807 + 1 > 0 };
"#,
        );
        let entry = entry("reviewer", &[], &["github.create_pr", "jira.comment"]);
        let facts = AgentFacts::default();
        let principal = Principal {
            spiffe_id: &entry.spiffe_id,
            entry: &entry,
            facts: &facts,
        };
        let task = task("reviewer", &["github.create_pr", "jira.comment"], &[], &[]);
        for action in ["github.create_pr", "jira.comment"] {
            for tags in [
                &[][..],
                &["open"],
                &["pr"],
                &["list"],
                &["no", "list"],
                &["never", "pr"],
                &["no", "open"],
            ] {
                let args: serde_json::Map<String, Value> =
                    tags.iter().map(|t| ((*t).to_owned(), json!(""))).collect();
                let request = DecisionRequest::parse(action, "repo:x", args).unwrap();
                let (cedar_request, entities) = build(&book, principal, &task, &request, "d").unwrap();
                let whole = Authorizer::new().is_authorized(&cedar_request, book.policies(), &entities);
                let sliced = evaluate(&book, principal, &task, &request, "d");
                let mut reasons: Vec<String> =
                    whole.diagnostics().reason().map(ToString::to_string).collect();
                reasons.sort();
                let mut errors: Vec<String> = whole.diagnostics().errors().map(ToString::to_string).collect();
                errors.sort();
                let expected = Evaluation {
                    allowed: whole.decision() == Decision::Allow,
                    reasons,
                    errors,
                };
                assert_eq!(sliced, expected, "{action} {tags:?}");
            }
        }
        assert_eq!(book.slices("jira.comment")[0].num_of_policies(), 2);
        assert_eq!(book.slices("github.create_pr")[0].num_of_policies(), 3);
        assert_eq!(book.slices("github.create_pr")[1].num_of_policies(), 2);
    }

    #[test]
    fn long_errors_are_cut() {
        let cut = bounded("é".repeat(MAX_ERROR_BYTES));
        assert!(cut.len() <= MAX_ERROR_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("short".into()), "short");
    }
}

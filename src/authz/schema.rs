//! The Cedar schema policies are validated against: the shipped part
//! (`attestd.cedarschema`: the agent, the task, the resource, the
//! arguments) completed with what the registration entries decide: the
//! label keys an agent may carry and one action per tool some entry allows.
//!
//! Cedar records are closed (a policy may only name declared attributes),
//! so `labels` is declared as a record with every label key some entry
//! uses, each optional: a policy tests a label with `has` first. A policy
//! reading a label no entry uses fails validation, which catches typos
//! (behind `has`, it validates and is simply never true).
//! The generated part is a JSON schema fragment, so no label key or tool
//! name ever needs quoting in Cedar syntax.

use std::collections::BTreeSet;
use std::sync::Arc;

use cedar_policy::{Schema, SchemaFragment};
use serde_json::{Value, json};

use super::AuthzError;
use crate::registry::Entry;

/// The schema attestd ships (the README documents it).
pub const SHIPPED: &str = include_str!("attestd.cedarschema");

/// The namespace of every name attestd declares.
pub const NAMESPACE: &str = "Attestd";

/// The schema for `entries`, and the tools it declares actions for.
pub fn build(entries: &[Arc<Entry>]) -> Result<(Schema, BTreeSet<String>), AuthzError> {
    let tools = tools(entries);
    let fragments = [shipped()?, generated(&label_keys(entries), &tools)?];
    let schema = Schema::from_schema_fragments(fragments).map_err(|e| schema_error(&e))?;
    Ok((schema, tools))
}

/// The whole schema in effect for `entries`, in Cedar syntax (for the
/// operator: what the policies are validated against).
pub fn text(entries: &[Arc<Entry>]) -> Result<String, AuthzError> {
    let generated = generated(&label_keys(entries), &tools(entries))?;
    let generated = generated.to_cedarschema().map_err(|e| schema_error(&e))?;
    Ok(format!("{SHIPPED}\n// Generated from the entries:\n{generated}"))
}

fn shipped() -> Result<SchemaFragment, AuthzError> {
    let (fragment, _warnings) =
        SchemaFragment::from_cedarschema_str(SHIPPED).map_err(|e| schema_error(&e))?;
    Ok(fragment)
}

/// `type Labels` and the actions, as a JSON schema fragment.
fn generated(label_keys: &BTreeSet<String>, tools: &BTreeSet<String>) -> Result<SchemaFragment, AuthzError> {
    let labels: serde_json::Map<String, Value> = label_keys
        .iter()
        .map(|key| (key.clone(), json!({"type": "String", "required": false})))
        .collect();
    let applies_to = json!({
        "principalTypes": ["Agent"],
        "resourceTypes": ["Resource"],
        "context": {"type": "DecisionContext"},
    });
    let actions: serde_json::Map<String, Value> = tools
        .iter()
        .map(|tool| (tool.clone(), json!({"appliesTo": applies_to})))
        .collect();
    let fragment = json!({
        NAMESPACE: {
            "commonTypes": {"Labels": {"type": "Record", "attributes": labels}},
            "entityTypes": {},
            "actions": actions,
        }
    });
    SchemaFragment::from_json_value(fragment).map_err(|e| schema_error(&e))
}

/// Every label key some entry uses.
fn label_keys(entries: &[Arc<Entry>]) -> BTreeSet<String> {
    distinct(entries.iter().flat_map(|entry| entry.labels.keys()))
}

/// Every tool some entry's `tasks.tools` allows.
fn tools(entries: &[Arc<Entry>]) -> BTreeSet<String> {
    distinct(
        entries
            .iter()
            .filter_map(|entry| entry.tasks.as_ref())
            .flat_map(|tasks| tasks.tools.iter().map(String::as_str)),
    )
}

/// The distinct names of `names`, each copied once. A policy has a few
/// distinct label keys and tools among hundreds of thousands of uses:
/// collecting every use first (then sorting) was 13 MB at the peak of
/// loading 100,000 entries.
fn distinct<'a>(names: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for name in names {
        if !set.contains(name) {
            set.insert(name.to_owned());
        }
    }
    set
}

/// The shipped schema is tested to parse and the generated part is built
/// from checked names, so this names a defect, not an operator error.
fn schema_error(error: &dyn std::fmt::Display) -> AuthzError {
    AuthzError::Schema(error.to_string())
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Location, TasksConfig};

    /// An entry for tests: `name` under example.org, with labels and tools.
    pub fn entry(name: &str, labels: &[(&str, &str)], tools: &[&str]) -> Arc<Entry> {
        Arc::new(Entry {
            id: crate::registry::EntryId(0),
            spiffe_id: crate::spiffe_id::SpiffeId::new(&format!("spiffe://example.org/{name}")).unwrap(),
            selectors: crate::selector::SelectorSet::new(),
            owner: format!("{name}-owner@example.org").into(),
            description: None,
            labels: labels.iter().copied().collect(),
            x509_ttl: Duration::from_secs(3600),
            jwt_ttl: Duration::from_secs(300),
            jwt_audiences: Box::default(),
            dns_names: Box::default(),
            hint: None,
            federates_with: Box::default(),
            owner_expires: None,
            tasks: (!tools.is_empty()).then(|| {
                Box::new(TasksConfig {
                    max_ttl: Duration::from_secs(900),
                    tools: tools.iter().map(|t| (*t).to_owned()).collect(),
                })
            }),
            may_ask_for_others: false,
            jwt_audiences_written_empty: false,
            remote_entry: None,
            location: Location {
                file: std::path::Path::new("attestd.toml").into(),
                line: 1,
            },
        })
    }

    #[test]
    fn actions_and_label_keys_come_from_the_entries() {
        let entries = [
            entry(
                "a",
                &[("agent", "reviewer"), ("odd key \"q\"", "x")],
                &["github.create_pr"],
            ),
            entry("b", &[("team", "ml")], &["jira.comment", "github.create_pr"]),
            entry("c", &[], &[]),
        ];
        let (schema, tools) = build(&entries).unwrap();
        assert_eq!(
            tools.iter().map(String::as_str).collect::<Vec<_>>(),
            ["github.create_pr", "jira.comment"]
        );
        let actions: BTreeSet<String> = schema.actions().map(|a| a.id().unescaped().to_owned()).collect();
        assert_eq!(actions, tools);
        let text = text(&entries).unwrap();
        assert!(text.contains("team?: __cedar::String"), "{text}");
        assert!(text.contains(r#""odd key \"q\""?: __cedar::String"#), "{text}");
        assert!(text.contains("action \"jira.comment\""), "{text}");
        assert!(text.starts_with(SHIPPED));
    }

    #[test]
    fn no_entries_still_make_a_schema() {
        let (schema, tools) = build(&[]).unwrap();
        assert!(tools.is_empty());
        assert_eq!(schema.actions().count(), 0);
        assert!(schema.entity_types().any(|t| t.to_string() == "Attestd::Agent"));
    }
}

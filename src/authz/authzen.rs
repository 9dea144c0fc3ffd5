//! The OpenID AuthZEN 1.0 evaluation shape of a decision, so gateways that
//! speak it need no attestd client library.
//!
//! Request (`POST /access/v1/evaluation`):
//! ```json
//! {"subject": {"type": "task_token", "id": "<JWT>"},
//!  "action": {"name": "github.create_pr"},
//!  "resource": {"type": "repo", "id": "attestd"},
//!  "context": {"branch": "main"}}
//! ```
//! The subject is never believed as given:
//! - `{"type": "task_token", "id": JWT}`: a gateway (the attested caller,
//!   whose entry must set `may_ask_for_others`) asks about the agent
//!   holding that task token, which must be addressed (`aud`) to the
//!   gateway's SPIFFE ID;
//! - `{"type": "spiffe_id", "id": ID}`: the caller asks for itself; `ID`
//!   must be one of its own SPIFFE IDs, and its task token goes in
//!   `context.task_token` (without one the request is refused, like any
//!   request without a live task).
//!
//! `action.name` is the tool; `resource` is `{"type", "id"}`, the resource
//! `type:id`. The `context`, without `task_token`, is the caller's
//! arguments (Cedar's `context.args`, untrusted). `properties` of the
//! subject, action and resource are accepted and ignored: attestd takes
//! facts from attestation, not from the request.
//!
//! Response: `{"decision": true|false, "context": {"decision_id": ...,
//! "reasons": [policy ids], "errors": [...] (when any), "refusal": "..."
//! (when refused before any policy)}}`.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

use super::request::{DecisionRequest, check_token};
use super::{AuthzError, Subject, Verdict};

/// The key of `context` that carries a `spiffe_id` subject's task token.
pub const TASK_TOKEN_KEY: &str = "task_token";
/// Bytes of a `spiffe_id` subject (the SPIFFE maximum).
const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// An AuthZEN evaluation request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Whom it is about.
    pub subject: Subject,
    /// What is asked.
    pub request: DecisionRequest,
}

impl Evaluation {
    /// Parses and checks a request body.
    pub fn parse(body: &[u8]) -> Result<Self, AuthzError> {
        let raw: RawEvaluation = serde_json::from_slice(body)
            .map_err(|e| AuthzError::BadRequest(format!("invalid request: {e}")))?;
        let mut args = raw.context.unwrap_or_default();
        let subject = match raw.subject.kind.as_str() {
            "task_token" => {
                check_token(&raw.subject.id)?;
                Subject::Agent(raw.subject.id)
            }
            "spiffe_id" => {
                if raw.subject.id.len() > MAX_SPIFFE_ID_BYTES {
                    return Err(AuthzError::BadRequest(format!(
                        "subject.id: at most {MAX_SPIFFE_ID_BYTES} bytes"
                    )));
                }
                let token = match args.remove(TASK_TOKEN_KEY) {
                    None => None,
                    Some(Value::String(token)) => {
                        check_token(&token)?;
                        Some(token)
                    }
                    Some(_) => {
                        return Err(AuthzError::BadRequest(format!(
                            "context.{TASK_TOKEN_KEY} must be a string"
                        )));
                    }
                };
                Subject::Caller {
                    spiffe_id: raw.subject.id,
                    token,
                }
            }
            other => {
                return Err(AuthzError::BadRequest(format!(
                    "subject.type {:?}: expected \"task_token\" or \"spiffe_id\"",
                    other.chars().take(64).collect::<String>()
                )));
            }
        };
        if raw.resource.kind.contains(':') {
            return Err(AuthzError::BadRequest("resource.type may not contain ':'".into()));
        }
        let resource = format!("{}:{}", raw.resource.kind, raw.resource.id);
        let request = DecisionRequest::parse(&raw.action.name, &resource, args)?;
        Ok(Self { subject, request })
    }
}

/// The response body for `verdict`.
pub fn response(verdict: &Verdict) -> Value {
    let mut context = Map::new();
    context.insert("decision_id".into(), json!(verdict.id));
    context.insert("reasons".into(), json!(verdict.reasons));
    if !verdict.errors.is_empty() {
        context.insert("errors".into(), json!(verdict.errors));
    }
    if let Some(refusal) = &verdict.refusal {
        context.insert("refusal".into(), json!(refusal));
    }
    json!({"decision": verdict.allowed, "context": context})
}

/// The body of a request refused for its shape.
pub fn error_body(message: &str) -> Value {
    json!({"error": message})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvaluation {
    subject: RawEntity,
    action: RawAction,
    resource: RawEntity,
    context: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntity {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    #[serde(rename = "properties")]
    _properties: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    name: String,
    #[serde(rename = "properties")]
    _properties: Option<IgnoredAny>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> String {
        match Evaluation::parse(body.as_bytes()) {
            Err(AuthzError::BadRequest(message)) => message,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_gateway_presents_a_task_token() {
        let body = r#"{"subject": {"type": "task_token", "id": "t.o.k", "properties": {"ignored": 1}},
            "action": {"name": "github.create_pr"}, "resource": {"type": "repo", "id": "a:b"},
            "context": {"branch": "main", "n": 3}}"#;
        let evaluation = Evaluation::parse(body.as_bytes()).unwrap();
        assert_eq!(evaluation.subject, Subject::Agent("t.o.k".into()));
        assert_eq!(evaluation.request.action, "github.create_pr");
        assert_eq!(evaluation.request.resource.as_str(), "repo:a:b");
        assert_eq!(
            Value::Object(evaluation.request.args),
            json!({"branch": "main", "n": 3})
        );
    }

    #[test]
    fn a_caller_names_itself_and_brings_its_token_in_the_context() {
        let body = r#"{"subject": {"type": "spiffe_id", "id": "spiffe://example.org/a"},
            "action": {"name": "t"}, "resource": {"type": "r", "id": "x"},
            "context": {"task_token": "t.o.k", "k": "v"}}"#;
        let evaluation = Evaluation::parse(body.as_bytes()).unwrap();
        assert_eq!(
            evaluation.subject,
            Subject::Caller {
                spiffe_id: "spiffe://example.org/a".into(),
                token: Some("t.o.k".into())
            }
        );
        assert_eq!(Value::Object(evaluation.request.args.clone()), json!({"k": "v"}));
        let without = r#"{"subject": {"type": "spiffe_id", "id": "spiffe://example.org/a"},
            "action": {"name": "t"}, "resource": {"type": "r", "id": "x"}}"#;
        let evaluation = Evaluation::parse(without.as_bytes()).unwrap();
        assert!(matches!(evaluation.subject, Subject::Caller { token: None, .. }));
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        assert!(bad("{").starts_with("invalid request: EOF"));
        assert!(bad(r#"{"subject": {"type": "task_token", "id": "t"}}"#).contains("missing field `action`"));
        let with = |subject: &str, resource: &str, extra: &str| {
            format!(r#"{{"subject": {subject}, "action": {{"name": "t"}}, "resource": {resource}{extra}}}"#)
        };
        let token = r#"{"type": "task_token", "id": "t"}"#;
        let resource = r#"{"type": "r", "id": "x"}"#;
        assert!(
            bad(&with(r#"{"type": "user", "id": "alice"}"#, resource, ""))
                .starts_with("subject.type \"user\"")
        );
        assert!(bad(&with(token, r#"{"type": "r:s", "id": "x"}"#, "")).contains("may not contain ':'"));
        assert!(bad(&with(token, resource, r#", "extra": 1"#)).contains("unknown field `extra`"));
        let spiffe = r#"{"type": "spiffe_id", "id": "spiffe://example.org/a"}"#;
        assert!(
            bad(&with(spiffe, resource, r#", "context": {"task_token": 5}"#)).contains("must be a string")
        );
        assert!(bad(&with(token, r#"{"type": "r", "id": ""}"#, "")).contains("the id must be non-empty"));
    }
}

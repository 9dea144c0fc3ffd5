//! `attestd authz check`: one decision asked of the policy decision point
//! over the agent API's `Authorize`, as the current process, printed for
//! humans or as JSON.

use std::path::Path;

use serde_json::{Value, json};

use super::{ClientError, SecurityHeader, channel};
use crate::proto::agent::authorization_client::AuthorizationClient;
use crate::proto::agent::{AuthorizeRequest, AuthorizeResponse, Decision};

/// Asks for a decision: `action` (the tool) on `resource` (`type:id`), with
/// the caller's arguments (a JSON object, or none) and its task token.
pub async fn authorize(
    path: &Path,
    action: String,
    resource: String,
    context: Option<&str>,
    token: Option<String>,
) -> Result<AuthorizeResponse, ClientError> {
    let context = context.map(to_struct).transpose()?;
    let mut client = AuthorizationClient::with_interceptor(channel(path).await?, SecurityHeader);
    let request = AuthorizeRequest {
        action,
        resource,
        context,
        token: token.unwrap_or_default(),
    };
    Ok(client.authorize(request).await?.into_inner())
}

/// Whether the decision allows the action.
pub fn allowed(response: &AuthorizeResponse) -> bool {
    response.decision() == Decision::Allow
}

/// The decision for humans: allow or deny, its id, the policies that
/// determined it, and why it was refused or what failed.
pub fn describe_decision(response: &AuthorizeResponse) -> String {
    let verdict = match allowed(response) {
        true => "allow",
        false => "deny",
    };
    let mut out = format!("{verdict} (decision {})\n", response.decision_id);
    if !response.reasons.is_empty() {
        out.push_str(&format!("policies: {}\n", response.reasons.join(", ")));
    }
    if !response.refusal.is_empty() {
        out.push_str(&format!("refused: {}\n", response.refusal));
    }
    for error in &response.errors {
        out.push_str(&format!("error: {error}\n"));
    }
    out
}

/// The decision as JSON: `{"decision": "allow"|"deny", "decision_id",
/// "reasons", "errors", "refusal" (when refused)}`.
pub fn decision_json(response: &AuthorizeResponse) -> Value {
    let mut out = json!({
        "decision": if allowed(response) { "allow" } else { "deny" },
        "decision_id": response.decision_id,
        "reasons": response.reasons,
        "errors": response.errors,
    });
    if !response.refusal.is_empty() {
        out["refusal"] = json!(response.refusal);
    }
    out
}

/// `--context`: a JSON object, as a protobuf Struct.
fn to_struct(text: &str) -> Result<prost_types::Struct, ClientError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(crate::proto::json::to_struct(map)),
        Ok(_) => Err(ClientError::BadInput("--context must be a JSON object".into())),
        Err(error) => Err(ClientError::BadInput(format!("--context is not JSON: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_must_be_a_json_object() {
        let context = to_struct(r#"{"branch": "main", "n": 2, "list": [true, null]}"#).unwrap();
        assert_eq!(context.fields.len(), 3);
        assert!(matches!(to_struct("[1]"), Err(ClientError::BadInput(_))));
        assert!(matches!(to_struct("{"), Err(ClientError::BadInput(_))));
    }

    #[test]
    fn decisions_print_for_humans_and_as_json() {
        let response = AuthorizeResponse {
            decision: Decision::Deny.into(),
            decision_id: "d1".into(),
            reasons: vec!["p".into()],
            errors: Vec::new(),
            refusal: "no task token".into(),
        };
        assert!(!allowed(&response));
        assert_eq!(
            describe_decision(&response),
            "deny (decision d1)\npolicies: p\nrefused: no task token\n"
        );
        assert_eq!(
            decision_json(&response),
            json!({"decision": "deny", "decision_id": "d1", "reasons": ["p"], "errors": [], "refusal": "no task token"})
        );
    }
}

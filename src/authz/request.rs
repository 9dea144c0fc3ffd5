//! What a caller asks a decision about, checked before any attestation work
//! (cheap refusals first): the tool, the resource, the arguments and the
//! token are all caller-controlled, so each is bounded, and the arguments
//! are held to a size and a depth no real tool call comes near.

use serde_json::{Map, Value};

use super::AuthzError;
use crate::config::{MAX_TOOL_NAME_BYTES, is_tool_name};

/// Bytes of a resource name (`type:id`).
pub const MAX_RESOURCE_BYTES: usize = 1024;
/// Bytes of a resource type.
pub const MAX_RESOURCE_TYPE_BYTES: usize = 64;
/// Bytes of the arguments, as compact JSON.
pub const MAX_ARGS_BYTES: usize = 16 * 1024;
/// Nesting of the arguments: the arguments object itself is level 1.
pub const MAX_ARGS_DEPTH: usize = 8;
/// Bytes of a task token. Any token attestd mints fits (see the JWT-SVID
/// limits of the Workload API).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// A resource, `type:id`: a non-empty type of letters, digits and `. _ -`,
/// then a non-empty id without control characters (it may hold `:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName {
    name: String,
    colon: usize,
}

impl ResourceName {
    /// Parses `type:id`.
    pub fn parse(name: &str) -> Result<Self, AuthzError> {
        let bad = |why: String| AuthzError::BadRequest(format!("resource {:?}: {why}", shorten(name)));
        if name.len() > MAX_RESOURCE_BYTES {
            return Err(bad(format!(
                "at most {MAX_RESOURCE_BYTES} bytes (got {})",
                name.len()
            )));
        }
        let Some((kind, id)) = name.split_once(':') else {
            return Err(bad("expected type:id".into()));
        };
        let kind_ok = !kind.is_empty()
            && kind.len() <= MAX_RESOURCE_TYPE_BYTES
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !kind_ok {
            return Err(bad(format!(
                "the type must be 1 to {MAX_RESOURCE_TYPE_BYTES} letters, digits, '.', '_' or '-'"
            )));
        }
        if id.is_empty() || id.chars().any(char::is_control) {
            return Err(bad("the id must be non-empty, without control characters".into()));
        }
        Ok(Self {
            name: name.to_owned(),
            colon: kind.len(),
        })
    }

    /// The whole name, `type:id`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The type.
    pub fn kind(&self) -> &str {
        &self.name[..self.colon]
    }

    /// The id within the type.
    pub fn id(&self) -> &str {
        &self.name[self.colon + 1..]
    }
}

/// A checked decision request: the tool, the resource and the caller's
/// (untrusted) arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRequest {
    /// The tool (a Cedar action).
    pub action: String,
    /// The resource.
    pub resource: ResourceName,
    /// The caller's arguments: untrusted, bounded.
    pub args: Map<String, Value>,
}

impl DecisionRequest {
    /// Checks every part against its bound.
    pub fn parse(action: &str, resource: &str, args: Map<String, Value>) -> Result<Self, AuthzError> {
        if !is_tool_name(action) {
            return Err(AuthzError::BadRequest(format!(
                "action {:?}: a tool name is 1 to {MAX_TOOL_NAME_BYTES} letters, digits, '.', '_', '-', ':' or '/'",
                shorten(action)
            )));
        }
        let resource = ResourceName::parse(resource)?;
        check_args(&args)?;
        Ok(Self {
            action: action.to_owned(),
            resource,
            args,
        })
    }
}

/// Fails unless the token is within [`MAX_TOKEN_BYTES`].
pub fn check_token(token: &str) -> Result<(), AuthzError> {
    match token.len() {
        len if len > MAX_TOKEN_BYTES => Err(AuthzError::BadRequest(format!(
            "task token: at most {MAX_TOKEN_BYTES} bytes (got {len})"
        ))),
        _ => Ok(()),
    }
}

fn check_args(args: &Map<String, Value>) -> Result<(), AuthzError> {
    let depth = args.values().map(depth).max().unwrap_or(0) + 1;
    if depth > MAX_ARGS_DEPTH {
        return Err(AuthzError::BadRequest(format!(
            "context: at most {MAX_ARGS_DEPTH} levels deep (got {depth})"
        )));
    }
    // Strings and maps only: serialization cannot fail.
    let bytes = serde_json::to_vec(args).map_or(usize::MAX, |json| json.len());
    if bytes > MAX_ARGS_BYTES {
        return Err(AuthzError::BadRequest(format!(
            "context: at most {MAX_ARGS_BYTES} bytes as JSON (got {bytes})"
        )));
    }
    Ok(())
}

/// Levels of nesting of a value (a scalar is 0). Iterative: the value may
/// be deeper than the stack allows recursion for.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((value, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(level + 1);
        stack.extend(children.map(|child| (child, level + 1)));
    }
    deepest
}

/// A caller-supplied value quoted in an error: at most 64 characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn message(error: AuthzError) -> String {
        match error {
            AuthzError::BadRequest(message) => message,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn resources_are_type_colon_id() {
        let resource = ResourceName::parse("repo:attestd/attestd:main").unwrap();
        assert_eq!((resource.kind(), resource.id()), ("repo", "attestd/attestd:main"));
        for bad in [
            "repo",
            ":x",
            "repo:",
            "re po:x",
            "repo:a\nb",
            &format!("{}:x", "t".repeat(65)),
        ] {
            assert!(ResourceName::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("repo:{}", "x".repeat(MAX_RESOURCE_BYTES));
        assert!(message(ResourceName::parse(&long).unwrap_err()).contains("at most 1024 bytes"));
    }

    #[test]
    fn actions_are_tool_names() {
        assert!(DecisionRequest::parse("github.create_pr", "repo:x", Map::new()).is_ok());
        for bad in ["", "two words", "a\"b", &"t".repeat(MAX_TOOL_NAME_BYTES + 1)] {
            assert!(
                DecisionRequest::parse(bad, "repo:x", Map::new()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn arguments_are_bounded_in_depth_and_size() {
        // Seven levels below the arguments object: eight in all, the limit.
        let deep = json!({"a": {"b": [{"c": {"d": [{"e": "f"}]}}]}});
        assert!(DecisionRequest::parse("t", "r:x", args(json!({"x": deep}))).is_ok());
        let deeper = json!({"x": {"a": {"b": [{"c": {"d": [{"e": ["f"]}]}}]}}});
        let error = message(DecisionRequest::parse("t", "r:x", args(deeper)).unwrap_err());
        assert_eq!(error, "context: at most 8 levels deep (got 9)");

        let big = args(json!({"x": "y".repeat(MAX_ARGS_BYTES)}));
        let error = message(DecisionRequest::parse("t", "r:x", big).unwrap_err());
        assert!(
            error.starts_with("context: at most 16384 bytes as JSON"),
            "{error}"
        );
        assert!(check_token(&"t".repeat(MAX_TOKEN_BYTES)).is_ok());
        assert!(check_token(&"t".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }

    #[test]
    fn depth_survives_values_deeper_than_the_stack() {
        let mut value = json!("leaf");
        for _ in 0..100_000 {
            value = Value::Array(vec![value]);
        }
        assert_eq!(depth(&value), 100_000);
        // serde_json drops nested values recursively; unwind by hand.
        while let Value::Array(mut items) = value {
            value = items.pop().unwrap_or(Value::Null);
        }
    }
}

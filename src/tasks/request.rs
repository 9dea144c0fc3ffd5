//! A `StartTask` request, parsed and bounded before any attestation work
//! (cheap refusals first): every value a local caller sends is capped, so
//! none can make attestd mint, store or record megabytes per task.

use std::time::Duration;

use crate::config::is_tool_name;
use crate::spiffe_id::SpiffeId;

/// Bytes of the declared purpose.
pub const MAX_PURPOSE_BYTES: usize = 1024;
/// Tools one task may declare.
pub const MAX_TOOLS: usize = 32;
/// Resources one task may declare.
pub const MAX_RESOURCES: usize = 32;
/// Bytes of one resource (`type:id`).
pub const MAX_RESOURCE_BYTES: usize = 256;
/// Audiences of a task token: as many as `FetchJWTSVID` allows.
pub const MAX_AUDIENCES: usize = 16;
/// Bytes per audience: as `FetchJWTSVID` allows (the longest SPIFFE ID).
pub const MAX_AUDIENCE_BYTES: usize = 2048;
/// Bytes of a parent token, and the most a task token may take: what
/// `ValidateJWTSVID` accepts, so every task token can be validated and
/// handed on as a parent.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Bytes of the `spiffe_id` asked for: the SPIFFE maximum.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// How many characters of a refused value a message quotes.
const QUOTED_CHARS: usize = 64;

/// A request refused for its arguments; the message names the limit or
/// the value and is shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// What a task declares it will do, as the caller sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    /// The purpose, in words.
    pub purpose: String,
    /// The tools it will use.
    pub tools: Vec<String>,
    /// The resources (`type:id`) it will act on; empty: any the policy
    /// allows.
    pub resources: Vec<String>,
    /// The audiences of its token; none: its holder's own SPIFFE ID (the
    /// token is for the agent itself, to present in its own decisions).
    pub audience: Vec<String>,
}

/// A checked `StartTask` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// The declared intent; tools and resources sorted, without duplicates.
    pub intent: Intent,
    /// The lifetime asked for; `None`: as long as the entry (and the
    /// parent) allow.
    pub ttl: Option<Duration>,
    /// The parent task's token, for a sub-task.
    pub parent_token: Option<String>,
    /// Which of the caller's identities starts the task.
    pub spiffe_id: Option<SpiffeId>,
}

impl StartRequest {
    /// Checks every bound; `ttl_seconds` 0 and empty strings mean "not
    /// given".
    pub fn parse(
        intent: Intent,
        ttl_seconds: u64,
        parent_token: String,
        spiffe_id: &str,
    ) -> Result<Self, BadRequest> {
        let Intent {
            purpose,
            mut tools,
            mut resources,
            audience,
        } = intent;
        check_purpose(&purpose)?;
        check_tools(&tools)?;
        check_resources(&resources)?;
        check_audience(&audience)?;
        if parent_token.len() > MAX_TOKEN_BYTES {
            return Err(BadRequest(format!(
                "parent_token: at most {MAX_TOKEN_BYTES} bytes (got {})",
                parent_token.len()
            )));
        }
        let spiffe_id = parse_spiffe_id(spiffe_id)?;
        tools.sort();
        tools.dedup();
        resources.sort();
        resources.dedup();
        Ok(Self {
            intent: Intent {
                purpose,
                tools,
                resources,
                audience,
            },
            ttl: (ttl_seconds > 0).then(|| Duration::from_secs(ttl_seconds)),
            parent_token: (!parent_token.is_empty()).then_some(parent_token),
            spiffe_id,
        })
    }
}

fn check_purpose(purpose: &str) -> Result<(), BadRequest> {
    if purpose.trim().is_empty() {
        return Err(BadRequest("purpose is required".into()));
    }
    if purpose.len() > MAX_PURPOSE_BYTES {
        return Err(BadRequest(format!(
            "purpose: at most {MAX_PURPOSE_BYTES} bytes (got {})",
            purpose.len()
        )));
    }
    // It is shown in listings and traces, one line per task.
    if purpose.chars().any(char::is_control) {
        return Err(BadRequest("purpose may not contain control characters".into()));
    }
    Ok(())
}

fn check_tools(tools: &[String]) -> Result<(), BadRequest> {
    if tools.is_empty() {
        return Err(BadRequest("at least one tool is required".into()));
    }
    if tools.len() > MAX_TOOLS {
        return Err(BadRequest(format!(
            "tools: at most {MAX_TOOLS} (got {})",
            tools.len()
        )));
    }
    match tools.iter().find(|tool| !is_tool_name(tool)) {
        Some(bad) => Err(BadRequest(format!(
            "{} is not a tool name (letters, digits and . _ - : /, at most {} bytes)",
            quoted(bad),
            crate::config::MAX_TOOL_NAME_BYTES
        ))),
        None => Ok(()),
    }
}

fn check_resources(resources: &[String]) -> Result<(), BadRequest> {
    if resources.len() > MAX_RESOURCES {
        return Err(BadRequest(format!(
            "resources: at most {MAX_RESOURCES} (got {})",
            resources.len()
        )));
    }
    match resources.iter().find(|resource| !is_resource(resource)) {
        Some(bad) => Err(BadRequest(format!(
            "{} is not a resource: write type:id (type of letters, digits and . _ -; \
             no control characters; at most {MAX_RESOURCE_BYTES} bytes)",
            quoted(bad)
        ))),
        None => Ok(()),
    }
}

/// `type:id`: a plain type name (a Cedar attribute), a non-empty id.
pub fn is_resource(resource: &str) -> bool {
    let Some((kind, id)) = resource.split_once(':') else {
        return false;
    };
    resource.len() <= MAX_RESOURCE_BYTES
        && !kind.is_empty()
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.is_empty()
        && !id.chars().any(char::is_control)
}

fn check_audience(audience: &[String]) -> Result<(), BadRequest> {
    if audience.iter().any(String::is_empty) {
        return Err(BadRequest("an audience may not be empty".into()));
    }
    if audience.len() > MAX_AUDIENCES || audience.iter().any(|a| a.len() > MAX_AUDIENCE_BYTES) {
        return Err(BadRequest(format!(
            "audience: at most {MAX_AUDIENCES} values of at most {MAX_AUDIENCE_BYTES} bytes each \
             (got {} values, the longest {} bytes)",
            audience.len(),
            audience.iter().map(String::len).max().unwrap_or(0)
        )));
    }
    Ok(())
}

fn parse_spiffe_id(spiffe_id: &str) -> Result<Option<SpiffeId>, BadRequest> {
    if spiffe_id.len() > MAX_SPIFFE_ID_BYTES {
        return Err(BadRequest(format!(
            "spiffe_id: at most {MAX_SPIFFE_ID_BYTES} bytes (got {})",
            spiffe_id.len()
        )));
    }
    match spiffe_id {
        "" => Ok(None),
        id => SpiffeId::new(id)
            .map(Some)
            .map_err(|e| BadRequest(format!("invalid spiffe_id {}: {e}", quoted(id)))),
    }
}

/// A caller's value in a message: its start, debug-quoted (control
/// characters escaped), so a refusal never echoes kilobytes back.
pub(super) fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent() -> Intent {
        Intent {
            purpose: "review PR 42".into(),
            tools: vec![
                "jira.comment".into(),
                "github.create_pr".into(),
                "jira.comment".into(),
            ],
            resources: vec!["repo:acme/web".into()],
            audience: vec!["spiffe://example.org/gateway".into()],
        }
    }

    fn parse(intent: Intent) -> Result<StartRequest, BadRequest> {
        StartRequest::parse(intent, 0, String::new(), "")
    }

    #[test]
    fn a_plain_request_parses_sorted_and_without_duplicates() {
        let request = StartRequest::parse(intent(), 60, "t.o.k".into(), "spiffe://example.org/a").unwrap();
        assert_eq!(request.intent.tools, ["github.create_pr", "jira.comment"]);
        assert_eq!(request.ttl, Some(Duration::from_secs(60)));
        assert_eq!(request.parent_token.as_deref(), Some("t.o.k"));
        assert_eq!(request.spiffe_id.unwrap().as_str(), "spiffe://example.org/a");
        let defaults = parse(intent()).unwrap();
        assert_eq!(
            (defaults.ttl, defaults.parent_token, defaults.spiffe_id),
            (None, None, None)
        );
    }

    #[test]
    fn every_bound_is_checked_and_named() {
        let refused = |change: &dyn Fn(&mut Intent)| {
            let mut intent = intent();
            change(&mut intent);
            parse(intent).unwrap_err().0
        };
        assert_eq!(refused(&|i| i.purpose = " ".into()), "purpose is required");
        assert!(
            refused(&|i| i.purpose = "a".repeat(MAX_PURPOSE_BYTES + 1))
                .starts_with("purpose: at most 1024 bytes")
        );
        assert!(refused(&|i| i.purpose = "a\nb".into()).contains("control characters"));
        assert_eq!(refused(&|i| i.tools.clear()), "at least one tool is required");
        assert!(refused(&|i| i.tools = vec!["t".into(); MAX_TOOLS + 1]).starts_with("tools: at most 32"));
        assert!(refused(&|i| i.tools.push("a tool".into())).starts_with("\"a tool\" is not a tool name"));
        assert!(
            refused(&|i| i.resources = vec!["r:1".into(); MAX_RESOURCES + 1])
                .starts_with("resources: at most 32")
        );
        for bad in ["no-colon", ":id", "type:", "ty pe:id", "type:a\u{1}b"] {
            assert!(
                refused(&|i| i.resources = vec![bad.into()]).contains("is not a resource"),
                "{bad}"
            );
        }
        let long = format!("r:{}", "a".repeat(MAX_RESOURCE_BYTES));
        assert!(refused(&|i| i.resources = vec![long.clone()]).contains("is not a resource"));
        assert_eq!(
            refused(&|i| i.audience.push(String::new())),
            "an audience may not be empty"
        );
        assert!(
            refused(&|i| i.audience = vec!["a".into(); MAX_AUDIENCES + 1])
                .starts_with("audience: at most 16 values")
        );
        assert!(
            refused(&|i| i.audience = vec!["a".repeat(MAX_AUDIENCE_BYTES + 1)])
                .starts_with("audience: at most 16 values")
        );
        let huge = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            StartRequest::parse(intent(), 0, huge, "").unwrap_err().0,
            "parent_token: at most 65536 bytes (got 65537)"
        );
        assert!(
            StartRequest::parse(intent(), 0, String::new(), "not-an-id")
                .unwrap_err()
                .0
                .starts_with("invalid spiffe_id")
        );
    }

    #[test]
    fn quoted_values_are_cut_and_escaped() {
        assert_eq!(quoted("a\u{1}"), "\"a\\u{1}\"");
        let long = "é".repeat(1000);
        let short = quoted(&long);
        assert!(
            short.ends_with('…') && short.chars().count() == QUOTED_CHARS + 3,
            "{short}"
        );
    }
}

//! An AuthZEN evaluation request body, as any local caller may send it
//! to the decision endpoint (`Evaluation::parse`). Never panics; what is
//! accepted is within every bound the endpoint promises: a tool name, a
//! `type:id` resource within its size, arguments within their size and
//! depth, and tokens and SPIFFE IDs within theirs.
#![no_main]

use attestd::authz::authzen::Evaluation;
use attestd::authz::{MAX_ARGS_BYTES, MAX_ARGS_DEPTH, MAX_RESOURCE_BYTES, MAX_TOKEN_BYTES, Subject};
use attestd::config::is_tool_name;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(evaluation) = Evaluation::parse(data) else {
        return;
    };
    let request = &evaluation.request;
    assert!(is_tool_name(&request.action));
    let resource = &request.resource;
    assert!(resource.as_str().len() <= MAX_RESOURCE_BYTES);
    assert_eq!(
        format!("{}:{}", resource.kind(), resource.id()),
        resource.as_str()
    );
    assert!(!resource.kind().contains(':'));
    assert!(serde_json::to_vec(&request.args).unwrap().len() <= MAX_ARGS_BYTES);
    assert!(request.args.values().map(depth).max().unwrap_or(0) < MAX_ARGS_DEPTH);
    match &evaluation.subject {
        Subject::Agent(token) | Subject::Token(token) => assert!(token.len() <= MAX_TOKEN_BYTES),
        Subject::Caller { spiffe_id, token } => {
            assert!(spiffe_id.len() <= 2048);
            assert!(token.as_ref().is_none_or(|t| t.len() <= MAX_TOKEN_BYTES));
            assert!(!request.args.contains_key("task_token"));
        }
    }
});

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

//! A tool server that acts only for live tasks, and only when attestd's
//! policy decision point allows it: the enforcement point of the task model.
//!
//! Agents call `POST /tools/<tool>` with their task token as a bearer token
//! and a JSON body `{"resource": "note:<name>", "args": {...}}`. Before it
//! acts, the gateway asks attestd's `Authorization` service, presenting the
//! agent's token: attestd attests the *gateway* (whose entry must say
//! `may_ask_for_others = true`), checks that the token is a live task token
//! addressed to the gateway's SPIFFE ID, that the tool and resource are
//! within what the task declared, then evaluates the Cedar policies with the
//! agent (from the token) as principal, and records the decision. The
//! gateway never decides who the caller is: a request without a token is
//! still sent to attestd, so that its refusal is audited too.
//!
//! Tools (a toy notebook under `--data-dir`, so the actions are real):
//! - `notes.write`: appends `args.text` to the note named by the resource;
//! - `notes.read`: returns the note.
//!
//! ```sh
//! cargo run --example tool_gateway -- --listen 127.0.0.1:8088 \
//!     --socket unix:///run/attestd/api.sock --data-dir /tmp/notes
//! curl -H "Authorization: Bearer $TOKEN" -d '{"resource":"note:plan","args":{"text":"hi"}}' \
//!     http://127.0.0.1:8088/tools/notes.write
//! ```
//!
//! Answers: 200 `{"decision_id", "result"}`; 403 `{"decision_id",
//! "reasons", "refusal"}` when attestd denies; 400 for a malformed request;
//! 502 when attestd cannot be asked (fail closed: nothing is done).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use attestd::client::{SecurityHeader, channel, socket_path};
use attestd::proto::agent::authorization_client::AuthorizationClient;
use attestd::proto::agent::{AuthorizeRequest, AuthorizeResponse, Decision};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Pdp = AuthorizationClient<InterceptedService<Channel, SecurityHeader>>;

/// Bytes of a request body the gateway reads.
const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Parser)]
#[command(about = "A tool server that asks attestd before every action")]
struct Cli {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: String,
    /// attestd's Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET).
    #[arg(long)]
    socket: Option<String>,
    /// Where the notes live.
    #[arg(long)]
    data_dir: PathBuf,
}

struct Gateway {
    pdp: Pdp,
    notes: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.data_dir)?;
    let socket = socket_path(cli.socket.as_deref())?;
    let pdp = AuthorizationClient::with_interceptor(channel(&socket).await?, SecurityHeader);
    let gateway = Arc::new(Gateway {
        pdp,
        notes: cli.data_dir,
    });
    let app = Router::new()
        .route("/tools/{tool}", post(call_tool))
        .with_state(gateway);
    let listener = TcpListener::bind(&cli.listen).await?;
    println!("tool gateway listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// One tool call: parse, ask attestd, act only on an allow.
async fn call_tool(
    State(gateway): State<Arc<Gateway>>,
    UrlPath(tool): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match ToolCall::parse(&body) {
        Ok(call) => call,
        Err(message) => return reply(StatusCode::BAD_REQUEST, json!({ "error": message })),
    };
    let token = bearer_token(&headers).unwrap_or_default();
    let request = AuthorizeRequest {
        action: tool.clone(),
        resource: call.resource.clone(),
        context: call.args_struct(),
        token,
    };
    let decision = match gateway.pdp.clone().authorize(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => {
            eprintln!("attestd could not be asked: {status}");
            let error = format!("policy decision point unavailable: {}", status.message());
            return reply(StatusCode::BAD_GATEWAY, json!({ "error": error }));
        }
    };
    if decision.decision() != Decision::Allow {
        println!("denied {tool} on {}: {}", call.resource, why(&decision));
        return reply(
            StatusCode::FORBIDDEN,
            json!({
                "decision_id": decision.decision_id,
                "reasons": decision.reasons,
                "refusal": decision.refusal,
            }),
        );
    }
    println!("allowed {tool} on {} ({})", call.resource, decision.decision_id);
    match act(&gateway.notes, &tool, &call) {
        Ok(result) => reply(
            StatusCode::OK,
            json!({ "decision_id": decision.decision_id, "result": result }),
        ),
        Err(message) => reply(StatusCode::BAD_REQUEST, json!({ "error": message })),
    }
}

/// A parsed request body.
struct ToolCall {
    resource: String,
    note: String,
    args: serde_json::Map<String, Value>,
}

impl ToolCall {
    fn parse(body: &[u8]) -> Result<Self, String> {
        if body.len() > MAX_BODY_BYTES {
            return Err(format!("body over {MAX_BODY_BYTES} bytes"));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        let resource = value
            .get("resource")
            .and_then(Value::as_str)
            .ok_or("body needs \"resource\": \"note:<name>\"")?
            .to_owned();
        let note = resource
            .strip_prefix("note:")
            .filter(|name| is_note_name(name))
            .ok_or("resource must be note:<name> (letters, digits, - and _)")?
            .to_owned();
        let args = match value.get("args") {
            None => serde_json::Map::new(),
            Some(Value::Object(args)) => args.clone(),
            Some(_) => return Err("\"args\" must be an object".into()),
        };
        Ok(Self { resource, note, args })
    }

    /// The arguments as the protobuf Struct attestd puts in the Cedar
    /// context's `args` (untrusted: policies may read them, never trust
    /// them for who the caller is).
    fn args_struct(&self) -> Option<prost_types::Struct> {
        Some(attestd::proto::json::to_struct(self.args.clone()))
    }
}

fn is_note_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The tool itself, run only after an allow.
fn act(notes: &Path, tool: &str, call: &ToolCall) -> Result<Value, String> {
    let path = notes.join(&call.note);
    match tool {
        "notes.write" => {
            let text = call
                .args
                .get("text")
                .and_then(Value::as_str)
                .ok_or("notes.write needs args.text")?;
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot write the note: {e}"))?;
            writeln!(file, "{text}").map_err(|e| format!("cannot write the note: {e}"))?;
            Ok(json!({ "written": text.len() }))
        }
        "notes.read" => match std::fs::read_to_string(&path) {
            Ok(text) => Ok(json!({ "text": text })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({ "text": "" })),
            Err(e) => Err(format!("cannot read the note: {e}")),
        },
        // attestd allowed a tool this gateway does not implement.
        other => Err(format!("this gateway has no tool {other:?}")),
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|token| token.trim().to_owned())
}

fn why(decision: &AuthorizeResponse) -> String {
    match decision.refusal.as_str() {
        "" if decision.reasons.is_empty() => "no policy permits it".into(),
        "" => format!("policies {}", decision.reasons.join(", ")),
        refusal => refusal.to_owned(),
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

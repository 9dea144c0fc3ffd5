//! The CLI's client of attestd's `Tasks` service (`attestd task ...`), for
//! operators and scripts; agents call it from their own process (the
//! attested caller is who gets the task).

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{ClientError, SecurityHeader, channel};
use crate::audit::rfc3339;
use crate::proto::agent::tasks_client::TasksClient;
use crate::proto::agent::{
    EndTaskRequest, EndTaskResponse, ListTasksRequest, ListTasksResponse, StartTaskRequest,
    StartTaskResponse, TaskInfo,
};
use crate::wall_clock::from_unix_seconds;

/// A connected `Tasks` client.
pub type Client = TasksClient<InterceptedService<Channel, SecurityHeader>>;

/// Connects to the `Tasks` service on the Workload API socket.
pub async fn connect(path: &Path) -> Result<Client, ClientError> {
    Ok(TasksClient::with_interceptor(
        channel(path).await?,
        SecurityHeader,
    ))
}

/// What `attestd task start` asks for.
#[derive(Debug, Clone, Default)]
pub struct StartArgs {
    /// The declared purpose.
    pub purpose: String,
    /// The tools.
    pub tools: Vec<String>,
    /// The resources (`type:id`).
    pub resources: Vec<String>,
    /// The token's audiences (none: the caller's own SPIFFE ID).
    pub audience: Vec<String>,
    /// The lifetime (none: the entry's `tasks.max_ttl`).
    pub ttl: Option<Duration>,
    /// The parent task's token, for a sub-task.
    pub parent_token: Option<String>,
    /// Which of the caller's identities starts it.
    pub spiffe_id: Option<String>,
}

/// Starts a task as the calling process.
pub async fn start(client: &mut Client, args: StartArgs) -> Result<StartTaskResponse, ClientError> {
    let ttl_seconds = match args.ttl {
        // 0 would mean "the longest allowed": refuse rather than widen.
        Some(ttl) if ttl < Duration::from_secs(1) => {
            return Err(ClientError::BadArgument("--ttl must be at least 1s".into()));
        }
        Some(ttl) => ttl.as_secs(),
        None => 0,
    };
    let request = StartTaskRequest {
        purpose: args.purpose,
        tools: args.tools,
        resources: args.resources,
        audience: args.audience,
        ttl_seconds,
        parent_token: args.parent_token.unwrap_or_default(),
        spiffe_id: args.spiffe_id.unwrap_or_default(),
    };
    Ok(client.start_task(request).await?.into_inner())
}

/// Human-readable: the task id, identity, expiry and the token (printing
/// it is the point).
pub fn describe_started(started: &StartTaskResponse) -> String {
    format!(
        "Task:         {}\nSPIFFE ID:    {}\nExpires:      {}\nToken:        {}\n",
        started.task_id,
        started.spiffe_id,
        expiry(started.expires_at),
        started.token
    )
}

/// `--json`: `{"task_id", "token", "expires_at"}` (RFC 3339), plus the
/// SPIFFE ID.
pub fn started_json(started: &StartTaskResponse) -> serde_json::Value {
    json!({
        "task_id": started.task_id,
        "token": started.token,
        "expires_at": expiry(started.expires_at),
        "spiffe_id": started.spiffe_id,
    })
}

/// Ends a task (and those below it).
pub async fn end(client: &mut Client, task_id: String) -> Result<EndTaskResponse, ClientError> {
    Ok(client.end_task(EndTaskRequest { task_id }).await?.into_inner())
}

/// One line per task ended.
pub fn describe_ended(ended: &EndTaskResponse) -> String {
    ended
        .ended
        .iter()
        .map(|id| format!("Ended task {id}\n"))
        .collect()
}

/// The tasks the caller may see.
pub async fn list(client: &mut Client) -> Result<ListTasksResponse, ClientError> {
    Ok(client.list_tasks(ListTasksRequest {}).await?.into_inner())
}

/// Human-readable: a block per task.
pub fn describe_list(list: &ListTasksResponse) -> String {
    let mut out = format!("{} task(s)\n", list.tasks.len());
    for task in &list.tasks {
        let state = match task.ended_at {
            0 => "live".to_owned(),
            ended => format!("ended {}", expiry(ended)),
        };
        out.push_str(&format!("\nTask:         {} ({state})\n", task.task_id));
        if !task.parent_task_id.is_empty() {
            out.push_str(&format!("Parent:       {}\n", task.parent_task_id));
        }
        out.push_str(&format!(
            "SPIFFE ID:    {}\nOwner:        {}\nPurpose:      {}\nTools:        {}\n",
            task.spiffe_id,
            task.owner,
            task.purpose,
            task.tools.join(", ")
        ));
        if !task.resources.is_empty() {
            out.push_str(&format!("Resources:    {}\n", task.resources.join(", ")));
        }
        out.push_str(&format!(
            "Audience:     {}\nStarted:      {}\nExpires:      {}\n",
            task.audience.join(", "),
            expiry(task.started_at),
            expiry(task.expires_at)
        ));
    }
    out
}

/// `--json`: a list of task objects, times in RFC 3339 (`ended_at` null
/// while live).
pub fn list_json(list: &ListTasksResponse) -> serde_json::Value {
    list.tasks.iter().map(task_json).collect()
}

fn task_json(task: &TaskInfo) -> serde_json::Value {
    json!({
        "task_id": task.task_id,
        "parent_task_id": (!task.parent_task_id.is_empty()).then_some(&task.parent_task_id),
        "spiffe_id": task.spiffe_id,
        "owner": task.owner,
        "purpose": task.purpose,
        "tools": task.tools,
        "resources": task.resources,
        "audience": task.audience,
        "started_at": expiry(task.started_at),
        "expires_at": expiry(task.expires_at),
        "ended_at": (task.ended_at != 0).then(|| expiry(task.ended_at)),
    })
}

/// Unix seconds as RFC 3339.
fn expiry(seconds: i64) -> String {
    rfc3339(from_unix_seconds(u64::try_from(seconds).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_has_the_contracted_fields() {
        let started = StartTaskResponse {
            task_id: "t".into(),
            token: "a.b.c".into(),
            spiffe_id: "spiffe://example.org/a".into(),
            expires_at: 0,
        };
        let json = started_json(&started);
        assert_eq!(json["task_id"], "t");
        assert_eq!(json["token"], "a.b.c");
        assert_eq!(json["expires_at"], "1970-01-01T00:00:00.000Z");
        let list = ListTasksResponse {
            tasks: vec![TaskInfo {
                task_id: "t".into(),
                ..TaskInfo::default()
            }],
        };
        let json = list_json(&list);
        assert_eq!(json[0]["ended_at"], serde_json::Value::Null);
        assert_eq!(json[0]["parent_task_id"], serde_json::Value::Null);
        assert!(describe_list(&list).contains("(live)"));
    }
}

//! The `Tasks` service of attestd's agent API (`attestd.agent.v1`), on the
//! Workload API socket: the same security header, the same attestation and
//! entries, the same request permits and limits as the Workload API. The
//! rules live in [`crate::tasks`]; this module wires them to gRPC and the
//! audit trail.
//!
//! Every start, every task ended and every refusal of a caller that holds
//! an identity is recorded before the answer leaves; callers without one
//! are refused through admission's rate-limited denials, as for the
//! Workload API.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admission::{self, Refusal};
use super::caller::rpc;
use super::jwt::{self, BadArguments};
use super::service::{check_security_header, observe, peer_of};
use super::{Context, PeerInfo, status};
use crate::attest::Workload;
use crate::audit::{Outcome, Record, TaskFacts};
use crate::proto::agent::tasks_server::Tasks;
use crate::proto::agent::{
    EndTaskRequest, EndTaskResponse, ListTasksRequest, ListTasksResponse, StartTaskRequest,
    StartTaskResponse, TaskInfo,
};
use crate::registry::Entry;
use crate::spiffe_id::SpiffeId;
use crate::tasks::{Intent, StartRefusal, StartRequest, Starter, Task, TaskActor, is_task_id};
use crate::telemetry::metrics;
use crate::wall_clock::from_unix_seconds;

/// The most tasks one `ListTasks` answer holds (the newest): the answer
/// stays a few megabytes at worst.
pub const MAX_LISTED: usize = 1024;

/// The `Tasks` service.
#[derive(Debug, Clone)]
pub struct TasksApi {
    ctx: Arc<Context>,
}

impl TasksApi {
    /// A service answering from `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    async fn start(&self, request: Request<StartTaskRequest>) -> Result<StartTaskResponse, Status> {
        check_security_header(&request)?;
        let peer = peer_of(&request)?;
        let StartTaskRequest {
            purpose,
            tools,
            resources,
            audience,
            ttl_seconds,
            parent_token,
            spiffe_id,
        } = request.into_inner();
        let intent = Intent {
            purpose,
            tools,
            resources,
            audience,
        };
        let parsed = StartRequest::parse(intent, ttl_seconds, parent_token, &spiffe_id)
            .map_err(|bad| jwt::refuse(&self.ctx, &peer, rpc::START_TASK, BadArguments(bad.0), &[]))?;
        // The facts kept with the task feed decisions about it: hash the
        // executable whenever a policy refers to it.
        let caller = admission::admit_for_decision(&self.ctx, &peer, rpc::START_TASK)
            .await
            .map_err(Refusal::status)?;
        let ctx = Arc::clone(&self.ctx);
        // Minting and the store's fsync block: off the async workers.
        tokio::task::spawn_blocking(move || start(&ctx, &caller.workload, &caller.entries, &parsed))
            .await
            .map_err(|_| Status::internal("starting the task failed"))?
    }

    async fn end(&self, request: Request<EndTaskRequest>) -> Result<EndTaskResponse, Status> {
        check_security_header(&request)?;
        let peer = peer_of(&request)?;
        let task_id = request.into_inner().task_id;
        if !is_task_id(&task_id) {
            let bad = BadArguments("task_id: not a task id (32 lowercase hex digits)".into());
            return Err(jwt::refuse(&self.ctx, &peer, rpc::END_TASK, bad, &[]));
        }
        let (workload, entries) = admit_or_root(&self.ctx, &peer, rpc::END_TASK).await?;
        let ctx = Arc::clone(&self.ctx);
        tokio::task::spawn_blocking(move || end(&ctx, &workload, &entries, &task_id))
            .await
            .map_err(|_| Status::internal("ending the task failed"))?
    }

    async fn list(&self, request: Request<ListTasksRequest>) -> Result<ListTasksResponse, Status> {
        check_security_header(&request)?;
        let peer = peer_of(&request)?;
        let (workload, entries) = admit_or_root(&self.ctx, &peer, rpc::LIST_TASKS).await?;
        let ids = identities(&entries);
        let mut tasks = self.ctx.tasks.list(actor(&workload, &ids));
        let newest = tasks.len().saturating_sub(MAX_LISTED);
        Ok(ListTasksResponse {
            tasks: tasks.drain(newest..).map(task_info).collect(),
        })
    }
}

/// Admits the caller; uid 0, the host's administrator, also without an
/// identity of its own (ending and listing tasks only take rights away or
/// show them).
async fn admit_or_root(
    ctx: &Context,
    peer: &PeerInfo,
    rpc: &'static str,
) -> Result<(Workload, Vec<Arc<Entry>>), Status> {
    let is_root = peer.0.as_ref().is_ok_and(|pinned| pinned.uid == 0);
    if !is_root {
        let caller = admission::admit(ctx, peer, rpc).await.map_err(Refusal::status)?;
        return Ok((caller.workload, caller.entries));
    }
    let policy = ctx.registry.policy();
    let workload = admission::attest(ctx, &policy, peer, rpc)
        .await
        .map_err(Refusal::status)?;
    let entries = policy.matching(&workload.selectors);
    Ok((workload, entries))
}

fn identities(entries: &[Arc<Entry>]) -> Vec<SpiffeId> {
    entries.iter().map(|entry| entry.spiffe_id.clone()).collect()
}

fn actor<'a>(workload: &Workload, ids: &'a [SpiffeId]) -> TaskActor<'a> {
    match workload.uid {
        0 => TaskActor::HostAdmin,
        _ => TaskActor::Agent(ids),
    }
}

/// Starts the task and records it; a refusal is recorded too.
fn start(
    ctx: &Context,
    workload: &Workload,
    entries: &[Arc<Entry>],
    request: &StartRequest,
) -> Result<StartTaskResponse, Status> {
    let starter = Starter { workload, entries };
    let started = match ctx.tasks.start(starter, request) {
        Ok(started) => started,
        Err(refusal) => {
            tracing::info!(pid = workload.pid, uid = workload.uid, reason = %refusal, "task refused");
            let denied = Record::new(
                rpc::START_TASK,
                Outcome::Denied,
                refusal.to_string(),
                Some(workload),
            )
            .with_task(refused_intent(request, &refusal))
            .with_audience(&request.intent.audience);
            ctx.audit.write([denied]).map_err(|e| status::audit(&e))?;
            return Err(status::start_refused(&refusal));
        }
    };
    let task = &started.task;
    let record = Record::new(rpc::START_TASK, Outcome::Started, "started", Some(workload))
        .with_entry(&started.entry)
        .with_task(task.facts())
        .with_token(Some(&task.jti), Some(from_unix_seconds(task.expires_at)))
        .with_audience(&task.audience);
    if let Err(error) = ctx.audit.write([record]) {
        // Not recorded, so not carried out: the token is never handed out.
        if let Err(error) = ctx.tasks.discard(&task.id) {
            tracing::error!(%error, task = task.id, "cannot forget a task whose start went unrecorded");
        }
        return Err(status::audit(&error));
    }
    metrics().jwt_minted();
    tracing::info!(pid = workload.pid, spiffe_id = %task.spiffe_id, task = task.id, "task started");
    Ok(StartTaskResponse {
        task_id: task.id.clone(),
        token: started.token,
        spiffe_id: task.spiffe_id.to_string(),
        expires_at: i64::try_from(task.expires_at).unwrap_or(i64::MAX),
    })
}

/// What a refused StartTask declared, with no task id (none was made).
/// A refused sub-task is filed under its parent, so the parent's trace
/// shows the attempt; only once the parent token verified is its task id
/// known (a refusal of the token itself names no parent).
fn refused_intent(request: &StartRequest, refusal: &StartRefusal) -> TaskFacts {
    let parent = match (refusal, request.parent_token.as_deref()) {
        (StartRefusal::Parent(_), _) | (_, None) => None,
        (_, Some(token)) => jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token)
            .ok()
            .and_then(|claims| claims.get("task_id")?.as_str().map(str::to_owned)),
    };
    TaskFacts {
        parent,
        purpose: request.intent.purpose.clone(),
        tools: request.intent.tools.clone(),
        resources: request.intent.resources.clone(),
        ..TaskFacts::default()
    }
}

/// Ends the task and those below it, one record each; a refusal is
/// recorded too.
fn end(
    ctx: &Context,
    workload: &Workload,
    entries: &[Arc<Entry>],
    task_id: &str,
) -> Result<EndTaskResponse, Status> {
    let ids = identities(entries);
    let ended = match ctx.tasks.end(task_id, actor(workload, &ids)) {
        Ok(ended) => ended,
        Err(refusal) => {
            tracing::info!(pid = workload.pid, uid = workload.uid, task = task_id, reason = %refusal, "task end refused");
            // Filed under the task asked for, so its trace shows the attempt.
            let denied = Record::new(
                rpc::END_TASK,
                Outcome::Denied,
                refusal.to_string(),
                Some(workload),
            )
            .with_task(TaskFacts {
                id: task_id.to_owned(),
                ..TaskFacts::default()
            });
            ctx.audit.write([denied]).map_err(|e| status::audit(&e))?;
            return Err(status::end_refused(&refusal));
        }
    };
    let by = match (workload.uid, ids.first()) {
        (0, _) => "uid 0".to_owned(),
        (_, Some(id)) if ids.len() == 1 => id.to_string(),
        _ => ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    };
    let records: Vec<Record> = ended
        .iter()
        .map(|task| {
            let reason = match task.id == task_id {
                true => format!("ended by {by}"),
                false => format!("ended with its ancestor task {task_id}"),
            };
            Record::new(rpc::END_TASK, Outcome::Ended, reason, Some(workload))
                .with_subject(task.spiffe_id.as_str())
                .with_task(task.facts())
                .with_token(Some(&task.jti), Some(from_unix_seconds(task.expires_at)))
        })
        .collect();
    tracing::info!(
        pid = workload.pid,
        task = task_id,
        ended = ended.len(),
        "task ended"
    );
    // The tasks have ended whatever happens to the records: ending only
    // takes rights away.
    ctx.audit.write(records).map_err(|e| status::audit(&e))?;
    Ok(EndTaskResponse {
        ended: ended.into_iter().map(|task| task.id).collect(),
    })
}

fn task_info(task: Task) -> TaskInfo {
    let seconds = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    TaskInfo {
        parent_task_id: task.parent().unwrap_or_default().to_owned(),
        task_id: task.id,
        spiffe_id: task.spiffe_id.to_string(),
        owner: task.owner,
        purpose: task.purpose,
        tools: task.tools,
        resources: task.resources,
        audience: task.audience,
        started_at: seconds(task.started_at),
        expires_at: seconds(task.expires_at),
        ended_at: task.ended_at.map_or(0, seconds),
    }
}

#[tonic::async_trait]
impl Tasks for TasksApi {
    async fn start_task(
        &self,
        request: Request<StartTaskRequest>,
    ) -> Result<Response<StartTaskResponse>, Status> {
        observe(rpc::START_TASK, self.start(request).await)
    }

    async fn end_task(&self, request: Request<EndTaskRequest>) -> Result<Response<EndTaskResponse>, Status> {
        observe(rpc::END_TASK, self.end(request).await)
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        observe(rpc::LIST_TASKS, self.list(request).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_requests_are_bounded_like_jwt_svid_requests() {
        assert_eq!(crate::tasks::MAX_AUDIENCES, jwt::MAX_AUDIENCES);
        assert_eq!(crate::tasks::MAX_AUDIENCE_BYTES, jwt::MAX_AUDIENCE_BYTES);
        assert_eq!(crate::tasks::MAX_TOKEN_BYTES, jwt::MAX_TOKEN_BYTES);
        assert_eq!(crate::tasks::MAX_SPIFFE_ID_BYTES, jwt::MAX_SPIFFE_ID_BYTES);
    }
}

//! The `Authorization` service of attestd's agent API (`Authorize`), and
//! the decision path it shares with the AuthZEN front: the request's shape
//! is checked before any attestation work, the caller is admitted (hashed
//! when a policy refers to `exe_sha256`), the policy decision point decides
//! (see [`crate::authz`]), and the decision is recorded before it is
//! answered.
//!
//! A refusal is an answer (`DENY` with its reason), not an error status:
//! statuses are for requests that could not be decided at all (no
//! security header, a malformed request, a caller without any identity,
//! an unwritable audit trail).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admission::{self, Refusal};
use super::service::{check_security_header, observe, peer_of};
use super::{Context, PeerInfo, status};
use crate::authz::{self, Asker, AuthzError, DecisionRequest, Subject, Verdict};
use crate::proto::agent::authorization_server::Authorization;
use crate::proto::agent::{AuthorizeRequest, AuthorizeResponse, Decision};
use crate::proto::json;
use crate::telemetry::{DecisionOutcome, metrics};

/// The RPC name in the audit trail (the AuthZEN front's decisions too).
pub(super) const RPC: &str = "Authorize";

/// The `Authorization` service.
#[derive(Debug, Clone)]
pub struct AuthorizationApi {
    ctx: Arc<Context>,
}

impl AuthorizationApi {
    /// A service deciding from `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    async fn authorize(&self, request: Request<AuthorizeRequest>) -> Result<AuthorizeResponse, Status> {
        check_security_header(&request)?;
        let peer = peer_of(&request)?;
        let AuthorizeRequest {
            action,
            resource,
            context,
            token,
        } = request.into_inner();
        let checked = authz::check_token(&token)
            .and_then(|()| {
                DecisionRequest::parse(&action, &resource, json::from_struct(context.unwrap_or_default()))
            })
            .map_err(|error| refuse(&self.ctx, &peer, &error))?;
        let verdict = decide(&self.ctx, &peer, Subject::Token(token), checked).await?;
        Ok(AuthorizeResponse {
            decision: match verdict.allowed {
                true => Decision::Allow,
                false => Decision::Deny,
            }
            .into(),
            decision_id: verdict.id,
            reasons: verdict.reasons,
            errors: verdict.errors,
            refusal: verdict.refusal.unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationApi {
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        observe(RPC, AuthorizationApi::authorize(self, request).await)
    }
}

/// Admits the caller, decides, and records the decision (every decision,
/// allowed, denied or refused, on its own: never rate-limited).
///
/// Cedar evaluates every policy that may apply, which at thousands of
/// policies takes milliseconds: the decision runs on a blocking thread,
/// within the attestation permits (host-wide and per uid), like the other
/// CPU work a caller can ask for.
pub(super) async fn decide(
    ctx: &Context,
    peer: &PeerInfo,
    subject: Subject,
    request: DecisionRequest,
) -> Result<Verdict, Status> {
    let caller = admission::admit_for_decision(ctx, peer, RPC)
        .await
        .map_err(Refusal::status)?;
    let permit = ctx
        .attestations
        .acquire(caller.workload.uid)
        .await
        .map_err(|_| Status::internal("attestation permits closed"))?;
    let authz = Arc::clone(&ctx.authz);
    let (caller, request, verdict) = tokio::task::spawn_blocking(move || {
        // Held until the work ends, even if the request is cancelled.
        let _permit = permit;
        let asker = Asker {
            workload: &caller.workload,
            entries: &caller.entries,
            policy: &caller.policy,
        };
        let verdict = authz::decide(&authz.book(), authz.tokens(), asker, &subject, &request);
        (caller, request, verdict)
    })
    .await
    .map_err(|_| Status::internal("decision task failed"))?;
    ctx.audit
        .write([verdict.record(RPC, &caller.workload)])
        .map_err(|e| status::audit(&e))?;
    let outcome = match (verdict.allowed, &verdict.refusal) {
        (true, _) => DecisionOutcome::Allow,
        (false, Some(_)) => DecisionOutcome::Refused,
        (false, None) => DecisionOutcome::Deny,
    };
    metrics().decision(outcome);
    tracing::info!(
        pid = caller.workload.pid,
        spiffe_id = verdict.spiffe_id().map(ToString::to_string),
        action = request.action,
        decision = verdict.id,
        allowed = verdict.allowed,
        refusal = verdict.refusal,
        "decision"
    );
    Ok(verdict)
}

/// Refuses a malformed request, with `InvalidArgument`. It comes before
/// attestation, so the caller is known only by its connection's ids and
/// the record counts against its uid's allowance of denial records (as the
/// Workload API's argument checks do).
pub(super) fn refuse(ctx: &Context, peer: &PeerInfo, error: &AuthzError) -> Status {
    let message = error.to_string();
    tracing::debug!(rpc = RPC, reason = %message, "decision request refused for its shape");
    match ctx.audit.write_denial(peer.denial_record(RPC, &message)) {
        Ok(()) => Status::invalid_argument(message),
        Err(error) => status::audit(&error),
    }
}

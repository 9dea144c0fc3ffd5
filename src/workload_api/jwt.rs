//! The JWT-SVID answers: fresh tokens per call within each entry's audience
//! allow-list, and validation of presented tokens. Every token handed out
//! and every validation is audited before the answer leaves.
//!
//! The request fields are capped before any attestation work (cheap
//! refusals first): no real client comes near the limits, and a local caller
//! cannot make attestd parse, match or record megabytes per call.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tonic::Status;

use super::caller::{Caller, rpc};
use super::{Context, PeerInfo, status};
use crate::attest::Workload;
use crate::audit::{Outcome, Record};
use crate::authority::{JwtError, ValidatedJwt, validate_foreign};
use crate::proto::{Jwtsvid, JwtsvidResponse, ValidateJwtsvidResponse, json};
use crate::registry::{Entry, owner_clock};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::tasks::TaskRefusal;
use crate::telemetry::metrics;

/// Audiences one `FetchJWTSVID` may ask for (a token is meant for a few
/// relying parties, not a directory of them).
pub const MAX_AUDIENCES: usize = 16;
/// Bytes per audience, in `FetchJWTSVID` and `ValidateJWTSVID`: the longest
/// SPIFFE ID, so any relying party's own ID fits, as do ordinary URLs.
pub const MAX_AUDIENCE_BYTES: usize = 2048;
/// Bytes of a `FetchJWTSVID` `spiffe_id`: the SPIFFE maximum.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// Bytes of a token to validate. Any token attestd mints fits: at the
/// limits above its claims are under 40 KB, under 54 KB once
/// base64url-encoded with header and signature.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// A request refused for its arguments: the `InvalidArgument` message,
/// which names the limit.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadArguments(pub String);

/// Parsed and checked `FetchJWTSVID` arguments.
#[derive(Debug)]
pub(super) struct JwtRequest {
    pub audience: Vec<String>,
    pub spiffe_id: Option<SpiffeId>,
}

impl JwtRequest {
    /// Checks the arguments before any attestation work.
    pub fn parse(audience: &[String], spiffe_id: &str) -> Result<Self, BadArguments> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(BadArguments("audience is required (and may not be empty)".into()));
        }
        if audience.len() > MAX_AUDIENCES || audience.iter().any(|a| a.len() > MAX_AUDIENCE_BYTES) {
            return Err(BadArguments(format!(
                "audience: at most {MAX_AUDIENCES} values of at most {MAX_AUDIENCE_BYTES} bytes each \
                 (got {} values, the longest {} bytes)",
                audience.len(),
                audience.iter().map(String::len).max().unwrap_or(0)
            )));
        }
        if spiffe_id.len() > MAX_SPIFFE_ID_BYTES {
            return Err(BadArguments(format!(
                "spiffe_id: at most {MAX_SPIFFE_ID_BYTES} bytes (got {})",
                spiffe_id.len()
            )));
        }
        let spiffe_id = match spiffe_id {
            "" => None,
            id => {
                Some(SpiffeId::new(id).map_err(|e| BadArguments(format!("invalid spiffe_id {id:?}: {e}")))?)
            }
        };
        Ok(Self {
            audience: audience.to_vec(),
            spiffe_id,
        })
    }
}

/// Checks `ValidateJWTSVID` arguments before any attestation work.
pub(super) fn check_validate_request(audience: &str, token: &str) -> Result<(), BadArguments> {
    if audience.is_empty() {
        return Err(BadArguments("audience is required".into()));
    }
    if token.is_empty() {
        return Err(BadArguments("svid is required".into()));
    }
    if audience.len() > MAX_AUDIENCE_BYTES {
        return Err(BadArguments(format!(
            "audience: at most {MAX_AUDIENCE_BYTES} bytes (got {})",
            audience.len()
        )));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(BadArguments(format!(
            "svid: at most {MAX_TOKEN_BYTES} bytes (got {})",
            token.len()
        )));
    }
    Ok(())
}

/// Refuses a request for its arguments, with `InvalidArgument`. The refusal
/// is audited as a denial: it comes before attestation, so the caller is
/// known only by its connection's ids, and the record counts against its
/// uid's allowance of denial records (see `AuditLog::write_denial`).
pub(super) fn refuse(
    ctx: &Context,
    peer: &PeerInfo,
    rpc: &'static str,
    BadArguments(message): BadArguments,
    audience: &[String],
) -> Status {
    tracing::debug!(rpc, reason = %message, "request refused for its arguments");
    let record = peer.denial_record(rpc, &message).with_audience(audience);
    match ctx.audit.write_denial(record) {
        Ok(()) => Status::invalid_argument(message),
        Err(error) => status::audit(&error),
    }
}

/// `FetchJWTSVID`: one fresh token per identity asked for and allowed.
pub(super) async fn fetch(
    ctx: &Context,
    caller: Caller,
    request: &JwtRequest,
) -> Result<JwtsvidResponse, Status> {
    let record = |outcome, reason: &str, entry: &Entry| {
        Record::new(rpc::FETCH_JWT_SVID, outcome, reason, Some(&caller.workload))
            .with_entry(entry)
            .with_audience(&request.audience)
    };
    let wanted: Vec<_> = caller
        .entries_with_unique_hints()
        .into_iter()
        .filter(|entry| request.spiffe_id.as_ref().is_none_or(|id| &entry.spiffe_id == id))
        .collect();
    if let (true, Some(id)) = (wanted.is_empty(), &request.spiffe_id) {
        let denied = Record::new(
            rpc::FETCH_JWT_SVID,
            Outcome::Denied,
            format!("caller does not hold {id}"),
            Some(&caller.workload),
        )
        .with_audience(&request.audience);
        ctx.audit.write([denied]).map_err(|e| status::audit(&e))?;
        return Err(Status::permission_denied(format!(
            "caller is not entitled to {id}"
        )));
    }

    let mut records = Vec::new();
    let mut svids = Vec::new();
    for entry in wanted {
        if let Some(refused) = audience_refused(&entry, &request.audience) {
            let reason = format!("audience {refused:?} is not in the entry's jwt_audiences");
            tracing::info!(pid = caller.workload.pid, entry = %entry.location, audience = refused, "JWT audience refused");
            records.push(record(Outcome::Denied, &reason, &entry));
            continue;
        }
        let svid = ctx
            .authority
            .issue_jwt(
                &entry.spiffe_id,
                entry.remote_entry.as_deref(),
                &request.audience,
                jwt_ttl(&entry),
            )
            .await
            .map_err(|e| status::minting(&e))?;
        metrics().jwt_minted();
        records.push(
            // A SPIRE Server's tokens may carry no jti.
            record(Outcome::Issued, "fetched", &entry).with_token(
                Some(svid.jti.as_str()).filter(|jti| !jti.is_empty()),
                Some(svid.expires_at),
            ),
        );
        svids.push(Jwtsvid {
            spiffe_id: svid.spiffe_id.to_string(),
            svid: svid.token,
            hint: entry.hint.as_deref().unwrap_or_default().to_owned(),
        });
    }
    ctx.audit.write(records).map_err(|e| status::audit(&e))?;
    if svids.is_empty() {
        return Err(Status::permission_denied(
            "requested audience is not allowed for the caller's identities",
        ));
    }
    Ok(JwtsvidResponse { svids })
}

/// The entry's JWT-SVID lifetime, cut at the end of its owner's term: a
/// token never outlives the owner answering for it (offline validators
/// accept it until `exp`).
fn jwt_ttl(entry: &Entry) -> Duration {
    match entry.owner_expiry() {
        Some(end) => end
            .duration_since(owner_clock::now())
            .unwrap_or_default()
            .min(entry.jwt_ttl),
        None => entry.jwt_ttl,
    }
}

/// The first requested audience outside the entry's allow-list, if it has one.
fn audience_refused<'a>(entry: &Entry, audience: &'a [String]) -> Option<&'a str> {
    if entry.jwt_audiences.is_empty() {
        return None;
    }
    audience
        .iter()
        .find(|a| !entry.jwt_audiences.contains(a))
        .map(String::as_str)
}

/// `ValidateJWTSVID`: the token's subject and claims, or InvalidArgument
/// with the reason. A token of a foreign trust domain is validated against
/// that trust domain's JWT keys when one of the caller's `entries`
/// federates with it (as SPIRE agent validates against the caller's
/// federated bundles), and only `sub`, `aud` and `exp` of its claims are
/// returned (SPIRE's default: foreign claims carry no meaning here). A
/// task token is valid only while its task and every
/// ancestor are live (see [`crate::tasks::TaskRegistry::check`]). A valid
/// token is always recorded. A rejected one is
/// recorded one by one when the caller holds an identity (a relying party
/// reporting a forged token it was shown); from a caller without one it is
/// a denial like any other, under its uid's rate limit: anyone may present
/// any token, and that is the cheapest way to flood the trail.
pub(super) fn validate(
    ctx: &Context,
    workload: &Workload,
    entries: &[Arc<Entry>],
    audience: &str,
    token: &str,
) -> Result<ValidateJwtsvidResponse, Status> {
    let audience_list = [audience.to_owned()];
    let federated = ctx.federation.current().for_entries(entries);
    let result = match foreign_trust_domain(ctx, token).and_then(|td| Some((federated.get(&td)?, td))) {
        Some((bundle, td)) => validate_foreign(token, audience, &td, bundle.jwt())
            .map(|valid| (only_registered_claims(valid), None))
            .map_err(Rejection::Jwt),
        None => ctx
            .authority
            .jwt()
            .validate(token, audience)
            .map_err(Rejection::Jwt)
            .and_then(|valid| match ctx.tasks.check(&valid) {
                Ok(task) => Ok((valid, task)),
                Err(refusal) => Err(Rejection::Task(refusal)),
            }),
    };
    let rejected_without_identity = result.is_err() && entries.is_empty();
    let record = match &result {
        Ok((valid, task)) => {
            let record = Record::new(
                rpc::VALIDATE_JWT_SVID,
                Outcome::Validated,
                "valid",
                Some(workload),
            )
            .with_subject(valid.spiffe_id.as_str())
            .with_token(valid.jti(), valid.expires_at());
            match task {
                Some(task) => record.with_task(task.facts()),
                None => record,
            }
        }
        Err(error) => rejected_record(workload, error, token),
    };
    let record = record.with_audience(&audience_list);
    let written = match rejected_without_identity {
        true => ctx.audit.write_denial(record),
        false => ctx.audit.write([record]),
    };
    written.map_err(|e| status::audit(&e))?;
    match result {
        Ok((ValidatedJwt { spiffe_id, claims }, _)) => Ok(ValidateJwtsvidResponse {
            spiffe_id: spiffe_id.to_string(),
            claims: Some(json::to_struct(claims)),
        }),
        Err(error) => Err(Status::invalid_argument(format!("invalid JWT-SVID: {error}"))),
    }
}

/// Why `ValidateJWTSVID` rejected a token.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    /// Not a valid JWT-SVID.
    #[error(transparent)]
    Jwt(JwtError),
    /// A valid JWT-SVID whose task is not live.
    #[error(transparent)]
    Task(TaskRefusal),
}

/// A rejection names the token's claimed `sub` and `jti` too, read without
/// verification (and marked so), so responders can follow a forged token.
fn rejected_record(workload: &Workload, error: &Rejection, token: &str) -> Record {
    let unverified: Option<serde_json::Map<String, Value>> =
        jsonwebtoken::dangerous::insecure_decode_claims(token).ok();
    let claim = |name: &str| unverified.as_ref()?.get(name)?.as_str().map(str::to_owned);
    let mut record = Record::new(
        rpc::VALIDATE_JWT_SVID,
        Outcome::Rejected,
        error.to_string(),
        Some(workload),
    )
    .with_token(claim("jti").as_deref(), None);
    if let Some(sub) = claim("sub") {
        record = record.with_subject(&format!("{sub} (unverified)"));
    }
    record
}

/// The trust domain a token's `sub` claims, read without verification,
/// if it is not ours: which bundle to verify it with.
fn foreign_trust_domain(ctx: &Context, token: &str) -> Option<TrustDomain> {
    let claims: serde_json::Map<String, Value> =
        jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
    let sub = SpiffeId::new(claims.get("sub")?.as_str()?).ok()?;
    (!sub.belongs_to(ctx.authority.trust_domain())).then(|| sub.trust_domain())
}

/// A foreign token's claims as returned: `sub`, `aud` and `exp` only.
fn only_registered_claims(mut valid: ValidatedJwt) -> ValidatedJwt {
    valid
        .claims
        .retain(|name, _| matches!(name.as_str(), "sub" | "aud" | "exp"));
    valid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audiences(n: usize, len: usize) -> Vec<String> {
        vec!["a".repeat(len); n]
    }

    #[test]
    fn fetch_arguments_are_capped_and_the_message_names_the_limit() {
        let at_limit = JwtRequest::parse(&audiences(MAX_AUDIENCES, MAX_AUDIENCE_BYTES), "").unwrap();
        assert_eq!(at_limit.audience.len(), MAX_AUDIENCES);
        let limit = "audience: at most 16 values of at most 2048 bytes each";
        for (n, len) in [(MAX_AUDIENCES + 1, 1), (1, MAX_AUDIENCE_BYTES + 1)] {
            let BadArguments(message) = JwtRequest::parse(&audiences(n, len), "").unwrap_err();
            assert!(message.starts_with(limit), "{message}");
        }
        let long_id = format!("spiffe://example.org/{}", "a".repeat(MAX_SPIFFE_ID_BYTES));
        let BadArguments(message) = JwtRequest::parse(&audiences(1, 1), &long_id).unwrap_err();
        assert_eq!(
            message,
            format!("spiffe_id: at most 2048 bytes (got {})", long_id.len())
        );
        assert!(JwtRequest::parse(&[], "").is_err());
        assert!(JwtRequest::parse(&[String::new()], "").is_err());
    }

    #[test]
    fn validate_arguments_are_capped_and_the_message_names_the_limit() {
        assert!(
            check_validate_request(&"a".repeat(MAX_AUDIENCE_BYTES), &"t".repeat(MAX_TOKEN_BYTES)).is_ok()
        );
        let BadArguments(message) =
            check_validate_request("a", &"t".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err();
        assert_eq!(message, "svid: at most 65536 bytes (got 65537)");
        let BadArguments(message) =
            check_validate_request(&"a".repeat(MAX_AUDIENCE_BYTES + 1), "t").unwrap_err();
        assert_eq!(message, "audience: at most 2048 bytes (got 2049)");
        assert!(check_validate_request("", "t").is_err());
        assert!(check_validate_request("a", "").is_err());
    }
}

//! The JWT-SVID answers: fresh tokens per call within each entry's audience
//! allow-list, and validation of presented tokens. Every token handed out
//! and every validation is audited before the answer leaves.

use std::time::SystemTime;

use serde_json::Value;
use tonic::Status;

use super::caller::{Caller, rpc};
use super::{Context, status};
use crate::attest::Workload;
use crate::audit::{Outcome, Record};
use crate::authority::{JwtError, ValidatedJwt};
use crate::proto::{Jwtsvid, JwtsvidResponse, ValidateJwtsvidResponse};
use crate::registry::Entry;
use crate::spiffe_id::SpiffeId;
use crate::telemetry::metrics;
use crate::wall_clock::from_unix_seconds;

/// Parsed and checked `FetchJWTSVID` arguments.
pub(super) struct JwtRequest {
    pub audience: Vec<String>,
    pub spiffe_id: Option<SpiffeId>,
}

impl JwtRequest {
    /// Checks the arguments before any attestation work.
    pub fn parse(audience: Vec<String>, spiffe_id: &str) -> Result<Self, Status> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "audience is required (and may not be empty)",
            ));
        }
        let spiffe_id = match spiffe_id {
            "" => None,
            id => Some(
                SpiffeId::new(id)
                    .map_err(|e| Status::invalid_argument(format!("invalid spiffe_id {id:?}: {e}")))?,
            ),
        };
        Ok(Self { audience, spiffe_id })
    }
}

/// `FetchJWTSVID`: one fresh token per identity asked for and allowed.
pub(super) fn fetch(ctx: &Context, caller: Caller, request: &JwtRequest) -> Result<JwtsvidResponse, Status> {
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
        ctx.audit.write(&[denied]).map_err(|e| status::audit(&e))?;
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
            .jwt()
            .mint(&entry.spiffe_id, &request.audience, entry.jwt_ttl)
            .map_err(|e| status::minting(&e))?;
        metrics().jwt_minted();
        records.push(
            record(Outcome::Issued, "fetched", &entry).with_token(Some(&svid.jti), Some(svid.expires_at)),
        );
        svids.push(Jwtsvid {
            spiffe_id: svid.spiffe_id.to_string(),
            svid: svid.token,
            hint: entry.hint.clone().unwrap_or_default(),
        });
    }
    ctx.audit.write(&records).map_err(|e| status::audit(&e))?;
    if svids.is_empty() {
        return Err(Status::permission_denied(
            "requested audience is not allowed for the caller's identities",
        ));
    }
    Ok(JwtsvidResponse { svids })
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
/// with the reason.
pub(super) fn validate(
    ctx: &Context,
    workload: &Workload,
    audience: &str,
    token: &str,
) -> Result<ValidateJwtsvidResponse, Status> {
    let audience_list = [audience.to_owned()];
    let result = ctx.authority.jwt().validate(token, audience);
    let record = match &result {
        Ok(valid) => Record::new(
            rpc::VALIDATE_JWT_SVID,
            Outcome::Validated,
            "valid",
            Some(workload),
        )
        .with_subject(valid.spiffe_id.as_str())
        .with_token(valid.jti(), expiry(&valid.claims)),
        Err(error) => rejected_record(workload, error, token),
    };
    ctx.audit
        .write(&[record.with_audience(&audience_list)])
        .map_err(|e| status::audit(&e))?;
    match result {
        Ok(ValidatedJwt { spiffe_id, claims }) => Ok(ValidateJwtsvidResponse {
            spiffe_id: spiffe_id.to_string(),
            claims: Some(to_struct(claims)),
        }),
        Err(error) => Err(Status::invalid_argument(format!("invalid JWT-SVID: {error}"))),
    }
}

/// A rejection names the token's claimed `sub` and `jti` too, read without
/// verification (and marked so), so responders can follow a forged token.
fn rejected_record(workload: &Workload, error: &JwtError, token: &str) -> Record {
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

fn expiry(claims: &serde_json::Map<String, Value>) -> Option<SystemTime> {
    claims.get("exp").and_then(Value::as_u64).map(from_unix_seconds)
}

/// JSON claims as a protobuf Struct (numbers become doubles, as Struct has
/// no integers; clients read `exp` back as a whole number).
fn to_struct(map: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

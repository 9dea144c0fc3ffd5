//! What a SPIRE Server's refusal means for the agent: a PermissionDenied
//! status carries `spire.api.types.PermissionDeniedDetails` in its details
//! (a `google.rpc.Status`), which say whether the agent must attest again
//! or has been banned.

use prost::Message as _;
use tonic::{Code, Status};

use crate::proto::google_rpc;
use crate::proto::spire::api::types::PermissionDeniedDetails;
use crate::proto::spire::api::types::permission_denied_details::Reason;

/// The type URL of the details message.
const DETAILS_TYPE: &str = "type.googleapis.com/spire.api.types.PermissionDeniedDetails";

/// What the server's answer means for the agent's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The node is banned: stop.
    Banned,
    /// The agent SVID is expired, unknown, superseded or must be replaced
    /// by a new attestation: attest again if the attestor can.
    Reattest,
    /// Anything else: a failure to retry.
    Other,
}

/// Reads `status` for the agent: see [`Verdict`].
pub(super) fn verdict(status: &Status) -> Verdict {
    if status.code() != Code::PermissionDenied {
        return Verdict::Other;
    }
    match reason(status) {
        Some(Reason::AgentBanned) => Verdict::Banned,
        Some(
            Reason::AgentExpired
            | Reason::AgentNotAttested
            | Reason::AgentNotActive
            | Reason::AgentMustReattest,
        ) => Verdict::Reattest,
        Some(Reason::Unknown) | None => Verdict::Other,
    }
}

/// The PermissionDenied reason in `status`'s details, if any.
fn reason(status: &Status) -> Option<Reason> {
    let details = google_rpc::Status::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .filter(|any| any.type_url == DETAILS_TYPE)
        .find_map(|any| PermissionDeniedDetails::decode(any.value.as_slice()).ok())
        .and_then(|details| Reason::try_from(details.reason).ok())
}

/// A status for logs and errors: its code and message, bounded.
pub(super) fn describe(status: &Status) -> String {
    let message: String = status.message().chars().take(512).collect();
    format!("{:?}: {message}", status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(reason: Option<Reason>) -> Status {
        let details = google_rpc::Status {
            code: Code::PermissionDenied as i32,
            message: "denied".into(),
            details: reason
                .map(|reason| prost_types::Any {
                    type_url: DETAILS_TYPE.into(),
                    value: PermissionDeniedDetails {
                        reason: reason as i32,
                    }
                    .encode_to_vec(),
                })
                .into_iter()
                .collect(),
        };
        Status::with_details(Code::PermissionDenied, "denied", details.encode_to_vec().into())
    }

    #[test]
    fn the_reason_in_the_details_decides() {
        assert_eq!(verdict(&denied(Some(Reason::AgentBanned))), Verdict::Banned);
        assert_eq!(
            verdict(&denied(Some(Reason::AgentMustReattest))),
            Verdict::Reattest
        );
        assert_eq!(verdict(&denied(Some(Reason::AgentNotActive))), Verdict::Reattest);
        assert_eq!(verdict(&denied(None)), Verdict::Other);
        assert_eq!(verdict(&Status::unavailable("down")), Verdict::Other);
    }
}

//! The one place errors become gRPC statuses. The codes matter to real
//! clients: they never retry `InvalidArgument` and stop watching on it, they
//! retry `Unavailable`, and the Rust client recognises `PermissionDenied`
//! whose text contains "no identity issued".

use tonic::Status;

use crate::attest::AttestError;
use crate::audit::AuditError;
use crate::authority::AuthorityError;
use crate::tasks::{EndRefusal, StartRefusal, TaskError};

/// The caller matched no entry (or lost the ones it had).
pub(super) fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// The caller's only entries have owners whose term has ended: still "no
/// identity issued" to clients, with the reason after it.
pub(super) fn owner_expired(reason: &str) -> Status {
    Status::permission_denied(format!("no identity issued: {reason}"))
}

/// The request lacks `workload.spiffe.io: true`.
pub(super) fn missing_security_header() -> Status {
    Status::invalid_argument("security header missing from request")
}

/// The connection did not come through attestd's listener (no peer info).
pub(super) fn no_peer_info() -> Status {
    Status::unavailable("caller could not be identified")
}

pub(super) fn attestation(error: &AttestError) -> Status {
    match error {
        // A caller outside our pid namespace can never be attested: retrying
        // will not help, and it has no identity here.
        AttestError::NoPeerPid => no_identity(),
        AttestError::ProcessGone { .. } => Status::unavailable("caller exited during attestation"),
        AttestError::Proc { .. } => Status::unavailable("caller attestation failed"),
        // Contradictory facts will not resolve by retrying.
        AttestError::Cgroup(_) => no_identity(),
    }
}

pub(super) fn minting(error: &AuthorityError) -> Status {
    tracing::error!(%error, "cannot mint SVID");
    Status::unavailable("identity temporarily unavailable")
}

pub(super) fn audit(error: &AuditError) -> Status {
    tracing::error!(%error, "audit trail unwritable; refusing to issue (fail closed)");
    Status::unavailable("audit trail unavailable")
}

/// The SVID a stream followed was replaced by a fresh mint; clients retry
/// `Unavailable` and reconnect to the new one.
pub(super) fn reissuing() -> Status {
    Status::unavailable("identity re-issued; reconnect")
}

pub(super) fn shutting_down() -> Status {
    Status::unavailable("attestd is shutting down")
}

pub(super) fn not_offered(what: &'static str) -> Status {
    Status::unimplemented(format!("{what} is not offered by this attestd"))
}

/// A refused `StartTask`: beyond a limit, `ResourceExhausted`; a token too
/// large, `InvalidArgument`; attestd's own failures, `Unavailable`;
/// anything the caller's entry or parent task does not allow,
/// `PermissionDenied`, with the reason.
pub(super) fn start_refused(refusal: &StartRefusal) -> Status {
    match refusal {
        StartRefusal::Limit(message) => Status::resource_exhausted(message.clone()),
        StartRefusal::TooLarge { .. } => Status::invalid_argument(refusal.to_string()),
        StartRefusal::Mint(error) => minting(error),
        StartRefusal::Store(error) => task_store(error),
        _ => Status::permission_denied(refusal.to_string()),
    }
}

/// A refused `EndTask`.
pub(super) fn end_refused(refusal: &EndRefusal) -> Status {
    match refusal {
        EndRefusal::BadId(_) => Status::invalid_argument(refusal.to_string()),
        EndRefusal::Unknown(_) => Status::not_found(refusal.to_string()),
        EndRefusal::NotAllowed(_) => Status::permission_denied(refusal.to_string()),
        EndRefusal::AlreadyEnded(_) => Status::failed_precondition(refusal.to_string()),
        EndRefusal::Store(error) => task_store(error),
    }
}

fn task_store(error: &TaskError) -> Status {
    tracing::error!(%error, "task store unwritable");
    Status::unavailable("task store unavailable")
}

//! Admission, shared by every RPC and re-run by open streams on each push:
//! attest the connection's pinned caller, then find its entries. Every
//! refusal is audited before it is answered.
//!
//! One admission reads one policy snapshot: what attestation collects (the
//! executable binding) and what the caller is matched against come from the
//! same policy, even if a reload swaps it in between.

use std::sync::Arc;

use tonic::Status;

use super::caller::Caller;
use super::{Context, PeerInfo, status};
use crate::attest::{AttestError, ExeBinding, ExeFacts, Hashing, PeerIdentity, Workload};
use crate::audit::{Outcome, Record};
use crate::registry::{Matches, Policy, owner_clock};
use crate::telemetry::metrics;

/// Why a caller was not admitted.
pub(super) enum Refusal {
    /// Attestation failed.
    Unattested(Arc<AttestError>),
    /// Attested, but no entry matches.
    NoIdentity,
    /// Attested, but every entry it matches has an owner whose term has
    /// ended (the reason says whose and when).
    OwnerExpired(String),
    /// Anything else, already a status (including an unwritable audit).
    Status(Status),
}

impl Refusal {
    /// The status of a refused request.
    pub fn status(self) -> Status {
        match self {
            Self::Unattested(error) => status::attestation(&error),
            Self::NoIdentity => status::no_identity(),
            Self::OwnerExpired(reason) => status::owner_expired(&reason),
            Self::Status(status) => status,
        }
    }

    /// The status that ends an open stream: a caller that is gone or no
    /// longer entitled has lost its identities.
    pub fn stream_end(self) -> Status {
        match self {
            Self::Unattested(error) => match *error {
                AttestError::ProcessGone { .. } => status::no_identity(),
                _ => status::attestation(&error),
            },
            other => other.status(),
        }
    }
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

/// Attests the caller of a connection, collecting what `policy` needs.
/// Attestations run within `ctx.attestations` (host-wide and per uid); the
/// rest wait their turn.
pub(super) async fn attest(
    ctx: &Context,
    policy: &Policy,
    peer: &PeerInfo,
    rpc: &'static str,
) -> Result<Workload, Refusal> {
    attest_hashing(ctx, policy, peer, rpc, false).await
}

/// Like [`attest`]; with `hash_executable`, the executable is hashed (and
/// proven bound to the connection) even when no entry names one: policy
/// decisions may refer to its hash.
async fn attest_hashing(
    ctx: &Context,
    policy: &Policy,
    peer: &PeerInfo,
    rpc: &'static str,
    hash_executable: bool,
) -> Result<Workload, Refusal> {
    let attested = match &peer.0 {
        Ok(peer) => {
            let permit = ctx
                .attestations
                .acquire(peer.uid)
                .await
                .map_err(|_| Status::internal("attestation permits closed"))?;
            let started = std::time::Instant::now();
            let exe = exe_facts(policy, hash_executable);
            let attested = match in_place(ctx, peer, exe) {
                Some(attested) => attested,
                None => {
                    let attestor = Arc::clone(&ctx.attestor);
                    let peer = Arc::clone(peer);
                    tokio::task::spawn_blocking(move || {
                        // Held until the work ends, even if the request is cancelled.
                        let _permit = permit;
                        attestor.attest(&peer, exe).map_err(Arc::new)
                    })
                    .await
                    .map_err(|_| Status::internal("attestation task failed"))?
                }
            };
            metrics().attestation(started.elapsed());
            attested
        }
        Err(error) => Err(Arc::clone(error)),
    };
    attested.or_else(|error| {
        tracing::info!(%error, rpc, "attestation failed");
        deny(ctx, peer.denial_record(rpc, error.to_string()))?;
        Err(Refusal::Unattested(error))
    })
}

/// What attestation must learn of the executable for `policy` (and, with
/// `hash_executable`, for a policy decision).
fn exe_facts(policy: &Policy, hash_executable: bool) -> ExeFacts {
    if !policy.names_executables() && !hash_executable {
        return ExeFacts::PathOnly;
    }
    // Executables in the policy are believed only when bound to the
    // connection.
    let hashing = match policy.names_sha256() || hash_executable {
        true => Hashing::Hash,
        false => Hashing::Skip,
    };
    ExeFacts::Selectors(ExeBinding::Verify, hashing)
}

/// Attests on this runtime thread when nothing can block: without the
/// executable's file, every fact is procfs's, which the kernel writes
/// as it is read. Handing the work to a blocking thread and back cost a
/// third of a uid policy's CPU per call (the wake-ups and context
/// switches), more than the attestation itself. `None`: it must run on a
/// blocking thread (the executable is needed, or a name must be asked of
/// NSS, which may wait on a remote directory).
fn in_place(ctx: &Context, peer: &PeerIdentity, exe: ExeFacts) -> Option<Result<Workload, Arc<AttestError>>> {
    if exe != ExeFacts::PathOnly {
        return None;
    }
    ctx.attestor
        .attest_in_place(peer)
        .map(|attested| attested.map_err(Arc::new))
}

/// Attests the caller and finds its entries in effect; a caller without any
/// is refused (with the reason when its only entries' owners expired).
pub(super) async fn admit(ctx: &Context, peer: &PeerInfo, rpc: &'static str) -> Result<Caller, Refusal> {
    admit_hashing(ctx, peer, rpc, false).await
}

/// [`admit`] for a policy decision about the caller: its executable is
/// hashed whenever a Cedar policy refers to `exe_sha256`.
pub(super) async fn admit_for_decision(
    ctx: &Context,
    peer: &PeerInfo,
    rpc: &'static str,
) -> Result<Caller, Refusal> {
    admit_hashing(ctx, peer, rpc, ctx.authz.book().needs_exe_hash()).await
}

async fn admit_hashing(
    ctx: &Context,
    peer: &PeerInfo,
    rpc: &'static str,
    hash_executable: bool,
) -> Result<Caller, Refusal> {
    let policy = ctx.registry.policy();
    let workload = attest_hashing(ctx, &policy, peer, rpc, hash_executable).await?;
    let matches = policy.matches(&workload.selectors, owner_clock::now());
    if let (Some(reason), Some(first)) = (matches.expired_refusal(), matches.expired.first()) {
        tracing::info!(
            pid = workload.pid,
            uid = workload.uid,
            rpc,
            reason,
            "caller's entries expired with their owners"
        );
        let record = Record::new(rpc, Outcome::Denied, &reason, Some(&workload)).with_entry(first);
        deny(ctx, record)?;
        return Err(Refusal::OwnerExpired(reason));
    }
    let Matches { entries, .. } = matches;
    if entries.is_empty() {
        tracing::info!(
            pid = workload.pid,
            uid = workload.uid,
            rpc,
            "no entry matches caller"
        );
        let reason = "no registration entry matches the caller";
        deny(ctx, Record::new(rpc, Outcome::Denied, reason, Some(&workload)))?;
        return Err(Refusal::NoIdentity);
    }
    Ok(Caller {
        peer: peer.clone(),
        workload,
        entries,
        policy,
    })
}

/// Records the refusal of a caller that holds no identity, within its
/// uid's allowance of denial records (beyond it, the refusal is counted for
/// the window's summary); if even that cannot be recorded, the caller hears
/// that the service is unavailable.
fn deny(ctx: &Context, record: Record) -> Result<(), Status> {
    ctx.audit.write_denial(record).map_err(|e| status::audit(&e))
}

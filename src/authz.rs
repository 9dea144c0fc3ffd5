//! The local policy decision point: may this agent's task use this tool on
//! this resource? Decided by Cedar policies (`policy_dir`, `*.cedar`)
//! validated against the schema attestd ships ([`schema`]), over facts
//! attestation established, never over what the request claims.
//!
//! Every decision is bound to a live task. In order, a request is refused
//! before any policy is evaluated when:
//! 1. the subject named (AuthZEN) is not the caller, or the caller asks on
//!    another agent's behalf without an entry that sets
//!    `may_ask_for_others`;
//! 2. it carries no task token, or one that does not verify (a plain
//!    JWT-SVID, an ended task, an expired token, ...);
//! 3. the token is not the caller's own and the caller may not ask for
//!    others, or it is not addressed (`aud`) to the asking gateway;
//! 4. the tool is not among the task's declared tools, or the resource not
//!    among its declared resources (when it declares any);
//! 5. no entry allows the tool any more (the schema has no such action).
//!
//! Otherwise Cedar decides (deny unless some policy permits and none
//! forbids). The principal is the attested caller when the token is its
//! own, with the facts attestation just established; or, when a gateway
//! presents an agent's token, that agent, with the facts recorded when it
//! started the task and its entry's current owner and labels.
//!
//! This room knows nothing of gRPC or HTTP: the Workload API socket serves
//! it as the `Authorization` service, and the AuthZEN front maps JSON onto
//! it ([`authzen`]). Task tokens are verified through [`TaskTokens`].

pub mod authzen;
mod decide;
mod evaluate;
mod policies;
mod reload;
mod request;
pub mod schema;
mod source;

use std::sync::Arc;

use tokio::sync::watch;

pub use decide::{Asker, Subject, Verdict, decide};
pub use policies::{PolicyBook, PolicyProblem};
pub use reload::{keep_current, reload};
pub use request::{
    DecisionRequest, MAX_ARGS_BYTES, MAX_ARGS_DEPTH, MAX_RESOURCE_BYTES, MAX_TOKEN_BYTES, ResourceName,
    check_token,
};

use crate::tasks::VerifiedTask;

/// Why policies could not be loaded, or a request was refused for its
/// shape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthzError {
    /// The policy files are invalid (parse or validation errors): every
    /// problem found, each with its file and line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Policies(Vec<PolicyProblem>),
    /// The schema could not be built (a defect: the shipped part is tested
    /// and the generated part made of checked names).
    #[error("Cedar schema: {0}")]
    Schema(String),
    /// A decision request is malformed or over a limit.
    #[error("{0}")]
    BadRequest(String),
}

/// Verifies task tokens: the seam to the task store. A token verifies only
/// if it is a task token attestd minted, unexpired, its task and every
/// ancestor still live; the error is the reason it does not, for the
/// caller and the audit trail.
pub trait TaskTokens: Send + Sync + std::fmt::Debug {
    /// The task a token stands for, or why it is refused.
    fn verify(&self, token: &str) -> Result<VerifiedTask, String>;
}

/// Task tokens verify against attestd's task store. The audience is not
/// checked here: a decision checks `aud` itself when a gateway asks.
impl TaskTokens for crate::tasks::TaskRegistry {
    fn verify(&self, token: &str) -> Result<VerifiedTask, String> {
        crate::tasks::TaskRegistry::verify(self, token, None).map_err(|refusal| refusal.to_string())
    }
}

/// The policy decision point's state: the policy set in effect (swapped
/// whole on reload) and the task token verifier.
#[derive(Debug)]
pub struct Authz {
    book: watch::Sender<Arc<PolicyBook>>,
    tokens: Arc<dyn TaskTokens>,
}

impl Authz {
    /// Decisions under `book`, with tokens verified by `tokens`.
    pub fn new(book: PolicyBook, tokens: Arc<dyn TaskTokens>) -> Self {
        Self {
            book: watch::Sender::new(Arc::new(book)),
            tokens,
        }
    }

    /// The policy set in effect.
    pub fn book(&self) -> Arc<PolicyBook> {
        self.book.borrow().clone()
    }

    /// Swaps in a new policy set.
    pub fn replace(&self, book: PolicyBook) {
        self.book.send_replace(Arc::new(book));
    }

    /// The task token verifier.
    pub fn tokens(&self) -> &dyn TaskTokens {
        self.tokens.as_ref()
    }
}

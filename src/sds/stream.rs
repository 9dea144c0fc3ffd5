//! `StreamSecrets`: Envoy's state-of-the-world subscription. Envoy sends a
//! request naming the secrets it wants; attestd answers with them, tagged
//! with a version and a nonce; Envoy acknowledges (ACK: the version) or
//! rejects (NACK: the previous version and an error detail, keeping the
//! secrets it had). Every change of the caller's credentials (rotation,
//! bundle change, policy change) pushes the named secrets again under a new
//! version.
//!
//! A request quoting a nonce other than the last one sent is stale (Envoy
//! sent it before our latest answer) and is ignored. A request that only
//! acknowledges or rejects gets no answer: a rejected version is not sent
//! again; the next change is.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures::stream::{self, BoxStream, StreamExt};
use tonic::{Status, Streaming};

use super::resources::Validator;
use super::{Settings, rpc, select};
use crate::workload_api::{CallerWatch, OpenStream};

/// The type of every resource SDS serves.
pub(super) const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// How much of a rejection's detail (Envoy's text) is logged.
const LOGGED_DETAIL: usize = 512;

/// What the client subscribed to with its latest request.
struct Subscription {
    /// Sorted and without repeats: a reordered request is the same one.
    names: Vec<String>,
    validator: Validator,
}

struct SecretStream {
    _open: OpenStream,
    settings: Arc<Settings>,
    credentials: CallerWatch,
    requests: Streaming<DiscoveryRequest>,
    subscription: Option<Subscription>,
    /// The node of the stream's first request (Envoy sends it once).
    node: Option<Node>,
    /// The version of the credentials: one more on every change.
    version: u64,
    /// The nonce of the last answer, which the client's next request quotes.
    last_nonce: Option<String>,
    /// Serials of the certificates the last answer carried: a certificate
    /// is recorded in the audit trail once per stream, not on every resend.
    sent_serials: Vec<String>,
    answered: bool,
    done: bool,
}

/// The answers to `requests` from an admitted caller's `credentials`.
pub(super) fn secrets(
    settings: Arc<Settings>,
    credentials: CallerWatch,
    requests: Streaming<DiscoveryRequest>,
) -> BoxStream<'static, Result<DiscoveryResponse, Status>> {
    let state = SecretStream {
        _open: OpenStream::new(),
        settings,
        credentials,
        requests,
        subscription: None,
        node: None,
        version: 1,
        last_nonce: None,
        sent_serials: Vec::new(),
        answered: false,
        done: false,
    };
    stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        let item = state.next_answer().await?;
        state.done = item.is_err();
        Some((item, state))
    })
    .boxed()
}

impl SecretStream {
    /// The next answer; `None` when the client closed its side.
    async fn next_answer(&mut self) -> Option<Result<DiscoveryResponse, Status>> {
        loop {
            let request = tokio::select! {
                message = self.requests.message() => match message {
                    Ok(Some(request)) => request,
                    // Closed or reset by the client: nothing to answer.
                    Ok(None) | Err(_) => return None,
                },
                wake = self.credentials.next_change() => {
                    match self.on_change(wake).await {
                        Ok(None) => continue,
                        other => return other.transpose(),
                    }
                }
            };
            match self.on_request(request).await {
                Ok(None) => {}
                other => return other.transpose(),
            }
        }
    }

    /// The caller's credentials changed: a new version, pushed if the
    /// client has subscribed.
    async fn on_change(
        &mut self,
        wake: crate::workload_api::Wake,
    ) -> Result<Option<DiscoveryResponse>, Status> {
        if !self.credentials.apply(wake).await? {
            return Ok(None);
        }
        self.version += 1;
        if self.subscription.is_none() {
            return Ok(None);
        }
        self.answer("pushed on rotation or bundle change").map(Some)
    }

    async fn on_request(&mut self, request: DiscoveryRequest) -> Result<Option<DiscoveryResponse>, Status> {
        if !request.type_url.is_empty() && request.type_url != SECRET_TYPE_URL {
            return Err(Status::invalid_argument("SDS serves only Secret resources"));
        }
        if let Some(detail) = &request.error_detail {
            let message: String = detail.message.chars().take(LOGGED_DETAIL).collect();
            tracing::warn!(
                pid = self.credentials.pid(),
                version = %request.version_info.chars().take(32).collect::<String>(),
                error = %message,
                "Envoy rejected the secrets sent (it keeps its previous ones)"
            );
        }
        if self
            .last_nonce
            .as_ref()
            .is_some_and(|last| *last != request.response_nonce)
        {
            tracing::debug!("stale SDS request (an older nonce); ignored");
            return Ok(None);
        }
        if request.node.is_some() {
            self.node = request.node;
        }
        let mut names = request.resource_names;
        names.sort_unstable();
        names.dedup();
        let validator = select::validator(&self.settings.config, self.node.as_ref());
        let unchanged = self
            .subscription
            .as_ref()
            .is_some_and(|sub| sub.names == names && sub.validator == validator);
        self.subscription = Some(Subscription { names, validator });
        if unchanged {
            return Ok(None);
        }
        // A new subscription gets the credentials as they are now: after
        // the first answer, the caller must be entitled to them still.
        if self.answered && self.credentials.readmit().await? {
            self.version += 1;
        }
        self.answer("fetched").map(Some)
    }

    /// The subscribed secrets now; new certificates audited before they
    /// are handed out.
    fn answer(&mut self, reason: &str) -> Result<DiscoveryResponse, Status> {
        let subscription = self.subscription.as_ref().expect("answers follow a subscription");
        let credentials = self.credentials.current();
        let answer = select::answer(
            &subscription.names,
            &credentials,
            &self.settings.trust_domain,
            &self.settings.config,
            subscription.validator,
        )?;
        let unrecorded: Vec<_> = answer
            .issued
            .iter()
            .filter(|(_, svid)| !self.sent_serials.contains(&svid.serial))
            .collect();
        self.credentials.audit_issued(reason, unrecorded)?;
        self.sent_serials = answer
            .issued
            .iter()
            .map(|(_, svid)| svid.serial.clone())
            .collect();
        let nonce = format!("{:016x}", rand::random::<u64>());
        self.last_nonce = Some(nonce.clone());
        self.answered = true;
        tracing::debug!(
            pid = self.credentials.pid(),
            version = self.version,
            resources = answer.resources.len(),
            rpc = rpc::STREAM_SECRETS,
            "sent secrets"
        );
        Ok(DiscoveryResponse {
            version_info: self.version.to_string(),
            resources: answer.resources,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce,
            ..DiscoveryResponse::default()
        })
    }
}

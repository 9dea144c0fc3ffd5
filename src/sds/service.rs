//! The `SecretDiscoveryService` gRPC service: every stream and fetch is
//! admitted like a Workload API call (attested from the connection's
//! pinned peer, matched against the policy); a caller without an identity
//! gets nothing, not even bundles. Envoy sends no security header, so none
//! is asked for, as with SPIRE agent.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::stream::{self, SECRET_TYPE_URL};
use super::{Settings, rpc, select};
use crate::workload_api::{CallerWatch, Context, observe, peer_of};

/// Envoy SDS v3, answering from the Workload API's context.
#[derive(Debug, Clone)]
pub struct SecretDiscovery {
    ctx: Arc<Context>,
    settings: Arc<Settings>,
}

impl SecretDiscovery {
    /// The service for `ctx`, with `[sds]`'s names.
    pub fn new(ctx: Arc<Context>, config: crate::config::SdsConfig) -> Self {
        let settings = Arc::new(Settings {
            trust_domain: ctx.authority.trust_domain().clone(),
            config,
        });
        Self { ctx, settings }
    }

    /// Admits the caller of `request` and starts following its credentials.
    async fn follow<T>(&self, request: &Request<T>, rpc: &'static str) -> Result<CallerWatch, Status> {
        let peer = peer_of(request)?;
        CallerWatch::admit(Arc::clone(&self.ctx), &peer, rpc).await
    }

    async fn stream(&self, request: Request<Streaming<DiscoveryRequest>>) -> Result<SecretsStream, Status> {
        let credentials = self.follow(&request, rpc::STREAM_SECRETS).await?;
        Ok(stream::secrets(
            Arc::clone(&self.settings),
            credentials,
            request.into_inner(),
        ))
    }

    async fn fetch(&self, request: Request<DiscoveryRequest>) -> Result<DiscoveryResponse, Status> {
        let mut credentials = self.follow(&request, rpc::FETCH_SECRETS).await?;
        let request = request.into_inner();
        let validator = select::validator(&self.settings.config, request.node.as_ref());
        let current = credentials.current();
        let answer = select::answer(
            &request.resource_names,
            &current,
            &self.settings.trust_domain,
            &self.settings.config,
            validator,
        )?;
        credentials.audit_issued("fetched", &answer.issued)?;
        Ok(DiscoveryResponse {
            resources: answer.resources,
            type_url: SECRET_TYPE_URL.to_owned(),
            ..DiscoveryResponse::default()
        })
    }
}

type SecretsStream = BoxStream<'static, Result<DiscoveryResponse, Status>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SecretDiscovery {
    type DeltaSecretsStream = BoxStream<'static, Result<DeltaDiscoveryResponse, Status>>;
    type StreamSecretsStream = SecretsStream;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        observe(
            rpc::DELTA_SECRETS,
            Err(Status::unimplemented(
                "incremental SDS is not offered; use StreamSecrets",
            )),
        )
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SecretsStream>, Status> {
        observe(rpc::STREAM_SECRETS, self.stream(request).await)
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        observe(rpc::FETCH_SECRETS, self.fetch(request).await)
    }
}

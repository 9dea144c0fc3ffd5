//! The `SpiffeWorkloadAPI` gRPC service: admission (security header,
//! attestation, matching) shared by every RPC, then the per-RPC answer.

use std::sync::Arc;

use futures::stream::BoxStream;
use tonic::{Request, Response, Status};

use super::streams::{self, Caller};
use super::{Context, PeerInfo, status};
use crate::audit::{Outcome, Record};
use crate::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use crate::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, SECURITY_HEADER,
    SECURITY_HEADER_VALUE, ValidateJwtsvidRequest, ValidateJwtsvidResponse, WitBundlesRequest,
    WitBundlesResponse, WitsvidRequest, WitsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};

/// The Workload API service.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    ctx: Arc<Context>,
}

impl WorkloadApi {
    /// A service answering from `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    /// Checks the header, attests the caller and finds its entries. Every
    /// refusal after the header check is audited.
    async fn admit<T>(&self, request: &Request<T>, rpc: &'static str) -> Result<Caller, Status> {
        check_security_header(request)?;
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(status::no_peer_info)?;
        let attested = match peer.0 {
            Ok(peer) => {
                let attestor = Arc::clone(&self.ctx.attestor);
                tokio::task::spawn_blocking(move || attestor.attest(&peer).map_err(Arc::new))
                    .await
                    .map_err(|_| Status::internal("attestation task failed"))?
            }
            Err(error) => Err(error),
        };
        let workload = match attested {
            Ok(workload) => workload,
            Err(error) => {
                tracing::info!(%error, rpc, "attestation failed");
                self.deny(Record::new(rpc, Outcome::Denied, error.to_string(), None))?;
                return Err(status::attestation(&error));
            }
        };
        let entries = self.ctx.registry.policy().matching(&workload.selectors);
        if entries.is_empty() {
            tracing::info!(
                pid = workload.pid,
                uid = workload.uid,
                rpc,
                "no entry matches caller"
            );
            self.deny(Record::new(
                rpc,
                Outcome::Denied,
                "no registration entry matches the caller",
                Some(&workload),
            ))?;
            return Err(status::no_identity());
        }
        Ok(Caller { workload, entries })
    }

    /// Records a refusal; if even that cannot be recorded, the caller hears
    /// that the service is unavailable.
    fn deny(&self, record: Record) -> Result<(), Status> {
        self.ctx.audit.write(&[record]).map_err(|e| status::audit(&e))
    }
}

fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value.as_bytes() == SECURITY_HEADER_VALUE.as_bytes() => Ok(()),
        _ => Err(status::missing_security_header()),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = BoxStream<'static, Result<X509svidResponse, Status>>;
    type FetchX509BundlesStream = BoxStream<'static, Result<X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = BoxStream<'static, Result<JwtBundlesResponse, Status>>;
    type FetchWITSVIDStream = BoxStream<'static, Result<WitsvidResponse, Status>>;
    type FetchWITBundlesStream = BoxStream<'static, Result<WitBundlesResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.admit(&request, streams::FETCH_X509_SVID).await?;
        Ok(Response::new(streams::x509_svids(Arc::clone(&self.ctx), caller)?))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        // Like SPIRE, bundles go only to callers that hold an identity.
        self.admit(&request, streams::FETCH_X509_BUNDLES).await?;
        Ok(Response::new(streams::x509_bundles(&self.ctx)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_security_header(&request)?;
        Err(status::not_offered("FetchJWTSVID"))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_security_header(&request)?;
        Err(status::not_offered("FetchJWTBundles"))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_security_header(&request)?;
        Err(status::not_offered("ValidateJWTSVID"))
    }

    async fn fetch_witsvid(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        check_security_header(&request)?;
        Err(status::not_offered("the WIT-SVID profile"))
    }

    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        check_security_header(&request)?;
        Err(status::not_offered("the WIT-SVID profile"))
    }
}

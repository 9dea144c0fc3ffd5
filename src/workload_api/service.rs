//! The `SpiffeWorkloadAPI` gRPC service: the security header first, then
//! admission (attestation, matching) shared by the RPCs, then each answer.

use std::sync::Arc;

use futures::stream::BoxStream;
use tonic::{Request, Response, Status};

use super::admission::{self, Refusal};
use super::caller::{Caller, rpc};
use super::jwt::{self, BadArguments, JwtRequest};
use super::{Context, PeerInfo, status, streams};
use crate::attest::Workload;
use crate::authority::{JwtBundle, X509Bundle};
use crate::federation::CallerBundles;
use crate::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use crate::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, SECURITY_HEADER,
    SECURITY_HEADER_VALUE, ValidateJwtsvidRequest, ValidateJwtsvidResponse, WitBundlesRequest,
    WitBundlesResponse, WitsvidRequest, WitsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};
use crate::telemetry::metrics;

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

    async fn admit<T>(&self, request: &Request<T>, rpc: &'static str) -> Result<Caller, Status> {
        let peer = peer_of(request)?;
        admission::admit(&self.ctx, &peer, rpc)
            .await
            .map_err(Refusal::status)
    }

    async fn attest<T>(&self, request: &Request<T>, rpc: &'static str) -> Result<Workload, Status> {
        let peer = peer_of(request)?;
        admission::attest(&self.ctx, &self.ctx.registry.policy(), &peer, rpc)
            .await
            .map_err(Refusal::status)
    }

    /// Refuses a request for its arguments; audited (see [`jwt::refuse`]).
    fn refuse_arguments<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        bad: BadArguments,
        audience: &[String],
    ) -> Status {
        match peer_of(request) {
            Ok(peer) => jwt::refuse(&self.ctx, &peer, rpc, bad, audience),
            Err(status) => status,
        }
    }

    async fn x509_svids(&self, request: Request<X509svidRequest>) -> Result<X509SvidStream, Status> {
        check_security_header(&request)?;
        let caller = self.admit(&request, rpc::FETCH_X509_SVID).await?;
        streams::x509_svids(Arc::clone(&self.ctx), caller).await
    }

    async fn x509_bundles(&self, request: Request<X509BundlesRequest>) -> Result<X509BundlesStream, Status> {
        check_security_header(&request)?;
        // Like SPIRE, bundles go only to callers that hold an identity.
        let caller = self.admit(&request, rpc::FETCH_X509_BUNDLES).await?;
        let key = self.ctx.authority.trust_domain().id_string();
        Ok(streams::bundle_stream(
            &self.ctx,
            caller.workload.selectors,
            caller.entries,
            self.ctx.authority.subscribe_bundle(),
            move |bundle: &X509Bundle, federated: &CallerBundles| {
                let mut bundles = federated.x509_map();
                bundles.insert(key.clone(), bundle.concatenated_der());
                X509BundlesResponse {
                    crl: Vec::new(),
                    bundles,
                }
            },
        ))
    }

    async fn jwt_svids(&self, request: Request<JwtsvidRequest>) -> Result<JwtsvidResponse, Status> {
        check_security_header(&request)?;
        let JwtsvidRequest { audience, spiffe_id } = request.get_ref();
        let arguments = JwtRequest::parse(audience, spiffe_id)
            .map_err(|bad| self.refuse_arguments(&request, rpc::FETCH_JWT_SVID, bad, audience))?;
        let caller = self.admit(&request, rpc::FETCH_JWT_SVID).await?;
        jwt::fetch(&self.ctx, caller, &arguments).await
    }

    async fn jwt_bundles(&self, request: Request<JwtBundlesRequest>) -> Result<JwtBundlesStream, Status> {
        check_security_header(&request)?;
        let caller = self.admit(&request, rpc::FETCH_JWT_BUNDLES).await?;
        let key = self.ctx.authority.trust_domain().id_string();
        Ok(streams::bundle_stream(
            &self.ctx,
            caller.workload.selectors,
            caller.entries,
            self.ctx.authority.jwt().subscribe(),
            move |bundle: &JwtBundle, federated: &CallerBundles| {
                let mut bundles = federated.jwt_map();
                bundles.insert(key.clone(), bundle.jwks_json());
                JwtBundlesResponse { bundles }
            },
        ))
    }

    async fn validate_jwt(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<ValidateJwtsvidResponse, Status> {
        check_security_header(&request)?;
        let ValidateJwtsvidRequest { audience, svid } = request.get_ref();
        jwt::check_validate_request(audience, svid).map_err(|bad| {
            let audience = std::slice::from_ref(audience);
            self.refuse_arguments(&request, rpc::VALIDATE_JWT_SVID, bad, audience)
        })?;
        // Validation needs no identity of the caller's own (verifiers may
        // hold none), but is attested for the audit trail; whether it holds
        // one decides how a rejection is recorded.
        // The caller's entries also decide which federated trust domains'
        // tokens it may have validated (SPIRE's rule).
        let workload = self.attest(&request, rpc::VALIDATE_JWT_SVID).await?;
        let entries = self.ctx.registry.policy().matching(&workload.selectors);
        jwt::validate(&self.ctx, &workload, &entries, audience, svid)
    }
}

type X509SvidStream = BoxStream<'static, Result<X509svidResponse, Status>>;
type X509BundlesStream = BoxStream<'static, Result<X509BundlesResponse, Status>>;
type JwtBundlesStream = BoxStream<'static, Result<JwtBundlesResponse, Status>>;

/// Counts the outcome of an RPC by its gRPC code and wraps the answer.
pub(crate) fn observe<T>(rpc: &str, result: Result<T, Status>) -> Result<Response<T>, Status> {
    let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
    metrics().request(rpc, code);
    result.map(Response::new)
}

/// The optional WIT-SVID profile is not offered; the header is still
/// checked first, as for every RPC.
fn wit_not_offered<T, R>(request: &Request<T>) -> Result<R, Status> {
    check_security_header(request)?;
    Err(status::not_offered("the WIT-SVID profile"))
}

/// The pinned peer tonic attached to the request's connection.
pub(crate) fn peer_of<T>(request: &Request<T>) -> Result<PeerInfo, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(status::no_peer_info)
}

pub(super) fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER) {
        Some(value) if value.as_bytes() == SECURITY_HEADER_VALUE.as_bytes() => Ok(()),
        _ => Err(status::missing_security_header()),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = X509SvidStream;
    type FetchX509BundlesStream = X509BundlesStream;
    type FetchJWTBundlesStream = JwtBundlesStream;
    type FetchWITSVIDStream = BoxStream<'static, Result<WitsvidResponse, Status>>;
    type FetchWITBundlesStream = BoxStream<'static, Result<WitBundlesResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<X509SvidStream>, Status> {
        observe(rpc::FETCH_X509_SVID, self.x509_svids(request).await)
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<X509BundlesStream>, Status> {
        observe(rpc::FETCH_X509_BUNDLES, self.x509_bundles(request).await)
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        observe(rpc::FETCH_JWT_SVID, self.jwt_svids(request).await)
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<JwtBundlesStream>, Status> {
        observe(rpc::FETCH_JWT_BUNDLES, self.jwt_bundles(request).await)
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        observe(rpc::VALIDATE_JWT_SVID, self.validate_jwt(request).await)
    }

    async fn fetch_witsvid(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        observe(rpc::FETCH_WIT_SVID, wit_not_offered(&request))
    }

    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        observe(rpc::FETCH_WIT_BUNDLES, wit_not_offered(&request))
    }
}

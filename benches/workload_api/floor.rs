//! The floor: the generated Workload API service on the same gRPC stack and
//! the same kind of socket as attestd, answering with fixed copies of
//! attestd's own responses: no attestation, no policy, no audit. What is
//! left is what any server on this stack pays for a call.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use prost::Message as _;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use attestd::config::LimitsConfig;
use attestd::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use attestd::proto::*;

/// The files in the floor's directory holding the responses it serves.
pub const X509_RESPONSE: &str = "x509.bin";
pub const JWT_RESPONSE: &str = "jwt.bin";

/// Serves the floor on `socket` until killed, with the responses saved in
/// `dir`.
pub fn serve(socket: &Path, dir: &Path, tuned: bool) -> anyhow::Result<()> {
    let x509 = X509svidResponse::decode(std::fs::read(dir.join(X509_RESPONSE))?.as_slice())?;
    let jwt = JwtsvidResponse::decode(std::fs::read(dir.join(JWT_RESPONSE))?.as_slice())?;
    let floor = Floor {
        x509: Arc::new(x509),
        jwt: Arc::new(jwt),
    };
    // Like attestd's: a multi-threaded runtime, which on the one CPU the
    // floor is pinned to has one worker.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = UnixListener::bind(socket)?;
        let serving = server(tuned)
            .add_service(SpiffeWorkloadApiServer::new(floor))
            .serve_with_incoming(UnixListenerStream::new(listener));
        match tuned {
            // As attestd serves: from a runtime worker, so that each
            // connection's task runs on the thread that accepted it.
            true => tokio::spawn(serving).await??,
            // As tonic's examples do: from the `block_on` thread, which
            // hands each connection's task to a worker.
            false => serving.await?,
        }
        Ok(())
    })
}

/// Every transport setting of the floor. Untuned: tonic's defaults (the
/// bare floor). Tuned: attestd's own HTTP/2 transport with its default
/// limits (`attestd::daemon::transport`), so that a change there can be
/// told apart from the stack's own cost. (The tuned floor is also served
/// from a runtime worker, as attestd is: see `serve`.)
fn server(tuned: bool) -> Server {
    match tuned {
        true => attestd::daemon::transport(&LimitsConfig::default()),
        false => Server::builder(),
    }
}

struct Floor {
    x509: Arc<X509svidResponse>,
    jwt: Arc<JwtsvidResponse>,
}

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Floor {
    type FetchX509SVIDStream = Stream<X509svidResponse>;
    type FetchX509BundlesStream = Stream<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<JwtBundlesResponse>;
    type FetchWITSVIDStream = Stream<WitsvidResponse>;
    type FetchWITBundlesStream = Stream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let first = futures::stream::once(futures::future::ready(Ok((*self.x509).clone())));
        // Like a real stream, it stays open after the first message (and,
        // the floor never rotating, sends nothing more).
        Ok(Response::new(first.chain(futures::stream::pending()).boxed()))
    }

    async fn fetch_jwtsvid(&self, _: Request<JwtsvidRequest>) -> Result<Response<JwtsvidResponse>, Status> {
        Ok(Response::new((*self.jwt).clone()))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn fetch_witsvid(
        &self,
        _: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

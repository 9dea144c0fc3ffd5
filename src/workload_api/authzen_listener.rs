//! The AuthZEN front of the policy decision point: `POST
//! /access/v1/evaluation` (JSON over HTTP/1.1) on its own Unix socket
//! (`[authz] listen`), for gateways that speak AuthZEN rather than gRPC.
//! The JSON shape is [`crate::authz::authzen`]'s.
//!
//! Callers are attested exactly like Workload API callers: each connection's
//! peer is pinned at accept (SO_PEERCRED and a pidfd) and admitted per
//! request; connections count against the Workload API's per-uid and global
//! budgets (each holds a socket and a pin), and each is closed after
//! [`CONNECTION_LIFETIME`], so slow or idle ones cannot keep their slots.
//! Bodies over [`MAX_BODY_BYTES`] are refused unread.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State, connect_info::Connected};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Sleep;

use super::authorize::{decide, refuse};
use super::limits::{ConnectionLimits, ConnectionSlot};
use super::{Context, ListenerError, PeerInfo, SocketListener};
use crate::attest::ConnectCredentials;
use crate::authz::authzen::{self, Evaluation};

/// The AuthZEN evaluation endpoint.
pub const EVALUATION_PATH: &str = "/access/v1/evaluation";
/// The largest request body: a task token (up to 64 KiB) and arguments (up
/// to 16 KiB), with room for the JSON around them.
pub const MAX_BODY_BYTES: usize = 96 * 1024;
/// How long one connection may stay open (a decision takes milliseconds; a
/// gateway that keeps its connection alive reconnects).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Binds `path` (parent directory 0755, socket 0777, a stale socket
/// replaced) and returns the server, which runs until `ctx.shutdown`.
/// Binding happens before this returns, so a bad path fails the start.
pub fn serve_authzen(
    ctx: Arc<Context>,
    path: &Path,
    limits: Arc<ConnectionLimits>,
) -> Result<impl Future<Output = ()> + use<>, ListenerError> {
    let mut socket = SocketListener::bind(path)?;
    let listener = socket.take_listener().ok_or_else(|| ListenerError::Io {
        path: path.to_owned(),
        source: io::Error::other("listener already taken"),
    })?;
    tracing::info!(socket = %path.display(), "AuthZEN decision front");
    let mut shutdown = ctx.shutdown.clone();
    let app = Router::new()
        .route(EVALUATION_PATH, post(evaluate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx);
    let listener = BoundedUnixListener { listener, limits };
    Ok(async move {
        // Owned here: the socket file is removed when the server ends.
        let _socket = socket;
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<Caller>())
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stopping| *stopping).await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "AuthZEN front failed");
        }
    })
}

/// `POST /access/v1/evaluation`.
async fn evaluate(
    State(ctx): State<Arc<Context>>,
    ConnectInfo(Caller(peer)): ConnectInfo<Caller>,
    body: Bytes,
) -> Response {
    let evaluation = match Evaluation::parse(&body) {
        Ok(evaluation) => evaluation,
        Err(error) => {
            let status = refuse(&ctx, &peer, &error);
            return json(http_status(&status), &authzen::error_body(status.message()));
        }
    };
    match decide(&ctx, &peer, evaluation.subject, evaluation.request).await {
        Ok(verdict) => json(StatusCode::OK, &authzen::response(&verdict)),
        Err(status) => json(http_status(&status), &authzen::error_body(status.message())),
    }
}

/// The HTTP status of a request that could not be decided.
fn http_status(status: &tonic::Status) -> StatusCode {
    match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The pinned peer of a connection, handed to every request on it.
#[derive(Debug, Clone)]
struct Caller(PeerInfo);

impl Connected<IncomingStream<'_, BoundedUnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, BoundedUnixListener>) -> Self {
        Self(stream.io().peer.clone())
    }
}

/// The socket, accepting only what the connection limits admit.
struct BoundedUnixListener {
    listener: UnixListener,
    limits: Arc<ConnectionLimits>,
}

impl Listener for BoundedUnixListener {
    type Io = PinnedStream;
    type Addr = ();

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let credentials = ConnectCredentials::of(&stream);
                    let uid = credentials.limits_uid();
                    match self.limits.acquire(uid) {
                        Ok(slot) => return (PinnedStream::new(stream, credentials, slot), ()),
                        Err(refused) => {
                            tracing::warn!(uid, "AuthZEN connection refused: {}", refused.reason());
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "AuthZEN accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(())
    }
}

/// A connection with its peer pinned at accept, counted against the limits
/// until it closes, which it does by [`CONNECTION_LIFETIME`] at the latest.
struct PinnedStream {
    stream: UnixStream,
    peer: PeerInfo,
    _slot: ConnectionSlot,
    closes_at: Pin<Box<Sleep>>,
}

impl PinnedStream {
    fn new(stream: UnixStream, credentials: ConnectCredentials, slot: ConnectionSlot) -> Self {
        // Pinned before the first byte is read: the caller cannot exit and
        // have its pid reused in between.
        let peer = PeerInfo::pin(&stream, credentials);
        Self {
            stream,
            peer,
            _slot: slot,
            closes_at: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
        }
    }

    fn expired(&mut self, cx: &mut TaskContext<'_>) -> io::Result<()> {
        match self.closes_at.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "AuthZEN connection lifetime over",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for PinnedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.expired(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PinnedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.expired(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

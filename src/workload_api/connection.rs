//! An accepted Workload API connection, with its peer pinned at accept time.
//! The pin is taken before the first byte is read, so a caller cannot exit
//! and have its pid reused between connecting and being attested.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use crate::attest::{AttestError, PeerIdentity};

/// What tonic hands each request of a connection: the pinned peer, or why it
/// could not be pinned (every request of that connection is then refused).
#[derive(Debug, Clone)]
pub struct PeerInfo(pub Result<Arc<PeerIdentity>, Arc<AttestError>>);

/// A Unix stream plus its peer.
#[derive(Debug)]
pub struct AttestedConnection {
    stream: UnixStream,
    peer: PeerInfo,
}

impl AttestedConnection {
    /// Pins the peer of a freshly accepted stream.
    pub fn new(stream: UnixStream) -> Self {
        let peer = PeerInfo(PeerIdentity::from_socket(&stream).map(Arc::new).map_err(Arc::new));
        Self { stream, peer }
    }
}

impl Connected for AttestedConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for AttestedConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AttestedConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

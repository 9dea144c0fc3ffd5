//! An accepted Workload API connection, with its peer pinned at accept time.
//! The pin is taken before the first byte is read, so a caller cannot exit
//! and have its pid reused between connecting and being attested.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use super::authority_fix::AuthorityFix;
use super::limits::ConnectionSlot;
use crate::attest::{AttestError, PeerIdentity};

/// What tonic hands each request of a connection: the pinned peer, or why it
/// could not be pinned (every request of that connection is then refused).
#[derive(Debug, Clone)]
pub struct PeerInfo(pub Result<Arc<PeerIdentity>, Arc<AttestError>>);

/// A Unix stream plus its peer; what the client sends passes through an
/// [`AuthorityFix`] so that gRPC-core clients are understood.
#[derive(Debug)]
pub struct AttestedConnection {
    stream: UnixStream,
    peer: PeerInfo,
    requests: AuthorityFix,
    /// Counts against the peer's uid cap until the connection closes.
    _slot: ConnectionSlot,
}

impl AttestedConnection {
    /// Pins the peer of a freshly accepted stream.
    pub fn new(stream: UnixStream, slot: ConnectionSlot) -> Self {
        let peer = PeerInfo(PeerIdentity::from_socket(&stream).map(Arc::new).map_err(Arc::new));
        Self {
            stream,
            peer,
            requests: AuthorityFix::default(),
            _slot: slot,
        }
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
        let this = self.get_mut();
        loop {
            if this.requests.has_output() {
                let n = this.requests.drain_into(buf.initialize_unfilled());
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: hand over any partial frame, then EOF.
                this.requests.finish();
                if !this.requests.has_output() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.requests.feed(read.filled()).map_err(io::Error::other)?;
        }
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

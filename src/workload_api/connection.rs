//! An accepted Workload API connection, with its peer pinned at accept time.
//! The pin is taken before the first byte is read, so a caller cannot exit
//! and have its pid reused between connecting and being attested.
//!
//! A connection that starts no request within the first-request timeout is
//! closed, so idle connections cannot hold their slots (and descriptors).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use super::authority_fix::{AuthorityFix, AuthorityFixError};
use super::limits::ConnectionSlot;
use crate::attest::{AttestError, ConnectCredentials, PeerIdentity};
use crate::audit::{Outcome, Record};
use crate::telemetry::metrics;

/// What tonic hands each request of a connection: the pinned peer, or why it
/// could not be pinned (every request of that connection is then refused).
#[derive(Debug, Clone)]
pub struct PeerInfo(pub Result<Arc<PeerIdentity>, Arc<AttestError>>);

impl PeerInfo {
    /// Pins the peer of `stream`, whose credentials were read at accept.
    pub(super) fn pin(stream: &UnixStream, credentials: ConnectCredentials) -> Self {
        Self(
            PeerIdentity::pin(stream, credentials)
                .map(Arc::new)
                .map_err(Arc::new),
        )
    }

    /// A denial record for a request refused before attestation said who
    /// the caller is: only its connect-time ids, when the peer was pinned.
    pub(super) fn denial_record(&self, rpc: &'static str, reason: impl Into<String>) -> Record {
        let record = Record::new(rpc, Outcome::Denied, reason, None);
        match &self.0 {
            Ok(peer) => record.with_peer_ids(peer.pid, peer.uid, peer.gid),
            Err(_) => record,
        }
    }
}

/// A Unix stream plus its peer; what the client sends passes through an
/// [`AuthorityFix`] so that gRPC-core clients are understood.
#[derive(Debug)]
pub struct AttestedConnection {
    stream: UnixStream,
    peer: PeerInfo,
    requests: AuthorityFix,
    /// Until the client starts a request: when the connection is closed.
    first_request_deadline: Option<Pin<Box<Sleep>>>,
    /// Counts against the peer's uid cap until the connection closes.
    slot: ConnectionSlot,
}

impl AttestedConnection {
    /// Pins the peer of a freshly accepted stream; the connection is closed
    /// unless a request starts within `first_request_timeout`.
    pub fn new(
        stream: UnixStream,
        credentials: ConnectCredentials,
        slot: ConnectionSlot,
        first_request_timeout: Duration,
    ) -> Self {
        let peer = PeerInfo::pin(&stream, credentials);
        Self {
            stream,
            peer,
            requests: AuthorityFix::default(),
            first_request_deadline: Some(Box::pin(tokio::time::sleep(first_request_timeout))),
            slot,
        }
    }

    /// Fails once the first-request deadline passes with no request begun;
    /// disarms it once one has. Registers the waker while it is armed.
    fn poll_first_request(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.requests.request_seen() {
            self.first_request_deadline = None;
        }
        let expired = self
            .first_request_deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if expired {
            metrics().connection_timed_out();
            tracing::info!(uid = self.slot.uid(), "connection closed: no request in time");
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no request in time"));
        }
        Ok(())
    }

    fn refuse(&self, error: AuthorityFixError) -> io::Error {
        if matches!(
            error,
            AuthorityFixError::HeaderListTooLarge | AuthorityFixError::HeaderBlockTooLarge
        ) {
            metrics().header_list_refused();
        }
        tracing::info!(uid = self.slot.uid(), %error, "connection closed");
        io::Error::other(error)
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
                // Only what is copied is initialized: zeroing all of the
                // server's spare buffer on every read showed in profiles.
                let wanted = buf.remaining().min(this.requests.output_len());
                let n = this.requests.drain_into(buf.initialize_unfilled_to(wanted));
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.requests.passes_through() {
                // Nothing left to rewrite on this connection: no copy.
                this.poll_first_request(cx)?;
                return Pin::new(&mut this.stream).poll_read(cx, buf);
            }
            // Frames left over from an earlier read come before reading
            // more: what waits for the server stays bounded.
            this.requests.pump().map_err(|e| this.refuse(e))?;
            if this.requests.has_output() {
                continue;
            }
            this.poll_first_request(cx)?;
            // Uninitialized: the socket writes what it reads; only that is
            // looked at.
            let mut chunk = [MaybeUninit::<u8>::uninit(); 8192];
            let mut read = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: hand over any partial frame, then EOF.
                this.requests.finish();
                if !this.requests.has_output() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.requests.feed(read.filled()).map_err(|e| this.refuse(e))?;
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

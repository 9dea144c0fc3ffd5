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
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::authority_fix::{AuthorityFix, AuthorityFixError};
use super::limits::ConnectionSlot;
use super::opening_flight::OpeningFlight;
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
/// [`AuthorityFix`] so that gRPC-core clients are understood, and what the
/// server sends first waits for its first answer ([`OpeningFlight`]).
#[derive(Debug)]
pub struct AttestedConnection {
    stream: UnixStream,
    peer: PeerInfo,
    requests: AuthorityFix,
    opening: OpeningFlight,
    /// Until the client starts a request: when the connection is closed.
    first_request_deadline: Option<FirstRequestDeadline>,
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
            opening: OpeningFlight::default(),
            first_request_deadline: Some(FirstRequestDeadline::after(first_request_timeout)),
            slot,
        }
    }

    /// Fails once the first-request deadline has passed with no request
    /// begun; disarms it once one has.
    fn check_first_request(&mut self) -> io::Result<()> {
        if self.requests.request_seen() {
            self.first_request_deadline = None;
        }
        match &self.first_request_deadline {
            Some(deadline) if deadline.passed() => Err(self.timed_out()),
            _ => Ok(()),
        }
    }

    /// Before a read waits: has the task woken when the deadline passes,
    /// and fails if it already has.
    fn wait_first_request(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let passed = self
            .first_request_deadline
            .as_mut()
            .is_some_and(|deadline| deadline.poll_passed(cx));
        match passed {
            true => Err(self.timed_out()),
            false => Ok(()),
        }
    }

    fn timed_out(&self) -> io::Error {
        metrics().connection_timed_out();
        tracing::info!(uid = self.slot.uid(), "connection closed: no request in time");
        io::Error::new(io::ErrorKind::TimedOut, "no request in time")
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

/// When a connection that has started no request is closed. Its timer is
/// made only when a read is about to wait: a client that sends its first
/// request with its preface (every real client does) never registers one,
/// which spares each new connection a timer and the runtime's wake-up that
/// registering it costs.
#[derive(Debug)]
struct FirstRequestDeadline {
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl FirstRequestDeadline {
    fn after(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            timer: None,
        }
    }

    fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Whether the deadline has passed; if not, the task is woken when it
    /// does.
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        timer.as_mut().poll(cx).is_ready()
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
            this.check_first_request()?;
            if this.requests.passes_through() {
                // Nothing left to rewrite on this connection: no copy.
                let before = buf.filled().len();
                let read = Pin::new(&mut this.stream).poll_read(cx, buf);
                match read {
                    Poll::Pending => this.wait_first_request(cx)?,
                    Poll::Ready(Ok(())) => this.opening.client_sent(&buf.filled()[before..]),
                    Poll::Ready(Err(_)) => {}
                }
                return read;
            }
            // Frames left over from an earlier read come before reading
            // more: what waits for the server stays bounded.
            this.requests.pump().map_err(|e| this.refuse(e))?;
            if this.requests.has_output() {
                continue;
            }
            // Uninitialized: the socket writes what it reads; only that is
            // looked at.
            let mut chunk = [MaybeUninit::<u8>::uninit(); 8192];
            let mut read = ReadBuf::uninit(&mut chunk);
            if Pin::new(&mut this.stream).poll_read(cx, &mut read)?.is_pending() {
                this.wait_first_request(cx)?;
                return Poll::Pending;
            }
            if read.filled().is_empty() {
                // End of stream: hand over any partial frame, then EOF.
                this.requests.finish();
                if !this.requests.has_output() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.opening.client_sent(read.filled());
            this.requests.feed(read.filled()).map_err(|e| this.refuse(e))?;
        }
    }
}

impl AsyncWrite for AttestedConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.opening.poll_flush(&mut this.stream, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.opening.poll_shutdown(&mut this.stream, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.opening.poll_write_vectored(&mut this.stream, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::workload_api::authority_fix::tests::first_request_wire;
    use crate::workload_api::limits::{ConnectionBudget, ConnectionLimits};

    /// A connection as the listener admits it, and its client's end.
    /// Accepted from a listener, as attestd's are: tokio takes a freshly
    /// accepted stream as readable, so its first read is tried at once.
    async fn accepted(first_request_timeout: Duration) -> (AttestedConnection, UnixStream) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let credentials = ConnectCredentials::of(&server);
        let limits = ConnectionLimits::new(ConnectionBudget {
            per_uid: 1,
            global: 1,
            reserve: 0,
        });
        let slot = limits.acquire(credentials.limits_uid()).unwrap();
        let connection = AttestedConnection::new(server, credentials, slot, first_request_timeout);
        (connection, client)
    }

    #[tokio::test]
    async fn a_request_sent_with_the_preface_sets_no_timer() {
        let (mut connection, mut client) = accepted(Duration::from_secs(60)).await;
        let wire = first_request_wire();
        client.write_all(&wire).await.unwrap();
        let mut read = vec![0; wire.len()];
        connection.read_exact(&mut read).await.unwrap();
        assert_eq!(read, wire);
        assert!(
            connection
                .first_request_deadline
                .as_ref()
                .is_none_or(|deadline| deadline.timer.is_none()),
            "no read waited yet, so no timer"
        );
        // Waiting for more: the request has begun, so the deadline is gone.
        let more = tokio::time::timeout(Duration::from_millis(20), connection.read(&mut read)).await;
        assert!(more.is_err(), "nothing more was sent");
        assert!(connection.first_request_deadline.is_none());
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_at_the_deadline() {
        let (mut connection, _client) = accepted(Duration::from_millis(100)).await;
        let error = connection.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    /// A client that keeps sending a byte at a time, never a request, is
    /// closed too: its reads do not wait long, but the deadline is checked
    /// at every read.
    #[tokio::test]
    async fn a_client_trickling_bytes_is_closed_at_the_deadline() {
        let (mut connection, mut client) = accepted(Duration::from_millis(200)).await;
        let trickle = tokio::spawn(async move {
            for byte in first_request_wire() {
                if client.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut read = [0; 64];
        let error = loop {
            match connection.read(&mut read).await {
                Ok(0) => panic!("end of stream before the deadline closed it"),
                Ok(_) => assert!(
                    !connection.requests.request_seen(),
                    "the whole request was let through"
                ),
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        trickle.abort();
    }
}

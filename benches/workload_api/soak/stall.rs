//! Clients that stop reading: a connection whose socket the client stops
//! reading from altogether once its streams have their first message. The
//! server's messages then fill the socket buffers, its writes to that
//! connection stop, and its HTTP/2 send windows run out: what a stuck or
//! swapped-out workload does to it.

use std::io;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::Endpoint;

use attestd::client::{Client, SecurityHeader};
use attestd::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;

use crate::streams::{self, Opened};

/// A Unix stream that stops reading for good once `stalled` is set.
struct Stallable {
    io: UnixStream,
    stalled: Arc<AtomicBool>,
}

impl AsyncRead for Stallable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stalled.load(Ordering::Relaxed) {
            // Never woken: the connection is dropped at the end instead.
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stallable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A stalled connection: held until dropped, never read again.
pub struct Stalled {
    _connection: Client,
    _streams: Vec<Opened>,
    /// Its socket, to see how much the server sent that lies unread.
    fd: Arc<AtomicI32>,
}

/// The most one peek looks at (more than any socket buffer holds).
const PEEK_AT_MOST: usize = 16 << 20;

impl Stalled {
    /// Bytes the server sent on this connection that lie unread in the
    /// socket (a peek: nothing is consumed).
    pub fn unread(&self) -> usize {
        use nix::sys::socket::{MsgFlags, recv};
        let mut buffer = vec![0; PEEK_AT_MOST];
        let fd = self.fd.load(Ordering::Relaxed);
        recv(fd, &mut buffer, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).unwrap_or(0)
    }
}

/// Opens a connection with `count` FetchX509SVID streams, reads each
/// stream's first message, then stops reading the socket.
pub async fn open(socket: &Path, count: usize) -> anyhow::Result<Stalled> {
    let stalled = Arc::new(AtomicBool::new(false));
    let target = socket.to_owned();
    let flag = Arc::clone(&stalled);
    let fd = Arc::new(AtomicI32::new(-1));
    let socket_fd = Arc::clone(&fd);
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let (target, stalled, socket_fd) = (target.clone(), Arc::clone(&flag), Arc::clone(&socket_fd));
            async move {
                let io = UnixStream::connect(target).await?;
                socket_fd.store(io.as_raw_fd(), Ordering::Relaxed);
                Ok::<_, io::Error>(TokioIo::new(Stallable { io, stalled }))
            }
        }))
        .await?;
    let connection = SpiffeWorkloadApiClient::with_interceptor(channel, SecurityHeader);
    let (connection, opened) = streams::open_on(connection, count).await?;
    stalled.store(true, Ordering::Relaxed);
    Ok(Stalled {
        _connection: connection,
        _streams: opened,
        fd,
    })
}

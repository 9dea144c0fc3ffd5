//! The Workload API socket: created world-connectable (any local process may
//! ask who it is; the answer depends on who it is), replacing a stale socket
//! but never a live attestd's or a file that is not a socket.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;
use tokio::net::UnixListener;

use std::sync::Arc;

use super::AttestedConnection;
use super::limits::ConnectionLimits;
use crate::atomic_file;
use crate::attest::ConnectCredentials;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// Creating the directory, binding or setting permissions failed.
    #[error("socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another process is serving on the socket.
    #[error("socket {0}: another process is already listening (is attestd running?)")]
    InUse(PathBuf),
    /// The path exists and is not a socket: refuse to delete it.
    #[error("socket {0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The path is a directory: `socket_path` names the socket itself.
    #[error(
        "socket {0}: is a directory; socket_path names the socket file itself, e.g. {api}",
        api = .0.join("api.sock").display()
    )]
    IsADirectory(PathBuf),
}

/// The bound socket; removes its file when dropped.
#[derive(Debug)]
pub struct SocketListener {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl SocketListener {
    /// Binds `path`: parent directory created 0755 if missing, a stale socket
    /// replaced, the socket made 0777.
    pub fn bind(path: &Path) -> Result<Self, ListenerError> {
        let io_error = |source| ListenerError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            atomic_file::create_dir(dir, 0o755).map_err(io_error)?;
        }
        remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(io_error)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(io_error)?;
        Ok(Self {
            path: path.to_owned(),
            listener: Some(listener),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bound listener, for a server that accepts by itself (the
    /// AuthZEN front); the socket file is still removed when `self` drops.
    pub(super) fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    /// Accepted connections, each with its peer pinned. A connection the
    /// limits refuse is closed at once. Accept errors (say, out of file
    /// descriptors) are logged and retried after a pause rather than
    /// spinning or stopping the server.
    pub fn incoming(
        &mut self,
        limits: Arc<ConnectionLimits>,
        first_request_timeout: Duration,
    ) -> impl Stream<Item = Result<AttestedConnection, io::Error>> + use<> {
        let listener = self.listener.take();
        futures::stream::unfold(listener, move |listener| {
            let limits = Arc::clone(&limits);
            async move {
                let accepted = listener.as_ref()?;
                loop {
                    match accepted.accept().await {
                        Ok((stream, _)) => {
                            if let Some(connection) = admit_connection(stream, &limits, first_request_timeout)
                            {
                                return Some((Ok(connection), listener));
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "accept failed; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        })
    }
}

/// Pins the peer of an accepted stream if the limits admit it; `None` (the
/// stream closed) when they do not.
fn admit_connection(
    stream: tokio::net::UnixStream,
    limits: &Arc<ConnectionLimits>,
    first_request_timeout: Duration,
) -> Option<AttestedConnection> {
    let credentials = ConnectCredentials::of(&stream);
    let uid = credentials.limits_uid();
    match limits.acquire(uid) {
        Ok(slot) => Some(AttestedConnection::new(
            stream,
            credentials,
            slot,
            first_request_timeout,
        )),
        Err(refused) => {
            tracing::warn!(uid, "connection refused: {}", refused.reason());
            None
        }
    }
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        // Best effort: a socket left behind is replaced at the next start.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn remove_stale(path: &Path) -> Result<(), ListenerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenerError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if meta.is_dir() {
        return Err(ListenerError::IsADirectory(path.to_owned()));
    }
    if !meta.file_type().is_socket() {
        return Err(ListenerError::NotASocket(path.to_owned()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ListenerError::InUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| ListenerError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_stale_socket_refuses_live_one_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/api.sock");
        let first = SocketListener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        assert!(matches!(
            SocketListener::bind(&path),
            Err(ListenerError::InUse(_))
        ));
        // A stale socket: bound, then its listener gone without cleanup.
        std::mem::forget(first);
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).unwrap();
        drop(stale);
        SocketListener::bind(&dir.path().join("stale.sock")).unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        assert!(matches!(
            SocketListener::bind(&dir.path().join("file")),
            Err(ListenerError::NotASocket(_))
        ));
        let err = SocketListener::bind(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("is a directory; socket_path names the socket file itself, e.g.")
                && err.ends_with("/api.sock"),
            "{err}"
        );
    }
}

//! Daemon mode's long-running work, one task per output: follow the
//! X.509-SVID and JWT bundle streams, refresh each JWT-SVID at half its
//! lifetime. Each reconnects with backoff when attestd is unreachable or a
//! stream ends, and reports every file it wrote.
//!
//! A task returns only on an error retrying cannot fix: `InvalidArgument`
//! means the request itself is wrong (SPIFFE clients do not retry it).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tonic::{Code, Status, Streaming};

use super::HelperError;
use super::config::{FileOutput, JwtSvidOutput, X509Output};
use super::jwt::Token;
use super::outputs::Outputs;
use crate::client::{self, Client, ClientError};
use crate::proto::{JwtBundlesRequest, X509svidRequest};
use crate::wall_clock;

/// First retry delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A file set the helper has written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Written {
    /// The certificate, key and bundle.
    X509,
    /// The JWT bundle file.
    JwtBundle,
    /// The token file of `jwt_svids[i]`.
    JwtSvid(usize),
}

/// The outcome of one attempt to write an output's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Report {
    /// Written (or already current).
    Written(Written),
    /// Writing failed; the watcher tries again with the next update.
    Failed(Written),
}

/// What every watcher needs: where to write, where attestd is, whom to tell.
#[derive(Debug, Clone)]
pub(super) struct Watcher {
    pub(super) outputs: Arc<Outputs>,
    pub(super) socket: PathBuf,
    pub(super) written: UnboundedSender<Report>,
}

impl Watcher {
    /// Follows the X.509-SVID stream; publishes every update that changes the
    /// files (a re-sent SVID after a reconnect changes nothing, and signals
    /// nobody).
    pub(super) async fn x509(self, output: X509Output) -> HelperError {
        let Self {
            outputs,
            socket,
            written,
        } = self;
        let mut current = None;
        let open = |mut client: Client| async move {
            client
                .fetch_x509svid(X509svidRequest {})
                .await
                .map(tonic::Response::into_inner)
        };
        follow(&socket, "X.509-SVID", open, |response| {
            let docs = match outputs.render_x509(&output, &response) {
                Ok(docs) => docs,
                Err(error) => {
                    tracing::error!(%error, "cannot use the X.509-SVID update");
                    return;
                }
            };
            if current.as_ref() == Some(&docs) {
                return;
            }
            match outputs.publish_x509(&output, &docs) {
                Ok(()) => {
                    current = Some(docs);
                    let _ = written.send(Report::Written(Written::X509));
                }
                Err(error) => {
                    tracing::error!(%error, "cannot write the X.509-SVID files");
                    let _ = written.send(Report::Failed(Written::X509));
                }
            }
        })
        .await
    }

    /// Follows the JWT bundle stream, writing every update.
    pub(super) async fn jwt_bundle(self, output: FileOutput) -> HelperError {
        let Self {
            outputs,
            socket,
            written,
        } = self;
        let open = |mut client: Client| async move {
            client
                .fetch_jwt_bundles(JwtBundlesRequest {})
                .await
                .map(tonic::Response::into_inner)
        };
        follow(&socket, "JWT bundle", open, |response| {
            match outputs.write_jwt_bundle(&output, &response) {
                Ok(()) => {
                    let _ = written.send(Report::Written(Written::JwtBundle));
                }
                Err(error) => {
                    tracing::error!(%error, "cannot write the JWT bundle file");
                    let _ = written.send(Report::Failed(Written::JwtBundle));
                }
            }
        })
        .await
    }

    /// Keeps `jwt_svids[index]`'s token fresh: a new one at half the lifetime of
    /// the last.
    pub(super) async fn jwt_svid(self, index: usize, output: JwtSvidOutput) -> HelperError {
        let Self {
            outputs,
            socket,
            written,
        } = self;
        let mut backoff = Backoff::default();
        loop {
            match fetch_jwt_svid(&outputs, &output, &socket).await {
                Ok(token) => {
                    backoff.reset();
                    let _ = written.send(Report::Written(Written::JwtSvid(index)));
                    wall_clock::sleep_until(token.refresh_at).await;
                }
                Err(error) if is_fatal(&error) => return error,
                Err(error) => {
                    if matches!(error, HelperError::Write { .. }) {
                        let _ = written.send(Report::Failed(Written::JwtSvid(index)));
                    }
                    tracing::warn!(audience = ?output.audiences, %error, retry_in = ?backoff.delay, "cannot renew the JWT-SVID");
                    backoff.wait().await;
                }
            }
        }
    }
}

async fn fetch_jwt_svid(
    outputs: &Outputs,
    output: &JwtSvidOutput,
    socket: &Path,
) -> Result<Token, HelperError> {
    let mut client = client::connect(socket).await?;
    let response = client::fetch_jwt(&mut client, output.audiences.clone(), None).await?;
    outputs.write_jwt_svid(output, &response)
}

/// Opens a stream with `open` and hands each message to `on_message`,
/// reconnecting with backoff whenever the connection or the stream fails.
async fn follow<T, Open, Opening>(
    socket: &Path,
    what: &'static str,
    mut open: Open,
    mut on_message: impl FnMut(T),
) -> HelperError
where
    Open: FnMut(Client) -> Opening,
    Opening: Future<Output = Result<Streaming<T>, Status>>,
{
    let mut backoff = Backoff::default();
    loop {
        let ended = async {
            let mut stream = open(client::connect(socket).await?).await?;
            while let Some(message) = stream.message().await? {
                backoff.reset();
                on_message(message);
            }
            Ok::<(), ClientError>(())
        }
        .await;
        match ended {
            Err(error) => {
                let error = HelperError::from(error);
                if is_fatal(&error) {
                    return error;
                }
                tracing::warn!(stream = what, %error, retry_in = ?backoff.delay, "Workload API stream failed; reconnecting");
            }
            Ok(()) => {
                tracing::info!(stream = what, retry_in = ?backoff.delay, "Workload API stream ended; reconnecting")
            }
        }
        backoff.wait().await;
    }
}

fn is_fatal(error: &HelperError) -> bool {
    matches!(error, HelperError::Client(ClientError::Status(status)) if status.code() == Code::InvalidArgument)
}

/// Retry delays: 0.5 s doubling to 30 s, back to 0.5 s after a success.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { delay: MIN_BACKOFF }
    }
}

impl Backoff {
    fn reset(&mut self) {
        self.delay = MIN_BACKOFF;
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.advance()).await;
    }

    /// The delay to wait now; doubles the next one.
    fn advance(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (delay * 2).min(MAX_BACKOFF);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.advance()).collect();
        assert_eq!(delays[..3], [MIN_BACKOFF, MIN_BACKOFF * 2, MIN_BACKOFF * 4]);
        assert_eq!(backoff.delay, MAX_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.delay, MIN_BACKOFF);
    }

    #[test]
    fn only_invalid_argument_is_fatal() {
        let status = |code| HelperError::Client(ClientError::Status(Status::new(code, "x")));
        assert!(is_fatal(&status(Code::InvalidArgument)));
        assert!(!is_fatal(&status(Code::PermissionDenied)));
        assert!(!is_fatal(&status(Code::Unavailable)));
    }
}

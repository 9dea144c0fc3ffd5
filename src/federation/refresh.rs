//! Keeping one foreign trust domain's bundle current: its `bundle_file`
//! re-read whenever it changes, its bundle endpoint polled as the last
//! bundle's `spiffe_refresh_hint` says (bounded to [`MIN_REFRESH`] ..
//! [`MAX_REFRESH`]), a failed fetch retried with backoff while the last
//! good bundle stays in effect. Whichever source changed last wins
//! (SPIFFE Federation 4.2: an operator's local update is the latest until
//! the next refresh).
//!
//! Each fetched document is kept in `<data_dir>/federation/<trust
//! domain>.json`, so that a restart starts from it: an `https_spiffe`
//! endpoint is then authenticated with the bundle last fetched, not the
//! bootstrap file the partner may have rotated away from since.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::endpoint_client::{self, FetchError, ServerAuth};
use super::{Federation, FederationError, ForeignBundle, MAX_DOCUMENT_BYTES, absolute};
use crate::atomic_file;
use crate::authority::Authority;
use crate::config::{DEFAULT_REFRESH_HINT, EndpointProfile, FederationConfig};
use crate::file_changes::FileChanges;
use crate::spiffe_id::TrustDomain;

/// The shortest interval between fetches, whatever the hint says (so a
/// partner's hint of zero cannot make attestd poll in a loop).
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// The longest interval between fetches, whatever the hint says (so a
/// partner's revocation reaches attestd within it).
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// The first retry after a failed fetch; doubled on each failure up to the
/// refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// Where fetched bundles are kept: `<data_dir>/federation/`.
#[derive(Debug, Clone)]
pub(super) struct Store {
    dir: PathBuf,
}

impl Store {
    pub(super) fn open(data_dir: &Path) -> Result<Self, FederationError> {
        let dir = data_dir.join("federation");
        atomic_file::create_dir(data_dir, 0o700)
            .and_then(|()| atomic_file::create_dir(&dir, 0o700))
            .map_err(|source| FederationError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(Self { dir })
    }

    /// Trust domain names hold only `[a-z0-9._-]`: no separator.
    fn path(&self, trust_domain: &TrustDomain) -> PathBuf {
        self.dir.join(format!("{}.json", trust_domain.name()))
    }

    /// The bundle to start from: the newer (by modification time) of the
    /// `bundle_file`, which must be valid, and the copy last fetched.
    pub(super) fn initial(
        &self,
        federation: &FederationConfig,
    ) -> Result<Option<ForeignBundle>, FederationError> {
        let td = &federation.trust_domain;
        let from_file = match &federation.bundle_file {
            Some(path) => {
                let bundle = read_bundle(path).map_err(|reason| FederationError::BundleFile {
                    trust_domain: td.clone(),
                    path: path.clone(),
                    reason,
                })?;
                Some((modified(path), bundle))
            }
            None => None,
        };
        let stored = self.path(td);
        let fetched = match federation.endpoint.is_some() && stored.exists() {
            true => match read_bundle(&stored) {
                Ok(bundle) => Some((modified(&stored), bundle)),
                Err(reason) => {
                    tracing::warn!(trust_domain = %td, path = %stored.display(), reason, "ignoring the stored copy of a fetched bundle");
                    None
                }
            },
            false => None,
        };
        Ok(match (from_file, fetched) {
            (Some((file_time, file)), Some((fetched_time, fetched))) => {
                Some(if fetched_time > file_time { fetched } else { file })
            }
            (one, other) => one.or(other).map(|(_, bundle)| bundle),
        })
    }

    fn save(&self, trust_domain: &TrustDomain, document: &[u8]) {
        let path = self.path(trust_domain);
        if let Err(error) = atomic_file::write(&path, document, 0o644) {
            tracing::warn!(trust_domain = %trust_domain, path = %path.display(), %error, "cannot keep the fetched bundle");
        }
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Reads and parses a bundle document file of at most
/// [`MAX_DOCUMENT_BYTES`].
fn read_bundle(path: &Path) -> Result<ForeignBundle, String> {
    let bytes = read_bounded(path)?;
    ForeignBundle::parse(&bytes).map_err(|e| e.to_string())
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(format!("larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    Ok(bytes)
}

/// Keeps the bundle of `federation` current until the process ends.
pub(super) async fn keep_current(
    federation: FederationConfig,
    this: Arc<Federation>,
    authority: Arc<Authority>,
    store: Store,
) {
    let td = federation.trust_domain.clone();
    let mut file = federation.bundle_file.as_deref().map(WatchedFile::new);
    let mut changes = match &file {
        Some(file) => file.watch().unwrap_or_else(|error| {
            tracing::warn!(trust_domain = %td, %error, "cannot watch the bundle file; it is read at start only");
            FileChanges::none()
        }),
        None => FileChanges::none(),
    };
    let mut poll = federation.endpoint.as_ref().map(|_| Poll::new());
    loop {
        let next_fetch = poll.as_ref().map(|p| p.next);
        tokio::select! {
            Some(()) = changes.settled() => {
                if let Some(file) = &mut file {
                    file.reread(&this, &td).await;
                }
            }
            () = sleep_until(next_fetch), if next_fetch.is_some() => {
                if let (Some(poll), Some(endpoint)) = (&mut poll, &federation.endpoint) {
                    let auth = server_auth(&endpoint.profile, &this, &authority);
                    let outcome = fetch(endpoint, auth).await;
                    poll.after(outcome, &this, &td, &store);
                }
            }
            else => return,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// The roots an endpoint of `profile` is authenticated with now: for
/// `https_spiffe`, the latest X.509 authorities of its SPIFFE ID's trust
/// domain (this trust domain's latest, ours, or another federated one's).
fn server_auth(profile: &EndpointProfile, this: &Federation, authority: &Authority) -> ServerAuth {
    match profile {
        EndpointProfile::HttpsWeb { .. } => ServerAuth::Web,
        EndpointProfile::HttpsSpiffe { spiffe_id } => {
            let server_domain = spiffe_id.trust_domain();
            let roots = if &server_domain == authority.trust_domain() {
                authority.bundle().roots().to_vec()
            } else {
                this.current()
                    .get(&server_domain)
                    .map(|bundle| bundle.x509().roots().to_vec())
                    .unwrap_or_default()
            };
            ServerAuth::Spiffe(roots)
        }
    }
}

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the endpoint served no valid bundle: {0}")]
    Bundle(#[from] super::BundleError),
}

async fn fetch(
    endpoint: &crate::config::EndpointConfig,
    auth: ServerAuth,
) -> Result<(ForeignBundle, bytes::Bytes), PollError> {
    let body = endpoint_client::fetch(endpoint, auth).await?;
    let bundle = ForeignBundle::parse(&body)?;
    Ok((bundle, body))
}

/// When the endpoint is fetched next.
struct Poll {
    next: Instant,
    /// The wait after the next failure.
    retry: Duration,
    /// The interval between good fetches (from the last bundle's hint).
    interval: Duration,
    /// The document last kept in the store.
    saved: Option<bytes::Bytes>,
}

impl Poll {
    fn new() -> Self {
        Self {
            next: Instant::now(),
            retry: FIRST_RETRY,
            interval: DEFAULT_REFRESH_HINT,
            saved: None,
        }
    }

    fn after(
        &mut self,
        outcome: Result<(ForeignBundle, bytes::Bytes), PollError>,
        this: &Federation,
        td: &TrustDomain,
        store: &Store,
    ) {
        match outcome {
            Ok((bundle, document)) => {
                self.interval = bundle
                    .refresh_hint()
                    .unwrap_or(DEFAULT_REFRESH_HINT)
                    .clamp(MIN_REFRESH, MAX_REFRESH);
                tracing::debug!(trust_domain = %td, next_in_s = self.interval.as_secs(), "fetched federated bundle");
                this.update(td, bundle, "bundle endpoint");
                if self.saved.as_ref() != Some(&document) {
                    store.save(td, &document);
                    self.saved = Some(document);
                }
                self.retry = FIRST_RETRY;
                self.next = Instant::now() + self.interval;
            }
            Err(error) => {
                let wait = self.retry.min(self.interval);
                tracing::warn!(
                    trust_domain = %td,
                    %error,
                    retry_in_s = wait.as_secs(),
                    "federated bundle refresh failed; keeping the last good bundle"
                );
                self.next = Instant::now() + wait;
                self.retry = (self.retry * 2).min(self.interval);
            }
        }
    }
}

/// A `bundle_file` and what was last read from it.
struct WatchedFile {
    path: PathBuf,
    last: Option<Vec<u8>>,
}

impl WatchedFile {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            // Start-up put this content in effect, or the newer copy last
            // fetched: an event that leaves it as it was changes nothing.
            last: read_bounded(path).ok(),
        }
    }

    /// Watches the file's directory (editors and config management
    /// replace files by renaming; Kubernetes swaps a symlink beside it):
    /// any change in it re-reads the file, which is compared with what was
    /// last read.
    fn watch(&self) -> notify::Result<FileChanges> {
        let file = absolute(&self.path);
        let dir = file.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
        let watched = dir.clone();
        FileChanges::watch(&[&dir], move |path| path.parent() == Some(watched.as_path()))
    }

    /// Reads the file again; a new content is put in effect if valid, else
    /// the bundle in effect stays (and the error is logged).
    async fn reread(&mut self, this: &Federation, td: &TrustDomain) {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || read_bounded(&path)).await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(reason)) => {
                tracing::error!(trust_domain = %td, path = %self.path.display(), reason, "cannot read the bundle file; keeping the bundle in effect");
                return;
            }
            Err(_) => return,
        };
        if self.last.as_deref() == Some(bytes.as_slice()) {
            return;
        }
        match ForeignBundle::parse(&bytes) {
            Ok(bundle) => {
                this.update(td, bundle, "bundle_file");
                self.last = Some(bytes);
            }
            Err(error) => {
                tracing::error!(trust_domain = %td, path = %self.path.display(), %error, "invalid bundle file; keeping the bundle in effect");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(hint: Option<u64>) -> (ForeignBundle, bytes::Bytes) {
        let document = match hint {
            Some(hint) => format!(r#"{{"keys": [], "spiffe_refresh_hint": {hint}}}"#),
            None => r#"{"keys": []}"#.to_owned(),
        };
        (
            ForeignBundle::parse(document.as_bytes()).unwrap(),
            document.into(),
        )
    }

    #[tokio::test]
    async fn the_hint_is_bounded_and_failures_back_off_up_to_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let this = Federation::none();
        let td = TrustDomain::new("partner.example").unwrap();
        let mut poll = Poll::new();
        let failed = || Err(PollError::Fetch(FetchError::Timeout));

        for (hint, interval) in [
            (Some(0), MIN_REFRESH),
            (Some(10 * 86400), MAX_REFRESH),
            (None, DEFAULT_REFRESH_HINT),
            (Some(60), Duration::from_secs(60)),
        ] {
            poll.after(Ok(bundle(hint)), &this, &td, &store);
            assert_eq!(poll.interval, interval, "{hint:?}");
        }
        assert!(
            this.current().get(&td).is_some(),
            "the fetched bundle is in effect"
        );
        assert!(store.path(&td).exists(), "and kept");

        let mut waits = Vec::new();
        for _ in 0..6 {
            let before = Instant::now();
            poll.after(failed(), &this, &td, &store);
            waits.push((poll.next - before).as_secs());
        }
        assert_eq!(
            waits,
            [5, 10, 20, 40, 60, 60],
            "doubling, never past the refresh interval"
        );
        assert!(this.current().get(&td).is_some(), "the last good bundle stays");
        poll.after(Ok(bundle(Some(60))), &this, &td, &store);
        assert_eq!(poll.retry, FIRST_RETRY, "a good fetch resets the backoff");
    }
}

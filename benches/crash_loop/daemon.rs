//! The attestd under test: its configuration (short CA, JWT key and SVID
//! lifetimes, so rotations happen every few seconds), starting it, seeing it
//! serve, and killing it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub const TRUST_DOMAIN: &str = "crash.example";
/// The audience of every JWT-SVID the clients ask for.
pub const AUDIENCE: &str = "spiffe://crash.example/relying-party";

/// The lifetimes the daemon is configured with (`[ca] ttl`,
/// `[ca] jwt_key_ttl`, `[svid] x509_ttl`, `[svid] jwt_ttl`): a root or a
/// JWT key is published at half the previous one's life and signs a quarter
/// of its own life later, so with these the CA rotates every 12 s and the
/// JWT keys every 10 s.
pub const CA_TTL: Duration = Duration::from_secs(24);
pub const JWT_KEY_TTL: Duration = Duration::from_secs(20);
const X509_TTL: &str = "6s";
const JWT_TTL: &str = "5s";
/// The audit trail is rotated often, so crashes land in rotations too.
const AUDIT_MAX_BYTES: u64 = 512 * 1024;
const AUDIT_KEEP: u32 = 5000;

/// The longest a restart may take to serve an SVID.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where everything of one run lives.
pub struct Layout {
    pub home: PathBuf,
    /// `data_dir` (and so the audit trail) lives on the power-cut file
    /// system mounted on [`Layout::disk`].
    pub power_loss: bool,
}

impl Layout {
    /// The power-cut file system's mount point; `data_dir` is made in it
    /// by attestd.
    pub fn disk(&self) -> PathBuf {
        self.home.join("disk")
    }
    pub fn config(&self) -> PathBuf {
        self.home.join("attestd.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.home.join("run/api.sock")
    }
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
    pub fn data_dir(&self) -> PathBuf {
        match self.power_loss {
            true => self.disk().join("data"),
            false => self.home.join("data"),
        }
    }
    pub fn entries_dir(&self) -> PathBuf {
        self.home.join("entries.d")
    }
    pub fn audit(&self) -> PathBuf {
        self.data_dir().join("audit.jsonl")
    }
    pub fn log(&self) -> PathBuf {
        self.home.join("attestd.log")
    }

    /// Writes the config and an empty entries directory.
    pub fn write_config(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.entries_dir())?;
        std::fs::create_dir_all(self.disk())?;
        let uid = nix::unistd::geteuid().as_raw();
        let config = format!(
            r#"trust_domain = "{TRUST_DOMAIN}"
socket_path = "{socket}"
data_dir = "{data}"
entries_dir = "{entries}"

[svid]
x509_ttl = "{X509_TTL}"
jwt_ttl = "{JWT_TTL}"

[ca]
ttl = "{ca_ttl}s"
jwt_key_ttl = "{jwt_key_ttl}s"

[audit]
max_bytes = {AUDIT_MAX_BYTES}
keep = {AUDIT_KEEP}

[[entry]]
spiffe_id = "spiffe://{TRUST_DOMAIN}/agent"
selectors = ["unix:uid:{uid}"]
owner = "crash-loop@example.org"
hint = "main"
"#,
            socket = self.socket().display(),
            data = self.data_dir().display(),
            entries = self.entries_dir().display(),
            ca_ttl = CA_TTL.as_secs(),
            jwt_key_ttl = JWT_KEY_TTL.as_secs(),
        );
        std::fs::write(self.config(), config)?;
        Ok(())
    }

    /// Every audit file, oldest first (`audit.jsonl.N` … `.1`, then the
    /// live one). A crash in the middle of a rotation may leave a gap in
    /// the numbers; the order is still the chain's.
    pub fn audit_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let live = self.audit();
        let name = live.file_name().unwrap().to_string_lossy().into_owned();
        let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(self.data_dir())? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = file
                .strip_prefix(&name)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|n| n.parse().ok())
            {
                rotated.push((n, entry.path()));
            }
        }
        rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, path)| path).collect();
        if live.exists() {
            files.push(live);
        }
        Ok(files)
    }
}

/// A running (or killed) attestd.
pub struct Daemon {
    child: Child,
    pub started: Instant,
}

impl Daemon {
    /// Starts the release attestd on `layout` (its log appended to).
    pub fn start(binary: &Path, layout: &Layout) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.log())?;
        let child = Command::new(binary)
            .args(["run", "-c"])
            .arg(layout.config())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting attestd")?;
        Ok(Self {
            child,
            started: Instant::now(),
        })
    }

    /// Waits until the daemon serves an X.509-SVID (a real fetch through
    /// the `spiffe` crate), or fails if it exits or takes too long.
    pub async fn wait_serving(&mut self, layout: &Layout) -> anyhow::Result<Duration> {
        let deadline = self.started + START_TIMEOUT;
        let mut last_error = String::from("never listened");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "attestd exited ({status}) while starting (log: {})",
                    layout.log().display()
                );
            }
            if std::os::unix::net::UnixStream::connect(layout.socket()).is_ok() {
                match fetch_once(layout).await {
                    Ok(()) => return Ok(self.started.elapsed()),
                    Err(error) => last_error = error.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!(
            "attestd did not serve within {START_TIMEOUT:?}: {last_error} (log: {})",
            layout.log().display()
        )
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // It may have exited on its own already: the reap below says so.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let status = self.child.wait()?;
        use std::os::unix::process::ExitStatusExt as _;
        anyhow::ensure!(
            status.signal() == Some(9),
            "attestd had exited on its own before the kill ({status})"
        );
        Ok(())
    }
}

async fn fetch_once(layout: &Layout) -> anyhow::Result<()> {
    let client = spiffe::WorkloadApiClient::connect_to(layout.endpoint()).await?;
    tokio::time::timeout(Duration::from_secs(5), client.fetch_x509_context()).await??;
    Ok(())
}

//! Starting and stopping the real daemon, and checks shared by the tests.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, UnixTime};

pub const TRUST_DOMAIN: &str = "example.org";

/// The `attestd` binary under test.
pub fn attestd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_attestd")
}

/// A running attestd on its own temporary directory; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts attestd with `body` appended to a config that sets the trust
    /// domain and puts socket and data under a fresh temporary directory.
    pub fn start(body: &str) -> Self {
        Self::start_with_env(body, &[])
    }

    /// Like [`Self::start`], with extra environment for the daemon (test
    /// hooks).
    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> Self {
        // Other uids must reach the socket through this directory.
        Self::launch(shared_tempdir(), body, env)
    }

    /// Starts attestd on an existing directory (to restart on the same state).
    pub fn start_in(dir: tempfile::TempDir, body: &str) -> Self {
        Self::launch(dir, body, &[])
    }

    /// Like [`Self::start`], for another trust domain than [`TRUST_DOMAIN`].
    pub fn start_for(trust_domain: &str, body: &str) -> Self {
        let dir = shared_tempdir();
        let config_path = write_config_for(dir.path(), trust_domain, body);
        Self::launch_command(
            dir,
            Command::new(attestd_bin()).args(["run", "-c"]).arg(&config_path),
            &[],
        )
    }

    fn launch(dir: tempfile::TempDir, body: &str, env: &[(&str, &str)]) -> Self {
        let config_path = write_config(dir.path(), body);
        Self::launch_command(
            dir,
            Command::new(attestd_bin()).args(["run", "-c"]).arg(&config_path),
            env,
        )
    }

    /// Starts `command` (attestd run, possibly behind a wrapper) on `dir`,
    /// whose config [`write_config`] wrote.
    pub fn launch_command(dir: tempfile::TempDir, command: &mut Command, env: &[(&str, &str)]) -> Self {
        let log = std::fs::File::create(dir.path().join("attestd.log")).unwrap();
        let child = command
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut daemon = Self {
            child: Some(child),
            dir,
        };
        daemon.wait_ready();
        daemon
    }

    /// The daemon's pid.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("attestd.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/api.sock")
    }

    /// The socket as a SPIFFE endpoint URI.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("data/audit.jsonl")
    }

    /// `attestd healthcheck` (grpc.health.v1) against this daemon.
    pub fn healthcheck(&self) -> Output {
        Command::new(attestd_bin())
            .args(["healthcheck", "--socket", &self.endpoint()])
            .output()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("attestd.log")).unwrap_or_default()
    }

    /// Waits until the log contains `text`. The daemon may write a line
    /// after the event a test observes (a summary after the error it
    /// sums up, a log after the swap it reports): wait, never assert at once.
    pub fn wait_for_log(&self, timeout: Duration, text: &str) {
        wait_for(timeout, &format!("{text:?} in the log"), || {
            self.log().contains(text).then_some(())
        });
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("attestd exited early ({status}):\n{}", self.log());
            }
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("attestd did not start listening:\n{}", self.log());
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        child.wait().unwrap()
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("daemon already stopped");
        let status = wait_for(timeout, "attestd to exit", || child.try_wait().unwrap());
        self.child = None;
        status
    }

    /// SIGKILLs the daemon and hands back its directory for a restart.
    pub fn crash(self) -> tempfile::TempDir {
        self.into_dir(nix::sys::signal::Signal::SIGKILL).1
    }

    /// Stops the daemon as systemd does (SIGTERM), which must succeed, and
    /// hands back its directory.
    pub fn stop(self) -> tempfile::TempDir {
        let (status, dir) = self.into_dir(nix::sys::signal::Signal::SIGTERM);
        assert!(status.success(), "attestd stopped with {status}");
        dir
    }

    fn into_dir(mut self, signal: nix::sys::signal::Signal) -> (std::process::ExitStatus, tempfile::TempDir) {
        let status = self.stop_with(signal);
        let dir = tempfile::tempdir().unwrap();
        (status, std::mem::replace(&mut self.dir, dir))
    }

    /// A `Vm...:` field of the daemon's `/proc/<pid>/status` (`"VmHWM:"`,
    /// say), in kB.
    pub fn vm_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// Every audit record so far.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.audit_path()).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad audit line {line:?}: {e}")))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh temporary directory that other uids may enter (mode 0755).
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Writes `<dir>/attestd.toml`: the trust domain, socket and data under
/// `dir`, then `body`.
pub fn write_config(dir: &std::path::Path, body: &str) -> PathBuf {
    write_config_for(dir, TRUST_DOMAIN, body)
}

/// Like [`write_config`], for `trust_domain`.
pub fn write_config_for(dir: &std::path::Path, trust_domain: &str, body: &str) -> PathBuf {
    let path = dir.join("attestd.toml");
    let config = format!(
        "trust_domain = \"{trust_domain}\"\nsocket_path = \"{}\"\ndata_dir = \"{}\"\n{body}",
        dir.join("run/api.sock").display(),
        dir.join("data").display(),
    );
    std::fs::write(&path, config).unwrap();
    path
}

/// Runs a command as `uid`/`gid` (no supplementary groups), capturing output.
pub fn run_as(uid: u32, gid: u32, command: &mut Command) -> Output {
    command.uid(uid).gid(gid).stdin(Stdio::null()).output().unwrap()
}

/// `attestd api fetch x509` against `daemon`, as `uid`.
pub fn cli_fetch_as(daemon: &Daemon, uid: u32) -> Output {
    client_fetch_as(daemon, std::path::Path::new(attestd_bin()), uid)
}

/// Like [`cli_fetch_as`], with the attestd CLI at `client` (a copy, or a
/// path a mount puts something else at).
pub fn client_fetch_as(daemon: &Daemon, client: &std::path::Path, uid: u32) -> Output {
    let mut command = Command::new(client);
    command
        .args(["api", "fetch", "x509", "--socket"])
        .arg(daemon.endpoint());
    run_as(uid, uid, &mut command)
}

/// Fails, showing the command's stderr, unless it succeeded.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The SPIFFE IDs printed by `attestd api fetch x509`.
pub fn printed_ids(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("SPIFFE ID:"))
        .map(|id| id.trim().to_owned())
        .collect()
}

/// RFC 5280 path validation of `chain` (leaf first) against `roots`.
pub fn verify_chain(chain: &[Vec<u8>], roots: &[Vec<u8>]) {
    let root_ders: Vec<CertificateDer<'_>> =
        roots.iter().map(|r| CertificateDer::from(r.as_slice())).collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let leaf = CertificateDer::from(chain[0].as_slice());
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let end_entity = webpki::EndEntityCert::try_from(&leaf).unwrap();
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("SVID chain verifies against the bundle");
}

/// Fails unless the PKCS#8 key's public half is the certificate's.
pub fn assert_key_matches(leaf_der: &[u8], key_pkcs8: &[u8]) {
    assert!(
        key_matches(leaf_der, key_pkcs8),
        "private key does not match the certificate"
    );
}

/// Whether the PKCS#8 key's public half is the certificate's.
pub fn key_matches(leaf_der: &[u8], key_pkcs8: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, leaf) = X509Certificate::from_der(leaf_der).unwrap();
    let key = rcgen::KeyPair::try_from(key_pkcs8).unwrap();
    leaf.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

/// Serial of a DER certificate, lowercase hex.
pub fn serial_of(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    hex::encode(cert.raw_serial())
}

/// Our trust domain's CA certificates (DER) from a client's X.509 context.
pub fn trust_bundle(context: &spiffe::X509Context) -> Vec<Vec<u8>> {
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bundle = context
        .bundle_set()
        .get(&td)
        .expect("bundle for our trust domain");
    bundle
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// `openssl verify -CAfile bundle cert`: the chain in `cert` (PEM, leaf
/// first) verifies against the CA certificates in `bundle`.
pub fn openssl_verify(bundle: &std::path::Path, cert: &std::path::Path) {
    let output = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(bundle)
        .arg(cert)
        .output()
        .expect("openssl on PATH");
    assert!(
        output.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The DER certificates of a PEM file, in order.
pub fn pem_certificates(pem_text: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| block.into_contents())
        .collect()
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a shell command line and checks it succeeded. Tests create
/// executables this way: a file this (multi-threaded) process held open for
/// writing could leak into a child another test forks at that moment, and
/// executing it would fail with ETXTBSY.
pub fn shell(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "`{script}` failed");
}

/// Whether an audit record lists `selector`.
pub fn has_selector(record: &serde_json::Value, selector: &str) -> bool {
    record["selectors"]
        .as_array()
        .is_some_and(|all| all.iter().any(|s| s == selector))
}

/// The cgroup v2 hierarchy: the root on unified hosts, `unified/` on hybrid
/// ones (where `/proc/<pid>/cgroup` shows it as the `0::` line).
pub fn unified_hierarchy() -> PathBuf {
    let root = std::path::Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        root.to_owned()
    } else {
        root.join("unified")
    }
}

/// A loopback address (`127.0.0.1:<port>`) whose port was free just now.
pub fn free_loopback_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The whole HTTP/1.1 response to a GET of `path` (head and body as sent).
pub fn http_response(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// GETs a path of an HTTP/1.1 listener (the health listener, Envoy's
/// admin and listeners); returns the status and the body, its chunks joined
/// when the answer is chunked.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let response = http_response(addr, path);
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return (status, body.to_owned());
    }
    let mut joined = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        joined.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    (status, joined)
}

/// The URI SAN of a DER certificate (its SPIFFE ID).
pub fn uri_san(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .unwrap()
}

/// `attestd audit trace --json ARGS` over the daemon's whole trail (rotated
/// files first): the trace, and whether any task matched (exit status 0).
pub fn audit_trace(daemon: &Daemon, args: &[&str]) -> (attestd::audit::trace::Trace, bool) {
    let current = daemon.audit_path();
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| PathBuf::from(format!("{}.{n}", current.display())))
        .take_while(|file| file.exists())
        .collect();
    files.reverse();
    files.push(current);
    let output = Command::new(attestd_bin())
        .args(["audit", "trace", "--json"])
        .args(args)
        .args(&files)
        .output()
        .unwrap();
    let trace = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "audit trace --json printed no trace ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (trace, output.status.success())
}

//! OIDC discovery for JWT-SVIDs against the real daemon: a relying party
//! built on go-oidc (coreos/go-oidc/v3, tests/interop/go/oidcrp) is
//! configured with `jwt_issuer` exactly, discovers it over TLS from
//! attestd's listener (certificate from a test CA made here), and
//! validates JWT-SVIDs fetched with the CLI, across a key rotation. Plain
//! HTTP mode (behind a proxy) serves the same documents; the listener's
//! HTTP rules (caching, methods, paths, bounds) hold; a renewed
//! certificate is picked up; bad configurations fail with clear messages.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::harness::{Daemon, assert_success, attestd_bin, free_loopback_port, write_config};

const AUDIENCE: &str = "https://tools.example.org";
const SUB: &str = "spiffe://example.org/oidc/agent";
const ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/oidc/agent"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;

/// A CA of the test's own, which issues the listener's certificates.
struct TestCa {
    key: KeyPair,
    params: CertificateParams,
    pem: String,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "attestd test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Self { key, params, pem }
    }

    /// Issues a server certificate for 127.0.0.1 and localhost and writes
    /// it and its key as `dir/cert.pem` and `dir/key.pem` (each replaced
    /// atomically, key first); returns the certificate's DER.
    fn issue(&self, dir: &Path) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "attestd oidc");
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        replace(&dir.join("key.pem"), &key.serialize_pem());
        replace(&dir.join("cert.pem"), &cert.pem());
        cert.der().to_vec()
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }

    /// A TLS client configuration trusting only this CA.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let der = pem::parse(&self.pem).unwrap().into_contents();
        roots.add(CertificateDer::from(der)).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

fn replace(path: &Path, text: &str) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, text).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

/// A response read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        serde_json::from_str(&self.body).unwrap()
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
fn exchange(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: attestd.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    if let Err(error) = stream.read_to_end(&mut raw) {
        // A peer that closes without TLS close_notify: what came is whole
        // (Connection: close) once the head has arrived.
        assert!(
            error.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty(),
            "{error}"
        );
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn tls_stream(
    addr: &str,
    client: &Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = ServerName::try_from("127.0.0.1".to_owned()).unwrap();
    let connection = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
    rustls::StreamOwned::new(connection, TcpStream::connect(addr).unwrap())
}

fn https(
    addr: &str,
    client: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    exchange(&mut tls_stream(addr, client), method, path, headers)
}

fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    exchange(&mut TcpStream::connect(addr).unwrap(), method, path, headers)
}

/// The certificate the listener presents now.
fn served_certificate(addr: &str, client: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut stream = tls_stream(addr, client);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}

/// `attestd bundle show --format FORMAT` for the daemon's config.
fn bundle_show(daemon: &Daemon, format: &str) -> String {
    let output = Command::new(attestd_bin())
        .args(["bundle", "show", "--format", format, "-c"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    assert_success(&output);
    String::from_utf8(output.stdout).unwrap()
}

/// A JWT-SVID for [`AUDIENCE`], fetched with `attestd api fetch jwt`.
fn fetch_token(daemon: &Daemon) -> String {
    let output = Command::new(attestd_bin())
        .args(["api", "fetch", "jwt", "--audience", AUDIENCE, "--socket"])
        .arg(daemon.endpoint())
        .output()
        .unwrap();
    assert_success(&output);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("Token:"))
        .expect("a token line")
        .trim()
        .to_owned()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// The go-oidc relying party (tests/interop/go/oidcrp), built once.
fn relying_party_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("oidcrp");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("./oidcrp")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/go"))
            .status()
            .expect("go toolchain on PATH (the test command downloads the modules)");
        assert!(status.success(), "building the go-oidc relying party failed");
        out
    })
}

/// A running relying party: tokens go in on stdin, verdicts come out as
/// JSON lines.
struct RelyingParty {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    discovered: Value,
}

impl RelyingParty {
    /// Starts it for `issuer`, trusting the CA in `ca_file`; panics with
    /// its stderr if discovery fails.
    fn start(issuer: &str, ca_file: &Path) -> Self {
        match Self::try_start(issuer, ca_file) {
            Ok(rp) => rp,
            Err(stderr) => panic!("go-oidc discovery failed: {stderr}"),
        }
    }

    fn try_start(issuer: &str, ca_file: &Path) -> Result<Self, String> {
        let mut child = Command::new(relying_party_binary())
            .args(["-issuer", issuer, "-audience", AUDIENCE, "-ca"])
            .arg(ca_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        if line.is_empty() {
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            let _ = child.wait();
            return Err(stderr);
        }
        let discovered = serde_json::from_str::<Value>(&line).unwrap()["discovered"].clone();
        Ok(Self {
            child,
            stdin,
            stdout,
            discovered,
        })
    }

    /// go-oidc's verdict on `token`.
    fn verify(&mut self, token: &str) -> Value {
        writeln!(self.stdin, "{token}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

impl Drop for RelyingParty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon with the OIDC listener on TLS, its certificate from `ca`.
fn tls_daemon(ca: &TestCa, addr: &str, extra: &str) -> (Daemon, Vec<u8>) {
    let dir = crate::harness::shared_tempdir();
    let tls = dir.path().join("tls");
    let cert = ca.issue(&tls);
    let body = format!(
        "jwt_issuer = \"https://{addr}\"\n{extra}\n[oidc]\nlisten = \"{addr}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{ENTRY}",
        tls.join("cert.pem").display(),
        tls.join("key.pem").display(),
    );
    (Daemon::start_in(dir, &body), cert)
}

#[test]
fn go_oidc_validates_jwt_svids_across_a_key_rotation() {
    relying_party_binary();
    let ca = TestCa::new();
    let addr = free_loopback_port();
    let issuer = format!("https://{addr}");
    // Keys live 20s: the second is published at 10s and signs from 15s.
    let (daemon, _) = tls_daemon(&ca, &addr, "[ca]\njwt_key_ttl = \"20s\"\n");
    let ca_file = daemon.dir.path().join("test-ca.pem");
    ca.write(&ca_file);

    // The relying party knows only the issuer URL and the CA.
    let mut rp = RelyingParty::start(&issuer, &ca_file);
    assert_eq!(rp.discovered["issuer"], issuer.as_str());
    assert_eq!(rp.discovered["jwks_uri"], format!("{issuer}/keys"));
    assert_eq!(
        rp.discovered["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(
        rp.discovered["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(
        rp.discovered["subject_types_supported"],
        serde_json::json!(["public"])
    );

    let first = fetch_token(&daemon);
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&first).unwrap();
    assert_eq!(claims["iss"], issuer.as_str(), "iss exactly as configured");
    let verdict = rp.verify(&first);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["subject"], SUB);
    assert_eq!(verdict["issuer"], issuer.as_str());
    assert_eq!(verdict["audience"], serde_json::json!([AUDIENCE]));

    // ValidateJWTSVID keeps accepting tokens that carry iss.
    let output = Command::new(attestd_bin())
        .args([
            "api",
            "validate",
            "jwt",
            "--audience",
            AUDIENCE,
            "--svid",
            &first,
            "--socket",
        ])
        .arg(daemon.endpoint())
        .output()
        .unwrap();
    assert_success(&output);
    assert!(String::from_utf8_lossy(&output.stdout).contains(&issuer));

    // A token for another audience is refused by go-oidc.
    let other = Command::new(attestd_bin())
        .args([
            "api",
            "fetch",
            "jwt",
            "--audience",
            "https://elsewhere.example",
            "--socket",
        ])
        .arg(daemon.endpoint())
        .output()
        .unwrap();
    let other = String::from_utf8_lossy(&other.stdout);
    let other = other
        .lines()
        .find_map(|l| l.strip_prefix("Token:"))
        .unwrap()
        .trim();
    let verdict = rp.verify(other);
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert!(
        verdict["error"].as_str().unwrap().contains("audience"),
        "{verdict}"
    );

    // The key rotates: wait for a token signed by the next key.
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let token = fetch_token(&daemon);
        if kid_of(&token) != kid_of(&first) {
            break token;
        }
        assert!(Instant::now() < deadline, "no JWT key rotation");
        std::thread::sleep(Duration::from_millis(500));
    };
    // go-oidc has not seen this kid: it fetches the JWKS again and finds it.
    let verdict = rp.verify(&second);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["subject"], SUB);
    let jwks = https(&addr, &ca.client(), "GET", "/keys", &[]).json();
    assert!(kids(&jwks).contains(&kid_of(&second)), "{jwks}");

    // The JWKS `bundle show` prints for static hosting is the one served
    // (bundle.json follows the same key changes, moments apart).
    let client = ca.client();
    crate::harness::wait_for(Duration::from_secs(10), "bundle show to match the JWKS", || {
        let served = https(&addr, &client, "GET", "/keys", &[]).body;
        (bundle_show(&daemon, "jwks") == served).then_some(())
    });
    assert_eq!(
        bundle_show(&daemon, "openid-configuration"),
        https(&addr, &client, "GET", "/.well-known/openid-configuration", &[]).body
    );
    drop(rp);

    // go-oidc holds the issuer to the exact string: the same listener under
    // another spelling of the host (the certificate is valid for both) is
    // refused at discovery.
    let localhost = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let refused = RelyingParty::try_start(&localhost, &ca_file)
        .err()
        .expect("issuer mismatch");
    assert!(refused.contains("did not match"), "{refused}");
}

#[test]
fn the_listener_caches_by_etag_allows_get_and_head_only_and_bounds_connections() {
    let ca = TestCa::new();
    let addr = free_loopback_port();
    let (daemon, _) = tls_daemon(&ca, &addr, "");
    let client = ca.client();

    let discovery = https(&addr, &client, "GET", "/.well-known/openid-configuration", &[]);
    assert_eq!(discovery.header("content-type"), Some("application/json"));
    assert_eq!(discovery.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(discovery.header("access-control-allow-origin"), Some("*"));
    let keys = https(&addr, &client, "GET", "/keys", &[]);
    // Default JWT keys live a day: caches keep the JWKS five minutes.
    assert_eq!(keys.header("cache-control"), Some("public, max-age=300"));
    let jwks = keys.json();
    let bundle: Value = serde_json::from_str(&bundle_show(&daemon, "spiffe")).unwrap();
    let bundle_kids: Vec<String> = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kids(&jwks), bundle_kids, "exactly the JWT bundle's keys");
    for key in jwks["keys"].as_array().unwrap() {
        assert_eq!(
            (key["use"].as_str(), key["alg"].as_str()),
            (Some("sig"), Some("ES256"))
        );
        assert_eq!(
            (key["kty"].as_str(), key["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        assert!(key.get("d").is_none(), "no private member");
    }

    // Conditional requests: 304 without a body while the document is the same.
    for (path, response) in [
        ("/.well-known/openid-configuration", &discovery),
        ("/keys", &keys),
    ] {
        let etag = response.header("etag").unwrap();
        let again = https(&addr, &client, "GET", path, &[("If-None-Match", etag)]);
        assert_eq!((again.status, again.body.as_str()), (304, ""), "{again:?}");
        assert_eq!(again.header("etag"), Some(etag));
        let changed = https(&addr, &client, "GET", path, &[("If-None-Match", "\"stale\"")]);
        assert_eq!(changed.status, 200);
    }

    // HEAD: the headers alone; other methods: 405; other paths: 404.
    let head = https(&addr, &client, "HEAD", "/keys", &[]);
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(
        head.header("content-length").map(str::to_owned),
        Some(keys.body.len().to_string())
    );
    let post = https(&addr, &client, "POST", "/keys", &[("Content-Length", "0")]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    for path in ["/", "/keys/", "/.well-known/jwks.json", "/../keys", "/metrics"] {
        assert_eq!(https(&addr, &client, "GET", path, &[]).status, 404, "{path}");
    }

    // A request head over the bounds is refused.
    let names: Vec<String> = (0..40).map(|i| format!("X-Filler-{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "x")).collect();
    assert_eq!(https(&addr, &client, "GET", "/keys", &many).status, 431);
}

#[tokio::test]
async fn plain_http_behind_a_proxy_serves_the_same_documents_under_the_issuer_path() {
    let addr = free_loopback_port();
    // The proxy serves https://attestd.example.org/hosts/h1 and forwards
    // to the plain listener; max_connections = 1 to see the bound.
    let issuer = "https://attestd.example.org/hosts/h1";
    let daemon = Daemon::start(&format!(
        "jwt_issuer = \"{issuer}\"\n[oidc]\nlisten = \"{addr}\"\nmax_connections = 1\n{ENTRY}"
    ));
    let discovery = http(&addr, "GET", "/hosts/h1/.well-known/openid-configuration", &[]).json();
    assert_eq!(discovery["issuer"], issuer);
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/keys"));
    let keys = http(&addr, "GET", "/hosts/h1/keys", &[]);
    assert_eq!(keys.body, bundle_show(&daemon, "jwks"));
    assert_eq!(
        http(&addr, "GET", "/hosts/h1/.well-known/openid-configuration", &[]).body,
        bundle_show(&daemon, "openid-configuration")
    );
    // Only under the issuer's path.
    assert_eq!(
        http(&addr, "GET", "/.well-known/openid-configuration", &[]).status,
        404
    );
    assert_eq!(http(&addr, "GET", "/keys", &[]).status, 404);
    // Tokens name the https issuer, not the address attestd listens on,
    // and SPIFFE clients still validate them offline.
    let token = fetch_token(&daemon);
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
    assert_eq!(claims["iss"], issuer);
    let client = spiffe::WorkloadApiClient::connect_to(daemon.endpoint())
        .await
        .unwrap();
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let offline = spiffe::JwtSvid::parse_and_validate(&token, &bundles, &[AUDIENCE]).unwrap();
    assert_eq!(offline.spiffe_id().to_string(), SUB);

    // A client that connects and sends nothing holds the only slot until
    // the header read timeout closes it; the next request is served after.
    // (Connections are accepted in order: the idle one first.)
    let mut idle = TcpStream::connect(&addr).unwrap();
    let served = http(&addr, "GET", "/hosts/h1/keys", &[]);
    assert_eq!(served.status, 200);
    // Closed already, so this read ends at once (the timeout only guards
    // against a connection left open, which would be the failure).
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let closed = match idle.read_to_end(&mut Vec::new()) {
        Ok(_) => true,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        closed,
        "the idle connection was closed before the next one was served"
    );
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let ca = TestCa::new();
    let addr = free_loopback_port();
    let (daemon, first) = tls_daemon(&ca, &addr, "");
    let client = ca.client();
    assert_eq!(served_certificate(&addr, &client), first);

    let tls = daemon.dir.path().join("tls");
    let renewed = ca.issue(&tls);
    crate::harness::wait_for(Duration::from_secs(30), "the renewed certificate", || {
        (served_certificate(&addr, &client) == renewed).then_some(())
    });
    assert_eq!(https(&addr, &client, "GET", "/keys", &[]).status, 200);

    // A broken renewal is logged and the previous certificate kept.
    replace(&tls.join("cert.pem"), "not a certificate\n");
    daemon.wait_for_log(Duration::from_secs(30), "not reloaded");
    assert_eq!(served_certificate(&addr, &client), renewed);
}

/// Runs `attestd run` on `body` (after the harness's first lines: trust
/// domain, socket, data) and returns its last stderr line (the error).
fn start_error(dir: &Path, body: &str) -> String {
    let config = write_config(dir, body);
    let output = Command::new(attestd_bin())
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!output.status.success(), "attestd accepted:\n{body}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr.lines().last().unwrap_or_default().to_owned()
}

#[test]
fn bad_issuer_and_listener_settings_fail_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("attestd.toml").display().to_string();
    let ca = TestCa::new();
    let tls = dir.path().join("tls");
    ca.issue(&tls);
    let other = dir.path().join("other");
    ca.issue(&other);
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    let listener = |files: &str| {
        format!("jwt_issuer = \"https://a.example\"\n[oidc]\nlisten = \"127.0.0.1:0\"\n{files}")
    };
    let cases = [
        (
            "jwt_issuer = \"http://attestd.example.org\"\n".to_owned(),
            format!("{file}:4: jwt_issuer: \"http://attestd.example.org\" is not an https URL"),
        ),
        (
            "jwt_issuer = \"https://attestd.example.org/?tenant=a\"\n".to_owned(),
            format!("{file}:4: jwt_issuer: \"https://attestd.example.org/?tenant=a\" must not have a query"),
        ),
        (
            "[oidc]\nlisten = \"127.0.0.1:8008\"\n".to_owned(),
            format!("{file}:4: oidc: needs jwt_issuer"),
        ),
        (
            listener(&format!("cert_file = \"{}\"\n", cert.display())),
            format!("{file}:7: oidc: cert_file and key_file go together"),
        ),
        (
            listener(&format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                dir.path().join("missing.pem").display(),
                key.display()
            )),
            format!("[oidc] cert_file {}: ", dir.path().join("missing.pem").display()),
        ),
        (
            listener(&format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                key.display(),
                key.display()
            )),
            format!("[oidc] cert_file {}: holds no CERTIFICATE", key.display()),
        ),
        (
            listener(&format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                cert.display(),
                other.join("key.pem").display()
            )),
            format!(
                "[oidc] key_file {}: is not the key of cert_file's certificate",
                other.join("key.pem").display()
            ),
        ),
    ];
    for (body, expected) in cases {
        let error = start_error(dir.path(), &body);
        assert!(
            error.contains(&expected),
            "{body}\nexpected: {expected}\ngot: {error}"
        );
    }
}

//! The wall clock stepping forward and back under a running daemon (a
//! fault of issue 14). The host's clock cannot be stepped under a running
//! test suite, so attestd's is: the `test-hooks` build adds the seconds in
//! `ATTESTD_TEST_WALL_CLOCK_FILE` to every wall-clock reading, and a change
//! of the file is announced to the daemon as the kernel announces a real
//! step (a cancelled `TFD_TIMER_CANCEL_ON_SET` timer). Each time: an open
//! stream receives an SVID valid at the daemon's new time, whose chain
//! go-spiffe verifies at that time (Go checks every certificate's validity,
//! the root's too), and tokens expire by the daemon's clock.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attestd::proto::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest, X509svidResponse};
use futures::StreamExt;
use tonic::Streaming;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::go_interop::go_as;
use crate::harness::Daemon;

const ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/clock"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;
const AUDIENCE: &str = "svc";
const DAY: i64 = 86_400;
/// Long enough for a step noticed only by the 30 s re-reading of the clock.
const PATIENCE: Duration = Duration::from_secs(60);

/// The daemon's clock: the real one plus an offset the test writes.
struct Clock {
    file: PathBuf,
    offset: i64,
    _dir: tempfile::TempDir,
}

impl Clock {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offset");
        std::fs::write(&file, "0").unwrap();
        Self {
            file,
            offset: 0,
            _dir: dir,
        }
    }

    /// Steps the daemon's clock to `offset` seconds from the real one.
    fn step_to(&mut self, offset: i64) {
        let next = self.file.with_extension("next");
        std::fs::write(&next, offset.to_string()).unwrap();
        std::fs::rename(&next, &self.file).unwrap();
        self.offset = offset;
    }

    /// The daemon's time now, in Unix seconds.
    fn now(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + self.offset
    }
}

/// (serial, not_before, not_after) of the first certificate in `der`.
fn leaf(der: &[u8]) -> (String, i64, i64) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let validity = cert.validity();
    (
        cert.raw_serial_as_string(),
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    )
}

/// Reads pushes until one carries an SVID other than `previous` valid at
/// the daemon's time; returns its leaf.
async fn await_valid_svid(
    stream: &mut Streaming<X509svidResponse>,
    previous: &str,
    clock: &Clock,
    daemon: &Daemon,
) -> (String, i64, i64) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let response = stream.next().await.expect("stream open").expect("a push");
            let svid = leaf(&response.svids[0].x509_svid);
            if svid.0 != previous && svid.1 <= clock.now() && clock.now() < svid.2 {
                return svid;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no SVID valid at the daemon's time {}: {}",
            clock.now(),
            daemon.log()
        )
    })
}

/// go-spiffe fetches and verifies the chain at the daemon's time.
fn go_verifies_at(daemon: &Daemon, clock: &Clock, serial: &str) {
    let at = clock.now().to_string();
    let (ok, svids, stderr) = go_as(daemon, 0, &["-at", &at]);
    assert!(ok, "go-spiffe verifies at the daemon's time {at}: {stderr}");
    let go_serial = svids[0]["serial"]
        .as_str()
        .unwrap()
        .trim_start_matches('0')
        .to_owned();
    assert_eq!(go_serial, serial.replace(':', "").trim_start_matches('0'));
}

async fn fetch_token(daemon: &Daemon) -> String {
    let mut api = attestd::client::connect(&daemon.socket()).await.unwrap();
    let request = JwtsvidRequest {
        audience: vec![AUDIENCE.into()],
        spiffe_id: String::new(),
    };
    let response = api.fetch_jwtsvid(request).await.unwrap().into_inner();
    response.svids[0].svid.clone()
}

/// ValidateJWTSVID through attestd: Ok, or the refusal's message.
async fn validate(daemon: &Daemon, token: &str) -> Result<(), String> {
    let mut api = attestd::client::connect(&daemon.socket()).await.unwrap();
    let request = ValidateJwtsvidRequest {
        audience: AUDIENCE.into(),
        svid: token.into(),
    };
    api.validate_jwtsvid(request)
        .await
        .map(drop)
        .map_err(|status| status.message().to_owned())
}

/// The token's exp, checked to be the entry's jwt_ttl (5 min) from the
/// daemon's time.
fn assert_expires_by_the_daemons_clock(token: &str, clock: &Clock) {
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(token).unwrap();
    let left = claims["exp"].as_i64().unwrap() - clock.now();
    assert!((290..=300).contains(&left), "exp {left} s from the daemon's time");
}

#[tokio::test]
async fn rotation_and_token_expiry_follow_the_wall_clock_stepping_forward_and_back() {
    let mut clock = Clock::new();
    let file = clock.file.display().to_string();
    let daemon = Daemon::start_with_env(ENTRY, &[("ATTESTD_TEST_WALL_CLOCK_FILE", &file)]);
    let mut api = attestd::client::connect(&daemon.socket()).await.unwrap();
    let mut stream = api.fetch_x509svid(X509svidRequest {}).await.unwrap().into_inner();
    let first = await_valid_svid(&mut stream, "", &clock, &daemon).await;
    let token = fetch_token(&daemon).await;
    assert_expires_by_the_daemons_clock(&token, &clock);

    // Forward 50 minutes: past the SVID's half-life (1 h), before its
    // expiry; past the token's 5 minutes.
    clock.step_to(3000);
    let second = await_valid_svid(&mut stream, &first.0, &clock, &daemon).await;
    go_verifies_at(&daemon, &clock, &second.0);
    assert_eq!(
        validate(&daemon, &token).await,
        Err("invalid JWT-SVID: token has expired".into())
    );
    let token = fetch_token(&daemon).await;
    assert_expires_by_the_daemons_clock(&token, &clock);
    assert_eq!(validate(&daemon, &token).await, Ok(()));

    // Forward 8 days: past the root's 7 days and the JWT key's 1 day. A
    // fresh root signs at once, the expired one leaves the bundle.
    clock.step_to(8 * DAY);
    let third = await_valid_svid(&mut stream, &second.0, &clock, &daemon).await;
    go_verifies_at(&daemon, &clock, &third.0);
    let refused = validate(&daemon, &token).await.expect_err("its key has expired");
    assert!(refused.contains("is not in the trust bundle"), "{refused}");
    let token = fetch_token(&daemon).await;
    assert_expires_by_the_daemons_clock(&token, &clock);
    assert_eq!(validate(&daemon, &token).await, Ok(()));

    // Back 9 days, to a day before the daemon started: everything made
    // since is from the future, valid only then. The root and the JWT key
    // made at +8 days are replaced; SVIDs re-issued.
    clock.step_to(-DAY);
    let fourth = await_valid_svid(&mut stream, &third.0, &clock, &daemon).await;
    go_verifies_at(&daemon, &clock, &fourth.0);
    // Minting catches up the JWT keys if their rotation task has not yet.
    let fresh = fetch_token(&daemon).await;
    assert_expires_by_the_daemons_clock(&fresh, &clock);
    assert_eq!(validate(&daemon, &fresh).await, Ok(()));
    let refused = validate(&daemon, &token)
        .await
        .expect_err("its key is from the future");
    assert!(refused.contains("is not in the trust bundle"), "{refused}");
    assert!(daemon.log().contains("test: wall clock stepped"));
}

//! The owner lifecycle: an entry past its `owner_expires` grants nothing
//! (refused with that reason, audited), an open stream loses the identity
//! the moment its owner's term ends, and `attestd entry list --expiring`
//! and `entry check` show what is due.

use std::process::Command;

use spiffe::WorkloadApiClient;

use crate::harness::{Daemon, attestd_bin, audit_trace, cli_fetch_as, run_as, write_config};

/// Today (UTC) moved by `days`.
fn utc_day(days: i64) -> time::Date {
    time::OffsetDateTime::now_utc().date() + time::Duration::days(days)
}

#[tokio::test]
async fn an_entry_past_its_owner_expires_gets_nothing_and_the_trail_says_why() {
    let daemon = Daemon::start(
        r#"
[[entry]]
spiffe_id = "spiffe://example.org/lapsed"
selectors = ["unix:uid:1000"]
owner = "former-team@example.org"
owner_expires = 2020-01-31

[[entry]]
spiffe_id = "spiffe://example.org/root/old"
selectors = ["unix:uid:0"]
owner = "former-team@example.org"
owner_expires = 2020-01-31

[[entry]]
spiffe_id = "spiffe://example.org/root/current"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#,
    );
    let reason = "no identity issued: owner of spiffe://example.org/lapsed expired on 2020-01-31";

    let x509 = cli_fetch_as(&daemon, 1000);
    assert!(!x509.status.success());
    let stderr = String::from_utf8_lossy(&x509.stderr);
    assert!(stderr.contains(reason), "{stderr}");
    let jwt = run_as(
        1000,
        1000,
        Command::new(attestd_bin())
            .args(["api", "fetch", "jwt", "--audience", "tools", "--socket"])
            .arg(daemon.endpoint()),
    );
    assert!(!jwt.status.success());
    let stderr = String::from_utf8_lossy(&jwt.stderr);
    assert!(stderr.contains(reason), "{stderr}");

    // Root holds one expired entry and one in effect: only the latter.
    let client = WorkloadApiClient::connect_to(daemon.endpoint()).await.unwrap();
    let context = client.fetch_x509_context().await.unwrap();
    let ids: Vec<String> = context
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(ids, ["spiffe://example.org/root/current"]);

    let records = daemon.audit_records();
    let refusals: Vec<_> = records
        .iter()
        .filter(|r| r["outcome"] == "denied" && r["uid"] == 1000)
        .collect();
    assert_eq!(refusals.len(), 2, "{records:#?}");
    for refusal in &refusals {
        assert_eq!(
            refusal["reason"],
            "owner of spiffe://example.org/lapsed expired on 2020-01-31"
        );
        assert_eq!(refusal["owner"], "former-team@example.org");
        assert_eq!(refusal["spiffe_id"], "spiffe://example.org/lapsed");
        assert_eq!(
            refusal["entry_location"],
            format!("{}:5", daemon.config_path().display())
        );
    }
    assert_eq!(refusals[0]["rpc"], "FetchX509SVID");
    assert_eq!(refusals[1]["rpc"], "FetchJWTSVID");

    // The trace reads the daemon's own trail: no task there, and no line
    // it cannot read.
    let (trace, found) = audit_trace(&daemon, &["--spiffe-id", "spiffe://example.org/lapsed"]);
    assert!(!found && trace.trees.is_empty());
    assert_eq!(trace.records, records.len() as u64);
    assert!(trace.problems.is_empty(), "{:?}", trace.problems);
}

#[test]
fn entry_list_expiring_and_check_show_what_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let soon = utc_day(10);
    let later = utc_day(90);
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[[entry]]
spiffe_id = "spiffe://example.org/lapsed"
selectors = ["unix:uid:1000"]
owner = "former-team@example.org"
owner_expires = 2020-01-31

[[entry]]
spiffe_id = "spiffe://example.org/soon"
selectors = ["unix:uid:1001"]
owner = "team@example.org"
owner_expires = {soon}

[[entry]]
spiffe_id = "spiffe://example.org/later"
selectors = ["unix:uid:1002"]
owner = "team@example.org"
owner_expires = {later}

[[entry]]
spiffe_id = "spiffe://example.org/forever"
selectors = ["unix:uid:1003"]
owner = "platform@example.org"
"#
        ),
    );
    let run = |args: &[&str]| {
        Command::new(attestd_bin())
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap()
    };
    let due = run(&["entry", "list", "--expiring", "30d"]);
    let text = String::from_utf8_lossy(&due.stdout);
    assert_eq!(due.status.code(), Some(1), "something is due: {text}");
    let file = config.display();
    assert_eq!(
        text,
        format!(
            "2 of 4 entries expire within 30days (1 expired already):\n\
             EXPIRED  2020-01-31  spiffe://example.org/lapsed  former-team@example.org  {file}:5\n\
             expires  {soon}  spiffe://example.org/soon    team@example.org         {file}:11\n"
        )
    );
    assert!(String::from_utf8_lossy(&due.stderr).contains("2 entries need their owner renewed or retired"));

    let season = run(&["entry", "list", "--expiring", "100days"]);
    assert_eq!(
        String::from_utf8_lossy(&season.stdout).lines().count(),
        4,
        "later is due within 100 days too"
    );
    assert!(
        !run(&["entry", "list", "--expiring", "soon"]).status.success(),
        "not a duration"
    );

    let check = run(&["entry", "check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "warnings do not fail the check: {text}");
    assert!(
        text.contains("spiffe://example.org/lapsed (owner former-team@example.org): the owner's term ended on 2020-01-31"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "spiffe://example.org/soon (owner team@example.org): the owner's term ends on {soon}"
        )),
        "{text}"
    );
    assert!(!text.contains("example.org/later (owner"), "{text}");

    // Nothing due: exit 0.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("2020-01-31", &later.to_string())
            .replace(&soon.to_string(), &later.to_string()),
    )
    .unwrap();
    let none = run(&["entry", "list", "--expiring", "30d"]);
    assert!(none.status.success());
    assert_eq!(
        String::from_utf8_lossy(&none.stdout),
        "no entry's owner expires within 30days (4 entries)\n"
    );
}

/// Moving the owners' clock needs the `test-hooks` build.
#[cfg(feature = "test-hooks")]
mod term_end {
    use std::process::{Command, Stdio};
    use std::time::{Duration, SystemTime};

    use futures::StreamExt;

    use attestd::proto::{JwtsvidRequest, X509svidRequest, X509svidResponse};

    use super::utc_day;
    use crate::harness::{Daemon, assert_success, attestd_bin, cli_fetch_as, printed_ids, wait_for};

    /// The owners' clock is moved (a test hook) to a few seconds before the end
    /// of today's term: streams opened now must lose the expiring identity when
    /// it ends, without a rotation or a policy change.
    #[tokio::test]
    async fn an_open_stream_loses_the_identity_when_its_owner_expires() {
        // Long enough for the daemon to start and both streams to open.
        const LEFT_OF_TERM: u64 = 8;
        let now = SystemTime::now();
        let today = utc_day(0);
        let term_end = today.next_day().unwrap().midnight().assume_utc().unix_timestamp() as u64;
        let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        // Negative just before midnight: the owners' clock runs behind then.
        let offset = term_end as i64 - now_secs as i64 - LEFT_OF_TERM as i64;
        let daemon = Daemon::start_with_env(
            &format!(
                r#"
    [[entry]]
    spiffe_id = "spiffe://example.org/expiring"
    selectors = ["unix:uid:0"]
    owner = "team@example.org"
    owner_expires = {today}

    [[entry]]
    spiffe_id = "spiffe://example.org/steady"
    selectors = ["unix:uid:0"]
    owner = "platform@example.org"

    [[entry]]
    spiffe_id = "spiffe://example.org/lone"
    selectors = ["unix:uid:1000"]
    owner = "team@example.org"
    owner_expires = {today}
    "#
            ),
            &[("ATTESTD_TEST_OWNER_CLOCK_OFFSET_SECS", &offset.to_string())],
        );

        // uid 1000 holds only the expiring identity: its stream must end.
        let mut watcher = Command::new(attestd_bin());
        watcher
            .args(["api", "watch", "--socket"])
            .arg(daemon.endpoint())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::uid(&mut watcher, 1000);
        std::os::unix::process::CommandExt::gid(&mut watcher, 1000);
        let mut watcher = watcher.spawn().unwrap();

        // Root holds both: the stream goes on without the expiring one.
        let mut client = attestd::client::connect(&daemon.socket()).await.unwrap();
        let mut stream = client
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            ids(&first),
            ["spiffe://example.org/expiring", "spiffe://example.org/steady"],
            "the daemon took longer than {LEFT_OF_TERM}s to serve: the term ended first"
        );
        let expiring_leaf = &first.svids[0].x509_svid;
        let not_after = not_after_of(expiring_leaf);
        assert!(
            not_after <= now + Duration::from_secs(LEFT_OF_TERM + 2),
            "the SVID is cut at the end of its owner's term (x509_ttl is 1h): {not_after:?}"
        );
        // So is a JWT-SVID (jwt_ttl is 5m).
        let request = JwtsvidRequest {
            audience: vec!["tools".into()],
            spiffe_id: "spiffe://example.org/expiring".into(),
        };
        let jwt = client.fetch_jwtsvid(request).await.unwrap().into_inner();
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(&jwt.svids[0].svid).unwrap();
        let exp = claims["exp"].as_u64().unwrap();
        let term_end_wall = now_secs + LEFT_OF_TERM;
        assert!(
            exp <= term_end_wall + 1,
            "exp {exp} after the term's end {term_end_wall}"
        );

        let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("a message when the term ends")
            .expect("the stream stays open")
            .expect("a message, not an error");
        assert_eq!(ids(&next), ["spiffe://example.org/steady"]);

        let status = wait_for(Duration::from_secs(60), "uid 1000's stream to end", || {
            watcher.try_wait().unwrap()
        });
        let output = watcher.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains("SPIFFE ID:    spiffe://example.org/lone"),
            "it had the identity: {stdout}"
        );
        assert!(
            stderr.contains(&format!(
                "no identity issued: owner of spiffe://example.org/lone expired on {today}"
            )),
            "{stderr}"
        );

        let records = daemon.audit_records();
        assert!(
            records.iter().any(|r| r["outcome"] == "denied"
                && r["uid"] == 1000
                && r["reason"] == format!("owner of spiffe://example.org/lone expired on {today}")),
            "{records:#?}"
        );
        // A new caller of root's gets only the identity still in effect.
        let fresh = cli_fetch_as(&daemon, 0);
        assert_success(&fresh);
        assert_eq!(printed_ids(&fresh), ["spiffe://example.org/steady"]);
    }

    /// Renewing the owner's term in the policy while a stream is open pushes
    /// SVIDs that outlast the old end (the old ones were cut at it).
    #[tokio::test]
    async fn renewing_the_owners_term_pushes_svids_that_outlast_the_old_end() {
        // The term ends in half an hour on the owners' clock; x509_ttl is 1h.
        let now = SystemTime::now();
        let today = utc_day(0);
        let term_end = today.next_day().unwrap().midnight().assume_utc().unix_timestamp();
        let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        let offset = term_end - now_secs - 1800;
        let entry = |expires: time::Date| {
            format!(
                "[[entry]]\nspiffe_id = \"spiffe://example.org/renewed\"\nselectors = [\"unix:uid:0\"]\n\
                 owner = \"team@example.org\"\nowner_expires = {expires}\n"
            )
        };
        let daemon = Daemon::start_with_env(
            &entry(today),
            &[("ATTESTD_TEST_OWNER_CLOCK_OFFSET_SECS", &offset.to_string())],
        );
        let mut client = attestd::client::connect(&daemon.socket()).await.unwrap();
        let mut stream = client
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        let cut = not_after_of(&first.svids[0].x509_svid);
        assert!(
            cut <= now + Duration::from_secs(1801),
            "cut at the term's end: {cut:?}"
        );

        let config = std::fs::read_to_string(daemon.config_path()).unwrap();
        let renewed = config.replace(&entry(today), &entry(utc_day(365)));
        assert_ne!(config, renewed);
        std::fs::write(daemon.config_path(), renewed).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("a message once the policy renews the term")
            .expect("the stream stays open")
            .expect("a message, not an error");
        assert_eq!(ids(&next), ["spiffe://example.org/renewed"]);
        let outlasting = not_after_of(&next.svids[0].x509_svid);
        assert!(
            outlasting > cut + Duration::from_secs(1200),
            "the new SVID has its full lifetime: {outlasting:?} vs {cut:?}"
        );
    }

    fn ids(response: &X509svidResponse) -> Vec<&str> {
        response.svids.iter().map(|s| s.spiffe_id.as_str()).collect()
    }

    fn not_after_of(chain: &[u8]) -> SystemTime {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(chain).unwrap();
        SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp() as u64)
    }
}

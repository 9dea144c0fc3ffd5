//! A bad configuration stops attestd at start with one line naming the file,
//! the line and the key.

use std::process::Command;

use crate::harness::attestd_bin;

const ENTRY_HEAD: &str = "trust_domain = \"example.org\"\ndata_dir = \"/nonexistent/never-created\"\n";

/// Runs `attestd run -c FILE` on `config` and returns its one-line error.
fn start_error(name: &str, config: &str, extra_files: &[(&str, &str)]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    for (file, text) in extra_files {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let path = dir.path().join(name);
    let config = config.replace("{dir}", &dir.path().display().to_string());
    std::fs::write(&path, config).unwrap();
    let output = Command::new(attestd_bin())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success(), "attestd accepted a bad config");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
    (stderr, dir.path().display().to_string())
}

fn entry(spiffe_id: &str, selectors: &str) -> String {
    format!("{ENTRY_HEAD}[[entry]]\nspiffe_id = \"{spiffe_id}\"\nselectors = {selectors}\nowner = \"o\"\n")
}

#[test]
fn each_bad_config_names_file_line_and_key() {
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("{ENTRY_HEAD}bogus = 1\n"), ":3", "bogus"),
        (
            format!("{ENTRY_HEAD}[svid]\nx509_ttl = \"forever\"\n"),
            ":4",
            "svid.x509_ttl",
        ),
        (
            format!("{ENTRY_HEAD}[svid]\nx509_ttl = \"4s\"\n"),
            ":4",
            "svid.x509_ttl",
        ),
        (
            format!("{ENTRY_HEAD}[svid]\njwt_ttl = 30\n"),
            ":4",
            "svid.jwt_ttl",
        ),
        ("trust_domain = \"Example.org\"\n".into(), ":1", "trust_domain"),
        (
            entry("spiffe://other.org/x", "[\"unix:uid:0\"]"),
            ":4",
            "entry[0].spiffe_id",
        ),
        (
            entry("spiffe://example.org/a/../b", "[\"unix:uid:0\"]"),
            ":4",
            "entry[0].spiffe_id",
        ),
        (
            entry("spiffe://example.org/x", "[\"unix:uid\"]"),
            ":5",
            "entry[0].selectors[0]",
        ),
        (
            entry("spiffe://example.org/x", "[\"unix:uid:0\", \"k8s:ns:default\"]"),
            ":5",
            "entry[0].selectors[1]",
        ),
        (entry("spiffe://example.org/x", "[]"), ":5", "entry[0].selectors"),
        (
            format!(
                "{}colour = \"blue\"\n",
                entry("spiffe://example.org/x", "[\"unix:uid:0\"]")
            ),
            ":7",
            "colour",
        ),
        (format!("{ENTRY_HEAD}[[entry\n"), ":3", ""),
    ];
    for (config, line, key) in cases {
        let (error, dir) = start_error("attestd.toml", &config, &[]);
        let location = format!("{dir}/attestd.toml{line}");
        assert!(
            error.contains(&location),
            "expected {location} in: {error}\nconfig:\n{config}"
        );
        assert!(
            error.contains(key),
            "expected key {key:?} in: {error}\nconfig:\n{config}"
        );
    }
}

#[test]
fn a_bad_entries_file_is_named() {
    let config = format!("{ENTRY_HEAD}entries_dir = \"{{dir}}/entries.d\"\n");
    let good =
        "[[entry]]\nspiffe_id = \"spiffe://example.org/ok\"\nselectors = [\"unix:uid:0\"]\nowner = \"o\"\n";
    let bad = "[[entry]]\nspiffe_id = \"spiffe://example.org/bad\"\nselectors = [\"unix:sha256:XYZ\"]\nowner = \"o\"\n";
    let (error, dir) = start_error(
        "attestd.toml",
        &config,
        &[("entries.d/10-good.toml", good), ("entries.d/20-bad.toml", bad)],
    );
    let location = format!("{dir}/entries.d/20-bad.toml:3");
    assert!(error.contains(&location), "expected {location} in: {error}");
    assert!(error.contains("entry[0].selectors[0]"), "{error}");
}

#[test]
fn run_without_config_asks_for_a_trust_domain() {
    let output = Command::new(attestd_bin()).arg("run").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("trust_domain"), "{stderr}");
}

/// Mistakes a SPIRE operator makes by habit get a message that says what
/// to write instead.
#[test]
fn habitual_mistakes_are_answered_with_the_fix() {
    let (error, _) = start_error("attestd.toml", "trust_domain = \"spiffe://example.org\"\n", &[]);
    assert!(
        error.ends_with(
            ":1: trust_domain: is a SPIFFE ID, not a trust domain name: drop the scheme and write \"example.org\""
        ),
        "{error}"
    );
    for (selector, fix) in [
        ("unix:uid:bob", "did you mean unix:user:bob?"),
        ("unix:gid:staff", "did you mean unix:group:staff?"),
        (
            "unix:supplementary_gid:docker",
            "did you mean unix:supplementary_group:docker?",
        ),
    ] {
        let (error, _) = start_error(
            "attestd.toml",
            &entry("spiffe://example.org/x", &format!("[\"{selector}\"]")),
            &[],
        );
        assert!(
            error.ends_with(&format!("needs a decimal number ({fix})")),
            "{error}"
        );
    }
}

#[test]
fn audit_verify_names_a_missing_file() {
    let output = Command::new(attestd_bin())
        .args(["audit", "verify", "/nonexistent/audit.jsonl"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/audit.jsonl: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn explain_says_no_such_process_for_a_pid_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("attestd.toml");
    std::fs::write(&config, entry("spiffe://example.org/x", "[\"unix:uid:0\"]")).unwrap();
    // Beyond the kernel's largest pid (pid_max is at most 2^22).
    let output = Command::new(attestd_bin())
        .args(["explain", "--pid", "99999999", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.lines().last(),
        Some("attestd: no such process: 99999999"),
        "{stderr}"
    );
}

/// Runs `attestd run -c FILE` (errors only in the log) and returns the
/// error line it exits with.
fn run_error(config: &str, files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    for (file, text) in files {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let config = config.replace("{dir}", &dir.path().display().to_string());
    std::fs::write(dir.path().join("attestd.toml"), config).unwrap();
    let output = Command::new(attestd_bin())
        .args(["run", "-c"])
        .arg(dir.path().join("attestd.toml"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!output.status.success(), "attestd started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr.trim().lines().last().unwrap_or_default().to_owned()
}

#[test]
fn listen_names_socket_directories_and_key_forms_are_answered_with_the_fix() {
    let head =
        "trust_domain = \"example.org\"\ndata_dir = \"{dir}/data\"\nsocket_path = \"{dir}/run/api.sock\"\n";
    let error = run_error(&format!("{head}[health]\nlisten = \"localhost:9090\"\n"), &[]);
    assert!(
        error.ends_with(
            "health.listen: \"localhost:9090\" is not a listen address: \"localhost\" is a host name, not an IP \
             address (names are not resolved): write e.g. \"127.0.0.1:9090\""
        ),
        "{error}"
    );

    let error = run_error(
        "trust_domain = \"example.org\"\ndata_dir = \"{dir}/data\"\nsocket_path = \"{dir}\"\n",
        &[],
    );
    assert!(
        error.contains("is a directory; socket_path names the socket file itself, e.g.")
            && error.ends_with("/api.sock"),
        "{error}"
    );

    let error = run_error(
        &format!(
            "{head}[ca]\ncert_file = \"{{dir}}/ca.pem\"\nkey_file = \"{{dir}}/ca.key\"\nbundle_file = \"{{dir}}/root.pem\"\n"
        ),
        &[
            ("ca.pem", "not yet read\n"),
            ("root.pem", "not yet read\n"),
            (
                "ca.key",
                "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            ),
        ],
    );
    assert!(error.contains("/ca.key"), "the key file is named: {error}");
    assert!(
        error.contains(
            "a PKCS#1 RSA key; attestd reads PKCS#8: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt"
        ),
        "{error}"
    );
}

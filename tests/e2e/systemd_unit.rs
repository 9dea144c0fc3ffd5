//! The shipped unit file: `systemd-analyze verify` accepts it, and its
//! sandbox exposure score (`systemd-analyze security --offline=true`) stays
//! where it is ("OK", at most 3.0; 2.3 when written).

use std::process::Command;

use crate::harness::attestd_bin;

/// The unit with ExecStart pointing at the binary under test (verify
/// checks that the command exists).
fn unit_under_test(dir: &std::path::Path) -> std::path::PathBuf {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/attestd.service")).unwrap();
    let path = dir.join("attestd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/attestd", attestd_bin())).unwrap();
    path
}

fn analyze(args: &[&str], unit: &std::path::Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze on PATH (tests/run-all.sh installs it)")
}

#[test]
fn the_unit_verifies_and_keeps_its_exposure_score() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let verify = analyze(&["verify"], &unit);
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );

    let security = analyze(&["security", "--offline=true"], &unit);
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|line| line.split("Overall exposure level for attestd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{report}"));
    println!("systemd-analyze security --offline=true: exposure {score}");
    assert!(score <= 3.0, "exposure level {score} (was 2.3)");
}

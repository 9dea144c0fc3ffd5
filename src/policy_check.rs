//! `attestd entry list` and `attestd entry check`: the policy exactly as
//! attestd reads it (defaults resolved, every `entries_dir` file included),
//! and a lint for entries that are valid but weaker than they look.

use std::fmt::Write as _;

use crate::config::{Config, ConfigError};
use crate::registry::{Entry, Policy};

/// The entries of the policy, one block each.
pub fn list(config: &Config) -> Result<String, ConfigError> {
    let policy = Policy::load(config)?;
    let mut out = format!("{} entries\n", policy.entries().len());
    for entry in policy.entries() {
        describe(&mut out, entry);
    }
    Ok(out)
}

/// Validates the policy; returns its warnings (empty when all is well).
pub fn check(config: &Config) -> Result<Vec<String>, ConfigError> {
    let policy = Policy::load(config)?;
    Ok(policy.entries().iter().filter_map(|entry| lint(entry)).collect())
}

fn describe(out: &mut String, entry: &Entry) {
    let _ = writeln!(out, "\n{}  [{}]", entry.spiffe_id, entry.location);
    let _ = writeln!(out, "  owner      {}", entry.owner);
    if let Some(description) = &entry.description {
        let _ = writeln!(out, "  about      {description}");
    }
    for (key, value) in &entry.labels {
        let _ = writeln!(out, "  label      {key}={value}");
    }
    for selector in &entry.selectors {
        let _ = writeln!(out, "  selector   {selector}");
    }
    let _ = writeln!(
        out,
        "  ttl        x509 {}, jwt {}",
        humantime::format_duration(entry.x509_ttl),
        humantime::format_duration(entry.jwt_ttl)
    );
    if let Some(hint) = &entry.hint {
        let _ = writeln!(out, "  hint       {hint}");
    }
    if !entry.jwt_audiences.is_empty() {
        let _ = writeln!(out, "  audiences  {}", entry.jwt_audiences.join(", "));
    }
    if !entry.dns_names.is_empty() {
        let _ = writeln!(out, "  dns        {}", entry.dns_names.join(", "));
    }
}

/// An entry that names no user (`unix:uid`/`unix:user`/`unix:gid`/
/// `unix:group`) trusts facts that any user can arrange: an executable path
/// or hash anyone can run, or cgroup names a delegated subtree can choose.
fn lint(entry: &Entry) -> Option<String> {
    let anchored = entry
        .selectors
        .iter()
        .any(|s| matches!(s.kind(), "unix:uid" | "unix:user" | "unix:gid" | "unix:group"));
    (!anchored).then(|| {
        format!(
            "{}: {} names no unix:uid/user/gid/group: any user who can run the same executable or \
             create the same cgroup gets this identity",
            entry.location, entry.spiffe_id
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn lists_entries_and_warns_about_unanchored_ones() {
        let text = "trust_domain = \"example.org\"\n\
            [[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\", \"unix:path:/bin/a\"]\nowner = \"o\"\nhint = \"h\"\n\
            [[entry]]\nspiffe_id = \"spiffe://example.org/b\"\nselectors = [\"unix:path:/bin/b\"]\nowner = \"o\"\n";
        let config = Config::parse(Path::new("p.toml"), text).unwrap();
        let listing = list(&config).unwrap();
        assert!(listing.starts_with("2 entries"));
        assert!(listing.contains("spiffe://example.org/a  [p.toml:2]") && listing.contains("hint       h"));
        let warnings = check(&config).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("p.toml:7: spiffe://example.org/b"),
            "{warnings:?}"
        );
    }
}

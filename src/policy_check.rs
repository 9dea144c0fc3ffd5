//! `attestd entry list` and `attestd entry check`: the policy exactly as
//! attestd reads it (defaults resolved, every `entries_dir` file included),
//! and a lint for entries that are valid but weaker than they look or whose
//! owner's term is over or nearly so. `attestd entry list --expiring 30d`
//! lists what is due.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod lints;

use crate::config::{Config, ConfigError};
use crate::registry::{Entry, Policy, owner_clock};

/// `entry check` warns about entries whose owner's term ends within this.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The entries of `policy` (a SPIRE Server's, say), one block each.
pub fn list_policy(policy: &Policy) -> String {
    let mut out = format!("{} entries\n", policy.entries().len());
    for entry in policy.entries() {
        describe(&mut out, entry);
    }
    out
}

/// `--output json` of `entry list`: `{"count", "entries": [...]}`, each
/// entry as [`entry_json`] gives it, and `not_served` (fleet mode: what the
/// server holds that this agent does not serve), if any.
pub fn list_json(policy: &Policy, not_served: Option<&str>) -> serde_json::Value {
    let entries: Vec<_> = policy.entries().iter().map(|e| entry_json(e)).collect();
    serde_json::json!({ "count": entries.len(), "entries": entries, "not_served": not_served })
}

/// One entry as `entry list --output json` shows it. `id` is the one audit
/// records carry in their `entry` field; durations are whole seconds.
pub fn entry_json(entry: &Entry) -> serde_json::Value {
    let labels: serde_json::Map<_, _> = entry
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string().into()))
        .collect();
    serde_json::json!({
        "id": entry.id.to_string(),
        "spiffe_id": entry.spiffe_id.as_str(),
        "selectors": entry.selectors.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "owner": &*entry.owner,
        "owner_expires": entry.owner_expires.map(|day| day.to_string()),
        "description": entry.description,
        "labels": labels,
        "x509_ttl_seconds": entry.x509_ttl.as_secs(),
        "jwt_ttl_seconds": entry.jwt_ttl.as_secs(),
        "jwt_audiences": entry.jwt_audiences,
        "dns_names": entry.dns_names,
        "hint": entry.hint,
        "federates_with": entry.federates_with.iter().map(|td| td.to_string()).collect::<Vec<_>>(),
        "location": entry.location.to_string(),
    })
}

/// Validates the policy; returns its warnings (empty when all is well).
pub fn check(config: &Config) -> Result<Vec<String>, ConfigError> {
    check_at(config, owner_clock::now())
}

fn check_at(config: &Config, now: SystemTime) -> Result<Vec<String>, ConfigError> {
    Ok(check_policy(config, &Policy::load(config)?, now))
}

/// The warnings about `policy` (served under `config`) at `now`.
pub fn check_policy(config: &Config, policy: &Policy, now: SystemTime) -> Vec<String> {
    let mut warnings: Vec<String> = policy
        .entries()
        .iter()
        .flat_map(|entry| [lint(entry), expiry_lint(entry, now)])
        .flatten()
        .collect();
    warnings.extend(lints::lint(config, policy));
    warnings
}

/// At most this many of a policy's warnings are logged at load; `attestd
/// entry check` lists them all.
const MAX_LOGGED_WARNINGS: usize = 20;

/// Logs the policy's warnings as the daemon loads it (capped: a generated
/// policy of 100,000 entries must not flood the journal).
pub fn log_warnings(config: &Config, policy: &Policy) {
    let warnings = check_policy(config, policy, owner_clock::now());
    for warning in warnings.iter().take(MAX_LOGGED_WARNINGS) {
        tracing::warn!("policy: {warning}");
    }
    if warnings.len() > MAX_LOGGED_WARNINGS {
        tracing::warn!(
            more = warnings.len() - MAX_LOGGED_WARNINGS,
            "policy: more warnings; `attestd entry check` lists them all"
        );
    }
}

/// An entry whose owner's term ends within a window (or has ended).
#[derive(Debug)]
pub struct Due {
    /// The entry.
    pub entry: Arc<Entry>,
    /// Its term has ended already: it grants nothing.
    pub expired: bool,
}

/// `attestd entry list --expiring WINDOW`: the entries whose owner's term
/// ends within the window, and those whose term has ended, soonest first.
#[derive(Debug)]
pub struct Expiring {
    /// The window asked for.
    pub window: Duration,
    /// Entries in the policy.
    pub total: usize,
    /// The entries due, by the end of their owner's term.
    pub due: Vec<Due>,
}

/// The entries whose owner's term has ended or ends within `window`.
pub fn expiring(config: &Config, window: Duration) -> Result<Expiring, ConfigError> {
    expiring_at(config, window, owner_clock::now())
}

fn expiring_at(config: &Config, window: Duration, now: SystemTime) -> Result<Expiring, ConfigError> {
    let policy = Policy::load(config)?;
    let horizon = now.checked_add(window).unwrap_or(now);
    let mut due: Vec<Due> = policy
        .entries()
        .iter()
        .filter(|entry| entry.owner_expiry().is_some_and(|end| end <= horizon))
        .map(|entry| Due {
            entry: Arc::clone(entry),
            expired: entry.owner_expired(now),
        })
        .collect();
    due.sort_by_key(|due| due.entry.owner_expires);
    Ok(Expiring {
        window,
        total: policy.entries().len(),
        due,
    })
}

impl fmt::Display for Expiring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let window = humantime::format_duration(self.window);
        if self.due.is_empty() {
            return writeln!(
                f,
                "no entry's owner expires within {window} ({} entries)",
                self.total
            );
        }
        let expired = self.due.iter().filter(|due| due.expired).count();
        writeln!(
            f,
            "{} of {} entries expire within {window} ({expired} expired already):",
            self.due.len(),
            self.total
        )?;
        let id_width = self
            .due
            .iter()
            .map(|d| d.entry.spiffe_id.as_str().len())
            .max()
            .unwrap_or(0);
        let owner_width = self.due.iter().map(|d| d.entry.owner.len()).max().unwrap_or(0);
        for Due { entry, expired } in &self.due {
            let status = if *expired { "EXPIRED" } else { "expires" };
            let day = entry.owner_expires.map(|day| day.to_string()).unwrap_or_default();
            writeln!(
                f,
                "{status}  {day}  {:<id_width$}  {:<owner_width$}  {}",
                entry.spiffe_id.as_str(),
                entry.owner,
                entry.location
            )?;
        }
        Ok(())
    }
}

impl Expiring {
    /// `--output json` of `entry list --expiring`.
    pub fn to_json(&self) -> serde_json::Value {
        let due: Vec<_> = self
            .due
            .iter()
            .map(|due| {
                let mut entry = entry_json(&due.entry);
                entry["expired"] = due.expired.into();
                entry
            })
            .collect();
        serde_json::json!({
            "window_seconds": self.window.as_secs(),
            "total": self.total,
            "due": due,
        })
    }
}

fn describe(out: &mut String, entry: &Entry) {
    let _ = writeln!(out, "\n{}  [{}]", entry.spiffe_id, entry.location);
    let _ = writeln!(out, "  id         {} (the audit records' entry)", entry.id);
    let _ = writeln!(out, "  owner      {}", entry.owner);
    if let Some(description) = &entry.description {
        let _ = writeln!(out, "  about      {description}");
    }
    for (key, value) in entry.labels.iter() {
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
    if let Some(day) = entry.owner_expires {
        let _ = writeln!(out, "  expires    {day} (the owner's last day, UTC)");
    }
}

/// An entry whose owner's term has ended grants nothing; one ending within
/// [`EXPIRY_WARNING`] needs its owner renewed or the entry retired.
fn expiry_lint(entry: &Entry, now: SystemTime) -> Option<String> {
    let (day, end) = (entry.owner_expires?, entry.owner_expiry()?);
    let head = format!("{}: {} (owner {})", entry.location, entry.spiffe_id, entry.owner);
    if entry.owner_expired(now) {
        return Some(format!(
            "{head}: the owner's term ended on {day}: the entry grants nothing"
        ));
    }
    let left = end.duration_since(now).ok()?;
    let days = left.as_secs().div_ceil(24 * 3600);
    let plural = if days == 1 { "" } else { "s" };
    (left <= EXPIRY_WARNING).then(|| {
        format!(
            "{head}: the owner's term ends on {day} (in {days} day{plural}): renew owner_expires or retire \
             the entry"
        )
    })
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
        let listing = list_policy(&Policy::load(&config).unwrap());
        assert!(listing.starts_with("2 entries"));
        assert!(listing.contains("spiffe://example.org/a  [p.toml:2]") && listing.contains("hint       h"));
        let warnings = check(&config).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("p.toml:7: spiffe://example.org/b"),
            "{warnings:?}"
        );
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    const TERMS: &str = "trust_domain = \"example.org\"\n\
        [[entry]]\nspiffe_id = \"spiffe://example.org/lapsed\"\nselectors = [\"unix:uid:1\"]\nowner = \"a@example.org\"\nowner_expires = 2030-05-31\n\
        [[entry]]\nspiffe_id = \"spiffe://example.org/due\"\nselectors = [\"unix:uid:2\"]\nowner = \"b@example.org\"\nowner_expires = 2030-06-20\n\
        [[entry]]\nspiffe_id = \"spiffe://example.org/later\"\nselectors = [\"unix:uid:3\"]\nowner = \"c@example.org\"\nowner_expires = 2030-09-01\n\
        [[entry]]\nspiffe_id = \"spiffe://example.org/forever\"\nselectors = [\"unix:uid:4\"]\nowner = \"d@example.org\"\n";

    #[test]
    fn check_warns_about_ended_and_ending_terms() {
        let config = Config::parse(Path::new("p.toml"), TERMS).unwrap();
        let warnings = check_at(&config, at("2030-06-01T12:00:00Z")).unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(
            warnings[0],
            "p.toml:2: spiffe://example.org/lapsed (owner a@example.org): the owner's term ended on \
             2030-05-31: the entry grants nothing"
        );
        assert_eq!(
            warnings[1],
            "p.toml:7: spiffe://example.org/due (owner b@example.org): the owner's term ends on \
             2030-06-20 (in 20 days): renew owner_expires or retire the entry"
        );
        // The last moment of the owner's last day is still within the term.
        let warnings = check_at(&config, at("2030-05-31T23:59:59Z")).unwrap();
        assert!(
            warnings[0].contains("ends on 2030-05-31 (in 1 day)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn expiring_lists_what_is_due_soonest_first_and_marks_what_expired() {
        let config = Config::parse(Path::new("p.toml"), TERMS).unwrap();
        let now = at("2030-06-01T12:00:00Z");
        let month = expiring_at(&config, Duration::from_secs(30 * 24 * 3600), now).unwrap();
        let ids: Vec<(&str, bool)> = month
            .due
            .iter()
            .map(|d| (d.entry.spiffe_id.as_str(), d.expired))
            .collect();
        assert_eq!(
            ids,
            [
                ("spiffe://example.org/lapsed", true),
                ("spiffe://example.org/due", false)
            ]
        );
        let text = month.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "2 of 4 entries expire within 30days (1 expired already):"
        );
        assert_eq!(
            lines[1],
            "EXPIRED  2030-05-31  spiffe://example.org/lapsed  a@example.org  p.toml:2"
        );
        assert_eq!(
            lines[2],
            "expires  2030-06-20  spiffe://example.org/due     b@example.org  p.toml:7"
        );

        let season = expiring_at(&config, Duration::from_secs(100 * 24 * 3600), now).unwrap();
        assert_eq!(season.due.len(), 3, "never an entry without a term");
        let before = expiring_at(
            &config,
            Duration::from_secs(24 * 3600),
            at("2030-01-01T00:00:00Z"),
        )
        .unwrap();
        assert!(before.due.is_empty());
        assert_eq!(
            before.to_string(),
            "no entry's owner expires within 1day (4 entries)\n"
        );
    }

    #[test]
    fn list_shows_the_owners_last_day() {
        let config = Config::parse(Path::new("p.toml"), TERMS).unwrap();
        assert!(
            list_policy(&Policy::load(&config).unwrap())
                .contains("  expires    2030-05-31 (the owner's last day, UTC)\n")
        );
    }
}

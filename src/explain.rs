//! `attestd explain --pid N`: what attestd sees of a process and what the
//! policy makes of it: its selectors, the entries it matches, and for
//! entries it nearly matches, which selectors it lacks. Operators debug
//! policy with it instead of guessing.

use std::fmt;
use std::sync::Arc;

use crate::attest::{AttestError, Attestor, ExeBinding, ExeFacts, Hashing, PeerIdentity, Workload};
use crate::config::{Config, ConfigError};
use crate::registry::{Entry, Matches, Policy, owner_clock};
use crate::selector::Selector;

/// Why a process could not be explained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExplainError {
    /// The configuration or policy is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No process has this pid (it never existed, or has exited).
    #[error("no such process: {0}")]
    NoSuchProcess(i32),
    /// The process could not be attested.
    #[error(transparent)]
    Attest(#[from] AttestError),
}

/// An entry the process lacks some selectors for.
#[derive(Debug)]
pub struct NearMiss {
    /// The entry.
    pub entry: Arc<Entry>,
    /// Its selectors the process does not have.
    pub missing: Vec<Selector>,
}

/// What attestd makes of one process.
#[derive(Debug)]
pub struct Explanation {
    /// The attested facts.
    pub workload: Workload,
    /// Entries it matches, in policy order.
    pub matches: Vec<Arc<Entry>>,
    /// Entries it matches whose owner's term has ended: they grant nothing.
    pub expired: Vec<Arc<Entry>>,
    /// Entries it shares at least one selector with but does not match.
    pub near_misses: Vec<NearMiss>,
    /// How many entries share no selector with it.
    pub unrelated: usize,
}

impl Explanation {
    /// `--output json` of `explain`: the process's facts and selectors, the
    /// entries it matches (as `entry list --output json` shows them), those
    /// matched whose owner expired, the near misses with the selectors
    /// missing, and the count of unrelated entries.
    pub fn to_json(&self) -> serde_json::Value {
        let w = &self.workload;
        let entries = |entries: &[Arc<Entry>]| -> Vec<serde_json::Value> {
            entries
                .iter()
                .map(|e| crate::policy_check::entry_json(e))
                .collect()
        };
        let near_misses: Vec<_> = self
            .near_misses
            .iter()
            .map(|miss| {
                serde_json::json!({
                    "entry": crate::policy_check::entry_json(&miss.entry),
                    "missing": miss.missing.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "process": {
                "pid": w.pid,
                "uid": w.uid,
                "gid": w.gid,
                "exe_path": w.exe_path,
                "sha256": w.sha256,
                "selectors": w.selectors.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "notes": w.notes,
            },
            "matches": entries(&self.matches),
            "owner_expired": entries(&self.expired),
            "near_misses": near_misses,
            "unrelated": self.unrelated,
        })
    }
}

/// Attests process `pid` as attestd would and holds it against the policy
/// of `config`.
pub fn explain(config: &Config, pid: i32) -> Result<Explanation, ExplainError> {
    explain_with(config, &Policy::load(config)?, pid)
}

/// [`explain`] against `policy` (a SPIRE Server's entries, in fleet mode).
pub fn explain_with(config: &Config, policy: &Policy, pid: i32) -> Result<Explanation, ExplainError> {
    let attestor = Attestor::new("/proc", config.attestation.max_exe_hash_bytes);
    let peer = PeerIdentity::for_process(attestor.proc_root(), pid).map_err(|error| match error {
        AttestError::ProcessGone { pid } => ExplainError::NoSuchProcess(pid),
        other => ExplainError::Attest(other),
    })?;
    // Always hashed: an operator writing a unix:sha256 entry needs the hash.
    let workload = attestor.attest(&peer, ExeFacts::Selectors(ExeBinding::Trust, Hashing::Hash))?;
    let Matches {
        entries: matches,
        expired,
    } = policy.matches(&workload.selectors, owner_clock::now());
    let mut near_misses = Vec::new();
    let mut unrelated = 0;
    for entry in policy
        .entries()
        .iter()
        .filter(|e| !matches.contains(e) && !expired.contains(e))
    {
        let missing: Vec<Selector> = entry
            .selectors
            .iter()
            .filter(|s| !workload.selectors.contains(s))
            .cloned()
            .collect();
        if missing.len() < entry.selectors.len() {
            near_misses.push(NearMiss {
                entry: Arc::clone(entry),
                missing,
            });
        } else {
            unrelated += 1;
        }
    }
    Ok(Explanation {
        workload,
        matches,
        expired,
        near_misses,
        unrelated,
    })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.workload;
        let exe = w.exe_path.as_ref().map(|p| p.display().to_string());
        writeln!(
            f,
            "Process {}: {} (uid {}, gid {})",
            w.pid,
            exe.as_deref().unwrap_or("(executable path unknown)"),
            w.uid,
            w.gid
        )?;
        writeln!(f, "\nSelectors ({}):", w.selectors.len())?;
        for selector in &w.selectors {
            writeln!(f, "  {selector}")?;
        }
        for note in &w.notes {
            writeln!(f, "  note: {note}")?;
        }
        writeln!(f, "\nMatches ({}):", self.matches.len())?;
        for entry in &self.matches {
            writeln!(
                f,
                "  {}  [{}] owner {}",
                entry.spiffe_id, entry.location, entry.owner
            )?;
        }
        if !self.expired.is_empty() {
            writeln!(
                f,
                "\nMatched, but the owner's term has ended ({}):",
                self.expired.len()
            )?;
            for entry in &self.expired {
                let expired = entry.owner_expired_reason().unwrap_or_default();
                writeln!(f, "  {}  [{}] {expired}", entry.spiffe_id, entry.location)?;
            }
        }
        writeln!(f, "\nNear misses ({}):", self.near_misses.len())?;
        for miss in &self.near_misses {
            writeln!(f, "  {}  [{}]", miss.entry.spiffe_id, miss.entry.location)?;
            for selector in &miss.missing {
                writeln!(f, "    missing {selector}")?;
            }
        }
        writeln!(f, "\nEntries sharing no selector: {}", self.unrelated)?;
        writeln!(
            f,
            "\nOver the socket, unix:path and unix:sha256 also require that the caller still runs the \
             executable it connected with and is the only process holding the connection, and \
             executables are hashed only while some entry names unix:sha256."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_whose_owner_expired_are_shown_apart_not_as_near_misses() {
        let uid = nix::unistd::geteuid().as_raw();
        let text = format!(
            "trust_domain = \"example.org\"\n\
             [[entry]]\nspiffe_id = \"spiffe://example.org/current\"\nselectors = [\"unix:uid:{uid}\"]\nowner = \"o\"\n\
             [[entry]]\nspiffe_id = \"spiffe://example.org/lapsed\"\nselectors = [\"unix:uid:{uid}\"]\nowner = \"o\"\nowner_expires = 2020-01-31\n\
             [[entry]]\nspiffe_id = \"spiffe://example.org/near\"\nselectors = [\"unix:uid:{uid}\", \"unix:gid:4242424\"]\nowner = \"o\"\n"
        );
        let config = Config::parse(std::path::Path::new("p.toml"), &text).unwrap();
        let explanation = explain(&config, std::process::id() as i32).unwrap();
        let ids = |entries: &[Arc<Entry>]| {
            entries
                .iter()
                .map(|e| e.spiffe_id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&explanation.matches), ["spiffe://example.org/current"]);
        assert_eq!(ids(&explanation.expired), ["spiffe://example.org/lapsed"]);
        let near: Vec<String> = explanation
            .near_misses
            .iter()
            .map(|m| m.entry.spiffe_id.to_string())
            .collect();
        assert_eq!(near, ["spiffe://example.org/near"]);
        let shown = explanation.to_string();
        assert!(
            shown.contains(
                "Matched, but the owner's term has ended (1):\n  spiffe://example.org/lapsed  [p.toml:6] owner of \
                 spiffe://example.org/lapsed expired on 2020-01-31\n"
            ),
            "{shown}"
        );
    }
}

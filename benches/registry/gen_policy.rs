//! Generated registration-entry policies for the registry benchmark (and
//! for measuring `attestd run` / `attestd entry check` by hand: see the
//! benchmark's `--write-policy`).
//!
//! Entry `i` grants `spiffe://example.org/agent/<i>` to a distinct uid
//! (`unix:uid:<10000 + i>`), or, bound to an executable, to uid 1000 and a
//! distinct `unix:sha256`: every entry then shares its uid selector, the
//! case where an index that walks every entry naming a caller's selector
//! degrades to a scan. Each entry has what operators write: an owner (one
//! of 50 teams), a description and three labels.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The trust domain of the generated config.
pub const TRUST_DOMAIN: &str = "example.org";

/// How many teams own the entries.
const TEAMS: usize = 50;

/// The shape of a generated policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Entries in all.
    pub entries: usize,
    /// Files of `entries_dir` they are spread over (in order).
    pub files: usize,
    /// Entries bound to uid 1000 and an executable digest, instead of a
    /// uid of their own.
    pub exe_bound: bool,
}

impl Shape {
    /// The entries of file `file`: a contiguous range of entry numbers.
    pub fn range(&self, file: usize) -> std::ops::Range<usize> {
        let per_file = self.entries.div_ceil(self.files.max(1));
        let start = (file * per_file).min(self.entries);
        start..(start + per_file).min(self.entries)
    }
}

/// The uid entry `i` is granted to (in the uid shape).
pub fn uid(i: usize) -> u32 {
    10_000 + u32::try_from(i).expect("generated policies stay far below u32::MAX entries")
}

/// The executable digest of entry `i` (in the executable-bound shape):
/// 64 lowercase hex digits, distinct per entry.
pub fn digest(i: usize) -> String {
    format!(
        "{:064x}",
        (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

/// The selectors entry `i` names.
pub fn selectors(i: usize, exe_bound: bool) -> Vec<String> {
    match exe_bound {
        true => vec!["unix:uid:1000".into(), format!("unix:sha256:{}", digest(i))],
        false => vec![format!("unix:uid:{}", uid(i))],
    }
}

/// One `[[entry]]` table; `revision` changes its description, so a
/// benchmark can change a file without changing its entries' identities.
pub fn entry(i: usize, exe_bound: bool, revision: usize) -> String {
    let team = i % TEAMS;
    let selectors: Vec<String> = selectors(i, exe_bound)
        .into_iter()
        .map(|s| format!("{s:?}"))
        .collect();
    format!(
        "[[entry]]\n\
         spiffe_id = \"spiffe://{TRUST_DOMAIN}/agent/{i}\"\n\
         selectors = [{}]\n\
         owner = \"team-{team}@example.org\"\n\
         description = \"agent {i} of team {team} (revision {revision})\"\n\
         labels = {{ agent = \"agent-{i}\", team = \"team-{team}\", version = \"1.{}.0\" }}\n\n",
        selectors.join(", "),
        i % 10
    )
}

/// The text of file `file` of `shape`.
pub fn file_text(shape: Shape, file: usize, revision: usize) -> String {
    let mut text = String::new();
    for i in shape.range(file) {
        let _ = write!(text, "{}", entry(i, shape.exe_bound, revision));
    }
    text
}

/// The path of file `file` in `entries_dir` (sorted names keep entry order).
pub fn file_path(entries_dir: &Path, file: usize) -> PathBuf {
    entries_dir.join(format!("entries-{file:04}.toml"))
}

/// Writes `dir/attestd.toml` (socket, data and audit under `dir`) and
/// `dir/entries.d/` holding the policy; returns the config's path.
pub fn write(dir: &Path, shape: Shape) -> std::io::Result<PathBuf> {
    let entries_dir = dir.join("entries.d");
    std::fs::create_dir_all(&entries_dir)?;
    for file in 0..shape.files {
        std::fs::write(file_path(&entries_dir, file), file_text(shape, file, 0))?;
    }
    let config = dir.join("attestd.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"{TRUST_DOMAIN}\"\n\
             socket_path = {:?}\n\
             data_dir = {:?}\n\
             entries_dir = {:?}\n",
            dir.join("api.sock"),
            dir.join("data"),
            entries_dir
        ),
    )?;
    Ok(config)
}

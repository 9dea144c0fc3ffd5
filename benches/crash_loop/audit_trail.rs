//! The audit trail after each kill: every line of every file parses (only
//! the live file may end in a record torn by the kill, which attestd cuts
//! off when it reopens the trail), and every serial and token id a client
//! received is in an `issued` record. Files are read incrementally: a
//! rotated file never changes, the live one only grows (or loses a torn
//! tail). `attestd audit verify` walks the whole chain.

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What has been read of the trail so far.
#[derive(Default)]
pub struct AuditReader {
    /// Bytes of whole lines read, per file (by inode: rotation renames).
    offsets: HashMap<u64, u64>,
    pub serials: HashSet<String>,
    pub jtis: HashSet<String>,
    pub records: u64,
    /// Kills after which the live file ended in a torn record.
    pub torn_tails: u64,
}

impl AuditReader {
    /// Reads what is new in `files` (oldest first, the live one last).
    pub fn read_new(&mut self, files: &[PathBuf]) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let live = i + 1 == files.len() && path.extension().is_some_and(|e| e == "jsonl");
            if let Err(problem) = self.read_file(path, live) {
                problems.push(problem);
            }
        }
        problems
    }

    fn read_file(&mut self, path: &Path, live: bool) -> Result<(), String> {
        let bad = |what: String| format!("{}: {what}", path.display());
        let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let inode = file.metadata().map_err(|e| bad(e.to_string()))?.ino();
        let offset = self.offsets.get(&inode).copied().unwrap_or(0);
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| bad(e.to_string()))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(|e| bad(e.to_string()))?;
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            match live {
                true => self.torn_tails += 1,
                false => return Err(bad("a rotated file ends in a torn record".into())),
            }
        }
        for line in text[..whole].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                bad(format!(
                    "a corrupt record ({e}): {}",
                    String::from_utf8_lossy(line)
                ))
            })?;
            self.records += 1;
            if record["outcome"] == "issued" {
                if let Some(serial) = record["serial"].as_str() {
                    self.serials.insert(serial.to_owned());
                }
                if let Some(jti) = record["jti"].as_str() {
                    self.jtis.insert(jti.to_owned());
                }
            }
        }
        self.offsets.insert(inode, offset + whole as u64);
        Ok(())
    }
}

/// `attestd audit verify` over `files` (oldest first): the whole chain.
pub fn verify(binary: &Path, files: &[PathBuf]) -> Result<(), String> {
    let output = Command::new(binary)
        .args(["audit", "verify"])
        .args(files)
        .output()
        .map_err(|e| format!("running attestd audit verify: {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "attestd audit verify failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

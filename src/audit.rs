//! The audit trail: one JSON line per decision (an SVID issued, a caller
//! denied, a token validated), with the workload's kernel-attested facts and
//! the accountable actor, so incident responders can reconstruct who acted
//! as whom.
//!
//! Records form a hash chain: each carries its sequence number and the
//! sha256 of the line before it, across size-based rotations, so
//! `attestd audit verify` detects any edited, deleted, inserted or
//! reordered record. The trail is separate from logs and by default fails
//! closed: a decision that cannot be recorded is not carried out.

mod chain;
mod record;
mod verify;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub use chain::GENESIS;
pub use record::{Outcome, Record, rfc3339};
pub use verify::{Problem, Verification, verify};

use crate::atomic_file;
use crate::telemetry::metrics;

/// The audit file could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("audit trail {path}: {source}")]
pub struct AuditError {
    /// The audit file.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

/// When to start a new file, and how many old ones to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the current file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` newest … `.N` oldest).
    pub keep: u32,
}

/// What happens to a decision that cannot be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAuditFailure {
    /// Fail closed (the default): nothing is issued, the caller gets
    /// `Unavailable`.
    #[default]
    Refuse,
    /// Fail open: issue anyway, log the error and count it. For hosts where
    /// availability outweighs accountability.
    Issue,
}

/// Where the chain stands: the next record's sequence number and the hash
/// it must link to.
#[derive(Debug)]
struct Head {
    file: File,
    size: u64,
    next_seq: u64,
    last_hash: String,
}

/// The append-only, hash-chained audit file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    rotation: Rotation,
    on_failure: OnAuditFailure,
    // std Mutex: held for one small write (and rarely a rename), never
    // across an await; it also orders the chain.
    head: Mutex<Head>,
}

impl AuditLog {
    /// Opens (creating, mode 0600, with its directory 0700 if missing) the
    /// audit file for appending, and finds the end of the chain in it (or in
    /// the newest rotated file).
    pub fn open(path: &Path, rotation: Rotation, on_failure: OnAuditFailure) -> Result<Self, AuditError> {
        let error = |source| AuditError {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            atomic_file::create_dir(dir, 0o700).map_err(error)?;
        }
        let mut file = atomic_file::open_append(path, 0o600).map_err(error)?;
        let (next_seq, last_hash) = match chain::last_link(&mut file).map_err(error)? {
            Some(link) => link,
            None => chain::last_link_of(&rotated(path, 1))
                .map_err(error)?
                .unwrap_or_else(chain::start),
        };
        let size = file.metadata().map_err(error)?.len();
        tracing::info!(path = %path.display(), next_seq, head = %last_hash, "audit trail opened");
        Ok(Self {
            path: path.to_owned(),
            rotation,
            on_failure,
            head: Mutex::new(Head {
                file,
                size,
                next_seq,
                last_hash,
            }),
        })
    }

    /// The audit file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends records, chained, as one write: concurrent writers never
    /// interleave within a line, and a batch lands whole or not at all. An
    /// error is returned only when the decision must then be refused.
    pub fn write(&self, records: &[Record]) -> Result<(), AuditError> {
        let result = self.append(records);
        if result.is_err() {
            metrics().audit_failure(records.len());
        }
        match (result, self.on_failure) {
            (Err(error), OnAuditFailure::Issue) => {
                tracing::error!(%error, records = records.len(), "audit records lost (on_failure = issue)");
                Ok(())
            }
            (result, _) => result,
        }
    }

    fn append(&self, records: &[Record]) -> Result<(), AuditError> {
        let mut head = self.lock();
        let mut buf = Vec::new();
        let mut seq = head.next_seq;
        let mut last_hash = head.last_hash.clone();
        for record in records {
            let mut record = record.clone();
            record.seq = seq;
            record.prev = last_hash;
            // Strings, numbers and maps only: serialization cannot fail.
            let line = serde_json::to_vec(&record).unwrap_or_default();
            last_hash = chain::hash_line(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            seq += 1;
        }
        if head.size > 0 && head.size + buf.len() as u64 > self.rotation.max_bytes {
            self.rotate(&mut head)?;
        }
        head.file.write_all(&buf).map_err(|source| AuditError {
            path: self.path.clone(),
            source,
        })?;
        head.size += buf.len() as u64;
        head.next_seq = seq;
        head.last_hash = last_hash;
        Ok(())
    }

    /// Shifts `audit.jsonl.N` → `.N+1` (dropping the oldest beyond `keep`),
    /// moves the current file to `.1`, and starts a new one; the chain
    /// continues into it.
    fn rotate(&self, head: &mut Head) -> Result<(), AuditError> {
        let error = |source| AuditError {
            path: self.path.clone(),
            source,
        };
        let keep = self.rotation.keep.max(1);
        let _ = std::fs::remove_file(rotated(&self.path, keep));
        for n in (1..keep).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1)).map_err(error)?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1)).map_err(error)?;
        head.file = atomic_file::open_append(&self.path, 0o600).map_err(error)?;
        head.size = 0;
        tracing::info!(path = %self.path.display(), next_seq = head.next_seq, head = %head.last_hash, "audit trail rotated");
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Head> {
        // A failed write leaves the head unchanged; the state is consistent.
        self.head.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `audit.jsonl.N`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The last `max` bytes of a file (nothing for a device such as
/// `/dev/full`, which has no length but endless contents).
fn read_tail(file: &mut File, max: u64) -> std::io::Result<Vec<u8>> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(len - start).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ROTATION: Rotation = Rotation {
        max_bytes: u64::MAX,
        keep: 1,
    };

    #[test]
    fn appends_chained_json_lines_and_resumes_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.jsonl");
        let log = AuditLog::open(&path, NO_ROTATION, OnAuditFailure::Refuse).unwrap();
        log.write(&[Record::new(
            "FetchX509SVID",
            Outcome::Denied,
            "no identity issued",
            None,
        )])
        .unwrap();
        drop(log);
        // Reopened: the chain continues where it ended.
        let log = AuditLog::open(&path, NO_ROTATION, OnAuditFailure::Refuse).unwrap();
        log.write(&[Record::new("FetchX509SVID", Outcome::Issued, "x", None)])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["seq"], 0);
        assert_eq!(lines[0]["prev"], GENESIS);
        assert_eq!(lines[1]["seq"], 1);
        assert_eq!(
            lines[1]["prev"],
            chain::hash_line(text.lines().next().unwrap().as_bytes())
        );
        assert!(verify(&[path]).unwrap().problems.is_empty());
    }

    #[test]
    fn rotation_keeps_n_files_and_the_chain_spans_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotation = Rotation {
            max_bytes: 2000,
            keep: 3,
        };
        let log = AuditLog::open(&path, rotation, OnAuditFailure::Refuse).unwrap();
        for i in 0..40 {
            log.write(&[Record::new(
                "FetchX509SVID",
                Outcome::Issued,
                format!("record {i}"),
                None,
            )])
            .unwrap();
        }
        assert!(rotated(&path, 3).exists() && !rotated(&path, 4).exists());
        let files = vec![rotated(&path, 3), rotated(&path, 2), rotated(&path, 1), path];
        let report = verify(&files).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.last_seq, Some(39));
    }

    #[test]
    fn unwritable_trail_refuses_unless_told_to_issue() {
        let full = Path::new("/dev/full");
        let refuse = AuditLog::open(full, NO_ROTATION, OnAuditFailure::Refuse).unwrap();
        let record = Record::new("FetchX509SVID", Outcome::Issued, "x", None);
        assert!(refuse.write(std::slice::from_ref(&record)).is_err());
        let issue = AuditLog::open(full, NO_ROTATION, OnAuditFailure::Issue).unwrap();
        assert!(issue.write(&[record]).is_ok());
    }
}

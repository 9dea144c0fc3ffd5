//! The audit trail: one JSON line per decision (an SVID issued, a caller
//! denied, a token validated), with the workload's kernel-attested facts and
//! the accountable actor, so incident responders can reconstruct who acted
//! as whom.
//!
//! Records form a hash chain: each carries its sequence number and the
//! sha256 of the line before it, across size-based rotations, so
//! `attestd audit verify` detects any edited, deleted, inserted or
//! reordered record. The trail is separate from logs and by default fails
//! closed: a decision that cannot be recorded is not carried out. A write
//! that fails part-way is cut back to the last whole record, so a full disk
//! or a crash never looks like tampering.
//!
//! Local callers cannot flood it: every record is bounded in size
//! ([`bound`]), and denials of callers that hold no identity are rate
//! limited per uid and summarised ([`denials`]).

mod bound;
mod chain;
mod denials;
mod record;
pub mod trace;
mod verify;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

pub use bound::{MAX_REASON_BYTES, MAX_RECORD_BYTES, MAX_VALUE_BYTES};
pub use chain::GENESIS;
pub use denials::{DenialLimit, DenialSummary};
pub use record::{DecisionFacts, Outcome, Record, TaskFacts, rfc3339};
pub use verify::{Problem, Verification, verify};

use denials::DenialLimiter;

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
    file: AuditFile,
    /// Bytes of whole records in the file: where a failed write is cut
    /// back to.
    size: u64,
    /// A failed write could not be cut back yet: do so before the next.
    torn: bool,
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
    denials: DenialLimiter,
    /// Whether the last write failed.
    failed: AtomicBool,
    /// Whether decisions are being refused because the trail cannot be
    /// written (`on_failure = "refuse"` only): health reports it.
    refusing: watch::Sender<bool>,
}

impl AuditLog {
    /// Opens (creating, mode 0600, with its directory 0700 if missing) the
    /// audit file for appending, and finds the end of the chain in it (or in
    /// the newest rotated file that has a record).
    pub fn open(path: &Path, rotation: Rotation, on_failure: OnAuditFailure) -> Result<Self, AuditError> {
        let error = |source| AuditError {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            atomic_file::create_dir(dir, 0o700).map_err(error)?;
        }
        let mut file = AuditFile::open(path).map_err(error)?;
        let (next_seq, last_hash) = match chain::last_link(&mut file.file).map_err(error)? {
            Some(link) => link,
            None => last_rotated_link(path, rotation.keep)
                .map_err(error)?
                .unwrap_or_else(chain::start),
        };
        let size = file.file.metadata().map_err(error)?.len();
        tracing::info!(path = %path.display(), next_seq, head = %last_hash, "audit trail opened");
        Ok(Self {
            path: path.to_owned(),
            rotation,
            on_failure,
            head: Mutex::new(Head {
                file,
                size,
                torn: false,
                next_seq,
                last_hash,
            }),
            denials: DenialLimiter::new(DenialLimit::default()),
            failed: AtomicBool::new(false),
            refusing: watch::Sender::new(false),
        })
    }

    /// Replaces the default rate limit on denial records.
    pub fn with_denial_limit(mut self, limit: DenialLimit) -> Self {
        self.denials = DenialLimiter::new(limit);
        self
    }

    /// The audit file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends records, chained, as one write: concurrent writers never
    /// interleave within a line, and a batch lands whole or not at all. An
    /// error is returned only when the decision must then be refused.
    /// The records are taken, not copied: a record is a few dozen strings.
    pub fn write(
        &self,
        records: impl IntoIterator<Item = Record, IntoIter: ExactSizeIterator>,
    ) -> Result<(), AuditError> {
        let records = records.into_iter();
        let count = records.len();
        let result = self.append(records);
        if result.is_err() {
            metrics().audit_failure(count);
        }
        self.note_outcome(result.is_err());
        match (result, self.on_failure) {
            (Err(error), OnAuditFailure::Issue) => {
                tracing::error!(%error, records = count, "audit records lost (on_failure = issue)");
                Ok(())
            }
            (result, _) => result,
        }
    }

    /// Follows whether decisions are being refused because the trail
    /// cannot be written: true from a failed write until one succeeds
    /// (never with `on_failure = "issue"`, which refuses nothing).
    pub fn refusing(&self) -> watch::Receiver<bool> {
        self.refusing.subscribe()
    }

    fn note_outcome(&self, failed: bool) {
        if self.failed.swap(failed, Ordering::Relaxed) == failed {
            return;
        }
        metrics().audit_trail_failing(failed);
        if self.on_failure == OnAuditFailure::Refuse {
            self.refusing.send_replace(failed);
        }
    }

    /// Records the denial of a caller that holds no identity (attestation
    /// failed, no entry matches, or the request was refused before
    /// attestation), unless that caller's uid has used up its allowance of
    /// such records for this window: then it is only counted, for the
    /// window's summary and the metrics. Never use this for issuance,
    /// validations or policy decisions about a caller with an identity.
    pub fn write_denial(&self, record: Record) -> Result<(), AuditError> {
        if self.denials.admit(&record) {
            return self.write([record]);
        }
        metrics().audit_denial_suppressed(record.rpc);
        Ok(())
    }

    /// Ends the rate limit's window: writes one summary record per uid that
    /// had denial records left out. Failures are logged (and counted), not
    /// returned: nobody waits on a summary.
    pub fn summarise_denials(&self) {
        let summaries = self.denials.end_window();
        if summaries.is_empty() {
            return;
        }
        let count = summaries.len();
        if let Err(error) = self.write(summaries) {
            tracing::error!(%error, records = count, "denial summaries lost");
        }
    }

    /// Summarises denials at the end of every window, for as long as the
    /// daemon runs (the summary must not wait for the next denial).
    pub async fn summarise_denials_every_window(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.denials.window());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate
        loop {
            ticks.tick().await;
            self.summarise_denials();
        }
    }

    fn append(&self, records: impl Iterator<Item = Record>) -> Result<(), AuditError> {
        let mut head = self.lock();
        if head.torn {
            self.cut_back(&mut head)?;
        }
        let mut buf = Vec::new();
        let mut seq = head.next_seq;
        let mut last_hash = head.last_hash.clone();
        for mut record in records {
            if bound::bound(&mut record) {
                metrics().audit_record_truncated();
            }
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
        if let Err(source) = head.file.write_all(&buf) {
            // Part of the batch may be on disk: remove it, so the file ends
            // with the last whole record and the chain goes on from there.
            head.torn = true;
            if let Err(error) = self.cut_back(&mut head) {
                tracing::error!(%error, "cannot cut a failed audit write back; retrying before the next");
            }
            return Err(AuditError {
                path: self.path.clone(),
                source,
            });
        }
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
        head.file = AuditFile::open(&self.path).map_err(error)?;
        head.size = 0;
        head.torn = false;
        tracing::info!(path = %self.path.display(), next_seq = head.next_seq, head = %head.last_hash, "audit trail rotated");
        Ok(())
    }

    /// Truncates the file to its last whole record.
    fn cut_back(&self, head: &mut Head) -> Result<(), AuditError> {
        head.file.truncate(head.size).map_err(|source| AuditError {
            path: self.path.clone(),
            source,
        })?;
        head.torn = false;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Head> {
        // A failed write leaves the head unchanged; the state is consistent.
        self.head.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The end of the chain in the newest rotated file that holds a record,
/// for a live file without one. That is `.1`, except after a power loss:
/// the trail is not fsynced per record, so the renames of a rotation can be
/// durable (a later atomic write fsyncs the directory) while the records in
/// the files are not, leaving the newest rotated files empty. Restarting
/// the chain there would break it for `audit verify`; it goes on from the
/// last record that survived. A missing number (a crash in the middle of a
/// rotation) is skipped; at most `keep` files are looked at.
fn last_rotated_link(path: &Path, keep: u32) -> io::Result<Option<(u64, String)>> {
    for n in 1..=keep.max(1) {
        if let Some(link) = chain::last_link_of(&rotated(path, n))? {
            return Ok(Some(link));
        }
    }
    Ok(None)
}

/// `audit.jsonl.N`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The open audit file. Unit tests can make its next write stop part-way,
/// as a full disk does.
#[derive(Debug)]
struct AuditFile {
    file: File,
    /// Only a regular file can be cut back (not `/dev/full`, a pipe, ...).
    regular: bool,
    #[cfg(test)]
    fail_after: Option<usize>,
}

impl AuditFile {
    fn open(path: &Path) -> io::Result<Self> {
        let file = atomic_file::open_append(path, 0o600)?;
        Ok(Self {
            regular: file.metadata()?.is_file(),
            file,
            #[cfg(test)]
            fail_after: None,
        })
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(written) = self.fail_after.take() {
            self.file.write_all(&buf[..written.min(buf.len())])?;
            return Err(io::Error::new(io::ErrorKind::StorageFull, "test: disk full"));
        }
        self.file.write_all(buf)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        match self.regular {
            true => self.file.set_len(len),
            false => Ok(()),
        }
    }
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
        log.write([Record::new(
            "FetchX509SVID",
            Outcome::Denied,
            "no identity issued",
            None,
        )])
        .unwrap();
        drop(log);
        // Reopened: the chain continues where it ended.
        let log = AuditLog::open(&path, NO_ROTATION, OnAuditFailure::Refuse).unwrap();
        log.write([Record::new("FetchX509SVID", Outcome::Issued, "x", None)])
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
            log.write([Record::new(
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
    fn after_a_power_loss_emptied_the_newest_files_the_chain_goes_on_from_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotation = Rotation {
            max_bytes: 2000,
            keep: 5,
        };
        let record = |i: usize| Record::new("FetchX509SVID", Outcome::Issued, format!("record {i}"), None);
        let log = AuditLog::open(&path, rotation, OnAuditFailure::Refuse).unwrap();
        for i in 0..40 {
            log.write([record(i)]).unwrap();
        }
        drop(log);
        assert!(rotated(&path, 3).exists());
        // What a power cut can leave: the renames durable, the records of
        // the live file and of `.1` (and a gap at `.2`) not.
        std::fs::write(&path, b"").unwrap();
        std::fs::write(rotated(&path, 1), b"").unwrap();
        std::fs::remove_file(rotated(&path, 2)).unwrap();
        let survived = verify(&[rotated(&path, 3)]).unwrap().last_seq.unwrap();
        let log = AuditLog::open(&path, rotation, OnAuditFailure::Refuse).unwrap();
        log.write([record(40)]).unwrap();
        let files = vec![rotated(&path, 3), rotated(&path, 1), path.clone()];
        let report = verify(&files).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.last_seq, Some(survived + 1));
    }

    #[test]
    fn a_write_that_fails_part_way_is_cut_back_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, NO_ROTATION, OnAuditFailure::Refuse).unwrap();
        let record = |i: usize| Record::new("FetchX509SVID", Outcome::Issued, format!("r{i}"), None);
        log.write([record(0), record(1)]).unwrap();
        let whole = std::fs::read(&path).unwrap();

        // The disk fills 30 bytes into the next batch of two records.
        log.lock().file.fail_after = Some(30);
        assert!(log.write([record(2), record(3)]).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the partial batch is gone");
        assert!(verify(std::slice::from_ref(&path)).unwrap().problems.is_empty());

        // Space again: the chain continues from the last whole record.
        log.write([record(4)]).unwrap();
        let report = verify(std::slice::from_ref(&path)).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.records, report.last_seq), (3, Some(2)));
        let last: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().lines().last().unwrap()).unwrap();
        assert_eq!(last["reason"], "r4");
    }

    #[test]
    fn a_torn_record_left_by_a_crash_is_cut_off_when_the_trail_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, NO_ROTATION, OnAuditFailure::Refuse).unwrap();
        log.write([Record::new("FetchX509SVID", Outcome::Issued, "r0", None)])
            .unwrap();
        drop(log);
        // A crash in the middle of the next write.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"seq":1,"prev":"ab"#).unwrap();
        let log = AuditLog::open(&path, NO_ROTATION, OnAuditFailure::Refuse).unwrap();
        log.write([Record::new("FetchX509SVID", Outcome::Issued, "r1", None)])
            .unwrap();
        let report = verify(std::slice::from_ref(&path)).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.records, report.last_seq), (2, Some(1)));
    }

    #[test]
    fn records_are_bounded_as_written_and_the_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, NO_ROTATION, OnAuditFailure::Refuse).unwrap();
        let huge = Record::new("ValidateJWTSVID", Outcome::Rejected, "x".repeat(1 << 20), None)
            .with_audience(&vec!["a".repeat(10_000); 1000]);
        log.write([huge]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= MAX_RECORD_BYTES, "{} bytes", text.len());
        let record: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert!(record["truncated"]["audience"].is_string(), "{record}");
        assert!(record["truncated"]["reason"].is_string(), "{record}");
        assert!(verify(&[path]).unwrap().problems.is_empty());
    }

    #[test]
    fn denials_beyond_the_limit_are_summarised_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let limit = DenialLimit {
            per_uid: 2,
            ..DenialLimit::default()
        };
        let log = AuditLog::open(&path, NO_ROTATION, OnAuditFailure::Refuse)
            .unwrap()
            .with_denial_limit(limit);
        for _ in 0..5 {
            log.write_denial(
                Record::new("FetchX509SVID", Outcome::Denied, "no entry", None).with_peer_ids(1, 1000, 1000),
            )
            .unwrap();
        }
        log.write([Record::new("FetchX509SVID", Outcome::Issued, "fetched", None)])
            .unwrap();
        log.summarise_denials();
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let outcomes: Vec<&str> = records.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
        assert_eq!(outcomes, ["denied", "denied", "issued", "suppressed"]);
        assert_eq!(records[3]["suppressed"]["count"], 3);
        assert_eq!(records[3]["uid"], 1000);
        assert!(verify(&[path]).unwrap().problems.is_empty());
    }

    #[test]
    fn unwritable_trail_refuses_unless_told_to_issue() {
        let full = Path::new("/dev/full");
        let refuse = AuditLog::open(full, NO_ROTATION, OnAuditFailure::Refuse).unwrap();
        let record = Record::new("FetchX509SVID", Outcome::Issued, "x", None);
        assert!(refuse.write([record.clone()]).is_err());
        let issue = AuditLog::open(full, NO_ROTATION, OnAuditFailure::Issue).unwrap();
        assert!(issue.write([record]).is_ok());
    }
}

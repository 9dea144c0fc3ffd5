//! `attestd audit verify`: walks the chain across the given files (oldest
//! first) and names every record where it breaks.
//!
//! An edited record no longer hashes to what its successor links to; a
//! deleted one leaves a gap in `seq` and a broken link; an inserted or
//! reordered one breaks both too. Editing the very last record (or
//! rewriting the whole suffix) is only caught against a head recorded
//! elsewhere: attestd logs the head when it opens and rotates the trail,
//! and the report prints it.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{GENESIS, hash_line};

/// One break in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// What verification found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Records read.
    pub records: u64,
    /// `seq` of the first record (0 unless older files were left out).
    pub first_seq: Option<u64>,
    /// `seq` of the last record.
    pub last_seq: Option<u64>,
    /// Hash of the last record's line: compare with an anchored head.
    pub head: Option<String>,
    /// Every break found.
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for problem in &self.problems {
            writeln!(f, "{problem}")?;
        }
        let verdict = if self.problems.is_empty() {
            "intact"
        } else {
            "BROKEN"
        };
        write!(f, "{verdict}: {} records", self.records)?;
        if let (Some(first), Some(last)) = (self.first_seq, self.last_seq) {
            write!(f, ", seq {first}..={last}")?;
        }
        if let Some(head) = &self.head {
            write!(f, ", head {head}")?;
        }
        writeln!(f)
    }
}

impl Verification {
    /// `--output json` of `audit verify`.
    pub fn to_json(&self) -> serde_json::Value {
        let problems: Vec<_> = self
            .problems
            .iter()
            .map(|p| serde_json::json!({ "file": p.file, "line": p.line, "message": p.message }))
            .collect();
        serde_json::json!({
            "intact": self.problems.is_empty(),
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": self.head,
            "problems": problems,
        })
    }
}

struct Position {
    file: PathBuf,
    line: usize,
    seq: Option<u64>,
    hash: String,
}

/// Verifies the chain through `files`, oldest first.
pub fn verify(files: &[PathBuf]) -> io::Result<Verification> {
    let mut report = Verification::default();
    let mut previous: Option<Position> = None;
    // The error names the file: `audit verify` is given several.
    let named =
        |file: &Path, error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", file.display()));
    for file in files {
        let reader = BufReader::new(std::fs::File::open(file).map_err(|e| named(file, e))?);
        for (index, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| named(file, e))?;
            if line.is_empty() {
                continue;
            }
            let here = check(&mut report, previous.as_ref(), file, index + 1, &line);
            previous = Some(here);
        }
    }
    report.head = previous.map(|p| p.hash);
    Ok(report)
}

/// Checks one record against the one before it.
fn check(
    report: &mut Verification,
    previous: Option<&Position>,
    file: &Path,
    line: usize,
    text: &[u8],
) -> Position {
    report.records += 1;
    let mut problem = |message: String| {
        report.problems.push(Problem {
            file: file.to_owned(),
            line,
            message,
        })
    };
    let record: Option<serde_json::Value> = serde_json::from_slice(text).ok();
    let seq = record.as_ref().and_then(|r| r["seq"].as_u64());
    let prev = record
        .as_ref()
        .and_then(|r| r["prev"].as_str().map(str::to_owned));
    match (&record, seq, &prev) {
        (None, _, _) => problem("not a JSON record (torn or edited)".into()),
        (Some(_), None, _) | (Some(_), _, None) => {
            problem("record has no seq/prev: not part of the chain".into())
        }
        _ => {}
    }
    if let (Some(seq), Some(prev)) = (seq, &prev) {
        match previous {
            None if seq == 0 && prev != GENESIS => {
                problem("the first record does not start the chain".into())
            }
            None => {}
            Some(before) => {
                if *prev != before.hash {
                    problem(format!(
                        "does not link to the record before it ({}:{}): that record was edited, or records \
                         were removed, inserted or reordered between them",
                        before.file.display(),
                        before.line
                    ));
                }
                match before.seq {
                    Some(b) if seq > b + 1 => problem(format!(
                        "records seq {}..{} are missing before this one",
                        b + 1,
                        seq - 1
                    )),
                    Some(b) if seq <= b => problem(format!(
                        "seq {seq} after seq {b}: records out of order or duplicated"
                    )),
                    _ => {}
                }
            }
        }
        report.first_seq.get_or_insert(seq);
        report.last_seq = Some(seq);
    }
    Position {
        file: file.to_owned(),
        line,
        seq,
        hash: hash_line(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, OnAuditFailure, Outcome, Record, Rotation};

    /// A trail of `n` records; returns its path and lines.
    fn trail(dir: &Path, n: usize) -> (PathBuf, Vec<String>) {
        let path = dir.join("audit.jsonl");
        let rotation = Rotation {
            max_bytes: u64::MAX,
            keep: 1,
        };
        let log = AuditLog::open(&path, rotation, OnAuditFailure::Refuse).unwrap();
        for i in 0..n {
            log.write([Record::new(
                "FetchX509SVID",
                Outcome::Issued,
                format!("r{i}"),
                None,
            )])
            .unwrap();
        }
        let lines = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        (path, lines)
    }

    fn problems_after(path: &Path, lines: &[String]) -> Vec<Problem> {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
        verify(&[path.to_owned()]).unwrap().problems
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (path, lines) = trail(dir.path(), 5);
        assert!(verify(std::slice::from_ref(&path)).unwrap().problems.is_empty());

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("\"r2\"", "\"nothing happened\"");
        let problems = problems_after(&path, &edited);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, 4);
        assert!(
            problems[0].message.contains("audit.jsonl:3"),
            "names the edited record: {}",
            problems[0]
        );

        let mut deleted = lines.clone();
        deleted.remove(1);
        let problems = problems_after(&path, &deleted);
        assert!(
            problems
                .iter()
                .any(|p| p.line == 2 && p.message.contains("missing")),
            "{problems:?}"
        );

        let mut inserted = lines.clone();
        inserted.insert(3, lines[2].clone());
        let problems = problems_after(&path, &inserted);
        assert!(
            problems
                .iter()
                .any(|p| p.line == 4 && p.message.contains("out of order or duplicated")),
            "{problems:?}"
        );

        let mut reordered = lines.clone();
        reordered.swap(1, 2);
        assert!(!problems_after(&path, &reordered).is_empty());

        let mut torn = lines.clone();
        torn[4].truncate(20);
        let problems = problems_after(&path, &torn);
        assert!(
            problems
                .iter()
                .any(|p| p.line == 5 && p.message.contains("not a JSON record")),
            "{problems:?}"
        );
    }
}

//! Reading audit files for `audit trace`: the files in the order given,
//! line by line, each line bounded; a line that cannot be read or is not a
//! record is reported and skipped, and so is a file that cannot be opened.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Deserialize;

use super::TraceProblem;
use crate::audit::{DecisionFacts, TaskFacts};

/// The longest line read. attestd bounds what callers put in a record to
/// [`crate::audit::MAX_RECORD_BYTES`]; only the operator's own entry text
/// (owner, description, labels) can make a line longer, never by this much.
pub(super) const MAX_LINE_BYTES: usize = 1 << 20;

/// The fields of an audit record the trace uses. Every field is optional,
/// so records of older versions (without tasks) read too.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct AuditLine {
    pub seq: Option<u64>,
    pub time: String,
    pub rpc: String,
    pub outcome: String,
    pub reason: String,
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub exe_path: Option<String>,
    pub sha256: Option<String>,
    pub selectors: Vec<String>,
    pub entry: Option<String>,
    pub entry_location: Option<String>,
    pub owner: Option<String>,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub spiffe_id: Option<String>,
    pub audience: Vec<String>,
    pub jti: Option<String>,
    pub not_after: Option<String>,
    pub task: Option<TaskFacts>,
    pub decision: Option<DecisionFacts>,
}

/// One record read, with where it stands in the trail.
#[derive(Debug)]
pub(super) struct Line {
    /// Order in the trail as read (files in the order given).
    pub position: u64,
    /// The record's time, parsed.
    pub at: Option<SystemTime>,
    pub record: AuditLine,
}

/// Reads every record of `files`, in order, handing each to `each`;
/// returns how many were read. Problems are appended to `problems`.
pub(super) fn read(files: &[PathBuf], problems: &mut Vec<TraceProblem>, mut each: impl FnMut(Line)) -> u64 {
    let mut position = 0;
    for file in files {
        let mut problem = |line: usize, message: String| {
            problems.push(TraceProblem {
                file: file.display().to_string(),
                line,
                problem: message,
            })
        };
        let mut reader = match File::open(file) {
            Ok(opened) => BufReader::new(opened),
            Err(error) => {
                problem(0, format!("cannot open: {error}"));
                continue;
            }
        };
        let mut buf = Vec::new();
        for number in 1.. {
            let too_long = match next_line(&mut reader, &mut buf, MAX_LINE_BYTES) {
                Ok(None) => break,
                Ok(Some(too_long)) => too_long,
                Err(error) => {
                    problem(number, format!("cannot read: {error}"));
                    break;
                }
            };
            if buf.is_empty() && !too_long {
                continue;
            }
            match parse(&buf, too_long) {
                Ok(line) => {
                    if line.at.is_none() {
                        problem(number, format!("time {:?} is not RFC 3339", line.record.time));
                    }
                    each(Line { position, ..line });
                    position += 1;
                }
                Err(message) => problem(number, message),
            }
        }
    }
    position
}

fn parse(text: &[u8], too_long: bool) -> Result<Line, String> {
    if too_long {
        return Err(format!(
            "longer than {MAX_LINE_BYTES} bytes: not a record attestd writes"
        ));
    }
    let record: AuditLine =
        serde_json::from_slice(text).map_err(|error| format!("not an audit record: {error}"))?;
    Ok(Line {
        position: 0,
        at: humantime::parse_rfc3339(&record.time).ok(),
        record,
    })
}

/// Reads the next line into `buf` (without its newline), keeping at most
/// `max` bytes of it. `None` at the end of the input; otherwise whether the
/// line was longer (its rest is skipped, never held in memory).
fn next_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(read_any.then_some(too_long));
        }
        read_any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        let room = max.saturating_sub(buf.len());
        too_long |= chunk.len() > room;
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = newline.map_or(available.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(Some(too_long));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_their_rest_skipped() {
        let input = format!("short\n{}\nnext\nlast", "x".repeat(100));
        let mut reader = io::BufReader::with_capacity(8, input.as_bytes());
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while let Some(too_long) = next_line(&mut reader, &mut buf, 10).unwrap() {
            lines.push((String::from_utf8(buf.clone()).unwrap(), too_long));
        }
        assert_eq!(
            lines,
            [
                ("short".to_owned(), false),
                ("x".repeat(10), true),
                ("next".to_owned(), false),
                ("last".to_owned(), false),
            ]
        );
    }

    #[test]
    fn bad_lines_and_missing_files_are_reported_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let older = dir.path().join("audit.jsonl.1");
        let newer = dir.path().join("audit.jsonl");
        std::fs::write(
            &older,
            "{\"seq\":0,\"time\":\"2030-06-01T12:00:00.000Z\",\"rpc\":\"StartTask\"}\nnot json\n\n",
        )
        .unwrap();
        std::fs::write(&newer, "{\"seq\":1,\"time\":\"yesterday\",\"rpc\":\"EndTask\"}\n").unwrap();
        let files = [older.clone(), dir.path().join("gone"), newer];
        let mut problems = Vec::new();
        let mut seen = Vec::new();
        let count = read(&files, &mut problems, |line| {
            seen.push((line.position, line.record.rpc, line.at.is_some()))
        });
        assert_eq!(count, 2);
        assert_eq!(
            seen,
            [
                (0, "StartTask".to_owned(), true),
                (1, "EndTask".to_owned(), false)
            ]
        );
        let described: Vec<(String, usize)> = problems.iter().map(|p| (p.file.clone(), p.line)).collect();
        assert_eq!(
            described,
            [
                (older.display().to_string(), 2),
                (dir.path().join("gone").display().to_string(), 0),
                (files[2].display().to_string(), 1),
            ]
        );
        assert!(
            problems[0].problem.starts_with("not an audit record"),
            "{problems:?}"
        );
        assert!(problems[2].problem.contains("not RFC 3339"), "{problems:?}");
    }
}

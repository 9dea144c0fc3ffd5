//! The hash chain: each record links to the sha256 of the previous record's
//! line, exactly as written (without its newline).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How far from the end to look for the last record (one record is a few KiB).
const TAIL: u64 = 1 << 20;

/// The hash a successor of `line` links to.
pub fn hash_line(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Where a new trail starts.
pub(super) fn start() -> (u64, String) {
    (0, GENESIS.to_owned())
}

/// The next sequence number and the hash to link to, from the last record
/// of `file` (opened for appending); `None` for an empty file. A torn last
/// line (a crash mid-write) is closed with a newline so new records start on
/// a line of their own; `audit verify` reports it.
pub(super) fn last_link(file: &mut File) -> io::Result<Option<(u64, String)>> {
    let tail = super::read_tail(file, TAIL)?;
    if tail.is_empty() {
        return Ok(None);
    }
    if !tail.ends_with(b"\n") {
        tracing::warn!("audit trail ends in a torn record; closing it");
        file.write_all(b"\n")?;
    }
    let complete = &tail[..tail.iter().rposition(|b| *b == b'\n').unwrap_or(0)];
    let Some(line) = complete.split(|b| *b == b'\n').rev().find(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let seq = serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|record| record["seq"].as_u64())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the last audit record is not a chained record; check the trail with `attestd audit verify`",
            )
        })?;
    Ok(Some((seq + 1, hash_line(line))))
}

/// [`last_link`] of the file at `path`, if it exists.
pub(super) fn last_link_of(path: &Path) -> io::Result<Option<(u64, String)>> {
    match std::fs::OpenOptions::new().read(true).append(true).open(path) {
        Ok(mut file) => last_link(&mut file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

//! The hash chain: each record links to the sha256 of the previous record's
//! line, exactly as written (without its newline).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How much is read at a time when looking backwards for a line break.
const CHUNK: u64 = 64 * 1024;

/// The hash a successor of `line` links to.
pub fn hash_line(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Where a new trail starts.
pub(super) fn start() -> (u64, String) {
    (0, GENESIS.to_owned())
}

/// The next sequence number and the hash to link to, from the last record
/// of `file` (opened for appending); `None` for a file without a whole
/// record. A torn tail (bytes after the last line break: a crash or a failed
/// write in the middle of a record) is cut off: that record was never
/// completed, so its decision was never carried out, and left in place it
/// would look like tampering to `audit verify`.
pub(super) fn last_link(file: &mut File) -> io::Result<Option<(u64, String)>> {
    let len = file.metadata()?.len();
    let end = rfind_newline(file, len)?.map_or(0, |i| i + 1);
    if end < len {
        tracing::warn!(
            bytes = len - end,
            "audit trail ends in a torn record; cutting it off"
        );
        file.set_len(end)?;
    }
    let Some(line) = last_line(file, end)? else {
        return Ok(None);
    };
    let seq = serde_json::from_slice::<serde_json::Value>(&line)
        .ok()
        .and_then(|record| record["seq"].as_u64())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the last audit record is not a chained record; check the trail with `attestd audit verify`",
            )
        })?;
    Ok(Some((seq + 1, hash_line(&line))))
}

/// The last non-empty line that ends before `end` (just after a newline),
/// however long it is.
fn last_line(file: &mut File, mut end: u64) -> io::Result<Option<Vec<u8>>> {
    while end > 0 {
        let newline = end - 1;
        let start = rfind_newline(file, newline)?.map_or(0, |i| i + 1);
        if start < newline {
            let mut line = vec![0; (newline - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut line)?;
            return Ok(Some(line));
        }
        end = start;
    }
    Ok(None)
}

/// Offset of the last `\n` before `before`, reading backwards in chunks.
fn rfind_newline(file: &mut File, before: u64) -> io::Result<Option<u64>> {
    let mut chunk_end = before;
    let mut buf = vec![0; CHUNK as usize];
    while chunk_end > 0 {
        let chunk_start = chunk_end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(chunk_end - chunk_start) as usize];
        file.seek(SeekFrom::Start(chunk_start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(chunk_start + i as u64));
        }
        chunk_end = chunk_start;
    }
    Ok(None)
}

/// [`last_link`] of the file at `path`, if it exists.
pub(super) fn last_link_of(path: &Path) -> io::Result<Option<(u64, String)>> {
    match std::fs::OpenOptions::new().read(true).append(true).open(path) {
        Ok(mut file) => last_link(&mut file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(content: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_chain_resumes_from_the_last_whole_record() {
        let whole = br#"{"seq":4,"prev":"x"}"#;
        let mut content = whole.to_vec();
        content.extend_from_slice(b"\n{\"seq\":5,\"pr");
        let (_dir, path) = file_with(&content);
        let link = last_link_of(&path).unwrap();
        assert_eq!(link, Some((5, hash_line(whole))));
        assert_eq!(std::fs::read(&path).unwrap(), [&whole[..], b"\n"].concat());
    }

    #[test]
    fn the_last_record_is_found_however_long_it_is() {
        let long = format!(
            r#"{{"seq":9,"prev":"x","reason":"{}"}}"#,
            "a".repeat(3 * CHUNK as usize)
        );
        let (_dir, path) = file_with(format!("{{\"seq\":8}}\n{long}\n\n").as_bytes());
        assert_eq!(
            last_link_of(&path).unwrap(),
            Some((10, hash_line(long.as_bytes())))
        );
    }

    #[test]
    fn a_file_without_a_whole_record_starts_over() {
        let (_dir, path) = file_with(b"{\"seq\":0,");
        assert_eq!(last_link_of(&path).unwrap(), None);
        assert!(std::fs::read(&path).unwrap().is_empty());
    }
}

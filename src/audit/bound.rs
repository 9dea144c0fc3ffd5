//! Bounds the size of every record. A local caller controls many of a
//! record's values: what it asks for (audiences, a token's unverified `jti`
//! and `sub`, text that ends up in the reason) and facts attestation reads
//! about it (its executable's path, cgroup names it chose, its groups). Left
//! alone, one call could write megabytes and rotate the real history away.
//!
//! Each such value is measured as written (JSON-escaped, so a string of
//! control characters counts six bytes each). A value over its limit keeps a
//! prefix and ends in `…(sha256:<hex>, <N> bytes)`, the digest and length of
//! the whole value, so a responder can still match it against a known one.
//! A list over its budget keeps the values that fit, in order. Every field
//! changed is named in the record's `truncated` map, with what was done.
//!
//! The entry's own fields (owner, description, labels) are written by the
//! operator and are not bounded here.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Record, TaskFacts};

/// At most this many bytes (JSON-escaped) per caller-controlled value:
/// `exe_path`, `spiffe_id`, `jti`, each selector and each audience, and a
/// task's each tool, resource and delegator.
pub const MAX_VALUE_BYTES: usize = 256;
/// At most this many bytes for `reason` (it quotes caller-supplied text,
/// such as a refused audience or a token's `kid`), and for a task's
/// purpose.
pub const MAX_REASON_BYTES: usize = 1024;
/// At most this many bytes per attestation note (human-readable, longer).
const MAX_NOTE_BYTES: usize = 512;
/// Budgets of whole lists, as written (values, quotes and commas).
const MAX_SELECTORS_BYTES: usize = 4096;
const MAX_NOTES_BYTES: usize = 2048;
const MAX_AUDIENCE_BYTES: usize = 4096;
/// Budget of each list of a task's facts (tools, resources, delegators).
const MAX_TASK_LIST_BYTES: usize = 2048;
/// A list as written: its brackets, then each value with its quotes and
/// a comma (the last value's comma standing for nothing, a byte spare).
const LIST_BRACKETS: usize = 2;
const QUOTES_AND_COMMA: usize = 3;
/// The longest marker a shortened value ends in: `…(sha256:` + 64 hex +
/// `, ` + up to 20 digits + ` bytes)`, rounded up.
const MARKER_BYTES: usize = 128;

/// The most a record's line can take, apart from the entry's
/// operator-written `owner`, `description` and `labels` (and apart from
/// `entry`/`entry_location`, which attestd derives from the policy files).
/// The unit test below fills every caller-controlled field with worst-case
/// content and checks it. (16 KiB until records carried a task's declared
/// intent, which adds up to about 7 KiB.)
pub const MAX_RECORD_BYTES: usize = 32 * 1024;

/// Shortens `record`'s caller-controlled values to their limits, naming
/// each field changed in `record.truncated`; returns whether any was.
pub(super) fn bound(record: &mut Record) -> bool {
    let mut changed = Changes(&mut record.truncated);
    changed.scalar("reason", &mut record.reason, MAX_REASON_BYTES);
    for (name, value) in [
        ("exe_path", &mut record.exe_path),
        ("spiffe_id", &mut record.spiffe_id),
        ("jti", &mut record.jti),
    ] {
        if let Some(value) = value {
            changed.scalar(name, value, MAX_VALUE_BYTES);
        }
    }
    changed.list(
        "selectors",
        &mut record.selectors,
        MAX_VALUE_BYTES,
        MAX_SELECTORS_BYTES,
    );
    changed.list(
        "attestation_notes",
        &mut record.attestation_notes,
        MAX_NOTE_BYTES,
        MAX_NOTES_BYTES,
    );
    changed.list(
        "audience",
        &mut record.audience,
        MAX_VALUE_BYTES,
        MAX_AUDIENCE_BYTES,
    );
    if let Some(task) = &mut record.task {
        bound_task(&mut changed, task);
    }
    !record.truncated.is_empty()
}

/// A task's declared intent is the caller's: its purpose, tools and
/// resources (and the delegators' SPIFFE IDs, which entries name, bounded
/// all the same). The ids and the digest are attestd's own.
fn bound_task(changed: &mut Changes<'_>, task: &mut TaskFacts) {
    changed.scalar("task.purpose", &mut task.purpose, MAX_REASON_BYTES);
    changed.list(
        "task.tools",
        &mut task.tools,
        MAX_VALUE_BYTES,
        MAX_TASK_LIST_BYTES,
    );
    changed.list(
        "task.resources",
        &mut task.resources,
        MAX_VALUE_BYTES,
        MAX_TASK_LIST_BYTES,
    );
    changed.list(
        "task.delegated_by",
        &mut task.delegated_by,
        MAX_VALUE_BYTES,
        MAX_TASK_LIST_BYTES,
    );
}

/// `value` itself if it fits in `max` bytes as written, else a prefix and
/// the digest and length of the whole. Used for anything caller-controlled
/// that goes into a record.
pub fn shorten(value: &str, max: usize) -> Option<String> {
    if json_len(value) <= max {
        return None;
    }
    let budget = max.saturating_sub(MARKER_BYTES);
    let mut used = 0;
    let prefix: String = value
        .chars()
        .take_while(|c| {
            used += json_char_len(*c);
            used <= budget
        })
        .collect();
    Some(format!(
        "{prefix}…(sha256:{}, {} bytes)",
        hex::encode(Sha256::digest(value.as_bytes())),
        value.len()
    ))
}

/// Records what was shortened, by field.
struct Changes<'a>(&'a mut std::collections::BTreeMap<String, String>);

impl Changes<'_> {
    fn scalar(&mut self, name: &str, value: &mut String, max: usize) {
        if let Some(short) = shorten(value, max) {
            self.0
                .insert(name.to_owned(), format!("shortened from {} bytes", value.len()));
            *value = short;
        }
    }

    /// Shortens each value to `per_value`, then keeps the values that fit
    /// in `budget` bytes as written.
    fn list<T>(&mut self, name: &str, values: &mut Vec<T>, per_value: usize, budget: usize)
    where
        T: AsRef<str> + From<String> + Clone + Serialize,
    {
        if fits(values, per_value, budget) {
            return;
        }
        let total = values.len();
        let mut used = LIST_BRACKETS;
        let mut shortened = 0;
        let mut kept = Vec::new();
        for value in values.iter() {
            let value = match shorten(value.as_ref(), per_value) {
                Some(short) => {
                    shortened += 1;
                    T::from(short)
                }
                None => value.clone(),
            };
            used += json_len(value.as_ref()) + QUOTES_AND_COMMA;
            if used > budget {
                break;
            }
            kept.push(value);
        }
        if kept.len() == total && shortened == 0 {
            return;
        }
        let note = match kept.len() == total {
            true => format!("{shortened} of {total} values shortened"),
            false => format!(
                "{} of {total} values kept ({shortened} shortened); sha256 of the JSON array of all: {}",
                kept.len(),
                hex_digest(values)
            ),
        };
        self.0.insert(name.to_owned(), note);
        *values = kept;
    }
}

/// Whether every value is within `per_value` and the list within
/// `budget`, as written: then nothing is copied (the usual case).
fn fits(values: &[impl AsRef<str>], per_value: usize, budget: usize) -> bool {
    let mut used = LIST_BRACKETS;
    values.iter().all(|value| {
        let len = json_len(value.as_ref());
        used += len + QUOTES_AND_COMMA;
        len <= per_value && used <= budget
    })
}

fn hex_digest(value: &impl Serialize) -> String {
    // A list of strings always serializes.
    hex::encode(Sha256::digest(serde_json::to_vec(value).unwrap_or_default()))
}

/// Bytes `s` takes inside a JSON string, as serde_json escapes it.
fn json_len(s: &str) -> usize {
    s.chars().map(json_char_len).sum()
}

fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Outcome, chain};

    /// The worst a caller can do to one record: every value it controls
    /// huge and made of characters that escape to six bytes.
    fn worst_case_record() -> Record {
        let nasty = |n: usize| "\u{1}".repeat(n);
        let mut record = Record::new("ValidateJWTSVID", Outcome::Rejected, nasty(1 << 20), None);
        record.exe_path = Some(nasty(70_000));
        record.spiffe_id = Some(nasty(70_000));
        record.jti = Some(nasty(70_000));
        record.selectors = (0..2000)
            .map(|i| format!("cgroup:path:/{i}{}", nasty(5000)).into())
            .collect();
        record.attestation_notes = vec![nasty(5000); 1000];
        record.audience = vec![nasty(5000); 2000];
        record.pid = Some(i32::MAX);
        record.uid = Some(u32::MAX);
        record.gid = Some(u32::MAX);
        record.sha256 = Some("f".repeat(64));
        record.serial = Some("f".repeat(40));
        record.seq = u64::MAX;
        record.prev = chain::GENESIS.to_owned();
        record.task = Some(TaskFacts {
            id: "f".repeat(32),
            parent: Some("f".repeat(32)),
            purpose: nasty(1 << 20),
            tools: vec![nasty(5000); 1000],
            resources: vec![nasty(5000); 1000],
            delegated_by: vec![nasty(5000); 1000],
            attestation: Some("f".repeat(64)),
        });
        record
    }

    #[test]
    fn a_worst_case_record_stays_within_the_bound() {
        let mut record = worst_case_record();
        assert!(bound(&mut record));
        let line = serde_json::to_vec(&record).unwrap();
        assert!(line.len() <= MAX_RECORD_BYTES, "{} bytes", line.len());
        for field in [
            "reason",
            "exe_path",
            "spiffe_id",
            "jti",
            "selectors",
            "attestation_notes",
            "audience",
            "task.purpose",
            "task.tools",
            "task.resources",
            "task.delegated_by",
        ] {
            assert!(
                record.truncated.contains_key(field),
                "{field} not marked: {:?}",
                record.truncated
            );
        }
    }

    #[test]
    fn ordinary_records_are_left_alone() {
        let mut record = Record::new("FetchJWTSVID", Outcome::Issued, "fetched", None);
        record.audience = vec!["https://tools.example.org".into(); 16];
        record.selectors = (0..100)
            .map(|g| format!("unix:supplementary_gid:{g}").into())
            .collect();
        record.exe_path = Some("/usr/local/bin/agent".into());
        record.task = Some(TaskFacts {
            id: "a".repeat(32),
            parent: None,
            purpose: "review PR 42 of acme/web".into(),
            tools: (0..32).map(|i| format!("github.tool_{i}")).collect(),
            resources: vec!["repo:acme/web".into()],
            delegated_by: vec!["spiffe://example.org/agent/lead".into()],
            attestation: Some("b".repeat(64)),
        });
        let before = serde_json::to_string(&record).unwrap();
        assert!(!bound(&mut record));
        assert_eq!(serde_json::to_string(&record).unwrap(), before);
    }

    #[test]
    fn a_shortened_value_keeps_a_prefix_and_the_digest_of_the_whole() {
        let value = format!("https://{}", "a".repeat(1000));
        let short = shorten(&value, MAX_VALUE_BYTES).unwrap();
        let digest = hex::encode(Sha256::digest(value.as_bytes()));
        assert!(short.starts_with("https://aaaa"), "{short}");
        assert!(
            short.ends_with(&format!("…(sha256:{digest}, 1008 bytes)")),
            "{short}"
        );
        assert!(json_len(&short) <= MAX_VALUE_BYTES);
        assert_eq!(shorten("short", MAX_VALUE_BYTES), None);
    }

    #[test]
    fn a_long_list_keeps_what_fits_and_says_how_many() {
        let mut record = Record::new("FetchX509SVID", Outcome::Denied, "x", None);
        record.selectors = (0..4000)
            .map(|g| format!("unix:supplementary_gid:{g}").into())
            .collect();
        assert!(bound(&mut record));
        let kept = record.selectors.len();
        assert!(kept > 100 && kept < 4000, "{kept}");
        assert_eq!(&*record.selectors[0], "unix:supplementary_gid:0");
        let note = &record.truncated["selectors"];
        assert!(
            note.starts_with(&format!("{kept} of 4000 values kept (0 shortened)")),
            "{note}"
        );
    }

    #[test]
    fn escaped_length_matches_serde_json() {
        let text = "a\"b\\c\nd\u{1}e\u{7f}é€😀\t\u{8}\u{c}\r";
        assert_eq!(json_len(text) + 2, serde_json::to_string(text).unwrap().len());
    }
}

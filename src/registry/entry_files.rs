//! The files of `entries_dir`, parsed, and kept between reloads so that a
//! reload parses only the files that changed: one edited file of a policy
//! of 100 files is parsed alone, and the entries of the other 99 are the
//! very same (shared) entries as before.
//!
//! A file is read again when its stamp (device, inode, size, modification
//! and change times) differs from when it was last read. A stamp alone can
//! miss a change: two writes of the same size within one tick of the file
//! system's clock leave the same times. So, as git does for its index, a
//! stamp is trusted only once the file's change time is well before the
//! moment it was taken; until then the file is read again on every reload
//! and its content compared by digest (and parsed only if that differs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::Entry;
use super::load::{Shared, resolve};
use crate::config::{self, Config, ConfigError, SvidConfig};
use crate::file_stamp::FileStamp;
use crate::spiffe_id::TrustDomain;

/// How long before a stamp was taken the file must have last changed for
/// the stamp to be trusted: far more than any file system's clock tick.
const SETTLED: Duration = Duration::from_secs(2);

/// The parsed files of `entries_dir` (see the module's documentation).
#[derive(Debug, Default)]
pub struct EntryFiles {
    /// What each file held when it was last read, by path: sorted, so in
    /// policy order.
    files: BTreeMap<PathBuf, ReadFile>,
    /// What the entries were resolved with (trust domain, `[svid]`, the
    /// `[[federation]]` trust domains): if any changes, every file is
    /// parsed again.
    resolved_with: Option<(TrustDomain, SvidConfig, Vec<TrustDomain>)>,
    /// Files parsed by the last refresh.
    parsed: usize,
}

#[derive(Debug)]
struct ReadFile {
    stamp: FileStamp,
    /// Whether `stamp` alone shows the file unchanged.
    settled: bool,
    /// SHA-256 of the text the entries were parsed from.
    digest: [u8; 32],
    entries: Vec<Arc<Entry>>,
}

/// Whether any later change to the file must show in its stamp: its last
/// change is [`SETTLED`] before `taken` (when the stamp was taken).
fn is_settled(stamp: &FileStamp, taken: SystemTime) -> bool {
    stamp
        .changed_at()
        .and_then(|changed| changed.checked_add(SETTLED))
        .is_some_and(|settled_at| settled_at < taken)
}

impl EntryFiles {
    /// Brings the files up to date with `entries_dir`: files gone are
    /// dropped, new and changed files parsed. On an error (a file that
    /// cannot be read or parsed) the files read so far are kept, and the
    /// broken one is read again next time.
    pub(super) fn refresh(&mut self, config: &Config) -> Result<(), ConfigError> {
        let resolved_with = (
            config.trust_domain.clone(),
            config.svid,
            config.federated_trust_domains(),
        );
        if self.resolved_with.as_ref() != Some(&resolved_with) {
            self.files.clear();
            self.resolved_with = Some(resolved_with);
        }
        self.parsed = 0;
        let paths = list(config.entries_dir.as_deref())?;
        self.files.retain(|path, _| paths.binary_search(path).is_ok());
        let mut to_read = Vec::new();
        for path in paths {
            let taken = SystemTime::now();
            let stamp = FileStamp::of(&path).map_err(|e| read_error(&path, &e))?;
            let known = self.files.get(&path);
            if known.is_some_and(|file| file.settled && file.stamp == stamp) {
                continue;
            }
            to_read.push(ToRead {
                settled: is_settled(&stamp, taken),
                stamp,
                digest: known.map(|file| file.digest),
                path,
            });
        }
        let mut first_error = None;
        let reads = read_all(&to_read, config);
        for (file, read) in to_read.into_iter().zip(reads) {
            match read {
                Ok(Read::Unchanged) => {
                    if let Some(known) = self.files.get_mut(&file.path) {
                        known.stamp = file.stamp;
                        known.settled = file.settled;
                    }
                }
                Ok(Read::Parsed { digest, entries }) => {
                    self.parsed += 1;
                    let read = ReadFile {
                        stamp: file.stamp,
                        settled: file.settled,
                        digest,
                        entries,
                    };
                    self.files.insert(file.path, read);
                }
                // The first broken file in policy order is the one reported.
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The entries of every file, in policy order.
    pub(super) fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.files.values().flat_map(|file| &file.entries)
    }

    /// How many entries the files hold.
    pub(super) fn entry_count(&self) -> usize {
        self.files.values().map(|file| file.entries.len()).sum()
    }

    /// How many files the last refresh parsed (new or changed ones).
    pub fn parsed(&self) -> usize {
        self.parsed
    }
}

/// A file whose stamp does not show it unchanged.
struct ToRead {
    path: PathBuf,
    stamp: FileStamp,
    settled: bool,
    /// The digest of the text it was last parsed from, if it was.
    digest: Option<[u8; 32]>,
}

/// What reading a [`ToRead`] found.
enum Read {
    /// The same text as last time.
    Unchanged,
    /// New or changed text, parsed.
    Parsed {
        digest: [u8; 32],
        entries: Vec<Arc<Entry>>,
    },
}

/// The most threads that parse files at once.
const MAX_PARSERS: usize = 4;

/// Reads and parses `files`, on up to [`MAX_PARSERS`] threads when there
/// are several (parsing TOML is most of loading a large policy, and files
/// parse independently); the results in the order of `files`. Each thread
/// holds one file's text and document at a time.
fn read_all(files: &[ToRead], config: &Config) -> Vec<Result<Read, ConfigError>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_PARSERS)
        .min(files.len());
    if threads <= 1 {
        return files.iter().map(|file| read_one(file, config)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, Result<Read, ConfigError>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(file) = files.get(i) else {
                            return done;
                        };
                        done.push((i, read_one(file, config)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, read)| read).collect()
}

/// Reads one file; parses it unless its text is what was parsed last time.
fn read_one(file: &ToRead, config: &Config) -> Result<Read, ConfigError> {
    let text = config::read_file(&file.path)?;
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    if file.digest == Some(digest) {
        return Ok(Read::Unchanged);
    }
    let entries = parse(&file.path, &text, config)?;
    Ok(Read::Parsed { digest, entries })
}

/// The entries of one file, resolved.
fn parse(path: &Path, text: &str, config: &Config) -> Result<Vec<Arc<Entry>>, ConfigError> {
    let raw = config::parse_entries_file(
        path,
        text,
        &config.trust_domain,
        &config.federated_trust_domains(),
    )?;
    let mut shared = Shared::default();
    // Not `collect()`: it would reuse the buffer of the raw entries, each
    // some 40 times the size of a pointer, and keep all of it.
    let mut entries = Vec::with_capacity(raw.len());
    entries.extend(
        raw.into_iter()
            .map(|raw| Arc::new(resolve(&config.svid, raw, &mut shared))),
    );
    Ok(entries)
}

/// The `*.toml` files of `entries_dir`, sorted so policy order is stable.
fn list(entries_dir: Option<&Path>) -> Result<Vec<PathBuf>, ConfigError> {
    let Some(dir) = entries_dir else {
        return Ok(Vec::new());
    };
    let read_error = |e: std::io::Error| ConfigError {
        file: dir.to_owned(),
        line: None,
        key: Some("entries_dir".into()),
        message: format!("cannot read directory: {e}"),
    };
    let mut files = Vec::new();
    for item in std::fs::read_dir(dir).map_err(read_error)? {
        let path = item.map_err(read_error)?.path();
        if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_error(path: &Path, e: &std::io::Error) -> ConfigError {
    ConfigError {
        file: path.to_owned(),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed_at(time: SystemTime) -> FileStamp {
        let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        FileStamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (0, 0),
            ctime: (since.as_secs() as i64, i64::from(since.subsec_nanos())),
        }
    }

    #[test]
    fn a_stamp_is_trusted_only_once_the_file_changed_well_before_it_was_taken() {
        let now = SystemTime::now();
        assert!(is_settled(&changed_at(now - Duration::from_secs(3)), now));
        assert!(!is_settled(&changed_at(now - Duration::from_millis(1500)), now));
        assert!(!is_settled(&changed_at(now), now));
        assert!(
            !is_settled(&changed_at(now + Duration::from_secs(60)), now),
            "a change time ahead of the clock"
        );
        let before_1970 = FileStamp {
            ctime: (-5, 0),
            ..changed_at(now)
        };
        assert!(!is_settled(&before_1970, now));
    }

    #[test]
    fn entries_of_a_file_share_the_selectors_and_owners_they_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        let entry = |name: &str| {
            format!(
                "[[entry]]\nspiffe_id = \"spiffe://example.org/{name}\"\nselectors = [\"unix:uid:1000\", \"unix:gid:{}\"]\nowner = \"o\"\n",
                name.len()
            )
        };
        let text = [entry("a"), entry("bb"), entry("c")].concat();
        let config = Config::parse(Path::new("main.toml"), "trust_domain = \"example.org\"\n").unwrap();
        let entries = parse(&path, &text, &config).unwrap();
        let text_of = |entry: usize, kind: &str| {
            let selectors = &entries[entry].selectors;
            let selector = selectors.iter().find(|s| s.kind() == kind).unwrap();
            selector.as_str().as_ptr()
        };
        assert_eq!(text_of(0, "unix:uid"), text_of(1, "unix:uid"));
        assert_eq!(text_of(0, "unix:uid"), text_of(2, "unix:uid"));
        assert_eq!(text_of(0, "unix:gid"), text_of(2, "unix:gid"), "both gid 1");
        assert_ne!(text_of(0, "unix:gid"), text_of(1, "unix:gid"));
        assert!(Arc::ptr_eq(&entries[0].owner, &entries[2].owner), "one owner");
    }

    #[test]
    fn a_file_read_with_a_settled_stamp_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let entries_dir = dir.path().join("entries.d");
        std::fs::create_dir(&entries_dir).unwrap();
        let file = entries_dir.join("a.toml");
        std::fs::write(&file, "").unwrap();
        let text = format!("trust_domain = \"example.org\"\nentries_dir = {entries_dir:?}\n");
        let config = Config::parse(Path::new("main.toml"), &text).unwrap();
        let mut files = EntryFiles::default();
        files.refresh(&config).unwrap();
        assert_eq!(files.parsed(), 1);

        // As if read long ago: then only a new stamp makes it read again.
        let read = files.files.get_mut(&file).unwrap();
        read.settled = true;
        read.digest = [0; 32];
        files.refresh(&config).unwrap();
        assert_eq!(files.parsed(), 0, "same stamp: not read");

        std::fs::write(&file, "# changed\n").unwrap();
        files.refresh(&config).unwrap();
        assert_eq!(files.parsed(), 1, "new stamp: read and parsed");
    }

    #[test]
    fn files_parse_apart_and_the_first_broken_one_in_policy_order_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let entries_dir = dir.path().join("entries.d");
        std::fs::create_dir(&entries_dir).unwrap();
        let entry = |n: usize| {
            format!(
                "[[entry]]\nspiffe_id = \"spiffe://example.org/{n}\"\nselectors = [\"unix:uid:{n}\"]\nowner = \"o\"\n"
            )
        };
        for n in 0..12 {
            std::fs::write(entries_dir.join(format!("{n:02}.toml")), entry(n)).unwrap();
        }
        std::fs::write(entries_dir.join("05.toml"), "[[entry]\n").unwrap();
        std::fs::write(entries_dir.join("09.toml"), "[[entry]\n").unwrap();
        let text = format!("trust_domain = \"example.org\"\nentries_dir = {entries_dir:?}\n");
        let config = Config::parse(Path::new("main.toml"), &text).unwrap();
        let mut files = EntryFiles::default();

        let error = files.refresh(&config).unwrap_err().to_string();
        assert!(error.contains("05.toml"), "{error}");
        assert_eq!(files.parsed(), 10, "every other file is kept");

        std::fs::write(entries_dir.join("05.toml"), entry(5)).unwrap();
        std::fs::write(entries_dir.join("09.toml"), entry(9)).unwrap();
        files.refresh(&config).unwrap();
        assert_eq!(files.parsed(), 2, "only the broken ones are read again");
        let ids: Vec<String> = files.entries().map(|e| e.spiffe_id.to_string()).collect();
        let expected: Vec<String> = (0..12).map(|n| format!("spiffe://example.org/{n}")).collect();
        assert_eq!(ids, expected, "policy order");
    }
}

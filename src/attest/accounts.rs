//! User and group names for the `unix:user`, `unix:group` and
//! `unix:supplementary_group` selectors, remembered briefly.
//!
//! Asking NSS for a name costs about 25 µs of each attestation on the
//! benchmark VM (a connect to nscd, a stat of nsswitch.conf, then reading
//! and scanning `/etc/passwd` and `/etc/group`), every call, for names that
//! rarely change. A name is remembered only while the file it is kept in
//! is unchanged (device, inode, size, modification and change times: any
//! edit, or a replacing rename, forgets every name at the next lookup) and
//! for at most [`NAME_TTL`], which bounds how late a name from another NSS
//! source (LDAP, systemd's dynamic users) is seen, and an edit the stamp
//! misses (see [`crate::file_stamp`]). Without the file, nothing is
//! remembered.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Group, Uid, User};

use crate::file_stamp::FileStamp;

/// How long a name is remembered at most.
pub const NAME_TTL: Duration = Duration::from_secs(1);
/// Names remembered per kind; beyond it the cache starts over (callers
/// cannot choose their ids, so this is only a backstop).
const MAX_NAMES: usize = 4096;

/// Cached user and group names.
#[derive(Debug)]
pub(super) struct Accounts {
    users: NameCache,
    groups: NameCache,
}

impl Default for Accounts {
    fn default() -> Self {
        Self {
            users: NameCache::new("/etc/passwd"),
            groups: NameCache::new("/etc/group"),
        }
    }
}

/// Whether a name not remembered may be asked of NSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    /// Ask NSS (which may block: nscd, a remote directory).
    Resolve,
    /// Only what is remembered: for attestation on a runtime thread.
    RememberedOnly,
}

/// A name was not remembered, and [`Lookup::RememberedOnly`] forbade asking.
#[derive(Debug)]
pub(super) struct NotRemembered;

impl Accounts {
    /// The name of user `uid`, if the host knows one.
    pub fn user(&self, uid: u32, lookup: Lookup) -> Result<Option<String>, NotRemembered> {
        self.users.name(uid, lookup, |uid| {
            User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
        })
    }

    /// The name of group `gid`, if the host knows one.
    pub fn group(&self, gid: u32, lookup: Lookup) -> Result<Option<String>, NotRemembered> {
        self.groups.name(gid, lookup, |gid| {
            Group::from_gid(Gid::from_raw(gid)).ok().flatten().map(|g| g.name)
        })
    }
}

/// Names of one kind, valid for one version of the file they come from.
#[derive(Debug)]
struct NameCache {
    file: &'static str,
    // std Mutex: held to look up or insert, never across NSS or an await.
    state: Mutex<CacheState>,
}

#[derive(Debug)]
struct CacheState {
    stamp: Option<FileStamp>,
    filled_at: Instant,
    names: HashMap<u32, Option<String>>,
}

impl NameCache {
    fn new(file: &'static str) -> Self {
        Self {
            file,
            state: Mutex::new(CacheState {
                stamp: None,
                filled_at: Instant::now(),
                names: HashMap::new(),
            }),
        }
    }

    fn name(
        &self,
        id: u32,
        lookup: Lookup,
        resolve: impl FnOnce(u32) -> Option<String>,
    ) -> Result<Option<String>, NotRemembered> {
        let Ok(stamp) = FileStamp::of(Path::new(self.file)) else {
            return match lookup {
                Lookup::Resolve => Ok(resolve(id)),
                Lookup::RememberedOnly => Err(NotRemembered),
            };
        };
        {
            let mut state = self.lock();
            let stale = state.stamp != Some(stamp) || state.filled_at.elapsed() > NAME_TTL;
            if stale || state.names.len() >= MAX_NAMES {
                *state = CacheState {
                    stamp: Some(stamp),
                    filled_at: Instant::now(),
                    names: HashMap::new(),
                };
            }
            if let Some(name) = state.names.get(&id) {
                return Ok(name.clone());
            }
        }
        if lookup == Lookup::RememberedOnly {
            return Err(NotRemembered);
        }
        // Outside the lock: NSS may be slow (a remote directory).
        let name = resolve(id);
        let mut state = self.lock();
        // Kept under the stamp taken before resolving: if the file changed
        // meanwhile, the next lookup sees another stamp and forgets it.
        if state.stamp == Some(stamp) {
            state.names.insert(id, name.clone());
        }
        Ok(name)
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // Every update leaves the state consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn cache_on(file: &std::path::Path) -> NameCache {
        NameCache::new(Box::leak(file.to_str().unwrap().to_owned().into_boxed_str()))
    }

    /// A cache of the names in a file holding `text` (the directory lives
    /// as long as the cache is used).
    fn cache_of(text: &str) -> (tempfile::TempDir, std::path::PathBuf, NameCache) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("names");
        std::fs::write(&file, text).unwrap();
        let cache = cache_on(&file);
        (dir, file, cache)
    }

    /// A lookup that may ask NSS (`resolve`), which is never refused.
    fn resolved(cache: &NameCache, id: u32, resolve: impl FnOnce(u32) -> Option<String>) -> Option<String> {
        cache
            .name(id, Lookup::Resolve, resolve)
            .expect("a lookup that may resolve is never refused")
    }

    #[test]
    fn a_name_is_remembered_until_its_file_changes() {
        let (_dir, passwd, cache) = cache_of("alice:x:1000:1000::/home/alice:/bin/sh\n");
        let asked = Cell::new(0);
        let resolve = |name: &'static str| {
            let asked = &asked;
            move |_| {
                asked.set(asked.get() + 1);
                Some(name.to_owned())
            }
        };
        assert_eq!(resolved(&cache, 1000, resolve("alice")).as_deref(), Some("alice"));
        assert_eq!(
            resolved(&cache, 1000, resolve("ignored")).as_deref(),
            Some("alice")
        );
        assert_eq!(asked.get(), 1);

        // A rename of the user rewrites the file: the old name is forgotten.
        std::fs::write(&passwd, "bob:x:1000:1000::/home/bob:/bin/sh\n").unwrap();
        assert_eq!(resolved(&cache, 1000, resolve("bob")).as_deref(), Some("bob"));
        assert_eq!(asked.get(), 2);
    }

    #[test]
    fn unknown_ids_are_remembered_as_unknown_and_a_missing_file_caches_nothing() {
        let (dir, _group, cache) = cache_of("wheel:x:10:\n");
        assert_eq!(resolved(&cache, 4242, |_| None), None);
        assert_eq!(resolved(&cache, 4242, |_| Some("late".into())), None);

        let missing = cache_on(&dir.path().join("absent"));
        assert_eq!(resolved(&missing, 1, |_| Some("a".into())).as_deref(), Some("a"));
        assert_eq!(resolved(&missing, 1, |_| Some("b".into())).as_deref(), Some("b"));
    }

    #[test]
    fn remembered_only_never_asks_nss() {
        let (dir, _passwd, cache) = cache_of("x");
        let never = |_| -> Option<String> { panic!("NSS asked") };
        assert!(cache.name(7, Lookup::RememberedOnly, never).is_err());
        resolved(&cache, 7, |_| Some("seven".into()));
        let remembered = cache.name(7, Lookup::RememberedOnly, never).unwrap();
        assert_eq!(remembered.as_deref(), Some("seven"));
        // Without the file nothing is remembered, so nothing can be told.
        let missing = cache_on(&dir.path().join("absent"));
        assert!(missing.name(7, Lookup::RememberedOnly, never).is_err());
    }

    #[test]
    fn names_expire_after_the_ttl() {
        let (_dir, _passwd, cache) = cache_of("x");
        assert_eq!(
            resolved(&cache, 7, |_| Some("old".into())).as_deref(),
            Some("old")
        );
        cache.lock().filled_at = Instant::now() - NAME_TTL - Duration::from_millis(1);
        assert_eq!(
            resolved(&cache, 7, |_| Some("new".into())).as_deref(),
            Some("new")
        );
    }

    #[test]
    fn this_hosts_root_user_resolves() {
        assert_eq!(
            Accounts::default().user(0, Lookup::Resolve).unwrap().as_deref(),
            Some("root")
        );
    }
}

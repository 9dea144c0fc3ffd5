//! Entries by SPIFFE ID: who still grants an identity named in a token is
//! looked up, not scanned for. The IDs are not copied: the table maps a
//! hash of each ID to its first (and last) entry, and the entries with the
//! same hash are chained in policy order (a lookup skips those of another
//! ID whose hash collides).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use super::Entry;
use super::index::position;
use crate::spiffe_id::SpiffeId;

/// The end of a chain.
const NONE: u32 = u32::MAX;

#[derive(Debug, Default)]
pub(super) struct BySpiffeId {
    hasher: RandomState,
    /// The first and the last entry whose SPIFFE ID has this hash.
    chains: HashMap<u64, [u32; 2]>,
    /// The next entry after entry `i` with the same hash, or [`NONE`].
    next: Vec<u32>,
}

impl BySpiffeId {
    pub(super) fn build(entries: &[Arc<Entry>]) -> Self {
        let mut built = Self {
            hasher: RandomState::new(),
            chains: HashMap::with_capacity(entries.len()),
            next: Vec::with_capacity(entries.len()),
        };
        for entry in entries {
            built.add(entry);
        }
        built
    }

    /// Adds the next entry, in policy order.
    fn add(&mut self, entry: &Entry) {
        let i = position(self.next.len());
        self.next.push(NONE);
        let hash = self.hasher.hash_one(entry.spiffe_id.as_str());
        match self.chains.get_mut(&hash) {
            Some([_, last]) => {
                self.next[*last as usize] = i;
                *last = i;
            }
            None => {
                self.chains.insert(hash, [i, i]);
            }
        }
    }

    /// Indexes of the entries of `entries` (those this was built from)
    /// that grant `spiffe_id`, ascending.
    pub(super) fn granting<'a>(
        &'a self,
        spiffe_id: &'a SpiffeId,
        entries: &'a [Arc<Entry>],
    ) -> impl Iterator<Item = usize> + Clone + 'a {
        let head = self
            .chains
            .get(&self.hasher.hash_one(spiffe_id.as_str()))
            .map_or(NONE, |[first, _]| *first);
        Chain {
            next: &self.next,
            at: head,
        }
        .filter(move |&i| entries[i].spiffe_id == *spiffe_id)
    }
}

/// Walks one chain of entries.
#[derive(Clone)]
struct Chain<'a> {
    next: &'a [u32],
    at: u32,
}

impl Iterator for Chain<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.at == NONE {
            return None;
        }
        let current = self.at as usize;
        self.at = *self.next.get(current)?;
        Some(current)
    }
}

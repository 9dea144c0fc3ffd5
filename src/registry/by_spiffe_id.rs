//! Entries by SPIFFE ID: who still grants an identity named in a token is
//! looked up, not scanned for. The IDs are not copied: the table maps a
//! hash of each ID to its first entry, and the entries with the same hash
//! are chained in policy order (a lookup skips those of another ID whose
//! hash collides).

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
    /// The first entry whose SPIFFE ID has this hash.
    first: HashMap<u64, u32>,
    /// The next entry after entry `i` with the same hash, or [`NONE`].
    next: Vec<u32>,
}

impl BySpiffeId {
    pub(super) fn build(entries: &[Arc<Entry>]) -> Self {
        let hasher = RandomState::new();
        let mut first: HashMap<u64, u32> = HashMap::new();
        let mut next = vec![NONE; entries.len()];
        // Backwards, so each chain comes out in policy order.
        for (i, entry) in entries.iter().enumerate().rev() {
            let head = first
                .entry(hasher.hash_one(entry.spiffe_id.as_str()))
                .or_insert(NONE);
            next[i] = *head;
            *head = position(i);
        }
        first.shrink_to_fit();
        Self { hasher, first, next }
    }

    /// Indexes of the entries of `entries` (those this was built from)
    /// that grant `spiffe_id`, ascending.
    pub(super) fn granting<'a>(
        &'a self,
        spiffe_id: &'a SpiffeId,
        entries: &'a [Arc<Entry>],
    ) -> impl Iterator<Item = usize> + Clone + 'a {
        let head = self
            .first
            .get(&self.hasher.hash_one(spiffe_id.as_str()))
            .copied()
            .unwrap_or(NONE);
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

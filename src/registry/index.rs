//! The selector index: finds the entries all of whose selectors a caller
//! has, at a cost that does not grow with the policy.
//!
//! Each entry is filed once, under its rarest selector (the one the fewest
//! entries name). A caller's selectors are looked up; only the entries
//! filed under them are candidates, and a candidate matches when its other
//! selectors are among the caller's too. Filing each entry under every
//! selector and counting hits per entry (what this index did before) walks
//! every entry that shares any selector with the caller: all of them, in a
//! policy that binds 100,000 entries to `unix:uid:1000` and a digest each.
//!
//! The cost of a lookup is the caller's selectors of the kinds the policy
//! names, plus the entries filed under those of them some entry names. An
//! entry is filed under a common selector only if all its selectors are
//! common: a policy of many entries naming the very same selectors (or
//! only selectors each shared by many entries) still makes a caller that
//! has them walk all those entries.

use std::collections::HashMap;

use super::Entry;
use crate::selector::{Selector, SelectorSet};

#[derive(Debug, Default)]
pub(super) struct SelectorIndex {
    /// Each selector some entry names: its number, and where the entries
    /// filed under it are recorded.
    selectors: HashMap<Selector, Filed>,
    /// The kinds (`unix:uid`, ...) some entry names: a caller's selectors
    /// of other kinds are not looked up.
    kinds: Vec<Box<str>>,
    /// The entries filed under each selector, one record each, grouped by
    /// selector and in policy order within a group: the entry's index, how
    /// many other selectors it has, and their numbers in ascending order.
    /// One lookup reads one run of this array: the usual entry, filed
    /// under a selector of its own, is the two numbers `[index, 0]`.
    records: Vec<u32>,
}

/// A selector of the index.
#[derive(Debug, Clone, Copy)]
struct Filed {
    number: u32,
    /// The records of the entries filed under it: `records[start..end]`.
    start: u32,
    end: u32,
}

/// A position in the index's arrays (or an entry's index), as 4 bytes
/// rather than 8. The arrays hold a few items per entry, and each entry
/// takes hundreds of bytes, so no policy that fits in memory reaches
/// `u32::MAX`.
pub(super) fn position(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Builds a [`SelectorIndex`] one entry at a time, so the policy's other
/// lookups are built in the same pass over the entries: reading 100,000
/// entries scattered in memory costs more than what is done with each.
#[derive(Debug, Default)]
pub(super) struct IndexBuilder {
    selectors: HashMap<Selector, Filed>,
    kinds: Vec<Box<str>>,
    /// Each entry's selectors' numbers, back to back in policy order.
    numbered: Vec<u32>,
    /// How many selectors each entry has.
    lengths: Vec<u32>,
}

impl IndexBuilder {
    /// A builder for about `entries` entries.
    pub(super) fn with_capacity(entries: usize) -> Self {
        Self {
            // Sized for a selector of its own per entry, the common case.
            selectors: HashMap::with_capacity(entries),
            kinds: Vec::new(),
            numbered: Vec::with_capacity(entries),
            lengths: Vec::with_capacity(entries),
        }
    }

    /// Adds the next entry, in policy order.
    pub(super) fn add(&mut self, entry: &Entry) {
        for selector in &entry.selectors {
            let number = match self.selectors.get(selector) {
                Some(filed) => filed.number,
                None => {
                    let number = position(self.selectors.len());
                    let filed = Filed {
                        number,
                        start: 0,
                        end: 0,
                    };
                    self.selectors.insert(selector.clone(), filed);
                    if !self.kinds.iter().any(|kind| **kind == *selector.kind()) {
                        self.kinds.push(selector.kind().into());
                    }
                    number
                }
            };
            self.numbered.push(number);
        }
        self.lengths.push(position(entry.selectors.len()));
    }

    pub(super) fn finish(self) -> SelectorIndex {
        let Self {
            mut selectors,
            kinds,
            numbered,
            lengths,
        } = self;

        // How many entries name each selector; each entry is filed under
        // its rarest one (the first of equals).
        let mut named_by = vec![0u32; selectors.len()];
        for &number in &numbered {
            named_by[number as usize] += 1;
        }
        let filed_under: Vec<Option<u32>> = own_selectors(&numbered, &lengths)
            .map(|own| own.iter().copied().min_by_key(|&n| named_by[n as usize]))
            .collect();

        // Lay out each selector's records (a counting sort, so each group
        // keeps policy order): sizes, then starts, then the records.
        let mut starts = vec![0u32; selectors.len() + 1];
        for (&length, filed) in lengths.iter().zip(&filed_under) {
            if let Some(number) = filed {
                starts[*number as usize + 1] += 1 + length;
            }
        }
        for n in 1..starts.len() {
            starts[n] += starts[n - 1];
        }
        let mut records = vec![0u32; starts[selectors.len()] as usize];
        let mut next = starts.clone();
        for (i, (own, filed)) in own_selectors(&numbered, &lengths).zip(&filed_under).enumerate() {
            let Some(number) = *filed else { continue };
            let at = next[number as usize] as usize;
            let record = &mut records[at..at + 1 + own.len()];
            record[0] = position(i);
            record[1] = position(own.len() - 1);
            // The entry's selectors are distinct: all but one are others.
            let others = own.iter().copied().filter(|&n| n != number);
            for (slot, other) in record[2..].iter_mut().zip(others) {
                *slot = other;
            }
            record[2..].sort_unstable();
            next[number as usize] += position(record.len());
        }
        for filed in selectors.values_mut() {
            let n = filed.number as usize;
            (filed.start, filed.end) = (starts[n], starts[n + 1]);
        }
        SelectorIndex {
            selectors,
            kinds,
            records,
        }
    }
}

/// Each entry's selectors' numbers, from `numbered` (back to back) and
/// `lengths` (how many each entry has).
fn own_selectors<'a>(mut numbered: &'a [u32], lengths: &'a [u32]) -> impl Iterator<Item = &'a [u32]> {
    lengths.iter().map(move |&length| {
        let (own, rest) = numbered.split_at(length as usize);
        numbered = rest;
        own
    })
}

impl SelectorIndex {
    /// Whether some entry names a selector of `kind` (`unix:sha256`, ...).
    pub(super) fn names_kind(&self, kind: &str) -> bool {
        self.kinds.iter().any(|named| **named == *kind)
    }

    /// Indexes of the entries all of whose selectors are in `selectors`,
    /// ascending. An entry with no selectors matches nothing (the config
    /// refuses them: an empty list would match every process).
    pub(super) fn matching(&self, selectors: &SelectorSet) -> Vec<usize> {
        let mut held: Vec<Filed> = selectors
            .iter()
            .filter(|selector| self.kinds.iter().any(|kind| **kind == *selector.kind()))
            .filter_map(|selector| self.selectors.get(selector).copied())
            .collect();
        if held.is_empty() {
            return Vec::new();
        }
        held.sort_unstable_by_key(|filed| filed.number);
        let holds = |number: &u32| held.binary_search_by_key(number, |filed| filed.number).is_ok();
        let mut matched = Vec::new();
        for filed in &held {
            let mut records = &self.records[filed.start as usize..filed.end as usize];
            while let [entry, others, rest @ ..] = records {
                let (others, after) = rest.split_at((*others as usize).min(rest.len()));
                if others.iter().all(holds) {
                    matched.push(*entry as usize);
                }
                records = after;
            }
        }
        // Each entry is filed once, so there are no duplicates to remove.
        matched.sort_unstable();
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe_id::SpiffeId;
    use std::sync::Arc;

    fn entry(path: &str, selectors: &[&str]) -> Arc<Entry> {
        Arc::new(Entry {
            id: super::super::EntryId(0),
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/{path}")).unwrap(),
            selectors: selectors.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            owner: "o".into(),
            description: None,
            labels: Default::default(),
            x509_ttl: std::time::Duration::from_secs(60),
            jwt_ttl: std::time::Duration::from_secs(60),
            jwt_audiences: Box::default(),
            dns_names: Box::default(),
            hint: None,
            federates_with: Box::default(),
            owner_expires: None,
            tasks: None,
            may_ask_for_others: false,
            jwt_audiences_written_empty: false,
            remote_entry: None,
            location: crate::config::Location {
                file: std::path::Path::new("t").into(),
                line: 1,
            },
        })
    }

    fn build(entries: &[Arc<Entry>]) -> SelectorIndex {
        let mut builder = IndexBuilder::with_capacity(entries.len());
        for entry in entries {
            builder.add(entry);
        }
        builder.finish()
    }

    fn set(selectors: &[&str]) -> SelectorSet {
        selectors.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn all_selectors_must_match() {
        let entries = vec![
            entry("a", &["unix:uid:1000"]),
            entry("b", &["unix:uid:1000", "unix:gid:50"]),
            entry("c", &["unix:uid:2000"]),
        ];
        let index = build(&entries);
        assert_eq!(index.matching(&set(&["unix:uid:1000"])), vec![0]);
        assert_eq!(
            index.matching(&set(&["unix:uid:1000", "unix:gid:50"])),
            vec![0, 1]
        );
        assert_eq!(index.matching(&set(&["unix:gid:50"])), Vec::<usize>::new());
        assert_eq!(index.matching(&set(&[])), Vec::<usize>::new());
    }

    #[test]
    fn an_entry_is_filed_under_its_rarest_selector_only() {
        let digest = |i: usize| format!("unix:sha256:{i:064x}");
        let entries: Vec<Arc<Entry>> = (0..50)
            .map(|i| entry(&format!("e{i}"), &["unix:uid:1000", &digest(i)]))
            .chain([entry("uid-only", &["unix:uid:1000"])])
            .collect();
        let index = build(&entries);
        let records = |selector: &str| {
            let filed = index.selectors[&Selector::parse(selector).unwrap()];
            &index.records[filed.start as usize..filed.end as usize]
        };
        assert_eq!(
            records("unix:uid:1000"),
            [50, 0],
            "only the entry with no rarer selector is filed under the shared one"
        );
        let uid = index.selectors[&Selector::parse("unix:uid:1000").unwrap()].number;
        assert_eq!(records(&digest(7)), [7, 1, uid], "entry 7 needs the uid too");
        assert_eq!(
            index.matching(&set(&["unix:uid:1000", &digest(7), "unix:gid:5"])),
            [7, 50]
        );
        assert_eq!(index.matching(&set(&[&digest(7)])), Vec::<usize>::new());
        assert_eq!(index.matching(&set(&["unix:uid:1000"])), [50]);
    }

    #[test]
    fn an_entry_with_no_selectors_matches_nothing() {
        let mut empty = entry("empty", &[]);
        Arc::get_mut(&mut empty).unwrap().selectors = SelectorSet::new();
        let index = build(&[empty, entry("a", &["unix:uid:1"])]);
        assert_eq!(index.matching(&set(&["unix:uid:1"])), [1]);
        assert_eq!(index.matching(&set(&["unix:uid:2"])), Vec::<usize>::new());
    }

    /// The selectors a generated entry or caller may name: few enough that
    /// entries share them and callers hold several.
    fn pool() -> Vec<Selector> {
        (0..4)
            .map(|i| format!("unix:uid:{i}"))
            .chain((0..4).map(|i| format!("unix:gid:{i}")))
            .chain((0..4).map(|i| format!("systemd:id:s{i}.service")))
            .map(|s| Selector::parse(&s).unwrap())
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// The index finds exactly what checking every entry's selectors
        /// against the caller's finds, in policy order.
        #[test]
        fn finds_what_a_scan_of_every_entry_finds(
            policy in proptest::collection::vec(proptest::collection::vec(0usize..12, 1..4), 0..40),
            callers in proptest::collection::vec(proptest::collection::vec(0usize..12, 0..8), 1..8),
        ) {
            let pool = pool();
            let entries: Vec<Arc<Entry>> = policy
                .iter()
                .enumerate()
                .map(|(i, picks)| {
                    let names: Vec<&str> = picks.iter().map(|&p| pool[p].as_str()).collect();
                    entry(&format!("e{i}"), &names)
                })
                .collect();
            let index = build(&entries);
            for picks in callers {
                let caller: SelectorSet = picks.iter().map(|&p| pool[p].clone()).collect();
                let scanned: Vec<usize> = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.selectors.iter().all(|s| caller.contains(s)))
                    .map(|(i, _)| i)
                    .collect();
                proptest::prop_assert_eq!(index.matching(&caller), scanned);
            }
        }
    }
}

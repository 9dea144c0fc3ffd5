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
use std::sync::Arc;

use super::Entry;
use crate::selector::{Selector, SelectorSet};

#[derive(Debug, Default)]
pub(super) struct SelectorIndex {
    /// Each selector some entry names, numbered from 0.
    numbers: HashMap<Selector, u32>,
    /// The kinds (`unix:uid`, ...) some entry names: a caller's selectors
    /// of other kinds are not looked up.
    kinds: Vec<Box<str>>,
    /// The entries filed under selector `n`, ascending:
    /// `filed[filed_start[n]..filed_start[n + 1]]`.
    filed_start: Vec<u32>,
    filed: Vec<u32>,
    /// The numbers of entry `e`'s selectors other than the one it is filed
    /// under, ascending: `others[others_start[e]..others_start[e + 1]]`.
    others_start: Vec<u32>,
    others: Vec<u32>,
}

/// A position in one of the index's arrays, as 4 bytes rather than 8.
/// The arrays hold one item per entry or per selector of an entry, and
/// each entry takes hundreds of bytes, so no policy that fits in memory
/// reaches `u32::MAX`.
pub(super) fn position(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl SelectorIndex {
    pub(super) fn build(entries: &[Arc<Entry>]) -> Self {
        let mut numbers: HashMap<Selector, u32> = HashMap::new();
        let mut kinds: Vec<Box<str>> = Vec::new();
        // How many entries name each selector.
        let mut named_by: Vec<u32> = Vec::new();
        // Each entry's selector numbers, back to back.
        let mut selectors: Vec<u32> = Vec::with_capacity(entries.iter().map(|e| e.selectors.len()).sum());
        for entry in entries {
            for selector in &entry.selectors {
                let number = *numbers.entry(selector.clone()).or_insert_with(|| {
                    named_by.push(0);
                    position(named_by.len() - 1)
                });
                named_by[number as usize] += 1;
                selectors.push(number);
                if !kinds.iter().any(|kind| **kind == *selector.kind()) {
                    kinds.push(selector.kind().into());
                }
            }
        }
        numbers.shrink_to_fit();

        // File each entry under its rarest selector (the first of equals),
        // and keep the others, sorted, to check candidates against.
        let mut filed_under: Vec<Option<u32>> = Vec::with_capacity(entries.len());
        let mut others_start = Vec::with_capacity(entries.len() + 1);
        let mut others = Vec::with_capacity(selectors.len().saturating_sub(entries.len()));
        others_start.push(0);
        let mut rest = selectors.as_slice();
        for entry in entries {
            let (own, after) = rest.split_at(entry.selectors.len());
            rest = after;
            let rarest = own.iter().copied().min_by_key(|&n| named_by[n as usize]);
            let start = others.len();
            others.extend(own.iter().copied().filter(|&n| Some(n) != rarest));
            others[start..].sort_unstable();
            filed_under.push(rarest);
            others_start.push(position(others.len()));
        }

        // Group the entries by the selector they are filed under (a
        // counting sort, so each group keeps policy order).
        let mut filed_start = vec![0u32; named_by.len() + 1];
        for &number in filed_under.iter().flatten() {
            filed_start[number as usize + 1] += 1;
        }
        for n in 1..filed_start.len() {
            filed_start[n] += filed_start[n - 1];
        }
        let mut next = filed_start.clone();
        let mut filed = vec![0u32; filed_under.iter().flatten().count()];
        for (i, number) in filed_under.iter().enumerate() {
            if let Some(number) = number {
                let slot = &mut next[*number as usize];
                filed[*slot as usize] = position(i);
                *slot += 1;
            }
        }
        Self {
            numbers,
            kinds,
            filed_start,
            filed,
            others_start,
            others,
        }
    }

    /// Indexes of the entries all of whose selectors are in `selectors`,
    /// ascending. An entry with no selectors matches nothing (the config
    /// refuses them: an empty list would match every process).
    pub(super) fn matching(&self, selectors: &SelectorSet) -> Vec<usize> {
        let mut held: Vec<u32> = selectors
            .iter()
            .filter(|selector| self.kinds.iter().any(|kind| **kind == *selector.kind()))
            .filter_map(|selector| self.numbers.get(selector).copied())
            .collect();
        if held.is_empty() {
            return Vec::new();
        }
        held.sort_unstable();
        let mut matched = Vec::new();
        for &number in &held {
            for &entry in self.filed_under(number) {
                if self
                    .others_of(entry)
                    .iter()
                    .all(|other| held.binary_search(other).is_ok())
                {
                    matched.push(entry as usize);
                }
            }
        }
        // Each entry is filed once, so there are no duplicates to remove.
        matched.sort_unstable();
        matched
    }

    fn filed_under(&self, number: u32) -> &[u32] {
        let n = number as usize;
        &self.filed[self.filed_start[n] as usize..self.filed_start[n + 1] as usize]
    }

    fn others_of(&self, entry: u32) -> &[u32] {
        let e = entry as usize;
        &self.others[self.others_start[e] as usize..self.others_start[e + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe_id::SpiffeId;

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
            jwt_audiences: vec![],
            dns_names: vec![],
            hint: None,
            owner_expires: None,
            tasks: None,
            may_ask_for_others: false,
            location: crate::config::Location {
                file: std::path::Path::new("t").into(),
                line: 1,
            },
        })
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
        let index = SelectorIndex::build(&entries);
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
        let index = SelectorIndex::build(&entries);
        let uid = index.numbers[&Selector::parse("unix:uid:1000").unwrap()];
        assert_eq!(
            index.filed_under(uid),
            [50],
            "only the entry with no rarer selector is filed under the shared one"
        );
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
        let index = SelectorIndex::build(&[empty, entry("a", &["unix:uid:1"])]);
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
            let index = SelectorIndex::build(&entries);
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

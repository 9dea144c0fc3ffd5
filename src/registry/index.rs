//! The selector index: each selector maps to the entries that name it, so a
//! lookup walks only the caller's selectors and the entries they touch,
//! never the whole policy.

use std::collections::HashMap;
use std::sync::Arc;

use super::Entry;
use crate::selector::{Selector, SelectorSet};

#[derive(Debug, Default)]
pub(super) struct SelectorIndex {
    by_selector: HashMap<Selector, Vec<usize>>,
    /// How many selectors entry `i` needs.
    needed: Vec<usize>,
}

impl SelectorIndex {
    pub(super) fn build(entries: &[Arc<Entry>]) -> Self {
        let mut by_selector: HashMap<Selector, Vec<usize>> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            for selector in &entry.selectors {
                by_selector.entry(selector.clone()).or_default().push(i);
            }
        }
        Self {
            by_selector,
            needed: entries.iter().map(|e| e.selectors.len()).collect(),
        }
    }

    /// Indexes of the entries all of whose selectors are in `selectors`,
    /// ascending. Counts hits per entry: an entry matches when every one of
    /// its (distinct) selectors was hit.
    pub(super) fn matching(&self, selectors: &SelectorSet) -> Vec<usize> {
        let mut hits: HashMap<usize, usize> = HashMap::new();
        for selector in selectors {
            for &i in self.by_selector.get(selector).into_iter().flatten() {
                *hits.entry(i).or_default() += 1;
            }
        }
        let mut matched: Vec<usize> = hits
            .into_iter()
            .filter(|&(i, n)| n == self.needed[i])
            .map(|(i, _)| i)
            .collect();
        matched.sort_unstable();
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe_id::SpiffeId;

    fn entry(path: &str, selectors: &[&str]) -> Arc<Entry> {
        Arc::new(Entry {
            id: path.into(),
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
                file: "t".into(),
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
}

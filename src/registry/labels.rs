//! An entry's labels, held compactly: a policy of 100,000 entries keeps
//! one set per entry, and as a `BTreeMap` each set cost a B-tree node
//! (about 540 bytes for the smallest) plus an allocation per key and value.

use std::collections::BTreeMap;
use std::fmt;

/// Free key/value pairs (agent name, version, policy domain), sorted by
/// key, each key once: the keys and values back to back in one string.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// `key0 value0 key1 value1 ...`, with no separators.
    text: Box<str>,
    /// Where each key and each value ends in `text`.
    ends: Box<[usize]>,
}

impl Labels {
    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.ends.chunks_exact(2).scan(0, |start, ends| {
            let key = &self.text[*start..ends[0]];
            let value = &self.text[ends[0]..ends[1]];
            *start = ends[1];
            Some((key, value))
        })
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(key, _)| key)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|&(k, _)| k == key).map(|(_, value)| value)
    }

    /// How many pairs.
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The pairs as a map (for records that own them).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        let mut text = String::with_capacity(map.iter().map(|(k, v)| k.len() + v.len()).sum());
        let mut ends = Vec::with_capacity(map.len() * 2);
        for (key, value) in map {
            text.push_str(key);
            ends.push(text.len());
            text.push_str(value);
            ends.push(text.len());
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

/// Later pairs replace earlier ones with the same key, as in a map.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let map: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();
        Self::from(&map)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_pairs_sorted_by_key_with_the_last_value_of_a_key() {
        let labels: Labels = [
            ("version", "2"),
            ("agent", "reviewer"),
            ("", ""),
            ("version", "3"),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            [("", ""), ("agent", "reviewer"), ("version", "3")]
        );
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["", "agent", "version"]);
        assert_eq!(labels.get("agent"), Some("reviewer"));
        assert_eq!(labels.get("team"), None);
        assert_eq!(labels.len(), 3);
        assert_eq!(
            format!("{labels:?}"),
            r#"{"": "", "agent": "reviewer", "version": "3"}"#
        );

        let map = labels.to_map();
        assert_eq!(Labels::from(&map), labels, "round trip through a map");
        assert!(Labels::default().is_empty());
        assert_eq!(Labels::default().iter().count(), 0);
    }
}

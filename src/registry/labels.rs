//! An entry's labels, held compactly: a policy of 100,000 entries keeps
//! one set per entry, and as a `BTreeMap` each set cost a B-tree node
//! (about 540 bytes for the smallest) plus an allocation per key and value.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

/// Free key/value pairs (agent name, version, policy domain), sorted by
/// key, each key once, in one string.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// Each key then its value, as `<length in bytes>:<text>`, back to
    /// back: `5:agent8:reviewer7:version5:2.3.1`. Sorted and without
    /// duplicate keys, so equal sets are equal strings.
    encoded: Box<str>,
}

impl Labels {
    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut rest: &str = &self.encoded;
        std::iter::from_fn(move || Some((next_part(&mut rest)?, next_part(&mut rest)?)))
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
        self.iter().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// The pairs as a map (for records that own them).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }
}

/// The next `<length>:<text>` of `rest`, which moves past it. `None` at
/// the end (what [`Labels`] writes always reads back whole).
fn next_part<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let (length, after) = rest.split_once(':')?;
    let length: usize = length.parse().ok()?;
    let part = after.get(..length)?;
    *rest = after.get(length..)?;
    Some(part)
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        let texts = || map.iter().flat_map(|(key, value)| [key, value]);
        // Room for each text and a length of up to 4 digits before it.
        let mut encoded = String::with_capacity(texts().map(|text| text.len() + 5).sum());
        for text in texts() {
            // Writing to a String cannot fail.
            let _ = write!(encoded, "{}:{text}", text.len());
        }
        Self {
            encoded: encoded.into_boxed_str(),
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
        let labels: Labels = [("version", "2"), ("agent", "rév:1"), ("", ""), ("version", "3")]
            .into_iter()
            .collect();
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            [("", ""), ("agent", "rév:1"), ("version", "3")]
        );
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["", "agent", "version"]);
        assert_eq!(labels.get("agent"), Some("rév:1"));
        assert_eq!(labels.get("team"), None);
        assert_eq!(labels.len(), 3);
        assert_eq!(
            format!("{labels:?}"),
            r#"{"": "", "agent": "rév:1", "version": "3"}"#
        );

        let map = labels.to_map();
        assert_eq!(Labels::from(&map), labels, "round trip through a map");
        assert!(Labels::default().is_empty());
        assert_eq!(Labels::default().iter().count(), 0);
    }
}

//! Selectors: `type:key:value` facts about a workload, compared exactly.
//!
//! Attestation produces a [`SelectorSet`] for a caller; a registration entry
//! names the selectors a caller must all have. The value may itself contain
//! ':' (a cgroup path, say): only the first two separators split.

use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};
use smallvec::SmallVec;

/// Why a string is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// Fewer than three `:`-separated parts, or an empty part.
    #[error("selector {0:?} must be \"type:key:value\" with no empty part")]
    Malformed(String),
    /// The `type:key` pair is not one attestd ever produces, so an entry
    /// naming it could never match: almost certainly a typo.
    #[error("unknown selector kind \"{0}\" (known: {known})", known = KNOWN_KINDS.join(", "))]
    UnknownKind(String),
    /// A numeric selector whose value is not a decimal number; a name
    /// there most likely meant the selector that takes names.
    #[error("selector \"{kind}\" needs a decimal number{}", suggestion(kind, value))]
    NotANumber {
        /// The selector's `type:key`.
        kind: String,
        /// The value written.
        value: String,
    },
    /// `unix:sha256` wants 64 lowercase hex digits.
    #[error("unix:sha256 needs 64 lowercase hex digits")]
    BadDigest,
    /// `unix:path` wants an absolute path.
    #[error("unix:path needs an absolute path")]
    RelativePath,
    /// A delegated-cgroup selector wants `<uid>:<name>`.
    #[error("{0} needs \"<uid>:<name>\" (the delegating uid, then the name)")]
    NotDelegated(String),
}

/// Every `type:key` attestd can produce. Entries may only name these.
pub const KNOWN_KINDS: &[&str] = &[
    "unix:uid",
    "unix:gid",
    "unix:user",
    "unix:group",
    "unix:supplementary_gid",
    "unix:supplementary_group",
    "unix:path",
    "unix:sha256",
    "systemd:id",
    "systemd:slice",
    "systemd:user_unit",
    "systemd:user_slice",
    "cgroup:path",
    "container:id",
    "container:user_id",
];

/// Kinds whose value is `<uid>:<name>`: facts named inside a cgroup subtree
/// delegated to that uid, kept apart from the system's own names.
const DELEGATED_KINDS: &[&str] = &["systemd:user_unit", "systemd:user_slice", "container:user_id"];

const NUMERIC_KINDS: &[&str] = &["unix:uid", "unix:gid", "unix:supplementary_gid"];

/// One selector. Ordered and hashable so sets and indexes can hold it.
/// The text is shared: the registry's index and every entry naming the
/// same selector hold one copy (a policy of 100,000 entries would
/// otherwise keep each selector's text twice).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    text: Arc<str>,
    kind_len: usize,
}

impl Selector {
    /// Builds a selector from attestation facts. Attestation only calls this
    /// with kinds from [`KNOWN_KINDS`].
    pub fn new(kind: &str, key: &str, value: impl fmt::Display) -> Self {
        // Written on the stack, then copied once into the shared text: a
        // `String` first would be a second allocation for each of a
        // caller's selectors on every call.
        let mut text = StackText::default();
        let _ = write!(text, "{kind}:{key}:{value}");
        Self {
            kind_len: kind.len() + 1 + key.len(),
            text: Arc::from(text.as_str()),
        }
    }

    /// The whole selector text, shared (the audit record holds it too).
    pub fn shared_text(&self) -> Arc<str> {
        Arc::clone(&self.text)
    }

    /// Parses a selector written in policy, checking that attestd can ever
    /// produce it.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut parts = text.splitn(3, ':');
        let (Some(kind), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SelectorError::Malformed(text.to_owned()));
        };
        if kind.is_empty() || key.is_empty() || value.is_empty() {
            return Err(SelectorError::Malformed(text.to_owned()));
        }
        let kind_key = &text[..kind.len() + 1 + key.len()];
        if !KNOWN_KINDS.contains(&kind_key) {
            return Err(SelectorError::UnknownKind(kind_key.to_owned()));
        }
        validate_value(kind_key, value)?;
        Ok(Self {
            text: text.into(),
            kind_len: kind_key.len(),
        })
    }

    /// The `type:key` part, e.g. `unix:uid`.
    pub fn kind(&self) -> &str {
        &self.text[..self.kind_len]
    }

    /// The value part.
    pub fn value(&self) -> &str {
        &self.text[self.kind_len + 1..]
    }

    /// The whole selector text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A selector's text as it is written: on the stack up to 128 bytes (every
/// selector but a long path's).
#[derive(Default)]
struct StackText(SmallVec<[u8; 128]>);

impl StackText {
    fn as_str(&self) -> &str {
        // Only `&str`s are ever written in: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// For a name given to a numeric selector: the selector that takes it.
fn suggestion(kind: &str, value: &str) -> String {
    let by_name = match kind {
        "unix:uid" => "unix:user",
        "unix:gid" => "unix:group",
        "unix:supplementary_gid" => "unix:supplementary_group",
        _ => return String::new(),
    };
    let looks_like_a_name = value.chars().any(|c| c.is_ascii_alphabetic())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    match looks_like_a_name {
        true => format!(" (did you mean {by_name}:{value}?)"),
        false => String::new(),
    }
}

fn validate_value(kind: &str, value: &str) -> Result<(), SelectorError> {
    if NUMERIC_KINDS.contains(&kind) && value.parse::<u32>().is_err() {
        return Err(SelectorError::NotANumber {
            kind: kind.to_owned(),
            value: value.to_owned(),
        });
    }
    let value = match DELEGATED_KINDS.contains(&kind) {
        true => delegated_name(value).ok_or_else(|| SelectorError::NotDelegated(kind.to_owned()))?,
        false => value,
    };
    match kind {
        "unix:sha256" if !is_lower_hex64(value) => Err(SelectorError::BadDigest),
        "container:user_id" if !is_lower_hex64(value) => Err(SelectorError::NotDelegated(kind.to_owned())),
        "unix:path" if !value.starts_with('/') => Err(SelectorError::RelativePath),
        _ => Ok(()),
    }
}

/// The name part of a delegated selector's `<uid>:<name>`.
fn delegated_name(value: &str) -> Option<&str> {
    let (uid, name) = value.split_once(':')?;
    (uid.parse::<u32>().is_ok() && !name.is_empty()).then_some(name)
}

fn is_lower_hex64(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A set of selectors, ordered so that it prints and compares stably.
///
/// A sorted vector rather than a tree: sets are small (an entry names one
/// to a few selectors, a caller has a dozen), and a B-tree's smallest node
/// is about 400 bytes, the bulk of a large policy's memory. Up to two
/// selectors are held inline, as most entries name no more: a policy of
/// 100,000 entries then makes 100,000 fewer allocations.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct SelectorSet(SmallVec<[Selector; 2]>);

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a selector.
    pub fn insert(&mut self, selector: Selector) {
        if let Err(at) = self.0.binary_search(&selector) {
            self.0.insert(at, selector);
        }
    }

    /// Whether the set holds this selector.
    pub fn contains(&self, selector: &Selector) -> bool {
        self.0.binary_search(selector).is_ok()
    }

    /// Number of selectors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The selectors, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Selector> {
        self.0.iter()
    }

    /// The selectors as strings, for logs.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.as_str().to_owned()).collect()
    }

    /// The selectors' texts, shared with the set (for the audit trail).
    pub fn shared_texts(&self) -> Vec<Arc<str>> {
        self.0.iter().map(Selector::shared_text).collect()
    }
}

impl fmt::Debug for SelectorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(&self.0).finish()
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        let mut selectors: SmallVec<[Selector; 2]> = iter.into_iter().collect();
        selectors.sort_unstable();
        selectors.dedup();
        selectors.shrink_to_fit();
        Self(selectors)
    }
}

impl<'a> IntoIterator for &'a SelectorSet {
    type Item = &'a Selector;
    type IntoIter = std::slice::Iter<'a, Selector>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_and_value_with_colons() {
        let s = Selector::parse("cgroup:path:/a:b/c").unwrap();
        assert_eq!(s.kind(), "cgroup:path");
        assert_eq!(s.value(), "/a:b/c");
        assert_eq!(s, Selector::new("cgroup", "path", "/a:b/c"));
    }

    /// Texts up to, at and past the stack buffer's 128 bytes (13 of them
    /// `cgroup:path:/`) are written whole, multi-byte characters included.
    #[test]
    fn builds_selectors_of_any_length() {
        let paths = [0, 1, 114, 115, 116, 4096].map(|len| format!("/{}", "a".repeat(len)));
        for path in paths.into_iter().chain([format!("/{}", "é".repeat(2048))]) {
            let s = Selector::new("cgroup", "path", &path);
            assert_eq!(s.as_str(), format!("cgroup:path:{path}"));
            assert_eq!((s.kind(), s.value()), ("cgroup:path", path.as_str()));
            assert_eq!(&*s.shared_text(), s.as_str());
        }
    }

    #[test]
    fn rejects_malformed_and_unknown() {
        assert!(matches!(
            Selector::parse("unix:uid"),
            Err(SelectorError::Malformed(_))
        ));
        assert!(matches!(
            Selector::parse("unix::1"),
            Err(SelectorError::Malformed(_))
        ));
        assert!(matches!(
            Selector::parse("unix:uid:"),
            Err(SelectorError::Malformed(_))
        ));
        assert!(matches!(
            Selector::parse("k8s:ns:default"),
            Err(SelectorError::UnknownKind(_))
        ));
        assert!(matches!(
            Selector::parse("unix:uid:abc"),
            Err(SelectorError::NotANumber { .. })
        ));
        assert_eq!(
            Selector::parse("unix:uid:bob").unwrap_err().to_string(),
            "selector \"unix:uid\" needs a decimal number (did you mean unix:user:bob?)"
        );
        assert_eq!(
            Selector::parse("unix:gid:-1").unwrap_err().to_string(),
            "selector \"unix:gid\" needs a decimal number"
        );
        assert_eq!(
            Selector::parse("unix:uid:1 000").unwrap_err().to_string(),
            "selector \"unix:uid\" needs a decimal number"
        );
        assert_eq!(Selector::parse("unix:sha256:ABCD"), Err(SelectorError::BadDigest));
        assert_eq!(
            Selector::parse("unix:path:bin/sh"),
            Err(SelectorError::RelativePath)
        );
    }

    #[test]
    fn accepts_every_known_kind() {
        let digest = "a".repeat(64);
        for text in [
            "unix:uid:0".to_owned(),
            "unix:user:root".to_owned(),
            format!("unix:sha256:{digest}"),
            "unix:path:/usr/bin/env".to_owned(),
            "systemd:id:foo.service".to_owned(),
            format!("container:id:{digest}"),
            "systemd:user_unit:1000:nginx.service".to_owned(),
            "systemd:user_slice:1000:app.slice".to_owned(),
            format!("container:user_id:1000:{digest}"),
        ] {
            Selector::parse(&text).unwrap();
        }
    }

    #[test]
    fn delegated_kinds_need_a_uid_and_a_name() {
        for text in [
            "systemd:user_unit:nginx.service",
            "systemd:user_unit:1000:",
            "systemd:user_slice:x:app.slice",
            "container:user_id:1000:abc",
        ] {
            assert!(
                matches!(Selector::parse(text), Err(SelectorError::NotDelegated(_))),
                "{text}"
            );
        }
        let unit = Selector::new("systemd", "user_unit", "1000:nginx.service");
        assert_eq!(
            Selector::parse("systemd:user_unit:1000:nginx.service").unwrap(),
            unit
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any input: no panic; a parsed selector is its kind, ':' and value.
        #[test]
        fn arbitrary_input_never_panics_and_round_trips(input in "(unix|systemd|cgroup|container|x)?:?\\PC{0,60}") {
            if let Ok(selector) = Selector::parse(&input) {
                proptest::prop_assert!(KNOWN_KINDS.contains(&selector.kind()));
                proptest::prop_assert_eq!(format!("{}:{}", selector.kind(), selector.value()), input.clone());
                proptest::prop_assert_eq!(selector.to_string(), input);
            }
        }
    }
}

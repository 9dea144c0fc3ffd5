//! SPIFFE IDs and trust domains, parsed once into types that cannot hold an
//! invalid value ("parse, don't validate"). The rules are those of the SPIFFE
//! ID standard, which the Go, Rust and Python clients enforce when they read
//! our SVIDs: an ID they refuse is an identity the workload does not have.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

const SCHEME: &str = "spiffe://";
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_URI_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The ID does not start with `spiffe://`.
    #[error("must start with \"spiffe://\"")]
    MissingScheme,
    /// The trust domain is empty.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// A trust domain written as its SPIFFE ID (`spiffe://example.org`):
    /// the name alone is meant.
    #[error("is a SPIFFE ID, not a trust domain name: drop the scheme and write \"{0}\"")]
    SchemeInTrustDomain(String),
    /// The trust domain holds a character outside `[a-z0-9._-]` (this also
    /// rules out uppercase letters, ports and userinfo).
    #[error("trust domain has invalid character {0:?} (allowed: a-z 0-9 . - _)")]
    BadTrustDomainChar(char),
    /// The whole URI is longer than 2048 bytes.
    #[error("SPIFFE ID is longer than {MAX_URI_LEN} bytes")]
    TooLong,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("path has an empty segment or a trailing '/'")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("path segment {0:?} is not allowed")]
    DotSegment(&'static str),
    /// A path segment holds a character outside `[a-zA-Z0-9._-]` (this also
    /// rules out percent-encoding, queries and fragments).
    #[error("path has invalid character {0:?} (allowed: a-z A-Z 0-9 . - _)")]
    BadPathChar(char),
    /// A workload SVID needs a path; the bare trust domain names the CA.
    #[error("a workload SPIFFE ID needs a path")]
    MissingPath,
}

/// A SPIFFE trust domain, e.g. `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (no scheme).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        if let Some(bare) = name.strip_prefix(SCHEME) {
            return Err(SpiffeIdError::SchemeInTrustDomain(
                bare.trim_end_matches('/').to_owned(),
            ));
        }
        if let Some(bad) = name.chars().find(|c| !is_trust_domain_char(*c)) {
            return Err(SpiffeIdError::BadTrustDomainChar(bad));
        }
        Ok(Self(name.to_owned()))
    }

    /// The trust domain name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://example.org`: the key of
    /// bundle maps and the URI SAN of CA certificates.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A workload SPIFFE ID: `spiffe://<trust domain>/<path>`, path non-empty.
///
/// One allocation holds the URI; the trust domain is the part before the
/// path (a policy keeps one SPIFFE ID per entry, so the trust domain is not
/// copied into each).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    uri: Box<str>,
    /// Where the path starts: the end of `spiffe://<trust domain>`.
    path_start: u32,
}

impl SpiffeId {
    /// Parses a workload SPIFFE ID.
    pub fn new(uri: &str) -> Result<Self, SpiffeIdError> {
        if uri.len() > MAX_URI_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = uri.strip_prefix(SCHEME).ok_or(SpiffeIdError::MissingScheme)?;
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        TrustDomain::new(domain)?;
        if path.is_empty() {
            return Err(SpiffeIdError::MissingPath);
        }
        validate_path(&path[1..])?;
        Ok(Self {
            uri: uri.into(),
            // At most MAX_URI_LEN (2048), checked above.
            path_start: (SCHEME.len() + domain.len()) as u32,
        })
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// Whether this ID belongs to `trust_domain` (no allocation).
    pub fn belongs_to(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain_name() == trust_domain.name()
    }

    fn trust_domain_name(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start as usize]
    }

    /// The full URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The path, with its leading `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start as usize..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Checks the path after its leading '/': segments separated by '/', none
/// empty, none `.` or `..`, only unreserved characters.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    for segment in path.split('/') {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." => return Err(SpiffeIdError::DotSegment(".")),
            ".." => return Err(SpiffeIdError::DotSegment("..")),
            _ => {}
        }
        if let Some(bad) = segment.chars().find(|c| !is_path_char(*c)) {
            return Err(SpiffeIdError::BadPathChar(bad));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        let id = SpiffeId::new("spiffe://example.org/agent/reviewer-2_x.y").unwrap();
        assert_eq!(id.trust_domain().name(), "example.org");
        assert_eq!(id.path(), "/agent/reviewer-2_x.y");
        assert_eq!(id.as_str(), "spiffe://example.org/agent/reviewer-2_x.y");
    }

    #[test]
    fn rejects_each_rule() {
        let cases: &[(&str, SpiffeIdError)] = &[
            ("http://example.org/a", SpiffeIdError::MissingScheme),
            ("spiffe:///a", SpiffeIdError::EmptyTrustDomain),
            ("spiffe://Example.org/a", SpiffeIdError::BadTrustDomainChar('E')),
            (
                "spiffe://example.org:8080/a",
                SpiffeIdError::BadTrustDomainChar(':'),
            ),
            (
                "spiffe://user@example.org/a",
                SpiffeIdError::BadTrustDomainChar('@'),
            ),
            ("spiffe://example.org", SpiffeIdError::MissingPath),
            ("spiffe://example.org/", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a/", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a//b", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a/./b", SpiffeIdError::DotSegment(".")),
            ("spiffe://example.org/..", SpiffeIdError::DotSegment("..")),
            ("spiffe://example.org/a%20b", SpiffeIdError::BadPathChar('%')),
            ("spiffe://example.org/a?x=1", SpiffeIdError::BadPathChar('?')),
            ("spiffe://example.org/a#f", SpiffeIdError::BadPathChar('#')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::new(input).unwrap_err(), *want, "{input}");
        }
    }

    #[test]
    fn enforces_length_limits() {
        let long_domain = "a".repeat(256);
        assert_eq!(
            TrustDomain::new(&long_domain).unwrap_err(),
            SpiffeIdError::TrustDomainTooLong
        );
        let long_path = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::new(&long_path).unwrap_err(), SpiffeIdError::TooLong);
    }

    #[test]
    fn a_trust_domain_written_as_its_id_says_to_drop_the_scheme() {
        assert_eq!(
            TrustDomain::new("spiffe://example.org/").unwrap_err().to_string(),
            "is a SPIFFE ID, not a trust domain name: drop the scheme and write \"example.org\""
        );
    }

    #[test]
    fn trust_domain_id_string() {
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(td.id_string(), "spiffe://example.org");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any input: no panic, and whatever parses prints back unchanged.
        #[test]
        fn arbitrary_input_never_panics_and_round_trips(input in "\\PC{0,80}") {
            if let Ok(id) = SpiffeId::new(&input) {
                proptest::prop_assert_eq!(id.to_string(), input.clone());
                proptest::prop_assert_eq!(SpiffeId::new(id.as_str()).unwrap(), id);
            }
        }

        /// Everything built by the rules parses, with the parts it was built from.
        #[test]
        fn valid_ids_parse(
            domain in "[a-z0-9._-]{1,40}",
            segments in proptest::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,12}", 1..6),
        ) {
            let uri = format!("spiffe://{domain}/{}", segments.join("/"));
            let id = SpiffeId::new(&uri).unwrap();
            let trust_domain = id.trust_domain();
            proptest::prop_assert_eq!(trust_domain.name(), domain.as_str());
            proptest::prop_assert!(id.belongs_to(&TrustDomain::new(&domain).unwrap()));
            let other = TrustDomain::new(&format!("x{domain}")).unwrap();
            proptest::prop_assert!(!id.belongs_to(&other));
            proptest::prop_assert_eq!(id.path(), format!("/{}", segments.join("/")));
        }
    }
}

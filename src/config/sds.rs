//! `[sds]`: the names Envoy asks the SDS service for, besides SPIFFE IDs
//! and trust domain IDs.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, SourceFile};

/// `[sds]`: Envoy SDS on the Workload API socket. The names Envoy asks
/// for besides SPIFFE IDs and trust domain IDs; SPIRE agent's defaults, so
/// Envoy configurations written for it work unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdsConfig {
    /// The caller's first identity.
    pub default_svid_name: String,
    /// The trust domain's own bundle.
    pub default_bundle_name: String,
    /// Every bundle the caller may use (SPIFFE certificate validator only).
    pub default_all_bundles_name: String,
    /// Serve bundles as a plain `trusted_ca` instead of Envoy's SPIFFE
    /// certificate validator (a node may also ask with its metadata key
    /// `disable_spiffe_cert_validation`).
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self {
            default_svid_name: "default".into(),
            default_bundle_name: "ROOTCA".into(),
            default_all_bundles_name: "ALL".into(),
            disable_spiffe_cert_validation: false,
        }
    }
}

impl SourceFile<'_> {
    /// `[sds]`: its names must tell resources apart: non-empty, distinct,
    /// and never mistaken for a SPIFFE ID or trust domain ID.
    pub(super) fn sds(&self, raw: Option<Spanned<SdsConfig>>) -> Result<SdsConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(SdsConfig::default());
        };
        let span = raw.span();
        let sds = raw.into_inner();
        let names = [
            ("sds.default_svid_name", &sds.default_svid_name),
            ("sds.default_bundle_name", &sds.default_bundle_name),
            ("sds.default_all_bundles_name", &sds.default_all_bundles_name),
        ];
        for (i, (key, name)) in names.iter().enumerate() {
            let problem = if name.is_empty() {
                Some("must not be empty")
            } else if name.starts_with("spiffe://") {
                Some("must not be a SPIFFE ID (those name identities and trust domains)")
            } else if names[..i].iter().any(|(_, other)| other == name) {
                Some("must differ from the other SDS names")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(self.error(&span, (*key).to_owned(), problem));
            }
        }
        Ok(sds)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn sds_names_default_to_spires_and_must_tell_resources_apart() {
        let defaults = parse("trust_domain = \"example.org\"\n").unwrap();
        assert_eq!(defaults.sds, SdsConfig::default());
        assert_eq!(defaults.sds.default_all_bundles_name, "ALL");
        let renamed = parse("trust_domain = \"example.org\"\n[sds]\ndefault_svid_name = \"mine\"\n").unwrap();
        assert_eq!(renamed.sds.default_svid_name, "mine");
        assert_eq!(renamed.sds.default_bundle_name, "ROOTCA");
        for (body, key) in [
            ("default_svid_name = \"\"", "sds.default_svid_name"),
            (
                "default_bundle_name = \"spiffe://example.org\"",
                "sds.default_bundle_name",
            ),
            (
                "default_all_bundles_name = \"default\"",
                "sds.default_all_bundles_name",
            ),
        ] {
            let err = parse(&format!("trust_domain = \"example.org\"\n[sds]\n{body}\n")).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
            assert_eq!(err.line, Some(2), "the [sds] table: {err}");
        }
        assert!(parse("trust_domain = \"example.org\"\n[sds]\nunknown = 1\n").is_err());
    }
}

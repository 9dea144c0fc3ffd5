//! The issuer of JWT-SVIDs (`jwt_issuer`): the https URL relying parties
//! are configured with. Every JWT-SVID carries it as `iss`, and OIDC
//! discovery is served under it.
//!
//! Relying parties compare `iss` and the discovery document's `issuer` with
//! their configured URL as strings, so the URL is kept exactly as written;
//! to keep the written form from differing from how URL libraries print it
//! (an upper-case host, the default port, a `..` segment), only the
//! canonical form is accepted.

use serde::{Deserialize, Deserializer};

/// An https issuer URL: a host, no user information, query or fragment,
/// in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuer {
    /// The URL exactly as configured.
    url: String,
    /// Its path without the trailing `/`: empty for a bare host.
    path: String,
}

impl JwtIssuer {
    /// Parses and checks an issuer URL; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if url.scheme() != "https" {
            return Err(format!(
                "{text:?} is not an https URL (relying parties fetch the signing keys from the \
                 issuer over TLS; behind a TLS proxy, write the https URL the proxy serves)"
            ));
        }
        if url.host().is_none() {
            return Err(format!("{text:?} has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{text:?} must not carry user information (user@)"));
        }
        if url.query().is_some() {
            return Err(format!("{text:?} must not have a query (?...)"));
        }
        if url.fragment().is_some() {
            return Err(format!("{text:?} must not have a fragment (#...)"));
        }
        // "https://host" prints as "https://host/": both spellings are fine.
        let canonical = url.as_str();
        if canonical != text && canonical.strip_suffix('/') != Some(text) {
            let suggestion = match url.path() {
                "/" => canonical.trim_end_matches('/'),
                _ => canonical,
            };
            return Err(format!(
                "{text:?} is not in canonical form: write {suggestion:?} (relying parties compare \
                 the issuer as a string)"
            ));
        }
        Ok(Self {
            url: text.to_owned(),
            path: url.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The URL exactly as configured: the `iss` of every JWT-SVID.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The absolute URL of `suffix` (which starts with `/`) under the
    /// issuer, as OIDC discovery forms it: the issuer without its trailing
    /// `/`, then `suffix`.
    pub fn url_of(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.url.trim_end_matches('/'))
    }

    /// The request path of `suffix` under the issuer (what a listener at
    /// the issuer's host sees).
    pub fn path_of(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.path)
    }
}

impl std::fmt::Display for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl<'de> Deserialize<'de> for JwtIssuer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_url_as_written_and_places_documents_under_it() {
        let bare = JwtIssuer::parse("https://attestd.example.org").unwrap();
        assert_eq!(bare.as_str(), "https://attestd.example.org");
        assert_eq!(bare.url_of("/keys"), "https://attestd.example.org/keys");
        assert_eq!(bare.path_of("/keys"), "/keys");

        let slash = JwtIssuer::parse("https://attestd.example.org/").unwrap();
        assert_eq!(slash.as_str(), "https://attestd.example.org/");
        assert_eq!(slash.url_of("/keys"), "https://attestd.example.org/keys");

        let nested = JwtIssuer::parse("https://idp.example.org:8443/hosts/h1").unwrap();
        assert_eq!(
            nested.url_of("/keys"),
            "https://idp.example.org:8443/hosts/h1/keys"
        );
        assert_eq!(
            nested.path_of("/.well-known/openid-configuration"),
            "/hosts/h1/.well-known/openid-configuration"
        );
        assert!(JwtIssuer::parse("https://127.0.0.1:8443").is_ok());
        assert!(JwtIssuer::parse("https://[::1]:8443").is_ok());
    }

    #[test]
    fn refuses_what_relying_parties_cannot_use_with_the_reason() {
        let refused = |text: &str| JwtIssuer::parse(text).unwrap_err();
        assert!(refused("http://attestd.example.org").contains("not an https URL"));
        assert!(refused("attestd.example.org").contains("not a URL"));
        assert!(refused("https://").contains("not a URL"));
        assert!(refused("https://user:pw@attestd.example.org").contains("user information"));
        assert!(refused("https://attestd.example.org/?a=b").contains("query"));
        assert!(refused("https://attestd.example.org/#top").contains("fragment"));
        let upper = refused("https://Attestd.Example.org");
        assert!(
            upper.contains("canonical") && upper.contains("\"https://attestd.example.org\""),
            "{upper}"
        );
        assert!(refused("https://attestd.example.org:443").contains("\"https://attestd.example.org\""));
        assert!(refused("https://attestd.example.org/a/../b").contains("\"https://attestd.example.org/b\""));
    }
}

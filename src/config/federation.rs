//! `[[federation]]` (foreign trust domains whose bundles attestd keeps and
//! hands to the workloads whose entries federate with them) and
//! `[bundle_endpoint]` (attestd's own bundle served to other trust
//! domains), checked as a whole: each error names its file, line and key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::{ListenAddr, SourceFile, Ttl};
use crate::config::ConfigError;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The `spiffe_refresh_hint` attestd publishes unless told otherwise.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);
/// Connections the bundle endpoint serves at once unless told otherwise.
pub const DEFAULT_BUNDLE_ENDPOINT_CONNECTIONS: usize = 64;
/// The path of the bundle endpoint's SPIFFE ID unless told otherwise.
pub const DEFAULT_BUNDLE_ENDPOINT_PATH: &str = "/attestd/bundle-endpoint";

/// `[[federation]]`: a foreign trust domain and where its bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// The foreign trust domain (never our own).
    pub trust_domain: TrustDomain,
    /// A SPIFFE bundle document, re-read whenever it changes.
    pub bundle_file: Option<PathBuf>,
    /// A SPIFFE bundle endpoint, polled as its refresh hint says.
    pub endpoint: Option<EndpointConfig>,
}

/// A foreign bundle endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// An `https` URL without userinfo.
    pub url: http::Uri,
    /// How the endpoint's server is authenticated.
    pub profile: EndpointProfile,
}

/// The SPIFFE Federation endpoint profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointProfile {
    /// Web PKI: the server's certificate names the URL's host and chains to
    /// the system roots, or to the roots of `ca_file` instead.
    HttpsWeb {
        /// PEM CA certificates trusted instead of the system roots.
        ca_file: Option<PathBuf>,
    },
    /// SPIFFE authentication: the server presents an X.509-SVID for
    /// `spiffe_id`, verified against the latest bundle held for its trust
    /// domain (this one's, bootstrapped from `bundle_file`; our own; or
    /// another `[[federation]]`'s).
    HttpsSpiffe {
        /// The endpoint server's SPIFFE ID.
        spiffe_id: SpiffeId,
    },
}

/// `[bundle_endpoint]`: attestd's own bundle, served over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// What the server presents.
    pub profile: ServingProfile,
    /// The `spiffe_refresh_hint` of the served document.
    pub refresh_hint: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

/// What the bundle endpoint presents to its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingProfile {
    /// A Web PKI certificate and key (PEM), re-read when replaced.
    HttpsWeb {
        /// Certificate chain, leaf first.
        cert_file: PathBuf,
        /// Its private key.
        key_file: PathBuf,
    },
    /// An X.509-SVID of our trust domain, minted and rotated by attestd.
    HttpsSpiffe {
        /// Its SPIFFE ID: no entry may grant it.
        spiffe_id: SpiffeId,
    },
}

impl BundleEndpointConfig {
    /// The SPIFFE ID the endpoint serves with, if it serves with an SVID.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        match &self.profile {
            ServingProfile::HttpsSpiffe { spiffe_id } => Some(spiffe_id),
            ServingProfile::HttpsWeb { .. } => None,
        }
    }
}

/// A trust domain written as its name (`partner.example`) or its ID
/// (`spiffe://partner.example`), as SPIRE writes `federates_with`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NamedTrustDomain(pub TrustDomain);

impl<'de> Deserialize<'de> for NamedTrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let name = text.strip_prefix("spiffe://").unwrap_or(&text);
        TrustDomain::new(name)
            .map(Self)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a trust domain: {e}")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFederation {
    trust_domain: Spanned<NamedTrustDomain>,
    bundle_file: Option<PathBuf>,
    endpoint_url: Option<Spanned<String>>,
    endpoint_profile: Option<Spanned<String>>,
    endpoint_spiffe_id: Option<Spanned<SpiffeId>>,
    endpoint_ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBundleEndpoint {
    listen: Spanned<ListenAddr>,
    profile: Option<Spanned<String>>,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    spiffe_id: Option<Spanned<SpiffeId>>,
    refresh_hint: Option<Ttl>,
    max_connections: Option<Spanned<usize>>,
}

const HTTPS_WEB: &str = "https_web";
const HTTPS_SPIFFE: &str = "https_spiffe";

impl SourceFile<'_> {
    /// The `[[federation]]` tables: unique foreign trust domains, each with a
    /// source, each endpoint complete for its profile.
    pub(super) fn federation(
        &self,
        raw: Vec<Spanned<RawFederation>>,
        own: &TrustDomain,
    ) -> Result<Vec<FederationConfig>, ConfigError> {
        let names: Vec<TrustDomain> = raw
            .iter()
            .map(|r| r.get_ref().trust_domain.get_ref().0.clone())
            .collect();
        let mut configs = Vec::with_capacity(raw.len());
        for (index, spanned) in raw.into_iter().enumerate() {
            let table_span = spanned.span();
            let raw = spanned.into_inner();
            let key = |field: &str| format!("federation[{index}].{field}");
            let trust_domain = raw.trust_domain.get_ref().0.clone();
            if &trust_domain == own {
                return Err(self.error(
                    &raw.trust_domain.span(),
                    key("trust_domain"),
                    format!("{trust_domain} is attestd's own trust domain: federate with foreign ones only"),
                ));
            }
            if let Some(first) = names[..index].iter().position(|name| *name == trust_domain) {
                return Err(self.error(
                    &raw.trust_domain.span(),
                    key("trust_domain"),
                    format!("{trust_domain} is already configured by federation[{first}]"),
                ));
            }
            let endpoint = self.endpoint(&raw, index, &trust_domain, own, &names)?;
            if raw.bundle_file.is_none() && endpoint.is_none() {
                return Err(self.error(
                    &table_span,
                    format!("federation[{index}]"),
                    "needs bundle_file, endpoint_url, or both",
                ));
            }
            if let Some(EndpointProfile::HttpsSpiffe { spiffe_id }) = endpoint.as_ref().map(|e| &e.profile)
                && spiffe_id.belongs_to(&trust_domain)
                && raw.bundle_file.is_none()
            {
                return Err(self.error(
                    &table_span,
                    key("bundle_file"),
                    format!(
                        "https_spiffe with an endpoint of {trust_domain} itself needs that trust domain's \
                         bundle to authenticate the first fetch: set bundle_file"
                    ),
                ));
            }
            configs.push(FederationConfig {
                trust_domain,
                bundle_file: raw.bundle_file,
                endpoint,
            });
        }
        Ok(configs)
    }

    /// `endpoint_url` with its profile and the profile's parameters.
    fn endpoint(
        &self,
        raw: &RawFederation,
        index: usize,
        trust_domain: &TrustDomain,
        own: &TrustDomain,
        federated: &[TrustDomain],
    ) -> Result<Option<EndpointConfig>, ConfigError> {
        let key = |field: &str| format!("federation[{index}].{field}");
        let (url, profile) = match (&raw.endpoint_url, &raw.endpoint_profile) {
            (None, None) => {
                let stray = [
                    raw.endpoint_spiffe_id
                        .as_ref()
                        .map(|s| (s.span(), "endpoint_spiffe_id")),
                    raw.endpoint_ca_file
                        .as_ref()
                        .map(|s| (s.span(), "endpoint_ca_file")),
                ];
                if let Some((span, field)) = stray.into_iter().flatten().next() {
                    return Err(self.error(&span, key(field), "is set but endpoint_url is not"));
                }
                return Ok(None);
            }
            (Some(url), Some(profile)) => (url, profile),
            (Some(url), None) => {
                return Err(self.error(
                    &url.span(),
                    key("endpoint_profile"),
                    "endpoint_url needs endpoint_profile = \"https_web\" or \"https_spiffe\" \
                     (a profile is never guessed from the URL)",
                ));
            }
            (None, Some(profile)) => {
                return Err(self.error(
                    &profile.span(),
                    key("endpoint_url"),
                    "endpoint_profile needs endpoint_url",
                ));
            }
        };
        let uri = parse_https_url(url.get_ref())
            .map_err(|reason| self.error(&url.span(), key("endpoint_url"), reason))?;
        let profile = match profile.get_ref().as_str() {
            HTTPS_WEB => {
                if let Some(id) = &raw.endpoint_spiffe_id {
                    return Err(self.error(
                        &id.span(),
                        key("endpoint_spiffe_id"),
                        "is for endpoint_profile = \"https_spiffe\"; https_web authenticates the URL's host",
                    ));
                }
                EndpointProfile::HttpsWeb {
                    ca_file: raw.endpoint_ca_file.as_ref().map(|f| f.get_ref().clone()),
                }
            }
            HTTPS_SPIFFE => {
                if let Some(file) = &raw.endpoint_ca_file {
                    return Err(self.error(
                        &file.span(),
                        key("endpoint_ca_file"),
                        "is for endpoint_profile = \"https_web\"; https_spiffe authenticates with a SPIFFE bundle",
                    ));
                }
                let Some(id) = &raw.endpoint_spiffe_id else {
                    return Err(self.error(
                        &profile.span(),
                        key("endpoint_spiffe_id"),
                        "https_spiffe needs the endpoint server's SPIFFE ID (endpoint_spiffe_id)",
                    ));
                };
                let server_domain = id.get_ref().trust_domain();
                if &server_domain != trust_domain
                    && &server_domain != own
                    && !federated.contains(&server_domain)
                {
                    return Err(self.error(
                        &id.span(),
                        key("endpoint_spiffe_id"),
                        format!(
                            "no bundle of {server_domain} to authenticate it with: it must be in {trust_domain}, \
                             in {own}, or in another [[federation]] trust domain"
                        ),
                    ));
                }
                EndpointProfile::HttpsSpiffe {
                    spiffe_id: id.get_ref().clone(),
                }
            }
            other => {
                return Err(self.error(
                    &profile.span(),
                    key("endpoint_profile"),
                    format!("{other:?} is not a profile (\"https_web\" or \"https_spiffe\")"),
                ));
            }
        };
        Ok(Some(EndpointConfig { url: uri, profile }))
    }

    /// `[bundle_endpoint]`: the profile follows from what is given
    /// (`cert_file` and `key_file`: https_web; else https_spiffe), or is
    /// named and must agree.
    pub(super) fn bundle_endpoint(
        &self,
        raw: Option<RawBundleEndpoint>,
        own: &TrustDomain,
    ) -> Result<Option<BundleEndpointConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let key = |field: &str| format!("bundle_endpoint.{field}");
        let web_files = raw.cert_file.is_some() || raw.key_file.is_some();
        let named = raw.profile.as_ref().map(|p| (p.get_ref().as_str(), p.span()));
        let web = match named {
            Some((HTTPS_WEB, _)) => true,
            Some((HTTPS_SPIFFE, span)) if web_files => {
                return Err(self.error(
                    &span,
                    key("profile"),
                    "https_spiffe serves with attestd's own SVID: leave cert_file and key_file out",
                ));
            }
            Some((HTTPS_SPIFFE, _)) => false,
            Some((other, span)) => {
                return Err(self.error(
                    &span,
                    key("profile"),
                    format!("{other:?} is not a profile (\"https_web\" or \"https_spiffe\")"),
                ));
            }
            None => web_files,
        };
        let profile = if web {
            if let Some(id) = &raw.spiffe_id {
                return Err(self.error(&id.span(), key("spiffe_id"), "is for the https_spiffe profile"));
            }
            match (raw.cert_file, raw.key_file) {
                (Some(cert), Some(key_file)) => ServingProfile::HttpsWeb {
                    cert_file: cert.into_inner(),
                    key_file: key_file.into_inner(),
                },
                (cert, key_file) => {
                    let span = cert
                        .map(|c| c.span())
                        .or(key_file.map(|k| k.span()))
                        .unwrap_or(raw.listen.span());
                    return Err(self.error(
                        &span,
                        "bundle_endpoint".into(),
                        "https_web needs cert_file and key_file",
                    ));
                }
            }
        } else {
            let spiffe_id = match raw.spiffe_id {
                Some(id) if !id.get_ref().belongs_to(own) => {
                    return Err(self.error(
                        &id.span(),
                        key("spiffe_id"),
                        format!("{} is outside the trust domain {own}", id.get_ref()),
                    ));
                }
                Some(id) => id.into_inner(),
                None => SpiffeId::new(&format!("{}{DEFAULT_BUNDLE_ENDPOINT_PATH}", own.id_string()))
                    .map_err(|e| self.error(&raw.listen.span(), key("spiffe_id"), e.to_string()))?,
            };
            ServingProfile::HttpsSpiffe { spiffe_id }
        };
        let max_connections = match raw.max_connections {
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.error(&n.span(), key("max_connections"), "must be at least 1"));
            }
            Some(n) => n.into_inner(),
            None => DEFAULT_BUNDLE_ENDPOINT_CONNECTIONS,
        };
        Ok(Some(BundleEndpointConfig {
            listen: raw.listen.into_inner().0,
            profile,
            refresh_hint: raw.refresh_hint.map_or(DEFAULT_REFRESH_HINT, |hint| hint.0),
            max_connections,
        }))
    }

    /// An entry's `federates_with`: each a configured `[[federation]]`
    /// trust domain.
    pub(super) fn federates_with(
        &self,
        raw: Vec<Spanned<NamedTrustDomain>>,
        index: usize,
        federated: &[TrustDomain],
    ) -> Result<Vec<TrustDomain>, ConfigError> {
        let mut domains = Vec::with_capacity(raw.len());
        for (i, domain) in raw.into_iter().enumerate() {
            let name = &domain.get_ref().0;
            if !federated.contains(name) {
                return Err(self.error(
                    &domain.span(),
                    format!("entry[{index}].federates_with[{i}]"),
                    format!(
                        "{name} is not a [[federation]] trust domain (add a [[federation]] table for it)"
                    ),
                ));
            }
            domains.push(domain.into_inner().0);
        }
        domains.sort();
        domains.dedup();
        Ok(domains)
    }
}

/// An `https` URL with a host and without userinfo (SPIFFE Federation
/// 5.2.1.1 and 5.2.2.1).
fn parse_https_url(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{text:?} is not an https URL"));
    }
    let authority = uri.authority().ok_or_else(|| format!("{text:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{text:?} carries userinfo, which a bundle endpoint URL must not"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(body: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("f.toml"),
            &format!("trust_domain = \"example.org\"\n{body}"),
        )
    }

    fn error(body: &str) -> (Option<usize>, String, String) {
        let err = parse(body).unwrap_err();
        (err.line, err.key.clone().unwrap_or_default(), err.message)
    }

    const WEB: &str = "[[federation]]\ntrust_domain = \"partner.example\"\nendpoint_url = \"https://partner.example/bundle\"\nendpoint_profile = \"https_web\"\n";

    #[test]
    fn both_profiles_and_a_file_parse() {
        let config = parse(&format!(
            "{WEB}endpoint_ca_file = \"ca.pem\"\n\
             [[federation]]\ntrust_domain = \"spiffe://other.example\"\nbundle_file = \"other.json\"\n\
             endpoint_url = \"https://other.example:8443\"\nendpoint_profile = \"https_spiffe\"\n\
             endpoint_spiffe_id = \"spiffe://other.example/spire/server\"\n"
        ))
        .unwrap();
        assert_eq!(config.federation.len(), 2);
        assert_eq!(
            config.federation[0].endpoint.as_ref().unwrap().profile,
            EndpointProfile::HttpsWeb {
                ca_file: Some("ca.pem".into())
            }
        );
        assert_eq!(config.federation[1].trust_domain.name(), "other.example");
        assert!(matches!(
            &config.federation[1].endpoint.as_ref().unwrap().profile,
            EndpointProfile::HttpsSpiffe { spiffe_id } if spiffe_id.as_str() == "spiffe://other.example/spire/server"
        ));
    }

    #[test]
    fn federation_errors_name_line_and_key() {
        let own = "[[federation]]\ntrust_domain = \"example.org\"\nbundle_file = \"x\"\n";
        assert_eq!(error(own).0, Some(3));
        assert_eq!(error(own).1, "federation[0].trust_domain");

        let twice = format!("{WEB}{WEB}");
        let (line, key, message) = error(&twice);
        assert_eq!((line, key.as_str()), (Some(7), "federation[1].trust_domain"));
        assert!(
            message.contains("already configured by federation[0]"),
            "{message}"
        );

        let (_, key, message) = error("[[federation]]\ntrust_domain = \"partner.example\"\n");
        assert_eq!(key, "federation[0]");
        assert!(message.contains("needs bundle_file, endpoint_url, or both"));

        let (line, key, _) = error(&WEB.replace("endpoint_profile = \"https_web\"\n", ""));
        assert_eq!((line, key.as_str()), (Some(4), "federation[0].endpoint_profile"));

        let (line, key, _) = error(&WEB.replace("https://", "http://"));
        assert_eq!((line, key.as_str()), (Some(4), "federation[0].endpoint_url"));
        let (_, _, message) = error(&WEB.replace("https://", "https://user@"));
        assert!(message.contains("userinfo"), "{message}");

        let (line, key, message) = error(&WEB.replace("https_web", "https_spiffe"));
        assert_eq!(
            (line, key.as_str()),
            (Some(5), "federation[0].endpoint_spiffe_id")
        );
        assert!(
            message.contains("needs the endpoint server's SPIFFE ID"),
            "{message}"
        );

        let self_serving = format!(
            "{}endpoint_spiffe_id = \"spiffe://partner.example/server\"\n",
            WEB.replace("https_web", "https_spiffe")
        );
        let (_, key, message) = error(&self_serving);
        assert_eq!(key, "federation[0].bundle_file");
        assert!(
            message.contains("bootstrap") || message.contains("first fetch"),
            "{message}"
        );

        let unknown_domain = format!(
            "{}endpoint_spiffe_id = \"spiffe://third.example/server\"\n",
            WEB.replace("https_web", "https_spiffe")
        );
        let (line, key, _) = error(&unknown_domain);
        assert_eq!(
            (line, key.as_str()),
            (Some(6), "federation[0].endpoint_spiffe_id")
        );

        let (_, key, message) = error(&WEB.replace("https_web", "https"));
        assert_eq!(key, "federation[0].endpoint_profile");
        assert!(message.contains("is not a profile"), "{message}");

        let (line, _, message) = error(&format!("{WEB}bogus = 1\n"));
        assert_eq!(line, Some(6));
        assert!(message.contains("bogus"), "{message}");
    }

    #[test]
    fn federates_with_must_name_a_federation() {
        let entry = "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\nowner = \"o\"\n";
        let ok = parse(&format!(
            "{WEB}{entry}federates_with = [\"spiffe://partner.example\", \"partner.example\"]\n"
        ))
        .unwrap();
        assert_eq!(
            ok.entries[0].federates_with,
            [TrustDomain::new("partner.example").unwrap()]
        );
        let (line, key, message) = error(&format!(
            "{WEB}{entry}federates_with = [\"partner.example\", \"nobody.example\"]\n"
        ));
        assert_eq!((line, key.as_str()), (Some(10), "entry[0].federates_with[1]"));
        assert!(
            message.contains("nobody.example is not a [[federation]] trust domain"),
            "{message}"
        );
        let (_, key, _) = error(&format!("{entry}federates_with = [\"Bad\"]\n"));
        assert_eq!(key, "entry[0].federates_with[0]");
    }

    #[test]
    fn bundle_endpoint_profiles() {
        let spiffe = parse("[bundle_endpoint]\nlisten = \"0.0.0.0:8443\"\n").unwrap();
        let endpoint = spiffe.bundle_endpoint.unwrap();
        assert_eq!(
            endpoint.spiffe_id().unwrap().as_str(),
            "spiffe://example.org/attestd/bundle-endpoint"
        );
        assert_eq!(endpoint.refresh_hint, DEFAULT_REFRESH_HINT);
        let web = parse("[bundle_endpoint]\nlisten = \"0.0.0.0:8443\"\ncert_file = \"c\"\nkey_file = \"k\"\nrefresh_hint = \"1m\"\n")
            .unwrap()
            .bundle_endpoint
            .unwrap();
        assert!(matches!(web.profile, ServingProfile::HttpsWeb { .. }));
        assert_eq!(web.refresh_hint, Duration::from_secs(60));

        let err = parse("[bundle_endpoint]\nlisten = \"0.0.0.0:8443\"\ncert_file = \"c\"\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("bundle_endpoint")),
            "{err}"
        );
        let err =
            parse("[bundle_endpoint]\nlisten = \"0.0.0.0:8443\"\nspiffe_id = \"spiffe://other.org/x\"\n")
                .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("bundle_endpoint.spiffe_id")),
            "{err}"
        );
        let err = parse(
            "[bundle_endpoint]\nlisten = \"0.0.0.0:8443\"\nprofile = \"https_spiffe\"\ncert_file = \"c\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("bundle_endpoint.profile"), "{err}");
        let err = parse("[bundle_endpoint]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("bundle_endpoint.listen")),
            "{err}"
        );
    }
}

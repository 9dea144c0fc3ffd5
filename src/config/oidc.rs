//! `[oidc]`: the OIDC discovery listener, which publishes the JWT signing
//! keys under `jwt_issuer` for relying parties.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, ListenAddr, SourceFile};
use crate::authority::JwtIssuer;

/// Default cap on open connections of the OIDC discovery listener.
pub const DEFAULT_OIDC_MAX_CONNECTIONS: usize = 64;

/// The OIDC discovery listener (`[oidc]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer the documents are served under (`jwt_issuer`, which
    /// `[oidc]` requires).
    pub issuer: JwtIssuer,
    /// The TCP address it listens on (any address: relying parties are
    /// usually elsewhere).
    pub listen: SocketAddr,
    /// Serve TLS with this certificate and key; none: plain HTTP, for a
    /// TLS proxy that serves the issuer URL.
    pub tls: Option<TlsFiles>,
    /// Open connections it holds at most; more wait in the kernel's
    /// backlog.
    pub max_connections: usize,
}

/// A server certificate and its key, in PEM files (re-read when they
/// change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    listen: Option<ListenAddr>,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    max_connections: Option<Spanned<usize>>,
}

impl SourceFile<'_> {
    /// `[oidc]` (at `span`) checked against `jwt_issuer`: it needs an
    /// issuer and an address, and takes a certificate with its key or
    /// neither.
    pub(super) fn oidc(
        &self,
        raw: Option<Spanned<RawOidc>>,
        issuer: Option<&JwtIssuer>,
    ) -> Result<Option<OidcConfig>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let Some(issuer) = issuer else {
            return Err(self.error(
                &span,
                "oidc".into(),
                "needs jwt_issuer: the https URL relying parties are configured with, which the \
                 documents name and JWT-SVIDs carry as iss (e.g. jwt_issuer = \"https://attestd.example.org\" \
                 at the top of the file)",
            ));
        };
        let Some(listen) = raw.listen else {
            return Err(self.error(
                &span,
                "oidc.listen".into(),
                "is required (e.g. listen = \"0.0.0.0:8443\")",
            ));
        };
        let tls = match (raw.cert_file, raw.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert_file: cert.into_inner(),
                key_file: key.into_inner(),
            }),
            (Some(given), None) | (None, Some(given)) => {
                return Err(self.error(
                    &given.span(),
                    "oidc".into(),
                    "cert_file and key_file go together: both for TLS, neither for plain HTTP \
                     behind a TLS proxy",
                ));
            }
        };
        let max_connections = match raw.max_connections {
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.error(&n.span(), "oidc.max_connections".into(), "must be at least 1"));
            }
            Some(n) => n.into_inner(),
            None => DEFAULT_OIDC_MAX_CONNECTIONS,
        };
        Ok(Some(OidcConfig {
            issuer: issuer.clone(),
            listen: listen.0,
            tls,
            max_connections,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("test.toml"),
            &format!("trust_domain = \"example.org\"\n{text}"),
        )
    }

    #[test]
    fn issuer_and_listener_with_or_without_tls() {
        let plain =
            parse("jwt_issuer = \"https://attestd.example.org\"\n[oidc]\nlisten = \"0.0.0.0:8008\"\n")
                .unwrap();
        assert_eq!(
            plain.jwt_issuer.as_ref().map(JwtIssuer::as_str),
            Some("https://attestd.example.org")
        );
        let oidc = plain.oidc.unwrap();
        assert_eq!(oidc.listen, "0.0.0.0:8008".parse().unwrap());
        assert_eq!(
            (oidc.tls, oidc.max_connections),
            (None, DEFAULT_OIDC_MAX_CONNECTIONS)
        );
        assert_eq!(oidc.issuer.as_str(), "https://attestd.example.org");

        let tls = parse(
            "jwt_issuer = \"https://a.example\"\n[oidc]\nlisten = \"[::]:443\"\ncert_file = \"c.pem\"\n\
             key_file = \"k.pem\"\nmax_connections = 8\n",
        )
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(
            tls.tls,
            Some(TlsFiles {
                cert_file: "c.pem".into(),
                key_file: "k.pem".into()
            })
        );
        assert_eq!(tls.max_connections, 8);

        // An issuer alone: tokens carry iss, keys are hosted elsewhere.
        let alone = parse("jwt_issuer = \"https://a.example\"\n").unwrap();
        assert!(alone.jwt_issuer.is_some() && alone.oidc.is_none());
    }

    #[test]
    fn errors_name_line_key_and_fix() {
        let err = parse("jwt_issuer = \"http://a.example\"\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(2), Some("jwt_issuer")),
            "{err}"
        );
        assert!(err.message.contains("not an https URL"), "{err}");

        let err = parse("\n[oidc]\nlisten = \"127.0.0.1:8008\"\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("oidc")), "{err}");
        assert!(err.message.contains("needs jwt_issuer"), "{err}");

        let err = parse(
            "jwt_issuer = \"https://a.example\"\n[oidc]\nlisten = \"127.0.0.1:8008\"\ncert_file = \"c.pem\"\n",
        )
        .unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(5), Some("oidc")), "{err}");
        assert!(
            err.message.contains("cert_file and key_file go together"),
            "{err}"
        );

        let err = parse("jwt_issuer = \"https://a.example\"\n[oidc]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("oidc.listen")),
            "{err}"
        );

        let err = parse("jwt_issuer = \"https://a.example\"\n[oidc]\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("oidc.listen"), "{err}");

        let err = parse("jwt_issuer = \"https://a.example\"\n[oidc]\nlisten = \"127.0.0.1:1\"\nport = 1\n")
            .unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");

        let err = parse(
            "jwt_issuer = \"https://a.example\"\n[oidc]\nlisten = \"127.0.0.1:1\"\nmax_connections = 0\n",
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("oidc.max_connections"), "{err}");
    }
}

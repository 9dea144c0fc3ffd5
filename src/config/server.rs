//! `[server]`: fleet mode. attestd joins a SPIRE Server as a node agent
//! (a drop-in for spire-agent): the server attests the node, holds the
//! registration entries and signs every SVID. Absent: the embedded or
//! upstream CA and entries from files, as before.
//!
//! What fleet mode replaces may not be configured beside it (entries, the
//! local CA, a JWT issuer): each such key is an error naming its line.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, SourceFile, Ttl};
use crate::spiffe_id::SpiffeId;

/// spire-agent's default `sync_interval`.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// The longest join token accepted (SPIRE's are UUIDs; a token is sent to
/// the server as given, so it is bounded like anything else).
const MAX_JOIN_TOKEN_BYTES: usize = 1024;

/// `[server]`: the SPIRE Server attestd is a node agent of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `host:port` of the server's agent API.
    pub address: String,
    /// How the server is first authenticated.
    pub bootstrap: TrustBootstrap,
    /// How this node proves itself to the server.
    pub node_attestor: NodeAttestor,
    /// How often entries and the bundle are synced.
    pub sync_interval: Duration,
    /// Where the agent's key, SVID and the server's bundle are kept
    /// (default `<data_dir>/agent`).
    pub state_dir: PathBuf,
    /// Owners of the server's entries, by SPIFFE ID prefix (SPIRE entries
    /// carry none); the longest matching prefix wins.
    pub owners: Vec<OwnerMapping>,
}

/// An owner for the server's entries whose SPIFFE ID starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerMapping {
    /// A SPIFFE ID prefix, e.g. `spiffe://example.org/ml/`.
    pub prefix: String,
    /// The accountable party.
    pub owner: String,
}

/// How attestd first authenticates the server (which presents an
/// X.509-SVID for `spiffe://<trust domain>/spire/server`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustBootstrap {
    /// The server's chain must verify against this bundle file.
    Bundle {
        /// The file.
        path: PathBuf,
        /// How it is written.
        format: BundleFormat,
    },
    /// The chain is not verified on first contact, only the server's
    /// SPIFFE ID (spire-agent's `insecure_bootstrap`): for trying things
    /// out, never for production.
    Insecure,
}

/// `trust_bundle_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFormat {
    /// PEM CA certificates.
    Pem,
    /// A SPIFFE bundle document (JWKS).
    Spiffe,
}

/// `node_attestor` with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttestor {
    /// A one-time token from `spire-server token generate`; needed only
    /// until the node is attested (the agent SVID is kept in `state_dir`).
    JoinToken(Option<JoinToken>),
    /// Proof of possession of an X.509 certificate's key.
    X509pop(X509popFiles),
}

/// A join token: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    /// A token given on the command line (`--join-token`).
    pub fn new(token: String) -> Result<Self, String> {
        if token.is_empty() || token.len() > MAX_JOIN_TOKEN_BYTES || token.chars().any(char::is_control) {
            return Err(format!(
                "a join token is 1 to {MAX_JOIN_TOKEN_BYTES} printable characters"
            ));
        }
        Ok(Self(token))
    }

    /// The token, to send to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

/// `x509pop = { cert_file, key_file, intermediates_file }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509popFiles {
    /// The node's certificate (PEM), leaf first; may hold intermediates.
    pub cert_file: PathBuf,
    /// Its private key (PEM, PKCS#8 or SEC1; ECDSA or RSA).
    pub key_file: PathBuf,
    /// More intermediates (PEM), sent after the certificate.
    pub intermediates_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    address: Option<Spanned<String>>,
    trust_bundle_path: Option<Spanned<PathBuf>>,
    trust_bundle_format: Option<Spanned<String>>,
    insecure_bootstrap: Option<Spanned<bool>>,
    node_attestor: Option<Spanned<String>>,
    join_token: Option<Spanned<String>>,
    x509pop: Option<Spanned<RawX509pop>>,
    sync_interval: Option<Ttl>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    owners: Vec<Spanned<RawOwner>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawX509pop {
    cert_file: PathBuf,
    key_file: PathBuf,
    intermediates_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    prefix: Spanned<String>,
    owner: Spanned<String>,
}

/// Keys of the file that fleet mode replaces, each with its span if set.
pub(super) struct Replaced {
    pub entries: Option<Range<usize>>,
    pub entries_dir: Option<Range<usize>>,
    pub ca: Option<Range<usize>>,
    pub jwt_issuer: Option<Range<usize>>,
    pub bundle_endpoint: Option<Range<usize>>,
    pub oidc: Option<Range<usize>>,
}

impl SourceFile<'_> {
    /// `[server]` (at `span`), checked: an address, exactly one way to
    /// trust the server first, a known node attestor with its settings.
    pub(super) fn server(
        &self,
        raw: Option<Spanned<RawServer>>,
        data_dir: &std::path::Path,
        replaced: &Replaced,
    ) -> Result<Option<ServerConfig>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let span = raw.span();
        self.refuse_replaced(replaced)?;
        let raw = raw.into_inner();
        let address = self.server_address(raw.address, &span)?;
        let bootstrap = self.bootstrap(
            raw.trust_bundle_path,
            raw.trust_bundle_format,
            raw.insecure_bootstrap,
            &span,
        )?;
        let node_attestor = self.node_attestor(raw.node_attestor, raw.join_token, raw.x509pop, &span)?;
        let owners = raw
            .owners
            .into_iter()
            .enumerate()
            .map(|(i, owner)| self.owner_mapping(i, owner))
            .collect::<Result<_, _>>()?;
        Ok(Some(ServerConfig {
            address,
            bootstrap,
            node_attestor,
            sync_interval: raw.sync_interval.map_or(DEFAULT_SYNC_INTERVAL, |ttl| ttl.0),
            state_dir: raw.state_dir.unwrap_or_else(|| data_dir.join("agent")),
            owners,
        }))
    }

    fn refuse_replaced(&self, replaced: &Replaced) -> Result<(), ConfigError> {
        let found = [
            (
                &replaced.entries,
                "entry",
                "[[entry]] cannot be used with [server]: in fleet mode the entries come from the \
                 SPIRE Server (create them with `spire-server entry create`)",
            ),
            (
                &replaced.entries_dir,
                "entries_dir",
                "cannot be used with [server]: in fleet mode the entries come from the SPIRE Server",
            ),
            (
                &replaced.ca,
                "ca",
                "[ca] cannot be used with [server]: in fleet mode the SPIRE Server signs every SVID",
            ),
            (
                &replaced.jwt_issuer,
                "jwt_issuer",
                "cannot be used with [server]: the SPIRE Server signs JWT-SVIDs (set its jwt_issuer)",
            ),
            (
                &replaced.bundle_endpoint,
                "bundle_endpoint",
                "cannot be used with [server]: serve the trust domain's bundle from the SPIRE \
                 Server (its federation bundle_endpoint)",
            ),
            (
                &replaced.oidc,
                "oidc",
                "[oidc] cannot be used with [server]: publish the SPIRE Server's JWT keys with \
                 SPIRE's oidc-discovery-provider",
            ),
        ]
        .into_iter()
        .find_map(|(span, key, message)| Some((span.as_ref()?, key, message)));
        match found {
            Some((span, key, message)) => Err(self.error(span, key.into(), message)),
            None => Ok(()),
        }
    }

    /// `host:port`, as spire-agent's `server_address` and `server_port`
    /// together (the host may be a name or an address, IPv6 in brackets).
    fn server_address(
        &self,
        address: Option<Spanned<String>>,
        span: &Range<usize>,
    ) -> Result<String, ConfigError> {
        let Some(address) = address else {
            return Err(self.error(
                span,
                "server.address".into(),
                "is required: the SPIRE Server's host:port (e.g. address = \"spire-server.example.org:8081\")",
            ));
        };
        let text = address.get_ref();
        let valid = text.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains(['/', '@', ' ']) && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !valid {
            return Err(self.error(
                &address.span(),
                "server.address".into(),
                format!(
                    "{text:?} is not host:port (e.g. \"spire-server.example.org:8081\" or \"[::1]:8081\")"
                ),
            ));
        }
        Ok(address.into_inner())
    }

    fn bootstrap(
        &self,
        path: Option<Spanned<PathBuf>>,
        format: Option<Spanned<String>>,
        insecure: Option<Spanned<bool>>,
        span: &Range<usize>,
    ) -> Result<TrustBootstrap, ConfigError> {
        let insecure = insecure.is_some_and(Spanned::into_inner);
        let format_span = format.as_ref().map(Spanned::span);
        let format = match &format {
            None => BundleFormat::Pem,
            Some(f) if f.get_ref() == "pem" => BundleFormat::Pem,
            Some(f) if f.get_ref() == "spiffe" => BundleFormat::Spiffe,
            Some(f) => {
                return Err(self.error(
                    &f.span(),
                    "server.trust_bundle_format".into(),
                    format!("{:?} is not a bundle format (\"pem\" or \"spiffe\")", f.get_ref()),
                ));
            }
        };
        match (path, insecure) {
            (Some(path), false) => Ok(TrustBootstrap::Bundle {
                path: path.into_inner(),
                format,
            }),
            (None, true) => match format_span {
                // No bundle file to have a format: a mistake worth naming.
                Some(span) => Err(self.error(
                    &span,
                    "server.trust_bundle_format".into(),
                    "is for trust_bundle_path; insecure_bootstrap has no bundle file",
                )),
                None => Ok(TrustBootstrap::Insecure),
            },
            (Some(path), true) => Err(self.error(
                &path.span(),
                "server.trust_bundle_path".into(),
                "set either trust_bundle_path or insecure_bootstrap = true, not both",
            )),
            (None, false) => Err(self.error(
                span,
                "server.trust_bundle_path".into(),
                "is required to authenticate the server (its bundle: `spire-server bundle show`), \
                 unless insecure_bootstrap = true",
            )),
        }
    }

    fn node_attestor(
        &self,
        name: Option<Spanned<String>>,
        join_token: Option<Spanned<String>>,
        x509pop: Option<Spanned<RawX509pop>>,
        span: &Range<usize>,
    ) -> Result<NodeAttestor, ConfigError> {
        let Some(name) = name else {
            return Err(self.error(
                span,
                "server.node_attestor".into(),
                "is required: \"join_token\" or \"x509pop\"",
            ));
        };
        match name.get_ref().as_str() {
            "join_token" => {
                if let Some(x509pop) = x509pop {
                    return Err(self.error(
                        &x509pop.span(),
                        "server.x509pop".into(),
                        "is for node_attestor = \"x509pop\"",
                    ));
                }
                let token = join_token
                    .map(|token| {
                        JoinToken::new(token.get_ref().clone())
                            .map_err(|message| self.error(&token.span(), "server.join_token".into(), message))
                    })
                    .transpose()?;
                Ok(NodeAttestor::JoinToken(token))
            }
            "x509pop" => {
                if let Some(token) = join_token {
                    return Err(self.error(
                        &token.span(),
                        "server.join_token".into(),
                        "is for node_attestor = \"join_token\"",
                    ));
                }
                let Some(files) = x509pop else {
                    return Err(self.error(
                        &name.span(),
                        "server.x509pop".into(),
                        "is required with node_attestor = \"x509pop\" \
                         (x509pop = { cert_file = \"...\", key_file = \"...\" })",
                    ));
                };
                let files = files.into_inner();
                Ok(NodeAttestor::X509pop(X509popFiles {
                    cert_file: files.cert_file,
                    key_file: files.key_file,
                    intermediates_file: files.intermediates_file,
                }))
            }
            other => Err(self.error(
                &name.span(),
                "server.node_attestor".into(),
                format!(
                    "{other:?} is not a node attestor attestd implements (\"join_token\" or \"x509pop\")"
                ),
            )),
        }
    }

    fn owner_mapping(&self, index: usize, raw: Spanned<RawOwner>) -> Result<OwnerMapping, ConfigError> {
        let raw = raw.into_inner();
        let prefix = raw.prefix.get_ref();
        if !prefix.starts_with("spiffe://") || SpiffeId::new(prefix.trim_end_matches('/')).is_err() {
            return Err(self.error(
                &raw.prefix.span(),
                format!("server.owners[{index}].prefix"),
                format!("{prefix:?} is not a SPIFFE ID prefix (e.g. \"spiffe://example.org/ml/\")"),
            ));
        }
        if raw.owner.get_ref().trim().is_empty() {
            return Err(self.error(
                &raw.owner.span(),
                format!("server.owners[{index}].owner"),
                "must name an accountable owner",
            ));
        }
        Ok(OwnerMapping {
            prefix: raw.prefix.into_inner(),
            owner: raw.owner.into_inner(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    fn parse(server: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("fleet.toml"),
            &format!("trust_domain = \"example.org\"\ndata_dir = \"/d\"\n[server]\n{server}"),
        )
    }

    fn error(server: &str) -> String {
        parse(server).unwrap_err().to_string()
    }

    #[test]
    fn a_complete_join_token_section() {
        let config = parse(
            "address = \"127.0.0.1:8081\"\ntrust_bundle_path = \"/b.pem\"\nnode_attestor = \"join_token\"\n\
             join_token = \"abc\"\nowners = [{ prefix = \"spiffe://example.org/ml/\", owner = \"ml@example.org\" }]\n",
        )
        .unwrap();
        let server = config.server.unwrap();
        assert_eq!(server.address, "127.0.0.1:8081");
        assert_eq!(
            server.bootstrap,
            TrustBootstrap::Bundle {
                path: "/b.pem".into(),
                format: BundleFormat::Pem
            }
        );
        assert!(matches!(server.node_attestor, NodeAttestor::JoinToken(Some(ref t)) if t.expose() == "abc"));
        assert_eq!(
            format!("{:?}", server.node_attestor),
            "JoinToken(Some(JoinToken(<redacted>)))"
        );
        assert_eq!(server.sync_interval, DEFAULT_SYNC_INTERVAL);
        assert_eq!(server.state_dir, Path::new("/d/agent"));
        assert_eq!(server.owners[0].owner, "ml@example.org");
    }

    #[test]
    fn each_mistake_names_its_line_and_key() {
        let cases = [
            (
                "node_attestor = \"join_token\"\ninsecure_bootstrap = true\n",
                "fleet.toml:3: server.address: is required",
            ),
            (
                "address = \"spire:0\"\n",
                "fleet.toml:4: server.address: \"spire:0\" is not host:port",
            ),
            (
                "address = \"s:1\"\nnode_attestor = \"join_token\"\n",
                "fleet.toml:3: server.trust_bundle_path: is required",
            ),
            (
                "address = \"s:1\"\ninsecure_bootstrap = true\ntrust_bundle_path = \"/b\"\nnode_attestor = \"join_token\"\n",
                "fleet.toml:6: server.trust_bundle_path: set either",
            ),
            (
                "address = \"s:1\"\ntrust_bundle_path = \"/b\"\ntrust_bundle_format = \"der\"\nnode_attestor = \"join_token\"\n",
                "fleet.toml:6: server.trust_bundle_format: \"der\" is not",
            ),
            (
                "address = \"s:1\"\ninsecure_bootstrap = true\nnode_attestor = \"tpm\"\n",
                "fleet.toml:6: server.node_attestor: \"tpm\" is not",
            ),
            (
                "address = \"s:1\"\ninsecure_bootstrap = true\nnode_attestor = \"x509pop\"\n",
                "fleet.toml:6: server.x509pop: is required",
            ),
            (
                "address = \"s:1\"\ninsecure_bootstrap = true\nnode_attestor = \"x509pop\"\njoin_token = \"t\"\n",
                "fleet.toml:7: server.join_token: is for node_attestor = \"join_token\"",
            ),
            (
                "address = \"s:1\"\ninsecure_bootstrap = true\nnode_attestor = \"join_token\"\nfoo = 1\n",
                "fleet.toml:7: server.foo: unknown field",
            ),
            (
                "address = \"s:1\"\ninsecure_bootstrap = true\nnode_attestor = \"join_token\"\nowners = [{ prefix = \"ml/\", owner = \"o\" }]\n",
                "fleet.toml:7: server.owners[0].prefix: \"ml/\" is not a SPIFFE ID prefix",
            ),
        ];
        for (server, expected) in cases {
            let got = error(server);
            assert!(
                got.starts_with(expected),
                "{server}\n  got: {got}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn what_fleet_mode_replaces_is_refused_beside_it() {
        let server =
            "[server]\naddress = \"s:1\"\ninsecure_bootstrap = true\nnode_attestor = \"join_token\"\n";
        let with = |before: &str| {
            Config::parse(
                Path::new("f.toml"),
                &format!("trust_domain = \"example.org\"\n{before}\n{server}"),
            )
            .unwrap_err()
            .to_string()
        };
        let entry = with(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\nowner = \"o\"",
        );
        assert!(
            entry.starts_with("f.toml:2: entry: [[entry]] cannot be used with [server]"),
            "{entry}"
        );
        let ca = with("[ca]\nttl = \"1d\"");
        assert!(
            ca.starts_with("f.toml:2: ca: [ca] cannot be used with [server]"),
            "{ca}"
        );
        let dir = with("entries_dir = \"/e\"");
        assert!(
            dir.starts_with("f.toml:2: entries_dir: cannot be used with [server]"),
            "{dir}"
        );
        let issuer = with("jwt_issuer = \"https://i.example.org\"");
        assert!(
            issuer.starts_with("f.toml:2: jwt_issuer: cannot be used with [server]"),
            "{issuer}"
        );
    }
}

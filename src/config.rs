//! The TOML configuration: parsed into validated types, with every error
//! naming the file, the line and the key, so an operator can fix a policy
//! file without guessing.
//!
//! Values are checked while they are deserialized (SPIFFE IDs, selectors,
//! TTLs have their own `Deserialize`), so the TOML parser attaches the span of
//! the offending value; `serde_path_to_error` supplies the key path. Checks
//! that span several values (an ID outside the trust domain) use `Spanned`.

mod oidc;
mod sds;
mod server;

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

mod federation;

pub use federation::{
    BundleEndpointConfig, DEFAULT_REFRESH_HINT, EndpointConfig, EndpointProfile, FederationConfig,
    ServingProfile,
};

use crate::audit::{DenialLimit, OnAuditFailure, Rotation};
use crate::authority::{JwtIssuer, UpstreamFiles};
use crate::selector::Selector;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use oidc::RawOidc;
pub use oidc::{DEFAULT_OIDC_MAX_CONNECTIONS, OidcConfig, TlsFiles};
pub use sds::SdsConfig;
pub use server::{
    BundleFormat, DEFAULT_SYNC_INTERVAL, JoinToken, NodeAttestor, OwnerMapping, ServerConfig, TrustBootstrap,
    X509popFiles,
};

/// Default Workload API socket.
pub const DEFAULT_SOCKET_PATH: &str = "/run/attestd/api.sock";
/// Default state directory (CA key, audit trail).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/attestd";
/// Default cap on open Workload API connections per uid.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 256;
/// The shortest TTL accepted anywhere: shorter lifetimes leave no room to
/// rotate before expiry.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// The longest lifetime accepted: 100 years (of 365.25 days, as humantime
/// counts `"100y"`). Anything longer
/// is a typo, and lifetimes are added to the clock and written in the
/// audit trail (RFC 3339, years up to 9999): a lifetime of thousands of
/// years would make every record of the token or certificate wrong, and
/// one of billions of years overflowed the clock (a panic at the first
/// token or SVID).
pub const MAX_TTL: Duration = Duration::from_secs(100 * 31_557_600);

/// A place in a policy file; prints as `file:line` (line 0: not in a
/// file, as a SPIRE Server's entries, and printed without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, shared by every entry written in it.
    pub file: Arc<Path>,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            // Not in a file: a SPIRE Server's entry, located by its id.
            0 => write!(f, "{}", self.file.display()),
            line => write!(f, "{}:{line}", self.file.display()),
        }
    }
}

/// A configuration error, printed as `file:line: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file that holds the error.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key path, e.g. `entry[1].selectors[0]`, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A TCP listen address: an IP address and a port, never a host name
/// (attestd binds what is written; a name could resolve to anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenAddr(pub(crate) SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Self).map_err(|_| {
            let hint = match text.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() && host.parse::<std::net::IpAddr>().is_err() => {
                    let ip = if host == "localhost" { "127.0.0.1" } else { "0.0.0.0" };
                    format!("{host:?} is a host name, not an IP address (names are not resolved): write e.g. \"{ip}:{port}\"")
                }
                _ => "write an IP address and a port, e.g. \"127.0.0.1:9090\" or \"[::1]:9090\"".to_owned(),
            };
            serde::de::Error::custom(format!("{text:?} is not a listen address: {hint}"))
        })
    }
}

/// A validated attestd configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from.
    pub source: PathBuf,
    /// The trust domain every issued identity belongs to.
    pub trust_domain: TrustDomain,
    /// Where the Workload API listens.
    pub socket_path: PathBuf,
    /// State directory: CA material, default audit trail.
    pub data_dir: PathBuf,
    /// Optional directory of `*.toml` files holding more `[[entry]]` tables.
    pub entries_dir: Option<PathBuf>,
    /// Default SVID lifetimes.
    pub svid: SvidConfig,
    /// The certificate authority.
    pub ca: CaConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// How callers are attested.
    pub attestation: AttestationConfig,
    /// The optional loopback health and metrics listener.
    pub health: HealthConfig,
    /// Bounds on what local callers can make attestd hold.
    pub limits: LimitsConfig,
    /// Directory of `*.cedar` policies for the policy decision point;
    /// unset: no policies, so every decision is a deny.
    pub policy_dir: Option<PathBuf>,
    /// The AuthZEN-shaped decision front (`[authz]`).
    pub authz: AuthzConfig,
    /// Envoy SDS names (`[sds]`).
    pub sds: SdsConfig,
    /// Foreign trust domains whose bundles attestd keeps (`[[federation]]`).
    pub federation: Vec<FederationConfig>,
    /// Our bundle served to other trust domains (`[bundle_endpoint]`).
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// The `iss` of every JWT-SVID (an https URL); unset: no `iss`.
    pub jwt_issuer: Option<JwtIssuer>,
    /// The OIDC discovery listener (`[oidc]`); off if unset.
    pub oidc: Option<OidcConfig>,
    /// Fleet mode (`[server]`): a SPIRE Server attests this node, holds
    /// the entries and signs the SVIDs; unset: the local CA and entries.
    pub server: Option<ServerConfig>,
    /// Entries written in the main config file.
    pub entries: Vec<EntryConfig>,
}

/// Default SVID lifetimes, overridable per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SvidConfig {
    /// Lifetime of X.509-SVIDs.
    pub x509_ttl: Ttl,
    /// Lifetime of JWT-SVIDs.
    pub jwt_ttl: Ttl,
}

impl Default for SvidConfig {
    fn default() -> Self {
        Self {
            x509_ttl: Ttl(Duration::from_secs(3600)),
            jwt_ttl: Ttl(Duration::from_secs(300)),
        }
    }
}

/// The certificate authority and the JWT signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    /// Lifetime of each embedded self-signed root (they rotate).
    pub ttl: Ttl,
    /// Lifetime of each JWT signing key. A key signs for half of it, so it
    /// should be at least four times the longest `jwt_ttl` (tokens never
    /// outlive their key and are shortened to fit).
    pub jwt_key_ttl: Ttl,
    /// Sign with an upstream intermediate instead of embedded roots.
    pub upstream: Option<UpstreamFiles>,
}

impl Default for CaConfig {
    fn default() -> Self {
        RawCa::default().into_config(None)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCa {
    ttl: Ttl,
    jwt_key_ttl: Ttl,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    bundle_file: Option<Spanned<PathBuf>>,
}

impl Default for RawCa {
    fn default() -> Self {
        Self {
            ttl: Ttl(Duration::from_secs(7 * 24 * 3600)),
            jwt_key_ttl: Ttl(Duration::from_secs(24 * 3600)),
            cert_file: None,
            key_file: None,
            bundle_file: None,
        }
    }
}

impl RawCa {
    fn into_config(self, upstream: Option<UpstreamFiles>) -> CaConfig {
        CaConfig {
            ttl: self.ttl,
            jwt_key_ttl: self.jwt_key_ttl,
            upstream,
        }
    }
}

/// `[authz]`: the AuthZEN-shaped JSON front of the policy decision point.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// Unix socket it listens on (created 0777, like the Workload API
    /// socket: every caller is attested); off if unset.
    pub listen: Option<PathBuf>,
}

/// What an entry allows its workload to do with tasks (`tasks = {...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TasksConfig {
    /// The longest lifetime of a task (and so of its token).
    pub max_ttl: Duration,
    /// The tools its tasks may declare (never empty).
    pub tools: Vec<String>,
}

/// The default `tasks.max_ttl`: task tokens live minutes, since offline
/// validators accept them until `exp` even after the task ends.
pub const DEFAULT_TASK_MAX_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTasks {
    max_ttl: Option<Ttl>,
    tools: Spanned<Vec<Spanned<String>>>,
}

/// The optional health and metrics listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthConfig {
    /// Loopback address for `/live`, `/ready` and `/metrics`; off if unset.
    pub listen: Option<SocketAddr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    listen: Option<Spanned<ListenAddr>>,
}

/// Bounds on connections, streams and concurrent work (`[limits]`), so that
/// local callers cannot exhaust attestd's descriptors, memory or threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Open Workload API connections one uid may hold.
    pub max_connections_per_uid: usize,
    /// Open connections all uids together may hold; unset: as many as the
    /// descriptor limit allows.
    pub max_connections: Option<usize>,
    /// Connection slots kept for uids that hold few connections; unset: an
    /// eighth of `max_connections`.
    pub connection_reserve: Option<usize>,
    /// A connection that has not started a request by then is closed.
    pub first_request_timeout: Duration,
    /// Concurrent streams (requests) per connection (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Requests one uid may have being received and handled at once; more
    /// wait their turn.
    pub max_requests_per_uid: usize,
    /// Attestations running at once, host-wide; unset: the number of CPUs.
    pub max_concurrent_attestations: Option<usize>,
    /// Open connections of the health and metrics listener.
    pub health_max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            max_connections: None,
            connection_reserve: None,
            first_request_timeout: Duration::from_secs(5),
            max_concurrent_streams: 16,
            max_requests_per_uid: 64,
            max_concurrent_attestations: None,
            health_max_connections: 16,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections_per_uid: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    connection_reserve: Option<Spanned<usize>>,
    first_request_timeout: Option<Spanned<Timeout>>,
    max_concurrent_streams: Option<Spanned<u32>>,
    max_requests_per_uid: Option<Spanned<usize>>,
    max_concurrent_attestations: Option<Spanned<usize>>,
    health_max_connections: Option<Spanned<usize>>,
}

/// A humantime duration of at least 100 ms (a timeout, not a lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timeout(Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match humantime::parse_duration(&text) {
            Ok(duration) if duration >= Duration::from_millis(100) => Ok(Self(duration)),
            Ok(_) => Err(serde::de::Error::custom(format!(
                "timeout {text:?} is shorter than the minimum of 100ms"
            ))),
            Err(e) => Err(serde::de::Error::custom(format!(
                "invalid duration {text:?}: {e} (e.g. \"5s\")"
            ))),
        }
    }
}

/// How callers are attested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestationConfig {
    /// Executables larger than this many bytes are not hashed: their
    /// processes get no `unix:sha256` selector (and the audit says why).
    pub max_exe_hash_bytes: u64,
}

impl Default for AttestationConfig {
    fn default() -> Self {
        Self {
            max_exe_hash_bytes: crate::attest::DEFAULT_MAX_HASH_BYTES,
        }
    }
}

/// The audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The JSON-lines file decisions are appended to.
    pub path: PathBuf,
    /// Size-based rotation.
    pub rotation: Rotation,
    /// What happens to a decision that cannot be recorded.
    pub on_failure: OnAuditFailure,
    /// The per-uid rate limit on denial records of callers without an
    /// identity.
    pub denial_limit: DenialLimit,
}

/// A lifetime written as a humantime string ("1h", "90s"), from
/// [`MIN_TTL`] to [`MAX_TTL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ttl(pub Duration);

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {text:?}: {e} (e.g. \"90s\", \"1h\")"))
        })?;
        if duration < MIN_TTL {
            return Err(serde::de::Error::custom(format!(
                "duration {text:?} is shorter than the minimum of {}",
                humantime::format_duration(MIN_TTL)
            )));
        }
        if duration > MAX_TTL {
            return Err(serde::de::Error::custom(format!(
                "duration {text:?} is longer than the maximum of {}",
                humantime::format_duration(MAX_TTL)
            )));
        }
        Ok(Self(duration))
    }
}

/// A registration entry as written in policy, with where it was written.
#[derive(Debug, Clone)]
pub struct EntryConfig {
    /// The identity granted.
    pub spiffe_id: SpiffeId,
    /// Selectors the caller must all have (never empty).
    pub selectors: Vec<Selector>,
    /// Who answers for the workload: the actor in the audit trail.
    pub owner: String,
    /// Free text for humans.
    pub description: Option<String>,
    /// Free key/values (agent name, version, policy domain).
    pub labels: BTreeMap<String, String>,
    /// Per-entry X.509-SVID lifetime.
    pub x509_ttl: Option<Ttl>,
    /// Per-entry JWT-SVID lifetime.
    pub jwt_ttl: Option<Ttl>,
    /// Audiences a JWT-SVID of this entry may be minted for (empty: any).
    pub jwt_audiences: Vec<String>,
    /// Extra DNS SANs of the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Label that tells several identities of one workload apart.
    pub hint: Option<String>,
    /// Foreign trust domains whose bundles the workload gets (each a
    /// `[[federation]]` trust domain; sorted, no duplicates).
    pub federates_with: Vec<TrustDomain>,
    /// The last day (UTC) the owner answers for the workload; from the
    /// next day on the identity is refused.
    pub owner_expires: Option<time::Date>,
    /// Whether and how the workload may start tasks (absent: it may not).
    pub tasks: Option<TasksConfig>,
    /// A gateway or tool server that may ask for decisions about other
    /// agents' task tokens addressed to it.
    pub may_ask_for_others: bool,
    /// `jwt_audiences = []` was written: it means any audience, as leaving
    /// the key out does (`entry check` says so).
    pub jwt_audiences_written_empty: bool,
    /// Where the entry is written, for errors, logs, `entry list` and the
    /// audit trail.
    pub location: Location,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: Option<TrustDomain>,
    socket_path: Option<PathBuf>,
    max_connections_per_uid: Option<Spanned<usize>>,
    data_dir: Option<PathBuf>,
    entries_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    svid: SvidConfig,
    ca: Option<Spanned<RawCa>>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    attestation: AttestationConfig,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    limits: RawLimits,
    policy_dir: Option<PathBuf>,
    #[serde(default)]
    authz: AuthzConfig,
    sds: Option<Spanned<SdsConfig>>,
    #[serde(default)]
    federation: Vec<Spanned<federation::RawFederation>>,
    bundle_endpoint: Option<Spanned<federation::RawBundleEndpoint>>,
    jwt_issuer: Option<Spanned<JwtIssuer>>,
    oidc: Option<Spanned<RawOidc>>,
    server: Option<Spanned<server::RawServer>>,
    #[serde(default)]
    entry: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    path: Option<PathBuf>,
    max_bytes: u64,
    keep: u32,
    on_failure: OnAuditFailure,
    denial_records_per_uid: u32,
    denial_window: DenialWindow,
    denial_tracked_uids: Option<Spanned<usize>>,
}

impl Default for RawAudit {
    fn default() -> Self {
        let limit = DenialLimit::default();
        Self {
            path: None,
            max_bytes: 100 << 20,
            keep: 10,
            on_failure: OnAuditFailure::Refuse,
            denial_records_per_uid: limit.per_uid,
            denial_window: DenialWindow(limit.window),
            denial_tracked_uids: None,
        }
    }
}

/// `[audit] denial_window`: a humantime string of at least a second (tests
/// use short windows; the timer that ends them must not spin).
struct DenialWindow(Duration);

impl<'de> Deserialize<'de> for DenialWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {text:?}: {e} (e.g. \"60s\")"))
        })?;
        if duration < Duration::from_secs(1) {
            return Err(serde::de::Error::custom(format!(
                "duration {text:?} is shorter than the minimum of 1s"
            )));
        }
        Ok(Self(duration))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntriesFile {
    #[serde(default)]
    entry: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    spiffe_id: Spanned<SpiffeId>,
    selectors: Spanned<Vec<Selector>>,
    owner: Spanned<String>,
    description: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    x509_ttl: Option<Ttl>,
    jwt_ttl: Option<Ttl>,
    jwt_audiences: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    dns_names: Vec<Spanned<String>>,
    hint: Option<String>,
    #[serde(default)]
    federates_with: Vec<Spanned<federation::NamedTrustDomain>>,
    owner_expires: Option<Spanned<toml::value::Datetime>>,
    tasks: Option<RawTasks>,
    #[serde(default)]
    may_ask_for_others: bool,
}

impl Config {
    /// Reads and validates a configuration file (entries in `entries_dir`
    /// are read by the registry, which reloads them).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        Self::parse(path, &text)
    }

    /// Validates configuration text; `path` is used in error messages and to
    /// resolve nothing else (relative paths stay relative to the cwd).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let source = SourceFile::new(path, text);
        let raw: RawConfig = source.deserialize()?;
        let trust_domain = raw.trust_domain.ok_or_else(|| ConfigError {
            file: path.to_owned(),
            line: None,
            key: Some("trust_domain".into()),
            message: "is required (e.g. trust_domain = \"example.org\")".into(),
        })?;
        let data_dir = raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let health = source.health(raw.health)?;
        let replaced = server::Replaced {
            entries: raw.entry.first().map(Spanned::span),
            entries_dir: raw.entries_dir.as_ref().map(Spanned::span),
            ca: raw.ca.as_ref().map(Spanned::span),
            jwt_issuer: raw.jwt_issuer.as_ref().map(Spanned::span),
            bundle_endpoint: raw.bundle_endpoint.as_ref().map(Spanned::span),
            oidc: raw.oidc.as_ref().map(Spanned::span),
        };
        let server = source.server(raw.server, &data_dir, &replaced)?;
        let jwt_issuer = raw.jwt_issuer.map(Spanned::into_inner);
        let ca = source.ca(raw.ca.map(Spanned::into_inner).unwrap_or_default())?;
        let limits = source.limits(raw.limits, raw.max_connections_per_uid)?;
        let federation = source.federation(raw.federation, &trust_domain)?;
        let bundle_endpoint =
            source.bundle_endpoint(raw.bundle_endpoint.map(Spanned::into_inner), &trust_domain)?;
        let federated: Vec<TrustDomain> = federation.iter().map(|f| f.trust_domain.clone()).collect();
        let entries = source.entries(raw.entry, &trust_domain, &federated)?;
        let denial_limit = source.denial_limit(&raw.audit)?;
        let sds = source.sds(raw.sds)?;
        let oidc = source.oidc(raw.oidc, jwt_issuer.as_ref())?;
        Ok(Self {
            source: path.to_owned(),
            socket_path: raw.socket_path.unwrap_or_else(|| DEFAULT_SOCKET_PATH.into()),
            limits,
            audit: AuditConfig {
                path: raw.audit.path.unwrap_or_else(|| data_dir.join("audit.jsonl")),
                rotation: Rotation {
                    max_bytes: raw.audit.max_bytes,
                    keep: raw.audit.keep,
                },
                on_failure: raw.audit.on_failure,
                denial_limit,
            },
            data_dir,
            entries_dir: raw.entries_dir.map(Spanned::into_inner),
            svid: raw.svid,
            ca,
            attestation: raw.attestation,
            health,
            trust_domain,
            entries,
            policy_dir: raw.policy_dir,
            authz: raw.authz,
            sds,
            federation,
            bundle_endpoint,
            jwt_issuer,
            oidc,
            server,
        })
    }

    /// Everything but the live policy (entries, `[svid]`): what a reload
    /// cannot change without a restart.
    pub fn restart_settings(&self) -> impl PartialEq + use<> {
        (
            self.trust_domain.clone(),
            self.socket_path.clone(),
            self.limits,
            self.data_dir.clone(),
            self.entries_dir.clone(),
            self.ca.clone(),
            self.audit.clone(),
            self.attestation,
            self.health,
            (self.authz.clone(), self.sds.clone()),
            self.policy_dir.clone(),
            // Nested: tuples compare up to twelve fields.
            (
                self.federation.clone(),
                self.bundle_endpoint.clone(),
                self.jwt_issuer.clone(),
                self.oidc.clone(),
                self.server.clone(),
            ),
        )
    }

    /// Sets the join token given on the command line (`--join-token`),
    /// which only fleet mode with `node_attestor = "join_token"` takes.
    pub fn set_join_token(&mut self, token: String) -> Result<(), ConfigError> {
        let refuse = |message: String| ConfigError {
            file: self.source.clone(),
            line: None,
            key: Some("server.join_token".into()),
            message,
        };
        let token = JoinToken::new(token).map_err(|m| refuse(format!("--join-token: {m}")))?;
        match self.server.as_mut().map(|server| &mut server.node_attestor) {
            Some(NodeAttestor::JoinToken(slot)) => {
                *slot = Some(token);
                Ok(())
            }
            _ => Err(refuse(
                "--join-token needs [server] with node_attestor = \"join_token\"".into(),
            )),
        }
    }

    /// The error `attestd run` gives without `--config`: there is no safe
    /// default trust domain.
    pub fn missing() -> ConfigError {
        ConfigError {
            file: PathBuf::from("<no config>"),
            line: None,
            key: Some("trust_domain".into()),
            message: "attestd needs a trust domain: run `attestd run --config FILE` with \
                      trust_domain = \"example.org\" in FILE"
                .into(),
        }
    }
}

/// The `[[entry]]` tables of one file of `entries_dir`, read from `path`
/// as `text`, for a daemon of `trust_domain` federating with `federated`.
pub fn parse_entries_file(
    path: &Path,
    text: &str,
    trust_domain: &TrustDomain,
    federated: &[TrustDomain],
) -> Result<Vec<EntryConfig>, ConfigError> {
    let source = SourceFile::new(path, text);
    let raw: RawEntriesFile = source.deserialize()?;
    source.entries(raw.entry, trust_domain, federated)
}

impl Config {
    /// The `[[federation]]` trust domains, in config order.
    pub fn federated_trust_domains(&self) -> Vec<TrustDomain> {
        self.federation.iter().map(|f| f.trust_domain.clone()).collect()
    }
}

pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    })
}

/// A file being parsed: knows how to turn byte spans into line numbers.
/// Shared with the helper's configuration, so both report errors alike.
pub(crate) struct SourceFile<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
    /// Byte offsets of the text's newlines, for line numbers.
    newlines: OnceCell<Vec<usize>>,
}

impl<'a> SourceFile<'a> {
    pub(crate) fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            text,
            newlines: OnceCell::new(),
        }
    }

    /// The line of a byte offset: a binary search over the newlines' offsets,
    /// found once per file. (Counting from the start for every entry made
    /// loading a policy quadratic in its size: minutes for 20,000 entries.)
    fn line_of(&self, span: &Range<usize>) -> usize {
        let newlines = self.newlines.get_or_init(|| {
            self.text
                .bytes()
                .enumerate()
                .filter_map(|(i, b)| (b == b'\n').then_some(i))
                .collect()
        });
        newlines.partition_point(|&offset| offset < span.start) + 1
    }

    pub(crate) fn error(&self, span: &Range<usize>, key: String, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            line: Some(self.line_of(span)),
            key: Some(key),
            message: message.into(),
        }
    }

    pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let deserializer = toml::Deserializer::parse(self.text).map_err(|e| self.toml_error(&e, None))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = key_path(e.path());
            self.toml_error(e.inner(), key)
        })
    }

    fn toml_error(&self, err: &toml::de::Error, key: Option<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            line: err.span().map(|s| self.line_of(&s)),
            key,
            message: err.message().trim().to_owned(),
        }
    }

    /// `cert_file`, `key_file` and `bundle_file` go together: an upstream CA
    /// needs all three.
    fn ca(&self, mut raw: RawCa) -> Result<CaConfig, ConfigError> {
        let files = (raw.cert_file.take(), raw.key_file.take(), raw.bundle_file.take());
        let upstream = match files {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(bundle)) => Some(UpstreamFiles {
                cert_file: cert.into_inner(),
                key_file: key.into_inner(),
                bundle_file: bundle.into_inner(),
            }),
            (cert, key, bundle) => {
                let given = [cert, key, bundle].into_iter().flatten().next();
                let span = given.map_or(0..0, |file| file.span());
                return Err(self.error(
                    &span,
                    "ca".into(),
                    "an upstream CA needs cert_file, key_file and bundle_file together",
                ));
            }
        };
        Ok(raw.into_config(upstream))
    }

    /// `[limits]`. `max_connections_per_uid` may also be written at the top
    /// level, its older place, but not in both.
    fn limits(
        &self,
        raw: RawLimits,
        top_level_per_uid: Option<Spanned<usize>>,
    ) -> Result<LimitsConfig, ConfigError> {
        let per_uid = match (top_level_per_uid, raw.max_connections_per_uid) {
            (Some(_), Some(nested)) => {
                return Err(self.error(
                    &nested.span(),
                    "limits.max_connections_per_uid".into(),
                    "also set at the top level: set it once",
                ));
            }
            (Some(top), None) => Some((top, "max_connections_per_uid")),
            (None, nested) => nested.map(|n| (n, "limits.max_connections_per_uid")),
        };
        let at_least_one = |value: Option<(Spanned<usize>, &str)>| match value {
            Some((v, key)) if *v.get_ref() == 0 => {
                Err(self.error(&v.span(), key.into(), "must be at least 1"))
            }
            Some((v, _)) => Ok(Some(v.into_inner())),
            None => Ok(None),
        };
        let defaults = LimitsConfig::default();
        let max_connections = at_least_one(raw.max_connections.map(|v| (v, "limits.max_connections")))?;
        if let (Some(reserve), Some(max)) = (&raw.connection_reserve, max_connections)
            && *reserve.get_ref() >= max
        {
            return Err(self.error(
                &reserve.span(),
                "limits.connection_reserve".into(),
                "must be less than limits.max_connections",
            ));
        }
        let streams = match raw.max_concurrent_streams {
            Some(v) if *v.get_ref() == 0 => {
                return Err(self.error(
                    &v.span(),
                    "limits.max_concurrent_streams".into(),
                    "must be at least 1",
                ));
            }
            Some(v) => v.into_inner(),
            None => defaults.max_concurrent_streams,
        };
        Ok(LimitsConfig {
            max_connections_per_uid: at_least_one(per_uid)?.unwrap_or(defaults.max_connections_per_uid),
            max_connections,
            connection_reserve: raw.connection_reserve.map(Spanned::into_inner),
            first_request_timeout: raw
                .first_request_timeout
                .map_or(defaults.first_request_timeout, |t| t.into_inner().0),
            max_concurrent_streams: streams,
            max_requests_per_uid: at_least_one(
                raw.max_requests_per_uid
                    .map(|v| (v, "limits.max_requests_per_uid")),
            )?
            .unwrap_or(defaults.max_requests_per_uid),
            max_concurrent_attestations: at_least_one(
                raw.max_concurrent_attestations
                    .map(|v| (v, "limits.max_concurrent_attestations")),
            )?,
            health_max_connections: at_least_one(
                raw.health_max_connections
                    .map(|v| (v, "limits.health_max_connections")),
            )?
            .unwrap_or(defaults.health_max_connections),
        })
    }

    /// The rate limit on denial records; at least one uid must be tracked.
    fn denial_limit(&self, raw: &RawAudit) -> Result<DenialLimit, ConfigError> {
        let default = DenialLimit::default();
        let tracked_uids = match &raw.denial_tracked_uids {
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.error(
                    &n.span(),
                    "audit.denial_tracked_uids".into(),
                    "must be at least 1",
                ));
            }
            Some(n) => *n.get_ref(),
            None => default.tracked_uids,
        };
        Ok(DenialLimit {
            per_uid: raw.denial_records_per_uid,
            window: raw.denial_window.0,
            tracked_uids,
        })
    }

    /// The metrics may describe every workload on the host: only loopback
    /// addresses are accepted.
    fn health(&self, raw: RawHealth) -> Result<HealthConfig, ConfigError> {
        let Some(listen) = raw.listen else {
            return Ok(HealthConfig::default());
        };
        if !listen.get_ref().0.ip().is_loopback() {
            return Err(self.error(
                &listen.span(),
                "health.listen".into(),
                format!(
                    "{} is not a loopback address (use 127.0.0.1 or [::1])",
                    listen.get_ref().0
                ),
            ));
        }
        Ok(HealthConfig {
            listen: Some(listen.into_inner().0),
        })
    }

    fn entries(
        &self,
        raw: Vec<Spanned<RawEntry>>,
        trust_domain: &TrustDomain,
        federated: &[TrustDomain],
    ) -> Result<Vec<EntryConfig>, ConfigError> {
        let file: Arc<Path> = Arc::from(self.path);
        raw.into_iter()
            .enumerate()
            .map(|(i, entry)| self.entry(i, entry, &file, trust_domain, federated))
            .collect()
    }

    fn entry(
        &self,
        index: usize,
        spanned: Spanned<RawEntry>,
        file: &Arc<Path>,
        trust_domain: &TrustDomain,
        federated: &[TrustDomain],
    ) -> Result<EntryConfig, ConfigError> {
        let location = Location {
            file: Arc::clone(file),
            line: self.line_of(&spanned.span()),
        };
        let raw = spanned.into_inner();
        let key = |field: &str| format!("entry[{index}].{field}");
        if !raw.spiffe_id.get_ref().belongs_to(trust_domain) {
            return Err(self.error(
                &raw.spiffe_id.span(),
                key("spiffe_id"),
                format!(
                    "{} is outside the trust domain {trust_domain}",
                    raw.spiffe_id.get_ref()
                ),
            ));
        }
        if raw.selectors.get_ref().is_empty() {
            return Err(self.error(
                &raw.selectors.span(),
                key("selectors"),
                "needs at least one selector (an empty list would match every process)",
            ));
        }
        if raw.owner.get_ref().trim().is_empty() {
            return Err(self.error(&raw.owner.span(), key("owner"), "must name an accountable owner"));
        }
        for (i, name) in raw.dns_names.iter().enumerate() {
            if !is_dns_name(name.get_ref()) {
                return Err(self.error(
                    &name.span(),
                    format!("entry[{index}].dns_names[{i}]"),
                    format!("{:?} is not a DNS name", name.get_ref()),
                ));
            }
        }
        for (i, audience) in raw.jwt_audiences.iter().flatten().enumerate() {
            if audience.get_ref().is_empty() {
                return Err(self.error(
                    &audience.span(),
                    format!("entry[{index}].jwt_audiences[{i}]"),
                    "an audience must not be empty",
                ));
            }
        }
        let owner_expires = raw
            .owner_expires
            .map(|date| self.owner_expires(&date, key("owner_expires")))
            .transpose()?;
        let tasks = raw.tasks.map(|tasks| self.tasks(tasks, index)).transpose()?;
        let federates_with = self.federates_with(raw.federates_with, index, federated)?;
        Ok(EntryConfig {
            spiffe_id: raw.spiffe_id.into_inner(),
            selectors: raw.selectors.into_inner(),
            owner: raw.owner.into_inner(),
            description: raw.description,
            labels: raw.labels,
            x509_ttl: raw.x509_ttl,
            jwt_ttl: raw.jwt_ttl,
            jwt_audiences_written_empty: raw.jwt_audiences.as_ref().is_some_and(Vec::is_empty),
            jwt_audiences: raw
                .jwt_audiences
                .into_iter()
                .flatten()
                .map(Spanned::into_inner)
                .collect(),
            dns_names: raw.dns_names.into_iter().map(Spanned::into_inner).collect(),
            hint: raw.hint.filter(|h| !h.is_empty()),
            federates_with,
            owner_expires,
            tasks,
            may_ask_for_others: raw.may_ask_for_others,
            location,
        })
    }

    /// `owner_expires` is a bare TOML date (`2027-06-30`), a UTC day.
    fn owner_expires(
        &self,
        date: &Spanned<toml::value::Datetime>,
        key: String,
    ) -> Result<time::Date, ConfigError> {
        let value = date.get_ref();
        let day = match (value.date, value.time, value.offset) {
            (Some(day), None, None) => day,
            _ => {
                return Err(self.error(
                    &date.span(),
                    key,
                    format!("{value} is not a bare date (write owner_expires = 2027-06-30, a UTC day)"),
                ));
            }
        };
        time::Month::try_from(day.month)
            .ok()
            .and_then(|month| time::Date::from_calendar_date(i32::from(day.year), month, day.day).ok())
            .ok_or_else(|| self.error(&date.span(), key, format!("{value} is not a calendar date")))
    }

    /// `tasks = { max_ttl, tools }`: at least one tool, each a plain name.
    fn tasks(&self, raw: RawTasks, index: usize) -> Result<TasksConfig, ConfigError> {
        if raw.tools.get_ref().is_empty() {
            return Err(self.error(
                &raw.tools.span(),
                format!("entry[{index}].tasks.tools"),
                "needs at least one tool (leave `tasks` out to allow no tasks)",
            ));
        }
        let mut tools = Vec::new();
        for (i, tool) in raw.tools.into_inner().into_iter().enumerate() {
            if !is_tool_name(tool.get_ref()) {
                return Err(self.error(
                    &tool.span(),
                    format!("entry[{index}].tasks.tools[{i}]"),
                    format!(
                        "{:?} is not a tool name (letters, digits and . _ - : /, at most {MAX_TOOL_NAME_BYTES} bytes)",
                        tool.get_ref()
                    ),
                ));
            }
            tools.push(tool.into_inner());
        }
        tools.sort();
        tools.dedup();
        Ok(TasksConfig {
            max_ttl: raw.max_ttl.map_or(DEFAULT_TASK_MAX_TTL, |ttl| ttl.0),
            tools,
        })
    }
}

/// The longest tool name.
pub const MAX_TOOL_NAME_BYTES: usize = 128;

/// Tool names become Cedar action ids, token claims and audit fields: plain
/// names only, so none needs quoting anywhere.
pub fn is_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'))
}

/// The key path as an operator writes it (`entry[0].selectors[1]`), without
/// the internal fields `toml::Spanned` deserializes through.
fn key_path(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__serde_spanned") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A DNS name for a SAN: labels of letters, digits and '-', not starting or
/// ending with '-', at most 63 bytes each, 253 in all; a leading "*." is
/// allowed.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    const ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/a"
selectors = ["unix:uid:0"]
owner = "team@example.org"
"#;

    #[test]
    fn parses_full_config_with_defaults() {
        let config = parse(&format!("trust_domain = \"example.org\"\n{ENTRY}")).unwrap();
        assert_eq!(config.trust_domain.name(), "example.org");
        assert_eq!(config.socket_path, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(config.audit.path, PathBuf::from("/var/lib/attestd/audit.jsonl"));
        assert_eq!(config.svid.x509_ttl.0, Duration::from_secs(3600));
        assert_eq!(config.entries.len(), 1);
        assert_eq!(config.entries[0].location.to_string(), "test.toml:3");
    }

    #[test]
    fn every_entry_knows_its_line_and_the_last_one_errs_on_its_own() {
        // ENTRY is 5 lines (a blank one first): entry i starts on line 3 + 5i,
        // its owner 3 lines below.
        let entries = ENTRY.repeat(1000);
        let config = parse(&format!("trust_domain = \"example.org\"\n{entries}")).unwrap();
        let lines: Vec<usize> = config.entries.iter().map(|e| e.location.line).collect();
        assert_eq!(lines, (0..1000).map(|i| 3 + 5 * i).collect::<Vec<_>>());
        let broken = format!(
            "trust_domain = \"example.org\"\n{entries}{}",
            ENTRY.replace("team@example.org", " ")
        );
        let err = parse(&broken).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3 + 5 * 1000 + 3), Some("entry[1000].owner")),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = parse("trust_domain = \"example.org\"\nbogus = 1\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn bad_selector_names_line_and_key() {
        let text = "trust_domain = \"example.org\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:x\"]\nowner = \"o\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert_eq!(err.key.as_deref(), Some("entry[0].selectors[0]"), "{err}");
    }

    #[test]
    fn foreign_trust_domain_is_refused() {
        let text = ENTRY.replace("example.org/a", "other.org/a");
        let err = parse(&format!("trust_domain = \"example.org\"\n{text}")).unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert_eq!(err.key.as_deref(), Some("entry[0].spiffe_id"));
    }

    #[test]
    fn ttl_limits() {
        let err = parse("trust_domain = \"example.org\"\n[svid]\nx509_ttl = \"4s\"\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert_eq!(err.key.as_deref(), Some("svid.x509_ttl"));
        let ok = parse("trust_domain = \"example.org\"\n[svid]\nx509_ttl = \"5s\"\n").unwrap();
        assert_eq!(ok.svid.x509_ttl.0, Duration::from_secs(5));
        // A lifetime past the year 9999, or one that overflows the clock,
        // was accepted (the invariant of fuzz/fuzz_targets/config.rs).
        for ttl in ["8000y", "500000000000y"] {
            let err = parse(&format!(
                "trust_domain = \"example.org\"\n[svid]\njwt_ttl = \"{ttl}\"\n"
            ))
            .unwrap_err();
            assert!(
                err.message.contains("longer than the maximum of 100years"),
                "{err}"
            );
            assert_eq!(err.key.as_deref(), Some("svid.jwt_ttl"));
        }
        assert!(parse("trust_domain = \"example.org\"\n[ca]\nttl = \"100y\"\n").is_ok());
    }

    #[test]
    fn upstream_ca_files_go_together() {
        let ok = parse("trust_domain = \"example.org\"\n[ca]\ncert_file = \"a\"\nkey_file = \"b\"\nbundle_file = \"c\"\n")
            .unwrap();
        assert_eq!(ok.ca.upstream.unwrap().bundle_file, PathBuf::from("c"));
        let err = parse("trust_domain = \"example.org\"\n[ca]\ncert_file = \"a\"\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("ca")), "{err}");
    }

    #[test]
    fn a_listen_address_with_a_host_name_says_to_write_an_ip() {
        let err =
            parse("trust_domain = \"example.org\"\n[health]\nlisten = \"localhost:9090\"\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("health.listen")),
            "{err}"
        );
        assert!(
            err.message.contains(
                "\"localhost\" is a host name, not an IP address (names are not resolved): write e.g. \"127.0.0.1:9090\""
            ),
            "{err}"
        );
        let err = parse("trust_domain = \"example.org\"\n[health]\nlisten = \"9090\"\n").unwrap_err();
        assert!(err.message.contains("write an IP address and a port"), "{err}");
    }

    #[test]
    fn health_listener_must_be_loopback() {
        let ok = parse("trust_domain = \"example.org\"\n[health]\nlisten = \"127.0.0.1:9090\"\n").unwrap();
        assert_eq!(ok.health.listen, Some("127.0.0.1:9090".parse().unwrap()));
        let err = parse("trust_domain = \"example.org\"\n[health]\nlisten = \"0.0.0.0:9090\"\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("health.listen")),
            "{err}"
        );
    }

    #[test]
    fn limits_defaults_both_spellings_and_errors() {
        let defaults = parse("trust_domain = \"example.org\"\n").unwrap();
        assert_eq!(defaults.limits, LimitsConfig::default());
        let top = parse("trust_domain = \"example.org\"\nmax_connections_per_uid = 3\n").unwrap();
        assert_eq!(top.limits.max_connections_per_uid, 3);
        let nested = parse(
            "trust_domain = \"example.org\"\n[limits]\nmax_connections_per_uid = 4\nmax_connections = 40\n\
             connection_reserve = 8\nfirst_request_timeout = \"2s\"\nmax_concurrent_streams = 4\n\
             max_requests_per_uid = 6\nmax_concurrent_attestations = 3\nhealth_max_connections = 5\n",
        )
        .unwrap();
        assert_eq!(
            nested.limits,
            LimitsConfig {
                max_connections_per_uid: 4,
                max_connections: Some(40),
                connection_reserve: Some(8),
                first_request_timeout: Duration::from_secs(2),
                max_concurrent_streams: 4,
                max_requests_per_uid: 6,
                max_concurrent_attestations: Some(3),
                health_max_connections: 5,
            }
        );
        let both = parse(
            "trust_domain = \"example.org\"\nmax_connections_per_uid = 3\n[limits]\nmax_connections_per_uid = 4\n",
        )
        .unwrap_err();
        assert_eq!(
            (both.line, both.key.as_deref()),
            (Some(4), Some("limits.max_connections_per_uid"))
        );
        let zero = parse("trust_domain = \"example.org\"\n[limits]\nmax_connections = 0\n").unwrap_err();
        assert_eq!(
            (zero.line, zero.key.as_deref()),
            (Some(3), Some("limits.max_connections"))
        );
        let reserve =
            parse("trust_domain = \"example.org\"\n[limits]\nmax_connections = 8\nconnection_reserve = 8\n")
                .unwrap_err();
        assert_eq!(
            reserve.key.as_deref(),
            Some("limits.connection_reserve"),
            "{reserve}"
        );
        let unknown = parse("trust_domain = \"example.org\"\n[limits]\nmax_conections = 8\n").unwrap_err();
        assert_eq!(unknown.line, Some(3), "{unknown}");
        let short =
            parse("trust_domain = \"example.org\"\n[limits]\nfirst_request_timeout = \"1ms\"\n").unwrap_err();
        assert_eq!(
            short.key.as_deref(),
            Some("limits.first_request_timeout"),
            "{short}"
        );
    }

    #[test]
    fn audit_denial_limit() {
        let default = parse("trust_domain = \"example.org\"\n").unwrap();
        assert_eq!(default.audit.denial_limit, DenialLimit::default());
        let set = parse(
            "trust_domain = \"example.org\"\n[audit]\ndenial_records_per_uid = 5\ndenial_window = \"2s\"\ndenial_tracked_uids = 8\n",
        )
        .unwrap();
        assert_eq!(
            set.audit.denial_limit,
            DenialLimit {
                per_uid: 5,
                window: Duration::from_secs(2),
                tracked_uids: 8
            }
        );
        let err = parse("trust_domain = \"example.org\"\n[audit]\ndenial_window = \"10ms\"\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("audit.denial_window")),
            "{err}"
        );
        let err = parse("trust_domain = \"example.org\"\n[audit]\n\ndenial_tracked_uids = 0\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("audit.denial_tracked_uids")),
            "{err}"
        );
    }

    #[test]
    fn missing_trust_domain() {
        let err = parse("socket_path = \"/tmp/x\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("trust_domain"));
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("reviewer.local"));
        assert!(is_dns_name("*.svc.local"));
        assert!(!is_dns_name("-bad.local"));
        assert!(!is_dns_name("bad..local"));
        assert!(!is_dns_name("sp ace"));
    }

    /// The config with one entry whose last lines are `extra`.
    fn entry_with(extra: &str) -> Result<Config, ConfigError> {
        parse(&format!("trust_domain = \"example.org\"\n{ENTRY}{extra}\n"))
    }

    #[test]
    fn owner_expires_is_a_bare_utc_date() {
        let config = entry_with("owner_expires = 2027-06-30").unwrap();
        let expected = time::Date::from_calendar_date(2027, time::Month::June, 30).unwrap();
        assert_eq!(config.entries[0].owner_expires, Some(expected));
        assert_eq!(entry_with("").unwrap().entries[0].owner_expires, None, "optional");

        // Leap day only in a leap year.
        assert!(entry_with("owner_expires = 2028-02-29").is_ok());
    }

    #[test]
    fn owner_expires_refuses_datetimes_with_the_reason() {
        for value in [
            "2027-06-30T12:00:00Z",
            "2027-06-30T12:00:00+02:00",
            "2027-06-30T12:00:00",
            "12:00:00",
        ] {
            let err = entry_with(&format!("owner_expires = {value}")).unwrap_err();
            assert_eq!(
                (err.line, err.key.as_deref()),
                (Some(7), Some("entry[0].owner_expires")),
                "{value}: {err}"
            );
            assert!(
                err.message
                    .contains("is not a bare date (write owner_expires = 2027-06-30, a UTC day)"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn owner_expires_refuses_what_is_not_a_date() {
        // Days the month lacks: the TOML parser refuses them, with the line.
        for value in ["2027-02-29", "2027-04-31", "2027-13-01"] {
            let err = entry_with(&format!("owner_expires = {value}")).unwrap_err();
            assert_eq!(err.line, Some(7), "{value}: {err}");
            assert!(err.message.contains("invalid date"), "{value}: {err}");
        }
        // A string or a number is not a TOML date: refused with its key.
        for value in ["\"2027-06-30\"", "20270630"] {
            let err = entry_with(&format!("owner_expires = {value}")).unwrap_err();
            assert_eq!(
                (err.line, err.key.as_deref()),
                (Some(7), Some("entry[0].owner_expires")),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn tasks_default_max_ttl_and_tools_as_a_set() {
        assert_eq!(entry_with("").unwrap().entries[0].tasks, None, "absent: no tasks");
        let config =
            entry_with(r#"tasks = { tools = ["jira.comment", "github.create_pr", "jira.comment"] }"#)
                .unwrap();
        let tasks = config.entries[0].tasks.clone().unwrap();
        assert_eq!(tasks.max_ttl, DEFAULT_TASK_MAX_TTL);
        assert_eq!(
            tasks.tools,
            ["github.create_pr", "jira.comment"],
            "sorted, duplicates dropped"
        );
        let config = entry_with(r#"tasks = { max_ttl = "5m", tools = ["mcp:fs/read"] }"#).unwrap();
        assert_eq!(
            config.entries[0].tasks.clone().unwrap().max_ttl,
            Duration::from_secs(300)
        );
        assert!(!config.entries[0].may_ask_for_others, "false unless said");
        assert!(entry_with("may_ask_for_others = true").unwrap().entries[0].may_ask_for_others);
    }

    #[test]
    fn tasks_refuse_no_tools_bad_names_and_unknown_keys_with_line_and_key() {
        let err = entry_with("tasks = { tools = [] }").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(7), Some("entry[0].tasks.tools")),
            "{err}"
        );
        assert!(err.message.contains("needs at least one tool"), "{err}");

        for bad in ["bad tool", "", "rm;-rf", "ünïcode"] {
            let err = entry_with(&format!("tasks = {{ tools = [\"ok\", {bad:?}] }}")).unwrap_err();
            assert_eq!(
                (err.line, err.key.as_deref()),
                (Some(7), Some("entry[0].tasks.tools[1]")),
                "{bad:?}: {err}"
            );
            assert!(err.message.contains("is not a tool name"), "{bad:?}: {err}");
        }
        let long = "t".repeat(MAX_TOOL_NAME_BYTES + 1);
        let err = entry_with(&format!("tasks = {{ tools = [{long:?}] }}")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("entry[0].tasks.tools[0]"), "{err}");

        let err = entry_with("\n[entry.tasks]\ntools = [\"a\"]\nbogus = 1").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = entry_with(r#"tasks = { tools = ["a"], max_ttl = "soon" }"#).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("entry[0].tasks.max_ttl"), "{err}");
    }
}

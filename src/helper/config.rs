//! The helper's configuration: spiffe-helper's keys, in spiffe-helper's own
//! HCL (`helper.conf` as it is) or in TOML.
//!
//! Key names, defaults and the rules that tie keys together follow
//! spiffe-helper, so an operator swaps the binary and keeps the file (the
//! README maps every key). HCL is translated into TOML line for line
//! ([`super::hcl`]), so errors in either name the file, line and key the way
//! attestd's own configuration does, through the same [`SourceFile`].

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sys::signal::Signal;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::hcl;
use super::process::{ChildCommand, split_args};
use crate::client;
use crate::config::{ConfigError, SourceFile, read_file};

/// spiffe-helper's default modes: certificates world-readable, secrets not.
const DEFAULT_CERT_FILE_MODE: u32 = 0o644;
const DEFAULT_KEY_FILE_MODE: u32 = 0o600;
const DEFAULT_JWT_BUNDLE_FILE_MODE: u32 = 0o600;
const DEFAULT_JWT_SVID_FILE_MODE: u32 = 0o600;

/// spiffe-helper's health listener defaults.
const DEFAULT_HEALTH_PORT: u16 = 8081;
const DEFAULT_LIVENESS_PATH: &str = "/live";
const DEFAULT_READINESS_PATH: &str = "/ready";

/// A validated helper configuration.
#[derive(Debug, Clone)]
pub struct HelperConfig {
    /// The file this came from.
    pub source: PathBuf,
    /// `agent_address`: the Workload API socket (default: `SPIFFE_ENDPOINT_SOCKET`,
    /// then attestd's default socket).
    pub agent_address: Option<String>,
    /// `daemon_mode`: keep running and follow rotations (default), or write
    /// once and exit.
    pub daemon_mode: bool,
    /// `cert_dir`: where every file is written (default: the working directory).
    pub cert_dir: PathBuf,
    /// `hint`: which identity to write when the workload holds several
    /// (default: the first, the workload's default identity).
    pub hint: Option<String>,
    /// The X.509-SVID files, if configured.
    pub x509: Option<X509Output>,
    /// `jwt_svids`: one token file per audience.
    pub jwt_svids: Vec<JwtSvidOutput>,
    /// `jwt_bundle_file_name`: the JWT bundles, if configured.
    pub jwt_bundle: Option<FileOutput>,
    /// `cmd` and `cmd_args`: the program started once the files exist.
    pub cmd: Option<ChildCommand>,
    /// `renew_signal`: sent to the program (and the `pid_file_name` process)
    /// after each X.509 rotation.
    pub renew_signal: Option<Signal>,
    /// `pid_file_name`: a file holding the pid of another process to signal.
    pub pid_file: Option<PathBuf>,
    /// `health_checks`, when `listener_enabled` (daemon mode only).
    pub health_checks: Option<HealthChecks>,
}

/// spiffe-helper's `health_checks` block: an HTTP listener for liveness
/// and readiness probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecks {
    /// `bind_port`: served on every interface, as spiffe-helper does
    /// (probes come from outside a pod's network namespace).
    pub bind_port: u16,
    /// `liveness_path`: 200 unless writing a file failed.
    pub liveness_path: String,
    /// `readiness_path`: 200 once every file is written.
    pub readiness_path: String,
}

/// The three X.509 files, written together (see `files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Output {
    /// `svid_file_name`: the certificate chain, leaf first.
    pub svid: FileOutput,
    /// `svid_key_file_name`: the PKCS#8 private key.
    pub key: FileOutput,
    /// `svid_bundle_file_name`: the trust bundle.
    pub bundle: FileOutput,
    /// `add_intermediates_to_bundle`: move intermediates from the chain to the bundle.
    pub add_intermediates_to_bundle: bool,
    /// `include_federated_domains`: add federated trust domains' CAs to the bundle.
    pub include_federated_domains: bool,
    /// `omit_expired`: leave expired certificates out of the files.
    pub omit_expired: bool,
}

/// A file in `cert_dir` and the mode it is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutput {
    /// Its name (a single path component).
    pub name: String,
    /// Its permission bits.
    pub mode: u32,
}

/// One `jwt_svids` table: a token for these audiences, kept fresh in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidOutput {
    /// `jwt_audience` followed by `jwt_extra_audiences`.
    pub audiences: Vec<String>,
    /// `jwt_svid_file_name` and `jwt_svid_file_mode`.
    pub file: FileOutput,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHelperConfig {
    agent_address: Option<AgentAddress>,
    cmd: Option<Spanned<String>>,
    cmd_args: Option<Spanned<String>>,
    cert_dir: Option<PathBuf>,
    daemon_mode: Option<bool>,
    hint: Option<String>,
    #[serde(default)]
    add_intermediates_to_bundle: bool,
    #[serde(default)]
    include_federated_domains: bool,
    #[serde(default)]
    omit_expired: bool,
    health_checks: Option<Spanned<RawHealthChecks>>,
    svid_file_name: Option<Spanned<FileName>>,
    svid_key_file_name: Option<Spanned<FileName>>,
    svid_bundle_file_name: Option<Spanned<FileName>>,
    renew_signal: Option<Spanned<RenewSignal>>,
    pid_file_name: Option<Spanned<PathBuf>>,
    #[serde(default)]
    jwt_svids: Vec<RawJwtSvid>,
    jwt_bundle_file_name: Option<Spanned<FileName>>,
    cert_file_mode: Option<FileMode>,
    key_file_mode: Option<FileMode>,
    jwt_bundle_file_mode: Option<FileMode>,
    jwt_svid_file_mode: Option<FileMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthChecks {
    #[serde(default)]
    listener_enabled: bool,
    bind_port: Option<u16>,
    liveness_path: Option<String>,
    readiness_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwtSvid {
    jwt_audience: Audience,
    #[serde(default)]
    jwt_extra_audiences: Vec<Audience>,
    jwt_svid_file_name: Spanned<FileName>,
}

impl HelperConfig {
    /// Reads and validates a helper configuration file, HCL or TOML;
    /// `daemon_mode` overrides the file's (spiffe-helper's `-daemon-mode`).
    pub fn load(path: &Path, daemon_mode: Option<bool>) -> Result<Self, ConfigError> {
        Self::parse(path, &read_file(path)?, daemon_mode)
    }

    /// Validates configuration text, HCL or TOML as [`Self::load`] tells
    /// them apart; `path` is used for that and in error messages.
    pub fn parse(path: &Path, text: &str, daemon_mode: Option<bool>) -> Result<Self, ConfigError> {
        Self::parse_toml(path, &as_toml(path, text)?, daemon_mode)
    }

    fn parse_toml(path: &Path, text: &str, daemon_mode: Option<bool>) -> Result<Self, ConfigError> {
        let source = SourceFile::new(path, text);
        let raw: RawHelperConfig = source.deserialize()?;
        let daemon_mode = daemon_mode.or(raw.daemon_mode).unwrap_or(true);
        if let Some(pid_file) = &raw.pid_file_name {
            if !daemon_mode {
                return Err(source.error(
                    &pid_file.span(),
                    "pid_file_name".into(),
                    "is only used in daemon_mode (there are no rotations to signal in one-shot mode)",
                ));
            }
            if raw.renew_signal.is_none() {
                return Err(source.error(
                    &pid_file.span(),
                    "pid_file_name".into(),
                    "needs renew_signal: the signal to send to that process",
                ));
            }
        }
        if !daemon_mode && (raw.cmd.is_some() || raw.renew_signal.is_some()) {
            // spiffe-helper warns and ignores these too.
            tracing::warn!(config = %path.display(), "daemon_mode = false: cmd and renew_signal are ignored");
        }
        let health_checks = health_checks(&source, raw.health_checks, daemon_mode)?;
        let cmd = match raw.cmd {
            Some(program) => Some(command(&source, program, raw.cmd_args)?),
            None => None,
        };
        let modes = Modes {
            cert: mode_or(raw.cert_file_mode, DEFAULT_CERT_FILE_MODE),
            key: mode_or(raw.key_file_mode, DEFAULT_KEY_FILE_MODE),
            jwt_bundle: mode_or(raw.jwt_bundle_file_mode, DEFAULT_JWT_BUNDLE_FILE_MODE),
            jwt_svid: mode_or(raw.jwt_svid_file_mode, DEFAULT_JWT_SVID_FILE_MODE),
        };
        let mut names = Names {
            source: &source,
            claimed: BTreeSet::new(),
        };
        let x509 = x509_output(
            &mut names,
            [
                raw.svid_file_name,
                raw.svid_key_file_name,
                raw.svid_bundle_file_name,
            ],
            &modes,
            Bundling {
                add_intermediates_to_bundle: raw.add_intermediates_to_bundle,
                include_federated_domains: raw.include_federated_domains,
                omit_expired: raw.omit_expired,
            },
        )?;
        let jwt_bundle = match raw.jwt_bundle_file_name {
            Some(name) => Some(names.claim(name, "jwt_bundle_file_name", modes.jwt_bundle)?),
            None => None,
        };
        let mut jwt_svids = Vec::new();
        for (i, raw_svid) in raw.jwt_svids.into_iter().enumerate() {
            let key = format!("jwt_svids[{i}].jwt_svid_file_name");
            let file = names.claim(raw_svid.jwt_svid_file_name, &key, modes.jwt_svid)?;
            let mut audiences = vec![raw_svid.jwt_audience.0];
            audiences.extend(raw_svid.jwt_extra_audiences.into_iter().map(|a| a.0));
            jwt_svids.push(JwtSvidOutput { audiences, file });
        }
        if x509.is_none() && jwt_bundle.is_none() && jwt_svids.is_empty() {
            return Err(ConfigError {
                file: path.to_owned(),
                line: None,
                key: None,
                message: "nothing to write: set svid_file_name, svid_key_file_name and \
                          svid_bundle_file_name, or jwt_svids, or jwt_bundle_file_name"
                    .into(),
            });
        }
        Ok(Self {
            source: path.to_owned(),
            agent_address: raw.agent_address.map(|a| a.0).filter(|a| !a.is_empty()),
            daemon_mode,
            cert_dir: raw.cert_dir.unwrap_or_else(|| PathBuf::from(".")),
            hint: raw.hint.filter(|h| !h.is_empty()),
            x509,
            jwt_svids,
            jwt_bundle,
            cmd,
            renew_signal: raw.renew_signal.map(|s| s.into_inner().0),
            pid_file: raw.pid_file_name.map(Spanned::into_inner),
            health_checks,
        })
    }
}

/// The file as TOML: a `.toml` file is TOML; any other (spiffe-helper's
/// `helper.conf`) is read as TOML when it is valid TOML, else translated
/// from HCL. The two agree on every file valid in both.
fn as_toml(path: &Path, text: &str) -> Result<String, ConfigError> {
    let toml_error = match text.parse::<toml::Table>() {
        Ok(_) => return Ok(text.to_owned()),
        Err(_) if path.extension().is_some_and(|e| e == "toml") => return Ok(text.to_owned()),
        Err(e) => e,
    };
    hcl::to_toml(text).map_err(|e| {
        let toml_line = toml_error
            .span()
            .map(|span| 1 + text[..span.start.min(text.len())].matches('\n').count());
        let also = match (e.key.is_some(), toml_line) {
            // A key-level problem means the file is HCL: TOML's complaint is noise.
            (true, _) => String::new(),
            (false, Some(line)) => format!(" (nor TOML: line {line}: {})", toml_error.message()),
            (false, None) => format!(" (nor TOML: {})", toml_error.message()),
        };
        ConfigError {
            file: path.to_owned(),
            line: Some(e.line),
            key: e.key,
            message: format!("{}{also}", e.message),
        }
    })
}

/// `health_checks`: a listener only when enabled, and only in daemon mode
/// (spiffe-helper ignores it in one-shot mode, and so does this).
fn health_checks(
    source: &SourceFile<'_>,
    raw: Option<Spanned<RawHealthChecks>>,
    daemon_mode: bool,
) -> Result<Option<HealthChecks>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let span = raw.span();
    let raw = raw.into_inner();
    if !raw.listener_enabled {
        return Ok(None);
    }
    if !daemon_mode {
        tracing::warn!(config = %source.path.display(), "daemon_mode = false: health_checks is ignored");
        return Ok(None);
    }
    let checks = HealthChecks {
        bind_port: raw.bind_port.unwrap_or(DEFAULT_HEALTH_PORT),
        liveness_path: raw.liveness_path.unwrap_or_else(|| DEFAULT_LIVENESS_PATH.into()),
        readiness_path: raw
            .readiness_path
            .unwrap_or_else(|| DEFAULT_READINESS_PATH.into()),
    };
    for (key, path) in [
        ("liveness_path", &checks.liveness_path),
        ("readiness_path", &checks.readiness_path),
    ] {
        if !path.starts_with('/') || path.contains(['?', '#', '*', '{', '}']) {
            let message = format!("{path:?} is not a URL path (e.g. \"/live\")");
            return Err(source.error(&span, format!("health_checks.{key}"), message));
        }
    }
    if checks.liveness_path == checks.readiness_path {
        return Err(source.error(
            &span,
            "health_checks.readiness_path".into(),
            "must differ from liveness_path",
        ));
    }
    Ok(Some(checks))
}

struct Modes {
    cert: u32,
    key: u32,
    jwt_bundle: u32,
    jwt_svid: u32,
}

fn mode_or(mode: Option<FileMode>, default: u32) -> u32 {
    mode.map_or(default, |m| m.0)
}

fn command(
    source: &SourceFile<'_>,
    program: Spanned<String>,
    args: Option<Spanned<String>>,
) -> Result<ChildCommand, ConfigError> {
    if program.get_ref().is_empty() {
        return Err(source.error(&program.span(), "cmd".into(), "must name a program"));
    }
    let args = match args {
        Some(args) => split_args(args.get_ref())
            .map_err(|message| source.error(&args.span(), "cmd_args".into(), message))?,
        None => Vec::new(),
    };
    Ok(ChildCommand {
        program: program.into_inner(),
        args,
    })
}

/// How the X.509 files are composed.
struct Bundling {
    add_intermediates_to_bundle: bool,
    include_federated_domains: bool,
    omit_expired: bool,
}

/// The X.509 files: spiffe-helper takes all three names or none.
fn x509_output(
    names: &mut Names<'_, '_>,
    files: [Option<Spanned<FileName>>; 3],
    modes: &Modes,
    bundling: Bundling,
) -> Result<Option<X509Output>, ConfigError> {
    const KEYS: [&str; 3] = ["svid_file_name", "svid_key_file_name", "svid_bundle_file_name"];
    match files {
        [Some(svid), Some(key), Some(bundle)] => Ok(Some(X509Output {
            svid: names.claim(svid, KEYS[0], modes.cert)?,
            key: names.claim(key, KEYS[1], modes.key)?,
            bundle: names.claim(bundle, KEYS[2], modes.cert)?,
            add_intermediates_to_bundle: bundling.add_intermediates_to_bundle,
            include_federated_domains: bundling.include_federated_domains,
            omit_expired: bundling.omit_expired,
        })),
        [None, None, None] => Ok(None),
        files => {
            let (key, span) = KEYS
                .iter()
                .zip(&files)
                .find_map(|(key, file)| file.as_ref().map(|f| (*key, f.span())))
                .unwrap_or((KEYS[0], 0..0));
            Err(names.source.error(
                &span,
                key.into(),
                "svid_file_name, svid_key_file_name and svid_bundle_file_name go together: \
                 set all three or none",
            ))
        }
    }
}

/// The file names claimed so far: two outputs in one file would overwrite
/// each other.
struct Names<'s, 'a> {
    source: &'s SourceFile<'a>,
    claimed: BTreeSet<String>,
}

impl Names<'_, '_> {
    fn claim(&mut self, name: Spanned<FileName>, key: &str, mode: u32) -> Result<FileOutput, ConfigError> {
        let span = name.span();
        let name = name.into_inner().0;
        if !self.claimed.insert(name.clone()) {
            let message = format!("{name:?} is already used by another output");
            return Err(self.source.error(&span, key.into(), message));
        }
        Ok(FileOutput { name, mode })
    }
}

/// A file name inside `cert_dir`: one path component, not hidden behind
/// `..` (the helper keeps its generations under names starting with `..`).
struct FileName(String);

impl<'de> Deserialize<'de> for FileName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if name.is_empty() || name.contains('/') || name.starts_with("..") || name == "." {
            return Err(serde::de::Error::custom(format!(
                "{name:?} is not a plain file name (files go into cert_dir; names starting with \"..\" are the helper's own)"
            )));
        }
        Ok(Self(name))
    }
}

/// A Workload API address the client accepts (`unix:///path`, `unix:/path`
/// or `/path`), checked here so a typo is reported with its line.
/// Empty means unset, as in spiffe-helper.
struct AgentAddress(String);

impl<'de> Deserialize<'de> for AgentAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let address = String::deserialize(d)?;
        if !address.is_empty() {
            client::socket_path(Some(&address)).map_err(serde::de::Error::custom)?;
        }
        Ok(Self(address))
    }
}

/// A non-empty JWT audience.
struct Audience(String);

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let audience = String::deserialize(d)?;
        if audience.is_empty() {
            return Err(serde::de::Error::custom("an audience must not be empty"));
        }
        Ok(Self(audience))
    }
}

/// A signal name: `SIGHUP` or `HUP`.
struct RenewSignal(Signal);

impl<'de> Deserialize<'de> for RenewSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        Signal::from_str(&full)
            .map(Self)
            .map_err(|_| serde::de::Error::custom(format!("{name:?} is not a signal name (e.g. \"SIGHUP\")")))
    }
}

/// Permission bits: a TOML integer (`0o644`) or an octal string (`"0644"`,
/// as spiffe-helper's HCL writes them).
struct FileMode(u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FileModeVisitor)
    }
}

struct FileModeVisitor;

impl serde::de::Visitor<'_> for FileModeVisitor {
    type Value = FileMode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("permission bits, e.g. 0o640 or \"0640\"")
    }

    fn visit_i64<E: serde::de::Error>(self, bits: i64) -> Result<FileMode, E> {
        match u32::try_from(bits) {
            Ok(bits) if bits <= 0o777 => Ok(FileMode(bits)),
            _ => Err(E::custom(format!("{bits:#o} is not a file mode (0 to 0o777)"))),
        }
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<FileMode, E> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        let bits = u32::from_str_radix(digits, 8)
            .map_err(|_| E::custom(format!("{text:?} is not an octal file mode (e.g. \"0640\")")))?;
        self.visit_i64(i64::from(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HelperConfig, ConfigError> {
        HelperConfig::parse(Path::new("helper.toml"), text, None)
    }

    const X509: &str = r#"
svid_file_name = "svid.pem"
svid_key_file_name = "svid_key.pem"
svid_bundle_file_name = "svid_bundle.pem"
"#;

    #[test]
    fn spiffe_helper_defaults() {
        let config = parse(X509).unwrap();
        assert!(config.daemon_mode);
        assert_eq!(config.cert_dir, PathBuf::from("."));
        let x509 = config.x509.unwrap();
        assert_eq!(x509.svid.mode, 0o644);
        assert_eq!(x509.key.mode, 0o600);
        assert_eq!(x509.bundle.mode, 0o644);
        assert!(config.cmd.is_none() && config.renew_signal.is_none());
    }

    #[test]
    fn full_config() {
        let config = parse(&format!(
            r#"{X509}
agent_address = "unix:///run/attestd/api.sock"
cert_dir = "/run/certs"
cmd = "/usr/bin/ghostunnel"
cmd_args = "server --keystore \"certs/svid key.pem\" --allow-uri spiffe://example.org/db"
renew_signal = "SIGUSR1"
key_file_mode = "0640"
cert_file_mode = 0o444
jwt_bundle_file_name = "jwt_bundle.json"
[[jwt_svids]]
jwt_audience = "db"
jwt_extra_audiences = ["cache"]
jwt_svid_file_name = "jwt_db.token"
"#
        ))
        .unwrap();
        let cmd = config.cmd.unwrap();
        assert_eq!(cmd.program, "/usr/bin/ghostunnel");
        assert_eq!(
            cmd.args,
            [
                "server",
                "--keystore",
                "certs/svid key.pem",
                "--allow-uri",
                "spiffe://example.org/db"
            ]
        );
        assert_eq!(config.renew_signal, Some(Signal::SIGUSR1));
        let x509 = config.x509.unwrap();
        assert_eq!((x509.svid.mode, x509.key.mode), (0o444, 0o640));
        assert_eq!(config.jwt_svids[0].audiences, ["db", "cache"]);
        assert_eq!(config.jwt_svids[0].file.mode, 0o600);
        assert_eq!(config.jwt_bundle.unwrap().name, "jwt_bundle.json");
    }

    #[test]
    fn signal_names() {
        for name in ["SIGHUP", "HUP", "hup"] {
            let config = parse(&format!("{X509}renew_signal = \"{name}\"\n")).unwrap();
            assert_eq!(config.renew_signal, Some(Signal::SIGHUP));
        }
        let err = parse(&format!("{X509}renew_signal = \"SIGNOPE\"\n")).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(5), Some("renew_signal")),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = parse(&format!("{X509}health_checks = 1\n")).unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
        assert!(err.to_string().contains("health_checks"), "{err}");
    }

    #[test]
    fn agent_address_is_checked() {
        let config = parse(&format!("{X509}agent_address = \"/run/a.sock\"\n")).unwrap();
        assert_eq!(config.agent_address.as_deref(), Some("/run/a.sock"));
        let err = parse(&format!("{X509}agent_address = \"tcp://127.0.0.1:1\"\n")).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(5), Some("agent_address")),
            "{err}"
        );
    }

    #[test]
    fn x509_names_go_together() {
        let err = parse("svid_file_name = \"svid.pem\"\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(1), Some("svid_file_name")),
            "{err}"
        );
    }

    #[test]
    fn something_to_write() {
        let err = parse("cert_dir = \"/tmp\"\n").unwrap_err();
        assert!(err.message.contains("nothing to write"), "{err}");
    }

    #[test]
    fn pid_file_rules() {
        let err = parse(&format!("{X509}pid_file_name = \"/run/app.pid\"\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("pid_file_name"));
        assert!(err.message.contains("renew_signal"), "{err}");
        let err = parse(&format!(
            "{X509}daemon_mode = false\nrenew_signal = \"SIGHUP\"\npid_file_name = \"/run/app.pid\"\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("daemon_mode"), "{err}");
    }

    #[test]
    fn file_names_and_modes() {
        let err = parse(&X509.replace("svid.pem", "sub/svid.pem")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("svid_file_name"), "{err}");
        let err = parse(&X509.replace("svid_key.pem", "..data")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("svid_key_file_name"), "{err}");
        let err = parse(&format!("{X509}key_file_mode = \"0999\"\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("key_file_mode"), "{err}");
        let err = parse(&format!("{X509}key_file_mode = 0o1777\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("key_file_mode"), "{err}");
    }

    #[test]
    fn jwt_svids_need_audience_and_distinct_files() {
        let err = parse("[[jwt_svids]]\njwt_svid_file_name = \"a.token\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("jwt_svids[0]"), "{err}");
        assert!(err.message.contains("jwt_audience"), "{err}");
        let err = parse(&format!(
            "{X509}[[jwt_svids]]\njwt_audience = \"a\"\njwt_svid_file_name = \"svid.pem\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(7), Some("jwt_svids[0].jwt_svid_file_name")),
            "{err}"
        );
    }

    /// spiffe-helper's README example, with a health_checks block.
    const HCL: &str = r#"agent_address = "/run/attestd/api.sock"
cmd = "ghostunnel"
cmd_args = "server --listen localhost:8002 --target localhost:8001 --keystore certs/svid_key.pem"
cert_dir = "certs"
renew_signal = "SIGUSR1"
svid_file_name = "svid.pem"
svid_key_file_name = "svid_key.pem"
svid_bundle_file_name = "svid_bundle.pem"
jwt_svids = [{jwt_audience="your-audience",jwt_extra_audiences=["your-extra-audience-1", "your-extra-audience-2"], jwt_svid_file_name="jwt_svid.token"}]
jwt_bundle_file_name = "bundle.json"
cert_file_mode = 0444
key_file_mode = 0444
jwt_bundle_file_mode = 0444
jwt_svid_file_mode = 0444
omit_expired = true
health_checks {
    listener_enabled = true
    bind_port = 8081
    liveness_path = "/live"
    readiness_path = "/ready"
}
"#;

    fn load_text(name: &str, text: &str, daemon_mode: Option<bool>) -> Result<HelperConfig, ConfigError> {
        HelperConfig::parse(Path::new(name), text, daemon_mode)
    }

    #[test]
    fn spiffe_helper_hcl_as_it_is() {
        let config = load_text("helper.conf", HCL, None).unwrap();
        let x509 = config.x509.unwrap();
        assert_eq!((x509.svid.mode, x509.key.mode), (0o444, 0o444), "HCL 1 octal");
        assert!(x509.omit_expired);
        assert_eq!(config.jwt_svids[0].audiences.len(), 3);
        assert_eq!(config.jwt_svids[0].file.mode, 0o444);
        assert_eq!(config.renew_signal, Some(Signal::SIGUSR1));
        assert_eq!(
            config.health_checks,
            Some(HealthChecks {
                bind_port: 8081,
                liveness_path: "/live".into(),
                readiness_path: "/ready".into()
            })
        );
    }

    #[test]
    fn hcl_errors_name_the_hcl_line() {
        let err = load_text("helper.conf", &HCL.replace("\"SIGUSR1\"", "\"SIGNOPE\""), None).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(5), Some("renew_signal")),
            "{err}"
        );
        let err = load_text(
            "helper.conf",
            &HCL.replace("bind_port = 8081", "bind_prt = 8081"),
            None,
        )
        .unwrap_err();
        assert_eq!(err.line, Some(16), "{err}");
        assert!(err.message.contains("bind_prt"), "{err}");
        let err = load_text("helper.conf", "svid_file_name = \"a\"\nthis is neither\n", None).unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.message.contains("nor TOML"), "{err}");
        // A .toml file is only ever TOML.
        let err = load_text("helper.toml", HCL, None).unwrap_err();
        assert!(!err.message.contains("nor TOML"), "{err}");
    }

    #[test]
    fn health_checks_defaults_and_one_shot_mode() {
        let config = load_text(
            "h.conf",
            &format!("{X509}health_checks {{\n listener_enabled = true\n}}\n"),
            None,
        )
        .unwrap();
        let checks = config.health_checks.unwrap();
        assert_eq!((checks.bind_port, checks.liveness_path.as_str()), (8081, "/live"));
        let config = load_text(
            "h.conf",
            &format!("{X509}[health_checks]\nlistener_enabled = false\n"),
            None,
        )
        .unwrap();
        assert!(config.health_checks.is_none());
        // -daemon-mode=false overrides the file; health_checks then does not apply.
        let config = load_text("h.conf", HCL.replace("cmd = ", "# cmd = ").as_str(), Some(false)).unwrap();
        assert!(!config.daemon_mode && config.health_checks.is_none());
        let err = load_text(
            "h.conf",
            &format!("{X509}[health_checks]\nlistener_enabled = true\nliveness_path = \"/x\"\nreadiness_path = \"/x\"\n"),
            None,
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("health_checks.readiness_path"), "{err}");
    }
}

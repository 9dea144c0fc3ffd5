//! The CLI's Workload API client (`attestd api ...`): the same calls any
//! SPIFFE client makes, printed for humans and optionally written as PEM;
//! and its client of attestd's agent API ([`tasks`]).

pub mod tasks;

mod authz;

pub use authz::{allowed, authorize, decision_json, describe_decision};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::atomic_file;
use crate::config::DEFAULT_SOCKET_PATH;
use crate::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use crate::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, SECURITY_HEADER,
    SECURITY_HEADER_VALUE, ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509svid, X509svidRequest,
    X509svidResponse,
};

/// The environment variable SPIFFE clients read the socket address from.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket address is not a `unix:` URI or absolute path.
    #[error("invalid socket address {0:?}: expected unix:///absolute/path")]
    BadAddress(String),
    /// Connecting failed; the message carries the OS's reason (tonic's
    /// own text is only "transport error"), also where it is logged.
    #[error("cannot connect to {path}: {}", with_causes(source))]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        source: tonic::transport::Error,
    },
    /// The server answered with an error status (code name and message; the
    /// status is not a `source`, so it is printed once).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Status),
    /// A command-line argument the server would misread.
    #[error("{0}")]
    BadArgument(String),
    /// The stream ended without any message.
    #[error("the Workload API closed the stream without an answer")]
    NoResponse,
    /// The server did not answer as a live Workload API does.
    #[error("unhealthy: {0}")]
    Unhealthy(String),
    /// An argument given on the command line is invalid.
    #[error("{0}")]
    BadInput(String),
    /// Writing output files failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

/// Resolves the socket: the given address, else `SPIFFE_ENDPOINT_SOCKET`,
/// else the default path. Accepts `unix:///p`, `unix:/p` and `/p`.
pub fn socket_path(address: Option<&str>) -> Result<PathBuf, ClientError> {
    let env = std::env::var(ENDPOINT_ENV).ok();
    let address = address.or(env.as_deref()).unwrap_or(DEFAULT_SOCKET_PATH);
    let path = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .unwrap_or(address);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(ClientError::BadAddress(address.to_owned()))
    }
}

/// Adds the security header every Workload API request must carry.
#[derive(Debug, Clone, Copy)]
pub struct SecurityHeader;

impl Interceptor for SecurityHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, MetadataValue::from_static(SECURITY_HEADER_VALUE));
        Ok(request)
    }
}

/// A connected Workload API client.
pub type Client =
    SpiffeWorkloadApiClient<tonic::service::interceptor::InterceptedService<Channel, SecurityHeader>>;

/// Connects to the Workload API on a Unix socket.
pub async fn connect(path: &Path) -> Result<Client, ClientError> {
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel(path).await?,
        SecurityHeader,
    ))
}

/// A gRPC channel to a Unix socket, without the security header (tests use
/// it to check that attestd refuses such requests).
pub async fn channel(path: &Path) -> Result<Channel, ClientError> {
    let target = path.to_owned();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(target).await?)) }
        }))
        .await
        .map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
    Ok(channel)
}

/// Whether the Workload API at `path` serves, asked through the
/// standard `grpc.health.v1.Health/Check` attestd serves beside it: no
/// attestation, no audit record, no Workload API error in the metrics, and
/// it works for callers that hold no identity, like a monitoring probe.
pub async fn healthcheck(path: &Path, timeout: Duration) -> Result<(), ClientError> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let probe = async {
        let mut health = HealthClient::new(channel(path).await?);
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match health.check(request).await.map(|r| r.into_inner().status()) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(status) => Err(ClientError::Unhealthy(format!(
                "the server reports {}",
                status.as_str_name()
            ))),
            Err(status) => Err(ClientError::Unhealthy(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    };
    tokio::time::timeout(timeout, probe).await.map_err(|_| {
        ClientError::Unhealthy(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        ))
    })?
}

/// An error's text followed by its causes' on one line, skipping causes
/// whose text it already includes (attestd's errors name their cause): the
/// CLI's error line, and the connection errors the helper logs.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let message = inner.to_string();
        if !text.contains(&message) {
            text = format!("{text}: {message}");
        }
        cause = inner.source();
    }
    text
}

/// Fetches the caller's X.509-SVIDs once.
pub async fn fetch_x509(client: &mut Client) -> Result<X509svidResponse, ClientError> {
    let mut stream = client.fetch_x509svid(X509svidRequest {}).await?.into_inner();
    match stream.next().await {
        Some(response) => Ok(response?),
        None => Err(ClientError::NoResponse),
    }
}

/// Fetches the JWT bundles once (the first message of the stream).
pub async fn fetch_jwt_bundles(client: &mut Client) -> Result<JwtBundlesResponse, ClientError> {
    let mut stream = client.fetch_jwt_bundles(JwtBundlesRequest {}).await?.into_inner();
    stream.message().await?.ok_or(ClientError::NoResponse)
}

/// Prints every X.509-SVID update until the stream ends.
pub async fn watch_x509(client: &mut Client, json: bool) -> Result<(), ClientError> {
    let mut stream = client.fetch_x509svid(X509svidRequest {}).await?.into_inner();
    let mut updates = 0u64;
    while let Some(response) = stream.next().await {
        updates += 1;
        let response = response?;
        if json {
            // One document per line (JSON Lines), so a reader can follow.
            println!("{}", x509_json(&response));
            continue;
        }
        println!("update {updates} at {}", crate::audit::rfc3339(SystemTime::now()));
        print!("{}", describe_x509(&response));
    }
    Ok(())
}

/// `--output json` of `api fetch x509` (and each line of `api watch`):
/// per SVID its ID, hint, serial, validity (RFC 3339), certificate chain
/// and bundle as PEM blocks, and the federated bundles. Never the key.
pub fn x509_json(response: &X509svidResponse) -> serde_json::Value {
    let pems = |der: &[u8]| -> Vec<String> {
        split_der(der)
            .iter()
            .map(|cert| pem_blocks("CERTIFICATE", &[*cert]))
            .collect()
    };
    let svids: Vec<_> = response
        .svids
        .iter()
        .map(|svid| {
            let chain = split_der(&svid.x509_svid);
            let leaf = chain
                .first()
                .and_then(|der| X509Certificate::from_der(der).ok())
                .map(|(_, c)| c);
            let time = |t: x509_parser::time::ASN1Time| {
                crate::audit::rfc3339(crate::wall_clock::from_unix_seconds(t.timestamp().max(0) as u64))
            };
            serde_json::json!({
                "spiffe_id": svid.spiffe_id,
                "hint": svid.hint,
                "serial": leaf.as_ref().map(|c| hex::encode(c.raw_serial())),
                "not_before": leaf.as_ref().map(|c| time(c.validity().not_before)),
                "not_after": leaf.as_ref().map(|c| time(c.validity().not_after)),
                "certificates": pems(&svid.x509_svid),
                "bundle": pems(&svid.bundle),
            })
        })
        .collect();
    let federated: serde_json::Map<_, _> = response
        .federated_bundles
        .iter()
        .map(|(domain, der)| (domain.clone(), pems(der).into()))
        .collect();
    serde_json::json!({ "svids": svids, "federated_bundles": federated })
}

/// Human-readable summary of a response: per SVID its ID, hint, serial and
/// validity.
pub fn describe_x509(response: &X509svidResponse) -> String {
    let mut out = format!("Received {} X.509-SVID(s)\n", response.svids.len());
    for svid in &response.svids {
        out.push_str(&describe_svid(svid));
    }
    out
}

fn describe_svid(svid: &X509svid) -> String {
    let mut out = format!("\nSPIFFE ID:    {}\n", svid.spiffe_id);
    if !svid.hint.is_empty() {
        out.push_str(&format!("Hint:         {}\n", svid.hint));
    }
    let chain = split_der(&svid.x509_svid);
    match chain.first().map(|der| X509Certificate::from_der(der)) {
        Some(Ok((_, leaf))) => {
            let not_after = SystemTime::UNIX_EPOCH
                + Duration::from_secs(leaf.validity().not_after.timestamp().max(0) as u64);
            let left = not_after.duration_since(SystemTime::now()).unwrap_or_default();
            out.push_str(&format!(
                "Serial:       {}\n",
                leaf.raw_serial_as_string().replace(':', "")
            ));
            out.push_str(&format!("Not before:   {}\n", leaf.validity().not_before));
            out.push_str(&format!(
                "Not after:    {} (in {})\n",
                leaf.validity().not_after,
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            ));
        }
        _ => out.push_str("Certificate:  (unparseable)\n"),
    }
    out.push_str(&format!("Chain:        {} certificate(s)\n", chain.len()));
    out.push_str(&format!(
        "Bundle:       {} CA certificate(s)\n",
        split_der(&svid.bundle).len()
    ));
    out
}

/// Fetches JWT-SVIDs for `audience` (all identities, or only `spiffe_id`).
pub async fn fetch_jwt(
    client: &mut Client,
    audience: Vec<String>,
    spiffe_id: Option<String>,
) -> Result<JwtsvidResponse, ClientError> {
    let request = JwtsvidRequest {
        audience,
        spiffe_id: spiffe_id.unwrap_or_default(),
    };
    Ok(client.fetch_jwtsvid(request).await?.into_inner())
}

/// The tokens of a `FetchJWTSVID` answer alone, one per line.
pub fn raw_jwts(response: &JwtsvidResponse) -> String {
    response
        .svids
        .iter()
        .map(|svid| format!("{}\n", svid.svid))
        .collect()
}

/// Human-readable JWT-SVIDs: ID, hint, expiry and the token itself (the
/// caller asked for it: printing it is the point).
pub fn describe_jwt(response: &JwtsvidResponse) -> String {
    let mut out = format!("Received {} JWT-SVID(s)\n", response.svids.len());
    for svid in &response.svids {
        out.push_str(&format!("\nSPIFFE ID:    {}\n", svid.spiffe_id));
        if !svid.hint.is_empty() {
            out.push_str(&format!("Hint:         {}\n", svid.hint));
        }
        let claims: Option<serde_json::Value> =
            jsonwebtoken::dangerous::insecure_decode_claims(&svid.svid).ok();
        if let Some(exp) = claims.as_ref().and_then(|c| c["exp"].as_u64()) {
            let expiry = crate::wall_clock::from_unix_seconds(exp);
            out.push_str(&format!("Expires:      {}\n", crate::audit::rfc3339(expiry)));
        }
        out.push_str(&format!("Token:        {}\n", svid.svid));
    }
    out
}

/// `--output json` of `api fetch jwt`: per SVID its ID, hint, expiry
/// (RFC 3339) and the token (the caller asked for it).
pub fn jwt_json(response: &JwtsvidResponse) -> serde_json::Value {
    let svids: Vec<_> = response
        .svids
        .iter()
        .map(|svid| {
            let claims: Option<serde_json::Value> =
                jsonwebtoken::dangerous::insecure_decode_claims(&svid.svid).ok();
            let expires_at = claims
                .as_ref()
                .and_then(|c| c["exp"].as_u64())
                .map(|exp| crate::audit::rfc3339(crate::wall_clock::from_unix_seconds(exp)));
            serde_json::json!({
                "spiffe_id": svid.spiffe_id,
                "hint": svid.hint,
                "expires_at": expires_at,
                "token": svid.svid,
            })
        })
        .collect();
    serde_json::json!({ "svids": svids })
}

/// Asks attestd to validate `token` for `audience`.
pub async fn validate_jwt(
    client: &mut Client,
    audience: String,
    token: String,
) -> Result<ValidateJwtsvidResponse, ClientError> {
    let request = ValidateJwtsvidRequest {
        audience,
        svid: token,
    };
    Ok(client.validate_jwtsvid(request).await?.into_inner())
}

/// Human-readable validation result: the SPIFFE ID and the claims as JSON.
pub fn describe_validation(response: &ValidateJwtsvidResponse) -> String {
    let claims = response.claims.clone().map(struct_to_json).unwrap_or_default();
    format!(
        "SVID is valid.\nSPIFFE ID:    {}\nClaims:       {}\n",
        response.spiffe_id,
        serde_json::to_string_pretty(&claims).unwrap_or_default()
    )
}

/// `--output json` of `api validate jwt`: the token's SPIFFE ID and claims.
pub fn validation_json(response: &ValidateJwtsvidResponse) -> serde_json::Value {
    let claims = response.claims.clone().map(struct_to_json).unwrap_or_default();
    serde_json::json!({ "valid": true, "spiffe_id": response.spiffe_id, "claims": claims })
}

fn struct_to_json(s: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.into_iter().map(|(k, v)| (k, value_to_json(v))).collect())
}

fn value_to_json(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        // Struct numbers are doubles; claims such as exp are whole seconds.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9e15 => Value::from(n as i64),
        Some(Kind::NumberValue(n)) => Value::from(n),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => Value::Array(list.values.into_iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// Writes `svid.N.pem` (chain), `svid.N.key` (PKCS#8, 0600) and
/// `bundle.N.pem` for each SVID into `dir`.
pub fn write_x509(response: &X509svidResponse, dir: &Path) -> Result<Vec<PathBuf>, ClientError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ClientError::Write { path, source }
    };
    atomic_file::create_dir(dir, 0o755).map_err(write_error(dir))?;
    let mut written = Vec::new();
    for (i, svid) in response.svids.iter().enumerate() {
        let files = [
            (
                format!("svid.{i}.pem"),
                pem_blocks("CERTIFICATE", &split_der(&svid.x509_svid)),
                0o644,
            ),
            (
                format!("svid.{i}.key"),
                pem_blocks("PRIVATE KEY", &[svid.x509_svid_key.as_slice()]),
                0o600,
            ),
            (
                format!("bundle.{i}.pem"),
                pem_blocks("CERTIFICATE", &split_der(&svid.bundle)),
                0o644,
            ),
        ];
        for (name, contents, mode) in files {
            let path = dir.join(name);
            atomic_file::write(&path, contents.as_bytes(), mode).map_err(write_error(&path))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// PEM blocks of `tag`, one per DER item, concatenated.
pub(crate) fn pem_blocks(tag: &str, ders: &[&[u8]]) -> String {
    ders.iter()
        .map(|der| pem::encode(&pem::Pem::new(tag, der.to_vec())))
        .collect()
}

/// Splits concatenated DER certificates (each a SEQUENCE with its own
/// length) without parsing their contents.
pub fn split_der(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match X509Certificate::from_der(bytes) {
            Ok((rest, _)) => {
                let len = bytes.len() - rest.len();
                out.push(&bytes[..len]);
                bytes = rest;
            }
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses() {
        assert_eq!(
            socket_path(Some("unix:///run/a.sock")).unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert_eq!(
            socket_path(Some("unix:/run/a.sock")).unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert_eq!(
            socket_path(Some("/run/a.sock")).unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert!(socket_path(Some("tcp://127.0.0.1:1")).is_err());
        assert!(socket_path(Some("unix://relative")).is_err());
    }
}

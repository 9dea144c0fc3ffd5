//! The server's trust bundle: read from the bootstrap file (PEM or a
//! SPIFFE bundle document) or, with `insecure_bootstrap`, fetched once
//! from a server authenticated by its SPIFFE ID alone; then fetched at
//! every sync (GetBundle) and converted to attestd's bundles.

use std::path::Path;

use super::connection::{Connection, RPC_TIMEOUT};
use super::state::StateDir;
use super::{FleetError, status};
use crate::authority::{JwtBundle, X509Bundle, jwt_authority_from_spki};
use crate::config::{BundleFormat, TrustBootstrap};
use crate::federation::ForeignBundle;
use crate::proto::spire::api::server::bundle::v1::GetBundleRequest;
use crate::proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use crate::proto::spire::api::types::{Bundle, BundleMask};
use crate::spiffe_id::TrustDomain;

/// The most authorities of each kind a server bundle may hold.
const MAX_AUTHORITIES: usize = 64;
/// A bootstrap file larger than this is not read.
const MAX_BOOTSTRAP_BYTES: u64 = 1 << 20;

/// The bundle attestd first trusts the server with.
pub(super) async fn bootstrap(
    bootstrap: &TrustBootstrap,
    connection: &Connection,
    state: &StateDir,
) -> Result<X509Bundle, FleetError> {
    match bootstrap {
        TrustBootstrap::Bundle { path, format } => read_bootstrap(path, *format),
        TrustBootstrap::Insecure => {
            tracing::warn!(
                server = connection.address(),
                "insecure_bootstrap: trusting the server's bundle as it presents it (only its SPIFFE ID is checked)"
            );
            let channel = connection.anonymous(None)?;
            let bundle =
                get_bundle(BundleClient::new(channel))
                    .await
                    .map_err(|status| FleetError::Unreachable {
                        address: connection.address().to_owned(),
                        reason: format!("GetBundle: {}", status::describe(&status)),
                    })?;
            let sequence = bundle.sequence_number;
            let (x509, jwt) = from_proto(&bundle, None).map_err(FleetError::Server)?;
            state.save_bundle(&x509, &jwt, sequence)?;
            Ok(x509)
        }
    }
}

/// The server's current bundle (any caller may ask).
pub(super) async fn get_bundle(
    mut client: BundleClient<tonic::transport::Channel>,
) -> Result<Bundle, tonic::Status> {
    let request = GetBundleRequest {
        output_mask: Some(BundleMask {
            x509_authorities: true,
            jwt_authorities: true,
            refresh_hint: true,
            sequence_number: true,
        }),
    };
    tokio::time::timeout(RPC_TIMEOUT, client.get_bundle(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("GetBundle timed out"))?
        .map(tonic::Response::into_inner)
}

/// attestd's bundles from the server's: DER CA certificates and JWKs. If
/// `trust_domain` is given the bundle must be its.
pub(super) fn from_proto(
    bundle: &Bundle,
    trust_domain: Option<&TrustDomain>,
) -> Result<(X509Bundle, JwtBundle), String> {
    if let Some(td) = trust_domain
        && bundle.trust_domain != td.name()
    {
        return Err(format!(
            "the server sent the bundle of {:?}, not of {td}",
            bundle.trust_domain
        ));
    }
    if bundle.x509_authorities.is_empty() {
        return Err("the server's bundle holds no X.509 authority".into());
    }
    if bundle.x509_authorities.len() > MAX_AUTHORITIES || bundle.jwt_authorities.len() > MAX_AUTHORITIES {
        return Err(format!(
            "the server's bundle holds more than {MAX_AUTHORITIES} authorities of a kind"
        ));
    }
    let mut roots = Vec::with_capacity(bundle.x509_authorities.len());
    for authority in &bundle.x509_authorities {
        match x509_parser::parse_x509_certificate(&authority.asn1) {
            Ok(([], _)) => roots.push(authority.asn1.clone()),
            _ => return Err("the server's bundle holds an unreadable X.509 authority".into()),
        }
    }
    let keys = bundle
        .jwt_authorities
        .iter()
        .map(|key| jwt_authority_from_spki(&key.public_key, &key.key_id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((X509Bundle::new(roots), JwtBundle::from_keys(keys)))
}

/// The X.509 authorities of the bootstrap file.
fn read_bootstrap(path: &Path, format: BundleFormat) -> Result<X509Bundle, FleetError> {
    let invalid = |reason: String| FleetError::File {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| invalid(e.to_string()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_BOOTSTRAP_BYTES), &mut bytes)
        .map_err(|e| invalid(e.to_string()))?;
    let roots: Vec<Vec<u8>> = match format {
        BundleFormat::Pem => pem::parse_many(&bytes)
            .map_err(|e| invalid(format!("not PEM: {e}")))?
            .into_iter()
            .filter(|block| block.tag() == "CERTIFICATE")
            .map(pem::Pem::into_contents)
            .collect(),
        BundleFormat::Spiffe => ForeignBundle::parse(&bytes)
            .map_err(|e| invalid(format!("not a SPIFFE bundle: {e}")))?
            .x509()
            .roots()
            .to_vec(),
    };
    if roots.is_empty() {
        return Err(invalid(match format {
            BundleFormat::Pem => "holds no CERTIFICATE (trust_bundle_format = \"pem\")".into(),
            BundleFormat::Spiffe => "holds no X.509 authority (trust_bundle_format = \"spiffe\")".into(),
        }));
    }
    Ok(X509Bundle::new(roots))
}

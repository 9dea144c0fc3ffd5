//! Authenticating an `https_spiffe` bundle endpoint: its certificate must
//! be an X.509-SVID that chains (RFC 5280, webpki) to the latest bundle
//! held for the endpoint's trust domain and names exactly the configured
//! SPIFFE ID (SPIFFE Federation 5.2.2.4). Host names play no part.
//! Fleet mode authenticates the SPIRE Server the same way (and, before it
//! has a bundle with `insecure_bootstrap`, by its SPIFFE ID alone).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe_id::SpiffeId;

/// Accepts exactly one server: an X.509-SVID for `expected` under `roots`.
#[derive(Debug)]
pub(crate) struct SvidVerifier {
    /// None: the chain is not verified, only the SPIFFE ID (fleet mode's
    /// `insecure_bootstrap`, before the first bundle).
    roots: Option<Vec<CertificateDer<'static>>>,
    expected: SpiffeId,
    /// Who the server is, for errors ("the bundle endpoint").
    role: &'static str,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The server authenticated, but as someone else (or as no one).
#[derive(thiserror::Error)]
#[error("{0}")]
struct WrongServer(String);

/// rustls prints its verifiers' errors with `Debug`: keep them readable.
impl std::fmt::Debug for WrongServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl SvidVerifier {
    /// A verifier for the bundle endpoint `expected` under the CA
    /// certificates `roots` (DER).
    pub(crate) fn new(roots: &[Vec<u8>], expected: SpiffeId, provider: &CryptoProvider) -> Self {
        Self {
            roots: Some(
                roots
                    .iter()
                    .map(|der| CertificateDer::from(der.clone()))
                    .collect(),
            ),
            expected,
            role: "the bundle endpoint",
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// A verifier that checks only the SPIFFE ID of the presented leaf
    /// (and the handshake's signature by its key), not its chain.
    pub(crate) fn unchained(expected: SpiffeId, provider: &CryptoProvider) -> Self {
        Self {
            roots: None,
            expected,
            role: "the bundle endpoint",
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// Names the server `role` in errors.
    pub(crate) fn for_role(self, role: &'static str) -> Self {
        Self { role, ..self }
    }
}

impl ServerCertVerifier for SvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let anchors = roots
                .iter()
                .map(webpki::anchor_from_trusted_cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(pki_error)?;
            webpki::EndEntityCert::try_from(end_entity)
                .map_err(pki_error)?
                .verify_for_usage(
                    self.algorithms.all,
                    &anchors,
                    intermediates,
                    now,
                    webpki::KeyUsage::server_auth(),
                    None,
                    None,
                )
                .map_err(pki_error)?;
        }
        let role = self.role;
        let presented =
            svid_id(end_entity).map_err(|reason| other(WrongServer(format!("{role}: {reason}"))))?;
        if presented != self.expected.as_str() {
            return Err(other(WrongServer(format!(
                "{role} is {presented}, expected {}",
                self.expected
            ))));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The SPIFFE ID of an X.509-SVID leaf: its one URI SAN, a `spiffe://` URI
/// (X509-SVID 2: exactly one).
fn svid_id(der: &[u8]) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] if uri.starts_with("spiffe://") => Ok((*uri).to_owned()),
        _ => Err(format!(
            "its certificate is not an X.509-SVID ({} URI SANs)",
            uris.len()
        )),
    }
}

/// Path-validation failures as rustls reports them, so the peer gets the
/// fitting TLS alert.
fn pki_error(error: webpki::Error) -> rustls::Error {
    let certificate_error = match error {
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::BadDer | webpki::Error::BadDerTime => CertificateError::BadEncoding,
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    certificate_error.into()
}

fn other(error: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    CertificateError::Other(rustls::OtherError(Arc::new(error))).into()
}

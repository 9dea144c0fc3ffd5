//! gRPC channels to the SPIRE Server: TCP, then TLS (rustls, ring) that
//! authenticates the server as spire-agent does — its chain against the
//! server's bundle only (no system roots, no host name), then exactly its
//! SPIFFE ID `spiffe://<trust domain>/spire/server` — with ALPN h2 (the
//! server's grpc-go refuses a client that does not offer it). Attestation
//! goes over server-only TLS; everything else presents the agent SVID.
//!
//! The authenticated channel is kept while the agent SVID and the bundle
//! stay the same, and replaced as soon as either changes: the server
//! refuses the old SVID once the renewed one has been used.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::FleetError;
use super::state::AgentSvid;
use crate::authority::X509Bundle;
use crate::federation::svid_verifier::SvidVerifier;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Connecting (TCP and TLS) takes at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Any one call takes at most this long (spire-agent's rpcTimeout).
pub(super) const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The channels to one server.
pub(super) struct Connection {
    address: String,
    server_id: SpiffeId,
    provider: Arc<CryptoProvider>,
    // std Mutex: held to look up or replace the channel, never across an
    // await.
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    serial: String,
    roots: X509Bundle,
    channel: Channel,
}

impl Connection {
    /// The server at `address` (`host:port`) of `trust_domain`.
    pub fn new(address: &str, trust_domain: &TrustDomain) -> Result<Self, FleetError> {
        let server_id = SpiffeId::new(&format!("{}/spire/server", trust_domain.id_string()))
            .map_err(|e| FleetError::Server(format!("the server's SPIFFE ID: {e}")))?;
        Ok(Self {
            address: address.to_owned(),
            server_id,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            cached: Mutex::new(None),
        })
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A channel over server-only TLS (attestation), the server's chain
    /// verified against `roots`, or only its SPIFFE ID without them
    /// (`insecure_bootstrap`, before the first bundle).
    pub fn anonymous(&self, roots: Option<&X509Bundle>) -> Result<Channel, FleetError> {
        let tls = self.builder(roots)?.with_no_client_auth();
        self.channel(tls)
    }

    /// The channel authenticated as `agent`, the server's chain verified
    /// against `roots`: the same one while neither changes.
    pub fn authenticated(&self, agent: &AgentSvid, roots: &X509Bundle) -> Result<Channel, FleetError> {
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = cached.as_ref()
            && current.serial == agent.serial
            && current.roots == *roots
        {
            return Ok(current.channel.clone());
        }
        let chain = agent
            .chain
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(agent.key_pkcs8.clone()));
        let tls = self
            .builder(Some(roots))?
            .with_client_auth_cert(chain, key)
            .map_err(|e| self.unreachable(format!("agent SVID: {e}")))?;
        let channel = self.channel(tls)?;
        *cached = Some(Cached {
            serial: agent.serial.clone(),
            roots: roots.clone(),
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Forgets the authenticated channel (after a failure, so the next
    /// call connects afresh).
    pub fn reset(&self) {
        *self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    fn builder(
        &self,
        roots: Option<&X509Bundle>,
    ) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, FleetError> {
        let verifier = match roots {
            Some(roots) if roots.roots().is_empty() => {
                return Err(self.unreachable("the server's bundle holds no X.509 authority".into()));
            }
            Some(roots) => SvidVerifier::new(roots.roots(), self.server_id.clone(), &self.provider),
            None => SvidVerifier::unchained(self.server_id.clone(), &self.provider),
        };
        Ok(ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| self.unreachable(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier.for_role("the SPIRE Server"))))
    }

    /// A lazily connecting channel over `tls` (ALPN h2).
    fn channel(&self, mut tls: ClientConfig) -> Result<Channel, FleetError> {
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = TlsConnector::from(Arc::new(tls));
        // The name only feeds SNI: the server is authenticated by its
        // SPIFFE ID, not its host name.
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| self.unreachable(format!("host {host:?}: {e}")))?;
        let address = self.address.clone();
        // The scheme and authority of this URI only fill the requests'
        // pseudo-headers; the connector below decides where to connect.
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|e| self.unreachable(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        let connect = tower::service_fn(move |_uri| {
            let (connector, server_name, address) = (connector.clone(), server_name.clone(), address.clone());
            async move {
                let tcp = TcpStream::connect(address.as_str()).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(std::io::Error::other(
                        "the server did not agree to HTTP/2 (ALPN h2)",
                    ));
                }
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connect))
    }

    fn unreachable(&self, reason: String) -> FleetError {
        FleetError::Unreachable {
            address: self.address.clone(),
            reason,
        }
    }
}

//! Mutual TLS between two workloads that know each other only by SPIFFE ID.
//!
//! Each side gets its X.509-SVID and trust bundle from attestd through the
//! `spiffe` crate's `X509Source`, which follows rotations in the background.
//! Every handshake takes the source's current SVID (so rotated certificates
//! are served without a restart) and checks the peer's chain against the
//! current bundle, then authorizes the peer by its SPIFFE ID: X.509-SVIDs
//! carry no host name to check; the URI SAN is the identity.
//!
//! ```sh
//! export SPIFFE_ENDPOINT_SOCKET=unix:///run/attestd/api.sock
//! cargo run --example mtls -- server --listen 127.0.0.1:8443 \
//!     --expect-peer spiffe://example.org/mtls/client            # as the server's uid
//! cargo run --example mtls -- client --connect 127.0.0.1:8443 \
//!     --expect-peer spiffe://example.org/mtls/server --rounds 5  # as the client's uid
//! ```
//!
//! The server prints one line per connection (the client's ID and
//! certificate serial, or why it was refused); the client one line per
//! round (the server's ID, its certificate serial and its reply).

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use spiffe::{BundleSource, SpiffeId, X509Source};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::prelude::{FromDer, X509Certificate};

type BoxError = Box<dyn Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "mTLS between two workloads, authorized by SPIFFE ID")]
struct Cli {
    /// Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, global = true)]
    socket: Option<String>,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Accept connections from one SPIFFE ID and answer each with a greeting.
    Server {
        /// Address to listen on (port 0: any free port; the chosen address is printed).
        #[arg(long)]
        listen: SocketAddr,
        /// The only client identity accepted.
        #[arg(long)]
        expect_peer: SpiffeId,
    },
    /// Connect to a server with one SPIFFE ID, once per round.
    Client {
        /// The server's address.
        #[arg(long)]
        connect: SocketAddr,
        /// The only server identity accepted.
        #[arg(long)]
        expect_peer: SpiffeId,
        /// How many connections to make, one after the other.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Pause between rounds.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli).await {
        eprintln!("mtls: {error}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let mut source = X509Source::builder();
    if let Some(socket) = &cli.socket {
        source = source.endpoint(socket);
    }
    let source = Arc::new(source.build().await?);
    match cli.role {
        Role::Server { listen, expect_peer } => serve(source, listen, expect_peer).await,
        Role::Client {
            connect,
            expect_peer,
            rounds,
            interval,
        } => {
            for round in 1..=rounds {
                let (server, serial, reply) = call(Arc::clone(&source), connect, expect_peer.clone()).await?;
                println!("round {round}: server {server} serial {serial} replied {reply:?}");
                if round < rounds {
                    tokio::time::sleep(interval).await;
                }
            }
            Ok(())
        }
    }
}

async fn serve(source: Arc<X509Source>, listen: SocketAddr, expect_peer: SpiffeId) -> Result<(), BoxError> {
    let provider = provider();
    let config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(SpiffePeer::new(&source, expect_peer, &provider)))
        .with_cert_resolver(Arc::new(CurrentSvid::new(&source, &provider)));
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(listen).await?;
    let own_id = source.svid()?.spiffe_id().clone();
    println!("listening on {} as {own_id}", listener.local_addr()?);
    loop {
        let (tcp, address) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let own_id = own_id.clone();
        tokio::spawn(async move {
            match greet(acceptor, tcp, &own_id).await {
                Ok((peer, serial)) => println!("served {peer} serial {serial}"),
                Err(error) => println!("refused {address}: {error}"),
            }
        });
    }
}

/// One server connection: handshake, read a line, answer with a greeting.
async fn greet(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    own_id: &SpiffeId,
) -> Result<(SpiffeId, String), BoxError> {
    let mut tls = acceptor.accept(tcp).await?;
    let (peer, serial) = peer_identity(tls.get_ref().1.peer_certificates())?;
    let mut line = String::new();
    BufReader::new(&mut tls).read_line(&mut line).await?;
    tls.write_all(format!("hello {peer}, this is {own_id}\n").as_bytes())
        .await?;
    tls.shutdown().await?;
    Ok((peer, serial))
}

/// One client round: connect, say hello, read the server's greeting.
async fn call(
    source: Arc<X509Source>,
    address: SocketAddr,
    expect_peer: SpiffeId,
) -> Result<(SpiffeId, String, String), BoxError> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffePeer::new(&source, expect_peer, &provider)))
        .with_client_cert_resolver(Arc::new(CurrentSvid::new(&source, &provider)));
    let tcp = TcpStream::connect(address).await?;
    // TLS needs a server name; SPIFFE authorizes by ID instead, so the
    // address stands in and is never checked.
    let name = ServerName::IpAddress(address.ip().into());
    let mut tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    let (server, serial) = peer_identity(tls.get_ref().1.peer_certificates())?;
    tls.write_all(b"hello\n").await?;
    let mut reply = String::new();
    BufReader::new(&mut tls).read_line(&mut reply).await?;
    if reply.is_empty() {
        return Err("the server closed the connection without answering".into());
    }
    Ok((server, serial, reply.trim_end().to_owned()))
}

/// ring: no aws-lc build needed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SPIFFE ID and serial (hex) of an authenticated peer's certificate.
fn peer_identity(certificates: Option<&[CertificateDer<'_>]>) -> Result<(SpiffeId, String), BoxError> {
    let leaf = certificates
        .and_then(<[_]>::first)
        .ok_or("the peer sent no certificate")?;
    let id = spiffe::cert::spiffe_id_from_der(leaf)?;
    let (_, cert) = X509Certificate::from_der(leaf)?;
    Ok((id, hex::encode(cert.raw_serial())))
}

/// Hands rustls the source's current SVID on every handshake: rotations
/// take effect on the next connection, with no restart.
#[derive(Debug)]
struct CurrentSvid {
    source: Arc<X509Source>,
    provider: Arc<CryptoProvider>,
}

impl CurrentSvid {
    fn new(source: &Arc<X509Source>, provider: &Arc<CryptoProvider>) -> Self {
        Self {
            source: Arc::clone(source),
            provider: Arc::clone(provider),
        }
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let svid = self.source.svid().ok()?;
        let chain = svid
            .cert_chain()
            .iter()
            .map(|cert| CertificateDer::from(cert.as_bytes().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.private_key().as_bytes().to_vec()));
        CertifiedKey::from_der(chain, key, &self.provider)
            .ok()
            .map(Arc::new)
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts exactly one peer: a chain that verifies against the current
/// bundle of the expected ID's trust domain, whose leaf names that ID.
#[derive(Debug)]
struct SpiffePeer {
    source: Arc<X509Source>,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The peer authenticated, but as someone else.
#[derive(thiserror::Error)]
#[error("peer is {presented}, expected {expected}")]
struct UnexpectedPeer {
    presented: SpiffeId,
    expected: SpiffeId,
}

/// rustls prints the errors of its verifiers with `Debug`: keep it readable.
impl std::fmt::Debug for UnexpectedPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl SpiffePeer {
    fn new(source: &Arc<X509Source>, expected: SpiffeId, provider: &CryptoProvider) -> Self {
        Self {
            source: Arc::clone(source),
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let bundle = self
            .source
            .bundle_for_trust_domain(self.expected.trust_domain())
            .map_err(other)?
            .ok_or(CertificateError::UnknownIssuer)?;
        let roots: Vec<CertificateDer<'_>> = bundle
            .authorities()
            .iter()
            .map(|ca| CertificateDer::from(ca.as_bytes()))
            .collect();
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
                usage,
                None,
                None,
            )
            .map_err(pki_error)?;
        let presented = spiffe::cert::spiffe_id_from_der(end_entity).map_err(other)?;
        if presented != self.expected {
            return Err(other(UnexpectedPeer {
                presented,
                expected: self.expected.clone(),
            }));
        }
        Ok(())
    }
}

/// The handshake-signature half of both verifier traits (the same three
/// methods in each): checked with the crypto provider's algorithms, as
/// rustls's own verifiers do.
macro_rules! handshake_signatures_by_provider {
    () => {
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
    };
}

impl ServerCertVerifier for SpiffePeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, webpki::KeyUsage::server_auth())?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures_by_provider!();
}

impl ClientCertVerifier for SpiffePeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, webpki::KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures_by_provider!();
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

fn other(error: impl Error + Send + Sync + 'static) -> rustls::Error {
    CertificateError::Other(rustls::OtherError(Arc::new(error))).into()
}

//! The node's identity with its server: attestation (AttestAgent), the
//! agent X.509-SVID kept in the state directory, its renewal at half-life
//! (RenewAgent with a fresh key, or a new attestation where the server
//! allows it), and the channels authenticated with it.

mod x509pop;

use std::sync::{Arc, Mutex, MutexGuard};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::connection::{Connection, RPC_TIMEOUT};
use super::state::{AgentSvid, StateDir};
use super::status::{self, Verdict};
use super::{FleetError, bundle};
use crate::authority::X509Bundle;
use crate::config::{Config, NodeAttestor, ServerConfig};
use crate::proto::spire::api::server::agent::v1::{
    AgentX509svidParams, AttestAgentRequest, RenewAgentRequest, agent_client::AgentClient,
    attest_agent_request, attest_agent_response,
};
use crate::proto::spire::api::types::AttestationData;
use crate::spiffe_id::TrustDomain;

/// The most challenges one attestation answers (x509pop sends one).
const MAX_CHALLENGES: usize = 8;

/// This node as an agent of its server.
pub(super) struct Node {
    connection: Connection,
    state: StateDir,
    trust_domain: TrustDomain,
    attestor: NodeAttestor,
    // std Mutexes: held to read or swap, never across an await.
    agent: Mutex<Arc<AgentSvid>>,
    /// The server's X.509 authorities: what its certificate must chain to.
    roots: Mutex<Arc<X509Bundle>>,
}

impl Node {
    /// The node as the daemon left it in its state directory, for a
    /// command beside the daemon: it never attests, renews or stores.
    pub fn open(config: &Config, server: &ServerConfig) -> Result<Arc<Self>, FleetError> {
        let state = StateDir::open(&server.state_dir)?;
        let not_attested = || FleetError::NotAttested(server.state_dir.clone());
        let (roots, _) = state.bundle()?.ok_or_else(not_attested)?;
        let agent = state
            .agent()?
            .filter(|agent| usable(agent, &config.trust_domain))
            .ok_or_else(not_attested)?;
        Ok(Arc::new(Self {
            connection: Connection::new(&server.address, &config.trust_domain)?,
            state,
            trust_domain: config.trust_domain.clone(),
            attestor: server.node_attestor.clone(),
            agent: Mutex::new(Arc::new(agent)),
            roots: Mutex::new(Arc::new(roots)),
        }))
    }

    /// Opens the state directory and takes the node's identity from it, or
    /// attests the node (and stores what the server issued).
    pub async fn start(config: &Config, server: &ServerConfig) -> Result<Arc<Self>, FleetError> {
        let state = StateDir::open(&server.state_dir)?;
        let connection = Connection::new(&server.address, &config.trust_domain)?;
        let roots = match state.bundle()? {
            Some((x509, _)) => x509,
            None => bundle::bootstrap(&server.bootstrap, &connection, &state).await?,
        };
        let attestor = server.node_attestor.clone();
        let stored = state.agent()?;
        let agent = match stored {
            Some(agent) if usable(&agent, &config.trust_domain) => {
                tracing::info!(spiffe_id = %agent.spiffe_id, expires = %humantime::format_rfc3339_seconds(agent.not_after), "agent SVID loaded; node already attested");
                agent
            }
            stored => {
                let expired = stored.inspect(|agent| {
                    tracing::warn!(spiffe_id = %agent.spiffe_id, "stored agent SVID is expired or of another trust domain: attesting again");
                });
                let agent = attest(&connection, &roots, &attestor)
                    .await
                    .map_err(|error| match (expired, error) {
                        // A spent token cannot bring an expired node back.
                        (Some(old), FleetError::Attestation(reason))
                            if matches!(attestor, NodeAttestor::JoinToken(_)) =>
                        {
                            FleetError::Lost(
                                format!(
                                    "the agent SVID {} expired at {} and the join token was refused ({reason})",
                                    old.spiffe_id,
                                    humantime::format_rfc3339_seconds(old.not_after)
                                ),
                                server.state_dir.clone(),
                            )
                        }
                        (_, error) => error,
                    })?;
                state.save_agent(&agent)?;
                tracing::info!(spiffe_id = %agent.spiffe_id, reattestable = agent.reattestable, "node attested");
                agent
            }
        };
        Ok(Arc::new(Self {
            connection,
            state,
            trust_domain: config.trust_domain.clone(),
            attestor,
            agent: Mutex::new(Arc::new(agent)),
            roots: Mutex::new(Arc::new(roots)),
        }))
    }

    /// The current agent SVID.
    pub fn agent(&self) -> Arc<AgentSvid> {
        Arc::clone(&lock(&self.agent))
    }

    /// The channel authenticated as the agent.
    pub fn channel(&self) -> Result<Channel, FleetError> {
        let (agent, roots) = (self.agent(), Arc::clone(&lock(&self.roots)));
        self.connection.authenticated(&agent, &roots)
    }

    /// After a failed call: the next one connects afresh.
    pub fn reset(&self) {
        self.connection.reset();
    }

    /// `host:port` of the server.
    pub fn address(&self) -> &str {
        self.connection.address()
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Takes the server's current X.509 authorities for later connections.
    pub fn set_roots(&self, roots: X509Bundle) {
        *lock(&self.roots) = Arc::new(roots);
    }

    /// Renews the agent SVID once past half its lifetime: a node that may
    /// attest again does (spire-agent's rule), others call RenewAgent.
    /// Either way with a fresh key; the new SVID is stored before use.
    pub async fn renew_if_due(&self) -> Result<(), FleetError> {
        let current = self.agent();
        if !current.due(crate::wall_clock::now()) {
            return Ok(());
        }
        let renewed = match current.reattestable {
            true => self.reattest().await?,
            false => self.renew(&current).await?,
        };
        tracing::info!(spiffe_id = %renewed.spiffe_id, serial = %renewed.serial, previous = %current.serial, "agent SVID renewed");
        Ok(())
    }

    /// Attests the node again (the server demanded it, or the SVID is due
    /// and the node may): a join token cannot be used twice, so a node
    /// attested with one can only fail here.
    pub async fn reattest(&self) -> Result<Arc<AgentSvid>, FleetError> {
        let roots = Arc::clone(&lock(&self.roots));
        let agent = attest(&self.connection, &roots, &self.attestor)
            .await
            .map_err(|error| match (&self.attestor, error) {
                (NodeAttestor::JoinToken(_), FleetError::Attestation(reason)) => FleetError::Lost(
                    format!(
                        "the server demands a new attestation, which the join token cannot give ({reason})"
                    ),
                    self.state.path().to_owned(),
                ),
                (_, error) => error,
            })?;
        self.replace(agent)
    }

    async fn renew(&self, current: &AgentSvid) -> Result<Arc<AgentSvid>, FleetError> {
        let (key, csr) = key_and_csr()?;
        let mut client = AgentClient::new(self.channel()?);
        let request = RenewAgentRequest {
            params: Some(AgentX509svidParams { csr }),
        };
        let response = match client.renew_agent(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                self.reset();
                return match status::verdict(&status) {
                    Verdict::Banned => Err(FleetError::Banned(status::describe(&status))),
                    // The server wants a new attestation instead.
                    Verdict::Reattest => self.reattest().await,
                    Verdict::Other => Err(FleetError::Server(format!(
                        "RenewAgent: {}",
                        status::describe(&status)
                    ))),
                };
            }
        };
        let chain = response.svid.map(|svid| svid.cert_chain).unwrap_or_default();
        let agent = AgentSvid::new(key.serialize_der(), chain, current.reattestable)
            .map_err(|reason| FleetError::Server(format!("RenewAgent: {reason}")))?;
        if agent.spiffe_id != current.spiffe_id {
            return Err(FleetError::Server(format!(
                "RenewAgent returned an SVID for {}, not {}",
                agent.spiffe_id, current.spiffe_id
            )));
        }
        self.replace(agent)
    }

    /// Stores `agent`, then puts it in use (a crash in between keeps the
    /// new SVID, which the server accepts; the old one it may not).
    fn replace(&self, agent: AgentSvid) -> Result<Arc<AgentSvid>, FleetError> {
        if !agent.spiffe_id.belongs_to(&self.trust_domain) {
            return Err(FleetError::Server(format!(
                "the agent SVID {} is not of the trust domain {}",
                agent.spiffe_id, self.trust_domain
            )));
        }
        self.state.save_agent(&agent)?;
        let agent = Arc::new(agent);
        *lock(&self.agent) = Arc::clone(&agent);
        // The next call connects with the new SVID.
        self.reset();
        Ok(agent)
    }

    /// The node was banned: its identity is deleted, as spire-agent does.
    pub fn forget(&self) {
        if let Err(error) = self.state.delete_agent() {
            tracing::error!(%error, "cannot delete the banned agent SVID");
        }
    }
}

/// A stored SVID still valid, of this trust domain.
fn usable(agent: &AgentSvid, trust_domain: &TrustDomain) -> bool {
    agent.not_after > crate::wall_clock::now() && agent.spiffe_id.belongs_to(trust_domain)
}

/// Node attestation: sends the attestor's data with a CSR for a fresh key,
/// answers challenges, and takes the agent SVID.
async fn attest(
    connection: &Connection,
    roots: &X509Bundle,
    attestor: &NodeAttestor,
) -> Result<AgentSvid, FleetError> {
    let (data, prover) = match attestor {
        NodeAttestor::JoinToken(None) => return Err(FleetError::NeedJoinToken),
        NodeAttestor::JoinToken(Some(token)) => (
            AttestationData {
                r#type: "join_token".into(),
                payload: token.expose().as_bytes().to_vec(),
            },
            None,
        ),
        NodeAttestor::X509pop(files) => {
            let prover = x509pop::Prover::load(files)?;
            (prover.attestation_data(), Some(prover))
        }
    };
    let (key, csr) = key_and_csr()?;
    let mut client = AgentClient::new(connection.anonymous(Some(roots))?);
    let (requests, outgoing) = mpsc::channel(2);
    let params = attest_agent_request::Step::Params(attest_agent_request::Params {
        data: Some(data),
        params: Some(AgentX509svidParams { csr }),
    });
    let send = |step| AttestAgentRequest { step: Some(step) };
    // The channel has room: the first send cannot wait.
    let _ = requests.try_send(send(params));
    let exchange = async {
        let mut responses = client
            .attest_agent(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        for _ in 0..=MAX_CHALLENGES {
            let Some(response) = responses.message().await? else {
                return Ok(Err("the server ended the exchange without a result".to_owned()));
            };
            match response.step {
                Some(attest_agent_response::Step::Result(result)) => return Ok(Ok(result)),
                Some(attest_agent_response::Step::Challenge(challenge)) => {
                    let Some(prover) = &prover else {
                        return Ok(Err("the server sent a challenge to a join token".to_owned()));
                    };
                    let answer = match prover.respond(&challenge) {
                        Ok(answer) => answer,
                        Err(reason) => return Ok(Err(reason)),
                    };
                    let _ = requests
                        .send(send(attest_agent_request::Step::ChallengeResponse(answer)))
                        .await;
                }
                None => return Ok(Err("the server sent an empty step".to_owned())),
            }
        }
        Ok(Err(format!("more than {MAX_CHALLENGES} challenges")))
    };
    let result = tokio::time::timeout(RPC_TIMEOUT, exchange)
        .await
        .map_err(|_| FleetError::Attestation(format!("no result within {}s", RPC_TIMEOUT.as_secs())))?
        .map_err(|status: tonic::Status| match status::verdict(&status) {
            Verdict::Banned => FleetError::Banned(status::describe(&status)),
            _ if status.code() == tonic::Code::Unavailable => FleetError::Unreachable {
                address: connection.address().to_owned(),
                reason: status::describe(&status),
            },
            _ => FleetError::Attestation(status::describe(&status)),
        })?
        .map_err(FleetError::Attestation)?;
    let chain = result.svid.map(|svid| svid.cert_chain).unwrap_or_default();
    AgentSvid::new(key.serialize_der(), chain, result.reattestable)
        .map_err(|reason| FleetError::Attestation(format!("the server's answer: {reason}")))
}

/// A fresh P-256 key and a CSR for it (the server takes only its key).
pub(super) fn key_and_csr() -> Result<(KeyPair, Vec<u8>), FleetError> {
    let failed = |e: rcgen::Error| FleetError::Server(format!("cannot make a key and CSR: {e}"));
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(failed)?
        .der()
        .to_vec();
    Ok((key, csr))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one assignment or clone.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

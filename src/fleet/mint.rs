//! Minting through the server: the [`RemoteSigner`] behind the fleet
//! mode [`Authority`](crate::authority::Authority).
//!
//! X.509-SVIDs: a fresh P-256 key and CSR per SVID (the key never leaves
//! the node); requests made at the same moment (many entries at start, or
//! rotating together) go out in one BatchNewX509SVID of at most
//! [`MAX_BATCH`] CSRs, the server's per-request limit. JWT-SVIDs: NewJWTSVID,
//! each token kept per entry and audience list until half its lifetime
//! (as spire-agent does), so callers do not each cost a round trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use tokio::sync::{mpsc, oneshot};

use super::connection::RPC_TIMEOUT;
use super::node::{Node, key_and_csr};
use super::state::Leaf;
use super::status;
use crate::authority::{AuthorityError, BoxFuture, JwtSvid, RemoteSigner, SvidTemplate, X509Svid};
use crate::proto::spire::api::server::svid::v1::svid_client::SvidClient;
use crate::proto::spire::api::server::svid::v1::{
    BatchNewX509svidRequest, NewJwtsvidRequest, NewX509svidParams,
};
use crate::proto::spire::api::types::X509svid;
use crate::spiffe_id::SpiffeId;

/// CSRs per BatchNewX509SVID (SPIRE Server signs at most 500 per second
/// per agent address).
const MAX_BATCH: usize = 500;
/// Mint requests waiting for a batch; more wait to be queued.
const QUEUE: usize = 4 * MAX_BATCH;
/// JWT-SVIDs kept at most (per entry and audience list).
const MAX_CACHED_JWTS: usize = 4096;

type Reply = oneshot::Sender<Result<X509svid, AuthorityError>>;

struct MintRequest {
    entry_id: Arc<str>,
    csr: Vec<u8>,
    reply: Reply,
}

/// Mints through the server as this node's agent.
pub(super) struct ServerSigner {
    node: Arc<Node>,
    queue: mpsc::Sender<MintRequest>,
    // std Mutex: lookups and inserts only, never across an await.
    jwts: Mutex<HashMap<JwtKey, KeptJwt>>,
}

/// A kept JWT-SVID's key: its entry and the audiences asked for.
type JwtKey = (Arc<str>, Vec<String>);

/// A kept JWT-SVID and when it stops being handed out (half its life).
struct KeptJwt {
    svid: JwtSvid,
    until: SystemTime,
}

impl std::fmt::Debug for ServerSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSigner")
            .field("server", &self.node.address())
            .finish_non_exhaustive()
    }
}

impl ServerSigner {
    /// A signer for `node`; starts its batching task (inside the runtime).
    pub fn new(node: Arc<Node>) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(batches(Arc::clone(&node), requests));
        Self {
            node,
            queue,
            jwts: Mutex::new(HashMap::new()),
        }
    }

    async fn x509(&self, template: &SvidTemplate) -> Result<X509Svid, AuthorityError> {
        let entry_id = template
            .remote_entry
            .clone()
            .ok_or(AuthorityError::SignedRemotely)?;
        let (key, csr) = key_and_csr().map_err(|e| AuthorityError::Remote(e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(MintRequest { entry_id, csr, reply })
            .await
            .map_err(|_| AuthorityError::Remote("the minting task has stopped".into()))?;
        let svid = answer
            .await
            .map_err(|_| AuthorityError::Remote("the minting task has stopped".into()))??;
        let leaf = Leaf::parse(svid.cert_chain.first().map_or(&[][..], Vec::as_slice))
            .map_err(|reason| AuthorityError::Remote(format!("BatchNewX509SVID: {reason}")))?;
        if leaf.spiffe_id != template.spiffe_id {
            return Err(AuthorityError::Remote(format!(
                "BatchNewX509SVID returned an SVID for {}, not {}",
                leaf.spiffe_id, template.spiffe_id
            )));
        }
        if leaf.public_key_der != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(AuthorityError::Remote(
                "BatchNewX509SVID returned an SVID for another key".into(),
            ));
        }
        Ok(X509Svid {
            spiffe_id: leaf.spiffe_id,
            cert_chain: svid.cert_chain,
            private_key_pkcs8: key.serialize_der(),
            serial: leaf.serial,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        })
    }

    async fn jwt(
        &self,
        spiffe_id: &SpiffeId,
        entry: &str,
        audiences: &[String],
    ) -> Result<JwtSvid, AuthorityError> {
        let key = (Arc::<str>::from(entry), audiences.to_vec());
        let now = crate::wall_clock::now();
        if let Some(kept) = self.lock_jwts().get(&key).filter(|kept| now < kept.until) {
            return Ok(kept.svid.clone());
        }
        let channel = self
            .node
            .channel()
            .map_err(|e| AuthorityError::Remote(e.to_string()))?;
        let request = NewJwtsvidRequest {
            entry_id: entry.to_owned(),
            audience: audiences.to_vec(),
        };
        let response = match SvidClient::new(channel).new_jwtsvid(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                self.node.reset();
                return Err(AuthorityError::Remote(format!(
                    "NewJWTSVID: {}",
                    status::describe(&status)
                )));
            }
        };
        let svid = response
            .svid
            .ok_or_else(|| AuthorityError::Remote("NewJWTSVID: no SVID in the answer".into()))?;
        let id = svid.id.unwrap_or_default();
        if format!("spiffe://{}{}", id.trust_domain, id.path) != spiffe_id.as_str() {
            return Err(AuthorityError::Remote(format!(
                "NewJWTSVID returned a token for another identity than {spiffe_id}"
            )));
        }
        if svid.expires_at <= 0 || svid.issued_at > svid.expires_at {
            return Err(AuthorityError::Remote(
                "NewJWTSVID: a token without a valid lifetime".into(),
            ));
        }
        let (issued_at, expires_at) = (unix(svid.issued_at), unix(svid.expires_at));
        let minted = JwtSvid {
            spiffe_id: spiffe_id.clone(),
            jti: jti(&svid.token).unwrap_or_default(),
            token: svid.token,
            expires_at,
        };
        let half_life = expires_at.duration_since(issued_at).unwrap_or_default() / 2;
        let mut jwts = self.lock_jwts();
        if jwts.len() >= MAX_CACHED_JWTS {
            jwts.retain(|_, kept| now < kept.until);
            if jwts.len() >= MAX_CACHED_JWTS {
                jwts.clear();
            }
        }
        let kept = KeptJwt {
            svid: minted.clone(),
            until: issued_at + half_life,
        };
        jwts.insert(key, kept);
        Ok(minted)
    }

    fn lock_jwts(&self) -> std::sync::MutexGuard<'_, HashMap<JwtKey, KeptJwt>> {
        // Every critical section leaves the map consistent.
        self.jwts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RemoteSigner for ServerSigner {
    fn mint_x509<'a>(
        &'a self,
        template: &'a SvidTemplate,
    ) -> BoxFuture<'a, Result<X509Svid, AuthorityError>> {
        Box::pin(self.x509(template))
    }

    fn mint_jwt<'a>(
        &'a self,
        spiffe_id: &'a SpiffeId,
        remote_entry: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<JwtSvid, AuthorityError>> {
        Box::pin(self.jwt(spiffe_id, remote_entry, audiences))
    }
}

/// Sends the queued requests in batches, one batch at a time, until the
/// signer is dropped.
async fn batches(node: Arc<Node>, mut requests: mpsc::Receiver<MintRequest>) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        send_batch(&node, batch).await;
    }
}

/// One BatchNewX509SVID; each request hears its own result (the server
/// answers in request order).
async fn send_batch(node: &Node, batch: Vec<MintRequest>) {
    let failed = |reason: String| {
        move |request: MintRequest| {
            let _ = request.reply.send(Err(AuthorityError::Remote(reason.clone())));
        }
    };
    let channel = match node.channel() {
        Ok(channel) => channel,
        Err(error) => return batch.into_iter().for_each(failed(error.to_string())),
    };
    let params = batch
        .iter()
        .map(|request| NewX509svidParams {
            entry_id: request.entry_id.to_string(),
            csr: request.csr.clone(),
        })
        .collect();
    let mut client = SvidClient::new(channel);
    let call = client.batch_new_x509svid(BatchNewX509svidRequest { params });
    let results = match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(Ok(response)) => response.into_inner().results,
        Ok(Err(status)) => {
            node.reset();
            return batch
                .into_iter()
                .for_each(failed(format!("BatchNewX509SVID: {}", status::describe(&status))));
        }
        Err(_) => {
            node.reset();
            return batch
                .into_iter()
                .for_each(failed("BatchNewX509SVID timed out".into()));
        }
    };
    if results.len() != batch.len() {
        let reason = format!(
            "BatchNewX509SVID: {} results for {} requests",
            results.len(),
            batch.len()
        );
        return batch.into_iter().for_each(failed(reason));
    }
    for (request, result) in batch.into_iter().zip(results) {
        let outcome = match (result.status, result.svid) {
            (Some(status), _) if status.code != 0 => Err(AuthorityError::Remote(format!(
                "BatchNewX509SVID for entry {}: {:?}: {}",
                request.entry_id,
                tonic::Code::from_i32(status.code),
                status.message.chars().take(512).collect::<String>()
            ))),
            (_, Some(svid)) => Ok(svid),
            (_, None) => Err(AuthorityError::Remote(format!(
                "BatchNewX509SVID for entry {}: no SVID in the answer",
                request.entry_id
            ))),
        };
        let _ = request.reply.send(outcome);
    }
}

/// The `jti` claim of a token, if it has one.
fn jti(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("jti")?.as_str().map(str::to_owned)
}

fn unix(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or_default())
}

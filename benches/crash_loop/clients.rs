//! The load: real Workload API clients (the Rust `spiffe` crate) fetching
//! X.509-SVIDs and JWT-SVIDs, holding FetchX509SVID streams, and a policy
//! editor adding and removing an entry. They run across every crash (a
//! refused call is expected while attestd is down) and check each SVID as
//! it arrives:
//! - against the bundle of the same response (X.509) or fetched right
//!   after (JWT);
//! - against the bundle the client held before asking: on a stream, the
//!   previous message's, always (a new root is pushed before it signs);
//!   for a single fetch, the newest bundle any client held, when that is
//!   younger than a quarter of the CA's (or JWT key's) life, the time by
//!   which a root is published before it signs. This is publish-before-use,
//!   and it fails if a crash made attestd sign with a root it never
//!   published.
//!
//! Serials and token ids are kept, with when they arrived, for the audit
//! check; the SVIDs and tokens still valid are kept for the power-loss
//! check ([`check_held`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures::StreamExt as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use spiffe::{JwtBundleSet, TrustDomain, WorkloadApiClient, X509Context};
use tokio::task::JoinSet;

use crate::daemon::{AUDIENCE, CA_TTL, JWT_KEY_TTL, Layout, TRUST_DOMAIN};

/// How far a held bundle may be from the end of its safe age and still be
/// checked (the daemon's rotation timer and these clients' own delays).
const SLACK: Duration = Duration::from_secs(1);
/// Pause between one client's calls.
const PAUSE: Duration = Duration::from_millis(40);

/// What the clients saw.
#[derive(Default)]
pub struct Observed {
    /// Serials and token ids received and not yet found in the audit
    /// trail, with when they arrived.
    pub unaudited_serials: HashMap<String, Instant>,
    pub unaudited_jtis: HashMap<String, Instant>,
    /// The X.509-SVID chains (leaf first) and JWT-SVIDs clients received
    /// that have not expired yet, with their expiry.
    held_svids: Vec<(Vec<Vec<u8>>, SystemTime)>,
    held_tokens: Vec<(String, SystemTime)>,
    /// The newest X.509 and JWT bundles any client held, and when.
    x509_bundle: Option<(Instant, Vec<Vec<u8>>)>,
    jwt_bundle: Option<(Instant, JwtBundleSet)>,
    pub counts: Counts,
    /// Checks that failed: the run fails.
    pub failures: Vec<String>,
}

#[derive(Default, Debug, Clone)]
pub struct Counts {
    pub x509_svids: u64,
    pub jwt_svids: u64,
    pub stream_messages: u64,
    pub held_bundle_checks: u64,
    /// JWT-SVIDs expired before their bundle arrived (not checked).
    pub expired_before_check: u64,
    pub policy_edits: u64,
    /// Calls refused or cut off (attestd down or being killed).
    pub client_errors: u64,
}

pub type Shared = Arc<Mutex<Observed>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Observed> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the clients; they run until the returned set is dropped.
pub fn start(layout: &Layout, shared: &Shared) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let endpoint = layout.endpoint();
    for _ in 0..2 {
        tasks.spawn(fetch_x509_loop(endpoint.clone(), shared.clone()));
    }
    tasks.spawn(fetch_jwt_loop(endpoint.clone(), shared.clone()));
    for _ in 0..4 {
        tasks.spawn(stream_loop(endpoint.clone(), shared.clone()));
    }
    tasks.spawn(edit_policy_loop(layout.entries_dir(), shared.clone()));
    tasks
}

async fn fetch_x509_loop(endpoint: String, shared: Shared) {
    loop {
        let held = lock(&shared).x509_bundle.clone();
        match fetch_x509(&endpoint).await {
            Ok(context) => {
                let roots = roots(&context);
                let now = Instant::now();
                let mut observed = lock(&shared);
                observed.counts.x509_svids += context.svids().len() as u64;
                check_context(&mut observed, &context, &roots, "FetchX509SVID");
                if let Some((at, held)) = held
                    && now.duration_since(at) + SLACK < CA_TTL / 4
                {
                    observed.counts.held_bundle_checks += 1;
                    check_against(
                        &mut observed,
                        &context,
                        &held,
                        "FetchX509SVID, the bundle held before",
                    );
                }
                observed.x509_bundle = Some((now, roots));
            }
            Err(_) => lock(&shared).counts.client_errors += 1,
        }
        tokio::time::sleep(PAUSE).await;
    }
}

async fn fetch_x509(endpoint: &str) -> anyhow::Result<X509Context> {
    let client = WorkloadApiClient::connect_to(endpoint).await?;
    Ok(tokio::time::timeout(Duration::from_secs(5), client.fetch_x509_context()).await??)
}

async fn fetch_jwt_loop(endpoint: String, shared: Shared) {
    loop {
        let held = lock(&shared).jwt_bundle.clone();
        match fetch_jwt(&endpoint).await {
            Ok((token, bundles)) => {
                let now = Instant::now();
                let mut observed = lock(&shared);
                observed.counts.jwt_svids += 1;
                check_jwt(
                    &mut observed,
                    &token,
                    &bundles,
                    "FetchJWTSVID, the bundle fetched after",
                );
                if let Some((at, held)) = held
                    && now.duration_since(at) + SLACK < JWT_KEY_TTL / 4
                {
                    observed.counts.held_bundle_checks += 1;
                    check_jwt(
                        &mut observed,
                        &token,
                        &held,
                        "FetchJWTSVID, the bundle held before",
                    );
                }
                match jti(&token) {
                    Some(jti) => {
                        observed.unaudited_jtis.insert(jti, now);
                    }
                    None => observed.failures.push("a JWT-SVID without a jti".into()),
                }
                if let Some(exp) = claim(&token, "exp").and_then(|exp| exp.as_u64()) {
                    let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(exp);
                    let now = SystemTime::now();
                    observed.held_tokens.retain(|(_, expiry)| *expiry > now);
                    observed.held_tokens.push((token, expiry));
                }
                observed.jwt_bundle = Some((now, bundles));
            }
            Err(_) => lock(&shared).counts.client_errors += 1,
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// A token, then the JWT bundle (on one connection).
async fn fetch_jwt(endpoint: &str) -> anyhow::Result<(String, JwtBundleSet)> {
    let client = WorkloadApiClient::connect_to(endpoint).await?;
    let token =
        tokio::time::timeout(Duration::from_secs(5), client.fetch_jwt_token([AUDIENCE], None)).await??;
    let bundles = tokio::time::timeout(Duration::from_secs(5), client.fetch_jwt_bundles()).await??;
    Ok((token, bundles))
}

async fn stream_loop(endpoint: String, shared: Shared) {
    loop {
        if let Err(()) = hold_stream(&endpoint, &shared).await {
            lock(&shared).counts.client_errors += 1;
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// One stream until it breaks (attestd killed).
async fn hold_stream(endpoint: &str, shared: &Shared) -> Result<(), ()> {
    let client = WorkloadApiClient::connect_to(endpoint).await.map_err(drop)?;
    let mut stream = client.stream_x509_contexts().await.map_err(drop)?;
    let mut previous: Option<Vec<Vec<u8>>> = None;
    while let Some(message) = stream.next().await {
        let context = message.map_err(drop)?;
        let roots = roots(&context);
        let mut observed = lock(shared);
        observed.counts.stream_messages += 1;
        observed.counts.x509_svids += context.svids().len() as u64;
        check_context(&mut observed, &context, &roots, "stream");
        if let Some(previous) = &previous {
            observed.counts.held_bundle_checks += 1;
            check_against(
                &mut observed,
                &context,
                previous,
                "stream, the previous message's bundle",
            );
        }
        observed.x509_bundle = Some((Instant::now(), roots.clone()));
        previous = Some(roots);
    }
    Ok(())
}

/// Adds and removes a second entry for the clients' uid, every second or
/// so: streams get pushes with one or two SVIDs. The file is replaced by
/// rename, as an operator's tool should.
async fn edit_policy_loop(entries_dir: std::path::PathBuf, shared: Shared) {
    let uid = nix::unistd::geteuid().as_raw();
    let path = entries_dir.join("extra.toml");
    let staging = entries_dir.join(".extra.staging");
    let mut present = false;
    loop {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        present = !present;
        let body = match present {
            true => format!(
                "[[entry]]\nspiffe_id = \"spiffe://{TRUST_DOMAIN}/extra\"\nselectors = [\"unix:uid:{uid}\"]\n\
                 owner = \"crash-loop@example.org\"\nhint = \"extra\"\n"
            ),
            false => String::new(),
        };
        let written = std::fs::write(&staging, body).and_then(|()| std::fs::rename(&staging, &path));
        let mut observed = lock(&shared);
        match written {
            Ok(()) => observed.counts.policy_edits += 1,
            Err(error) => observed.failures.push(format!("policy edit: {error}")),
        }
    }
}

/// Our trust domain's roots in a context.
fn roots(context: &X509Context) -> Vec<Vec<u8>> {
    let td = TrustDomain::new(TRUST_DOMAIN).expect("valid trust domain");
    context
        .bundle_set()
        .get(&td)
        .map(|bundle| {
            bundle
                .authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect()
        })
        .unwrap_or_default()
}

/// Every SVID of `context` against its own bundle; serials kept.
fn check_context(observed: &mut Observed, context: &X509Context, roots: &[Vec<u8>], what: &str) {
    check_against(observed, context, roots, what);
    let (now, wall) = (Instant::now(), SystemTime::now());
    observed.held_svids.retain(|(_, expiry)| *expiry > wall);
    for svid in context.svids() {
        observed
            .unaudited_serials
            .insert(serial(svid.leaf().as_bytes()), now);
        let chain: Vec<Vec<u8>> = svid.cert_chain().iter().map(|c| c.as_bytes().to_vec()).collect();
        if let Some(expiry) = not_after(&chain[0]) {
            observed.held_svids.push((chain, expiry));
        }
    }
}

/// After a power cut, with attestd down: every root of the newest X.509
/// bundle a client held, every X.509-SVID and every JWT-SVID a client holds
/// are still trusted by the bundle document that survived (`x509_roots`
/// and `jwt_keys` from `bundle.json`), unless they expire within
/// `grace`. A root or JWT key lost by the cut would split the trust
/// bundle: relying parties trust it and attestd does not know it. Returns
/// how many were checked, and the problems.
pub fn check_held(
    shared: &Shared,
    x509_roots: &[Vec<u8>],
    jwt_keys: &JwtBundleSet,
    grace: Duration,
) -> (u64, Vec<String>) {
    let observed = lock(shared);
    let soon = SystemTime::now() + grace;
    let mut problems = Vec::new();
    let mut checked = 0;
    for root in observed.x509_bundle.iter().flat_map(|(_, roots)| roots) {
        if not_after(root).is_none_or(|expiry| expiry <= soon) {
            continue;
        }
        checked += 1;
        if !x509_roots.contains(root) {
            problems.push(format!(
                "a root a client held (serial {}) is not in bundle.json after the power cut",
                serial(root)
            ));
        }
    }
    for (chain, _) in observed.held_svids.iter().filter(|(_, expiry)| *expiry > soon) {
        checked += 1;
        let chain: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
        if let Err(error) = verify_chain(&chain, x509_roots) {
            problems.push(format!(
                "a held X.509-SVID (serial {}) does not verify against bundle.json after the power cut: {error}",
                serial(chain[0])
            ));
        }
    }
    for (token, _) in observed.held_tokens.iter().filter(|(_, expiry)| *expiry > soon) {
        checked += 1;
        if let Err(error) = spiffe::JwtSvid::parse_and_validate(token, jwt_keys, &[AUDIENCE]) {
            problems.push(format!(
                "a held JWT-SVID {} does not validate against bundle.json after the power cut: {error}",
                jti(token).unwrap_or_default()
            ));
        }
    }
    (checked, problems)
}

/// A certificate's notAfter.
fn not_after(der: &[u8]) -> Option<SystemTime> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

fn check_against(observed: &mut Observed, context: &X509Context, roots: &[Vec<u8>], what: &str) {
    for svid in context.svids() {
        let chain: Vec<&[u8]> = svid.cert_chain().iter().map(|c| c.as_bytes()).collect();
        if let Err(error) = verify_chain(&chain, roots) {
            observed.failures.push(format!(
                "{what}: SVID {} (serial {}) does not verify against {} root(s): {error}",
                svid.spiffe_id(),
                serial(chain[0]),
                roots.len()
            ));
        }
    }
}

fn check_jwt(observed: &mut Observed, token: &str, bundles: &JwtBundleSet, what: &str) {
    // The client's channel reconnects by itself: the bundle may come from
    // the next attestd, after a kill, when the token has expired (its
    // validation then fails for that alone).
    let now = attestd::wall_clock::unix_seconds(std::time::SystemTime::now());
    if claim(token, "exp")
        .and_then(|exp| exp.as_u64())
        .is_some_and(|exp| exp <= now)
    {
        observed.counts.expired_before_check += 1;
        return;
    }
    if let Err(error) = spiffe::JwtSvid::parse_and_validate(token, bundles, &[AUDIENCE]) {
        observed.failures.push(format!(
            "{what}: JWT-SVID {} does not validate: {error}",
            jti(token).unwrap_or_default()
        ));
    }
}

/// RFC 5280 path validation of `chain` (leaf first) against `roots`, now.
fn verify_chain(chain: &[&[u8]], roots: &[Vec<u8>]) -> Result<(), String> {
    let root_ders: Vec<CertificateDer<'_>> =
        roots.iter().map(|r| CertificateDer::from(r.as_slice())).collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad root: {e}"))?;
    let leaf = CertificateDer::from(chain[0]);
    let intermediates: Vec<CertificateDer<'_>> =
        chain[1..].iter().map(|c| CertificateDer::from(*c)).collect();
    let end_entity = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("bad leaf: {e}"))?;
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A certificate's serial, lowercase hex (as the audit trail writes it).
pub fn serial(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => hex::encode(cert.raw_serial()),
        Err(_) => String::from("(unparsable)"),
    }
}

/// A token's `jti`, read without verification (it is verified apart).
fn jti(token: &str) -> Option<String> {
    claim(token, "jti")?.as_str().map(str::to_owned)
}

/// A claim of a token, read without verification.
fn claim(token: &str, name: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let mut claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some(claims[name].take())
}

/// Takes what the clients saw so far (the failures are moved out).
pub fn snapshot(shared: &Shared) -> (Counts, Vec<String>) {
    let mut observed = lock(shared);
    (observed.counts.clone(), std::mem::take(&mut observed.failures))
}

/// Runs `f` on the observations (for the audit check).
pub fn with<T>(shared: &Shared, f: impl FnOnce(&mut Observed) -> T) -> T {
    f(&mut lock(shared))
}

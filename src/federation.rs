//! Foreign trust domains (SPIFFE Federation): their bundles, read from
//! files and fetched from their bundle endpoints, kept per trust domain
//! (never merged: a bundle vouches only for its own trust domain), and
//! published on a watch channel so open Workload API streams push a change
//! at once. attestd's own bundle is served to other trust domains by
//! [`serve_bundle_endpoint`].
//!
//! A caller gets the bundles of the trust domains its entries name in
//! `federates_with` ([`FederatedBundles::for_entries`]), never more.

mod document;
mod endpoint_client;
mod endpoint_server;
mod refresh;
pub(crate) mod svid_verifier;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

pub use document::{BundleError, ForeignBundle, MAX_DOCUMENT_BYTES};
pub use endpoint_client::FetchError;
pub use endpoint_server::{EndpointServerError, serve_bundle_endpoint};

use crate::authority::Authority;
use crate::config::Config;
use crate::registry::Entry;
use crate::spiffe_id::TrustDomain;

/// Why federation could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// A configured `bundle_file` is unreadable or not a bundle document.
    #[error("[[federation]] {trust_domain}: bundle_file {path}: {reason}")]
    BundleFile {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory for fetched bundles could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The latest bundle of every foreign trust domain that has one.
#[derive(Debug, Default)]
pub struct FederatedBundles {
    by_domain: BTreeMap<TrustDomain, Arc<ForeignBundle>>,
}

impl FederatedBundles {
    /// The bundle of `trust_domain`, if one is held.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&Arc<ForeignBundle>> {
        self.by_domain.get(trust_domain)
    }

    /// The bundles a caller holding `entries` gets: those of the trust
    /// domains its entries federate with (by trust domain, each once).
    /// What SDS `ALL` and the Workload API hand a caller besides its own
    /// trust domain's bundle.
    pub fn for_entries(&self, entries: &[Arc<Entry>]) -> CallerBundles {
        let wanted: BTreeSet<&TrustDomain> = entries.iter().flat_map(|e| e.federates_with.iter()).collect();
        CallerBundles(
            wanted
                .into_iter()
                .filter_map(|td| Some((td.clone(), Arc::clone(self.by_domain.get(td)?))))
                .collect(),
        )
    }
}

/// The foreign bundles one caller is entitled to, by trust domain.
#[derive(Debug, Clone, Default)]
pub struct CallerBundles(Vec<(TrustDomain, Arc<ForeignBundle>)>);

impl CallerBundles {
    /// Each trust domain with its bundle, sorted by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = (&TrustDomain, &Arc<ForeignBundle>)> {
        self.0.iter().map(|(td, bundle)| (td, bundle))
    }

    /// The bundle of `trust_domain`, if the caller is entitled to one.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&Arc<ForeignBundle>> {
        self.0.iter().find(|(td, _)| td == trust_domain).map(|(_, b)| b)
    }

    /// Whether both are the very same bundles (a push would repeat itself).
    pub fn same_as(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
    }

    /// The Workload API's X.509 bundle map: `spiffe://td` to concatenated
    /// DER CA certificates. A trust domain without X.509 authorities is
    /// left out (clients trust nothing of it either way).
    pub fn x509_map(&self) -> HashMap<String, Vec<u8>> {
        self.iter()
            .filter(|(_, bundle)| !bundle.x509().roots().is_empty())
            .map(|(td, bundle)| (td.id_string(), bundle.x509().concatenated_der()))
            .collect()
    }

    /// The Workload API's JWT bundle map: `spiffe://td` to a JWKS. A trust
    /// domain without JWT authorities is left out.
    pub fn jwt_map(&self) -> HashMap<String, Vec<u8>> {
        self.iter()
            .filter(|(_, bundle)| !bundle.jwt().keys().is_empty())
            .map(|(td, bundle)| (td.id_string(), bundle.jwt().jwks_json()))
            .collect()
    }
}

/// The source of foreign bundles.
#[derive(Debug)]
pub struct Federation {
    bundles: watch::Sender<Arc<FederatedBundles>>,
}

impl Federation {
    /// Loads each `[[federation]]`'s first bundle (the newer of its
    /// `bundle_file` and the copy last fetched from its endpoint) and starts
    /// keeping each current: files re-read on change, endpoints polled.
    /// A `bundle_file` that cannot be read fails the start, so that a
    /// mistake shows at once.
    pub fn start(config: &Config, authority: &Arc<Authority>) -> Result<Arc<Self>, FederationError> {
        let store = refresh::Store::open(&config.data_dir)?;
        let mut first = FederatedBundles::default();
        for federation in &config.federation {
            if let Some(bundle) = store.initial(federation)? {
                first
                    .by_domain
                    .insert(federation.trust_domain.clone(), Arc::new(bundle));
            }
        }
        let this = Arc::new(Self {
            bundles: watch::Sender::new(Arc::new(first)),
        });
        for federation in &config.federation {
            tokio::spawn(refresh::keep_current(
                federation.clone(),
                Arc::clone(&this),
                Arc::clone(authority),
                store.clone(),
            ));
        }
        Ok(this)
    }

    /// No foreign trust domain: for a daemon without `[[federation]]`.
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            bundles: watch::Sender::new(Arc::new(FederatedBundles::default())),
        })
    }

    /// The bundles now.
    pub fn current(&self) -> Arc<FederatedBundles> {
        self.bundles.borrow().clone()
    }

    /// A receiver that sees every change of a foreign bundle.
    pub fn subscribe(&self) -> watch::Receiver<Arc<FederatedBundles>> {
        self.bundles.subscribe()
    }

    /// Puts `bundle` in effect for `trust_domain`, unless it holds the
    /// same authorities as the one in effect; returns whether it changed.
    /// `origin` says where it came from, for the log.
    pub fn update(&self, trust_domain: &TrustDomain, bundle: ForeignBundle, origin: &str) -> bool {
        self.bundles.send_if_modified(|current| {
            if current
                .get(trust_domain)
                .is_some_and(|held| held.same_authorities(&bundle))
            {
                return false;
            }
            tracing::info!(
                trust_domain = %trust_domain,
                origin,
                x509_authorities = bundle.x509().roots().len(),
                jwt_authorities = bundle.jwt().keys().len(),
                sequence = bundle.sequence(),
                "federated bundle changed"
            );
            let mut next: BTreeMap<_, _> = current.by_domain.clone();
            next.insert(trust_domain.clone(), Arc::new(bundle));
            *current = Arc::new(FederatedBundles { by_domain: next });
            true
        })
    }
}

/// The path with symlinks resolved, as notify reports it (the path itself
/// if it cannot be resolved).
fn absolute(path: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

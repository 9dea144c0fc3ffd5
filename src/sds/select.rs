//! Which secrets answer a request. Envoy names what it wants: a SPIFFE ID
//! (that identity's certificate), the configured default SVID name (the
//! caller's first identity), a trust domain ID (our own, or a foreign one
//! the caller's entries federate with) or the default bundle name (our
//! own), the all-bundles name (our own and the caller's foreign bundles, for
//! the SPIFFE validator); no name at all means everything the caller holds. A name the
//! caller holds nothing for refuses the whole request, as SPIRE agent does:
//! Envoy then keeps what it had.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::Status;

use super::resources::{self, TrustBundle, Validator};
use crate::authority::X509Svid;
use crate::config::SdsConfig;
use crate::registry::Entry;
use crate::spiffe_id::TrustDomain;
use crate::workload_api::Credentials;

/// The most names one request may carry (Envoy asks for one per stream).
pub(super) const MAX_NAMES: usize = 64;
/// The node metadata key with which an Envoy asks for plain `trusted_ca`
/// validation contexts (SPIRE agent's name).
const DISABLE_SPIFFE_VALIDATION_KEY: &str = "disable_spiffe_cert_validation";

/// The secrets answering one request.
pub(super) struct Answer {
    pub resources: Vec<Any>,
    /// The identities whose keys the answer carries, for the audit trail.
    pub issued: Vec<(Arc<Entry>, Arc<X509Svid>)>,
}

/// What a request asks for, beyond the names: how this Envoy wants
/// validation contexts expressed.
pub(super) fn validator(config: &SdsConfig, node: Option<&Node>) -> Validator {
    let asked = node
        .and_then(|node| node.metadata.as_ref())
        .and_then(|metadata| metadata.fields.get(DISABLE_SPIFFE_VALIDATION_KEY))
        .and_then(|value| match &value.kind {
            Some(Kind::BoolValue(disable)) => Some(*disable),
            Some(Kind::StringValue(text)) => text.parse().ok(),
            _ => None,
        });
    let disabled = asked.unwrap_or(config.disable_spiffe_cert_validation);
    if disabled || !knows_spiffe_validator(node) {
        Validator::TrustedCa
    } else {
        Validator::Spiffe
    }
}

/// Envoy has the SPIFFE certificate validator from 1.18; a node that does
/// not say its version is taken to be recent.
fn knows_spiffe_validator(node: Option<&Node>) -> bool {
    let version = node
        .and_then(|node| node.user_agent_version_type.as_ref())
        .and_then(|version| match version {
            UserAgentVersionType::UserAgentBuildVersion(build) => build.version.as_ref(),
            UserAgentVersionType::UserAgentVersion(_) => None,
        });
    version.is_none_or(|v| (v.major_number, v.minor_number) >= (1, 18))
}

/// The secrets `requested` names, from `credentials`.
pub(super) fn answer(
    requested: &[String],
    credentials: &Credentials,
    trust_domain: &TrustDomain,
    config: &SdsConfig,
    validator: Validator,
) -> Result<Answer, Status> {
    if requested.len() > MAX_NAMES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_NAMES} resource names per request"
        )));
    }
    let mut names: BTreeSet<&str> = requested
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    let everything = names.is_empty();
    let mut answer = Answer {
        resources: Vec::new(),
        issued: Vec::new(),
    };
    let own = TrustBundle {
        trust_domain: trust_domain.name(),
        roots: credentials.bundle.roots(),
    };
    let own_id = trust_domain.id_string();
    for name in [own_id.as_str(), config.default_bundle_name.as_str()] {
        if (everything && name == own_id) || names.remove(name) {
            answer.resources.push(resources::validation_context(
                name,
                validator,
                std::slice::from_ref(&own),
            ));
        }
    }
    let federated: Vec<(String, TrustBundle<'_>)> = credentials
        .federated
        .iter()
        .map(|(domain, bundle)| {
            let bundle = TrustBundle {
                trust_domain: domain.name(),
                roots: bundle.x509().roots(),
            };
            (domain.id_string(), bundle)
        })
        .collect();
    for (id, bundle) in &federated {
        if everything || names.remove(id.as_str()) {
            answer.resources.push(resources::validation_context(
                id,
                validator,
                std::slice::from_ref(bundle),
            ));
        }
    }
    if names.remove(config.default_all_bundles_name.as_str()) {
        if validator == Validator::TrustedCa {
            return Err(Status::invalid_argument(format!(
                "\"{}\" needs Envoy's SPIFFE certificate validator (Envoy 1.18 or later, not disabled)",
                config.default_all_bundles_name
            )));
        }
        let all: Vec<TrustBundle<'_>> = std::iter::once(own)
            .chain(federated.into_iter().map(|(_, bundle)| bundle))
            .collect();
        answer.resources.push(resources::validation_context(
            &config.default_all_bundles_name,
            validator,
            &all,
        ));
    }
    for (i, identity) in credentials.identities.iter().enumerate() {
        let (_, svid) = identity;
        let mut names_for_it = Vec::with_capacity(2);
        if everything || names.remove(svid.spiffe_id.as_str()) {
            names_for_it.push(svid.spiffe_id.as_str());
        }
        if i == 0 && names.remove(config.default_svid_name.as_str()) {
            names_for_it.push(config.default_svid_name.as_str());
        }
        if everything
            && answer
                .issued
                .iter()
                .any(|(_, sent)| sent.spiffe_id == svid.spiffe_id)
        {
            // Two entries granting one SPIFFE ID: one certificate per name.
            continue;
        }
        for name in &names_for_it {
            answer.resources.push(resources::tls_certificate(name, svid));
        }
        if !names_for_it.is_empty() {
            answer.issued.push(identity.clone());
        }
    }
    if !names.is_empty() {
        return Err(Status::invalid_argument(format!(
            "the caller holds no secret named {}",
            shown(&names)
        )));
    }
    Ok(answer)
}

/// The names a refusal quotes: the caller chose them, so a few, each cut
/// short (the message travels in a response header).
fn shown(names: &BTreeSet<&str>) -> String {
    const SHOWN: usize = 3;
    const LONGEST: usize = 128;
    let mut quoted: Vec<String> = names
        .iter()
        .take(SHOWN)
        .map(|name| {
            let cut: String = name.chars().take(LONGEST).collect();
            format!("{:?}", if cut.len() < name.len() { cut + "..." } else { cut })
        })
        .collect();
    if names.len() > SHOWN {
        quoted.push(format!("and {} more", names.len() - SHOWN));
    }
    quoted.join(", ")
}

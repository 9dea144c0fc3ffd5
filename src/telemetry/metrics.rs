//! The Prometheus metrics: one process-wide registry, so every layer can
//! count what it does without threading a handle through the data flow.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    rpc: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: SvidKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum SvidKind {
    X509,
    Jwt,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    credential: Credential,
}

/// A signing credential of the local authority.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Credential {
    /// The X.509 CA: the embedded roots, or the upstream CA's files.
    X509Ca,
    /// The JWT signing keys.
    JwtKeys,
}

/// How a policy reload ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ReloadOutcome {
    /// A new policy was swapped in.
    Applied,
    /// The files were unchanged in effect.
    Unchanged,
    /// The new files were invalid; the previous policy stays.
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: ReloadOutcome,
}

// --- Resource limits (connections, header lists): issue 9, class 2 and 4.

/// Why a Workload API connection was refused at accept.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ConnectionRefusal {
    /// The uid holds `max_connections_per_uid` connections.
    UidCap,
    /// Only uids with few connections are admitted (the reserve).
    Reserve,
    /// Every connection slot is taken.
    Full,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: ConnectionRefusal,
}

/// The resource-limit metrics, registered with the others.
#[derive(Default)]
struct LimitMetrics {
    open_connections: Gauge,
    connections_refused: Family<RefusalLabels, Counter>,
    connections_timed_out: Counter,
    header_lists_refused: Counter,
}

impl LimitMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "open_connections",
            "Open Workload API connections",
            self.open_connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Workload API connections closed at accept, by the limit that refused them",
            self.connections_refused.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Workload API connections closed for sending no request in time",
            self.connections_timed_out.clone(),
        );
        registry.register(
            "header_lists_refused",
            "Connections closed for a header block over the size attestd decodes",
            self.header_lists_refused.clone(),
        );
        for reason in [
            ConnectionRefusal::UidCap,
            ConnectionRefusal::Reserve,
            ConnectionRefusal::Full,
        ] {
            let _ = self.connections_refused.get_or_create(&RefusalLabels { reason });
        }
    }
}

impl Metrics {
    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connections(&self, delta: i64) {
        self.limits.open_connections.inc_by(delta);
    }

    /// Counts a connection refused at accept.
    pub fn connection_refused(&self, reason: ConnectionRefusal) {
        self.limits
            .connections_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// Counts a connection closed for sending no request in time.
    pub fn connection_timed_out(&self) {
        self.limits.connections_timed_out.inc();
    }

    /// Counts a connection closed for an oversized header block.
    pub fn header_list_refused(&self) {
        self.limits.header_lists_refused.inc();
    }
}

// --- end of resource limits.

// --- Policy decisions (issue 10).

/// How a decision ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DecisionOutcome {
    /// Policies allowed it.
    Allow,
    /// Policies did not allow it.
    Deny,
    /// Refused before any policy (no live task, undeclared tool, ...).
    Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: DecisionOutcome,
}

/// The policy decision metrics, registered with the others.
#[derive(Default)]
struct AuthzMetrics {
    decisions: Family<DecisionLabels, Counter>,
    policy_set_reloads: Family<ReloadLabels, Counter>,
}

impl AuthzMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "authz_decisions",
            "Policy decisions (Authorize and the AuthZEN front), by outcome",
            self.decisions.clone(),
        );
        registry.register(
            "authz_policy_reloads",
            "Reloads of the Cedar policy set by outcome (Failed: a broken file, the previous set kept)",
            self.policy_set_reloads.clone(),
        );
        for decision in [
            DecisionOutcome::Allow,
            DecisionOutcome::Deny,
            DecisionOutcome::Refused,
        ] {
            let _ = self.decisions.get_or_create(&DecisionLabels { decision });
        }
        for outcome in [ReloadOutcome::Applied, ReloadOutcome::Failed] {
            let _ = self.policy_set_reloads.get_or_create(&ReloadLabels { outcome });
        }
    }
}

impl Metrics {
    /// Counts a policy decision.
    pub fn decision(&self, decision: DecisionOutcome) {
        self.authz
            .decisions
            .get_or_create(&DecisionLabels { decision })
            .inc();
    }

    /// Counts a reload of the Cedar policy set.
    pub fn policy_set_reload(&self, outcome: ReloadOutcome) {
        self.authz
            .policy_set_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }
}

// --- end of policy decisions.

// --- Fleet mode (a SPIRE Server's node agent).

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    outcome: SyncOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum SyncOutcome {
    Ok,
    Failed,
}

/// The fleet mode metrics, registered with the others.
#[derive(Default)]
struct FleetMetrics {
    syncs: Family<SyncLabels, Counter>,
    entries: Gauge,
    unmatchable: Gauge,
    unowned: Gauge,
}

impl FleetMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "fleet_syncs",
            "Sync rounds with the SPIRE Server (entries, bundle), by outcome",
            self.syncs.clone(),
        );
        registry.register(
            "fleet_entries",
            "SPIRE Server entries served, as of the last sync",
            self.entries.clone(),
        );
        registry.register(
            "fleet_entries_unmatchable",
            "SPIRE Server entries not served because attestd never produces one of their selectors (k8s:, docker:, ...)",
            self.unmatchable.clone(),
        );
        registry.register(
            "fleet_entries_unowned",
            "SPIRE Server entries served with no owner mapped by [server] owners",
            self.unowned.clone(),
        );
    }
}

impl Metrics {
    /// Counts a sync round with the SPIRE Server.
    pub fn fleet_sync(&self, ok: bool) {
        let outcome = if ok { SyncOutcome::Ok } else { SyncOutcome::Failed };
        self.fleet.syncs.get_or_create(&SyncLabels { outcome }).inc();
    }

    /// Sets the counts of the last sync's entries.
    pub fn fleet_entries(&self, served: usize, unmatchable: usize, unowned: usize) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.fleet.entries.set(gauge(served));
        self.fleet.unmatchable.set(gauge(unmatchable));
        self.fleet.unowned.set(gauge(unowned));
    }
}

// --- end of fleet mode.

/// Every metric attestd exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    attestation_seconds: Histogram,
    minted: Family<KindLabels, Counter>,
    rotations: Counter,
    open_streams: Gauge,
    policy_reloads: Family<ReloadLabels, Counter>,
    audit_write_failures: Counter,
    audit_trail_failing: Gauge,
    rotation_failures: Family<CredentialLabels, Counter>,
    rotation_failing: Family<CredentialLabels, Gauge>,
    // Audit flooding: label values come from the fixed set of RPC names.
    audit_denials_suppressed: Family<RpcLabels, Counter>,
    audit_records_truncated: Counter,
    limits: LimitMetrics,
    authz: AuthzMetrics,
    fleet: FleetMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("attestd");
        let metrics = Self {
            requests: Family::default(),
            // 50 µs .. ~3 s.
            attestation_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            minted: Family::default(),
            rotations: Counter::default(),
            open_streams: Gauge::default(),
            policy_reloads: Family::default(),
            audit_write_failures: Counter::default(),
            audit_trail_failing: Gauge::default(),
            rotation_failures: Family::default(),
            rotation_failing: Family::default(),
            audit_denials_suppressed: Family::default(),
            audit_records_truncated: Counter::default(),
            limits: LimitMetrics::default(),
            authz: AuthzMetrics::default(),
            fleet: FleetMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Workload API requests by RPC and gRPC status code",
            metrics.requests.clone(),
        );
        registry.register(
            "attestation_seconds",
            "Time to attest a caller",
            metrics.attestation_seconds.clone(),
        );
        registry.register("svids_minted", "SVIDs minted, by kind", metrics.minted.clone());
        registry.register(
            "x509_svid_rotations",
            "X.509-SVIDs renewed by rotation",
            metrics.rotations.clone(),
        );
        registry.register(
            "open_streams",
            "Open Workload API streams",
            metrics.open_streams.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reloads by outcome",
            metrics.policy_reloads.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit records that could not be written",
            metrics.audit_write_failures.clone(),
        );
        registry.register(
            "audit_trail_failing",
            "1 while the audit trail cannot be written (from a failed write until one succeeds); with on_failure = refuse, decisions are refused meanwhile and grpc.health.v1 and /ready report not serving",
            metrics.audit_trail_failing.clone(),
        );
        registry.register(
            "authority_rotation_failures",
            "Failed attempts to rotate a signing credential or re-read the upstream CA files, by credential (the current one keeps signing)",
            metrics.rotation_failures.clone(),
        );
        registry.register(
            "authority_rotation_failing",
            "1 while the last attempt to rotate a signing credential or re-read the upstream CA files failed, by credential",
            metrics.rotation_failing.clone(),
        );
        registry.register(
            "audit_denials_suppressed",
            "Denial records of callers without an identity left out by the per-uid rate limit (summarised per window), by RPC",
            metrics.audit_denials_suppressed.clone(),
        );
        registry.register(
            "audit_records_truncated",
            "Audit records whose caller-controlled values were shortened to bound their size",
            metrics.audit_records_truncated.clone(),
        );
        metrics.limits.register(&mut registry);
        metrics.authz.register(&mut registry);
        metrics.fleet.register(&mut registry);
        // Every label value is exported from the start, at zero.
        for kind in [SvidKind::X509, SvidKind::Jwt] {
            let _ = metrics.minted.get_or_create(&KindLabels { kind });
        }
        for credential in [Credential::X509Ca, Credential::JwtKeys] {
            let _ = metrics
                .rotation_failures
                .get_or_create(&CredentialLabels { credential });
            let _ = metrics
                .rotation_failing
                .get_or_create(&CredentialLabels { credential });
        }
        for outcome in [
            ReloadOutcome::Applied,
            ReloadOutcome::Unchanged,
            ReloadOutcome::Failed,
        ] {
            let _ = metrics.policy_reloads.get_or_create(&ReloadLabels { outcome });
        }
        Self { registry, ..metrics }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts a request's outcome.
    pub fn request(&self, rpc: &str, code: tonic::Code) {
        let labels = RequestLabels {
            rpc: rpc.to_owned(),
            code: format!("{code:?}"),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// Records how long an attestation took.
    pub fn attestation(&self, elapsed: Duration) {
        self.attestation_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts a minted X.509-SVID.
    pub fn x509_minted(&self, by_rotation: bool) {
        self.minted
            .get_or_create(&KindLabels { kind: SvidKind::X509 })
            .inc();
        if by_rotation {
            self.rotations.inc();
        }
    }

    /// Counts a minted JWT-SVID.
    pub fn jwt_minted(&self) {
        self.minted
            .get_or_create(&KindLabels { kind: SvidKind::Jwt })
            .inc();
    }

    /// A stream opened (`+1`) or closed (`-1`).
    pub fn streams(&self, delta: i64) {
        self.open_streams.inc_by(delta);
    }

    /// Counts a policy reload.
    pub fn policy_reload(&self, outcome: ReloadOutcome) {
        self.policy_reloads.get_or_create(&ReloadLabels { outcome }).inc();
    }

    /// Counts audit records that could not be written.
    pub fn audit_failure(&self, records: usize) {
        self.audit_write_failures.inc_by(records as u64);
    }

    /// The audit trail started failing (`true`) or was written again.
    pub fn audit_trail_failing(&self, failing: bool) {
        self.audit_trail_failing.set(i64::from(failing));
    }

    /// The outcome of an attempt to rotate `credential` (or re-read the
    /// upstream CA files).
    pub fn rotation(&self, credential: Credential, ok: bool) {
        let labels = CredentialLabels { credential };
        if !ok {
            self.rotation_failures.get_or_create(&labels).inc();
        }
        self.rotation_failing.get_or_create(&labels).set(i64::from(!ok));
    }

    /// Counts a denial record left out by the rate limit.
    pub fn audit_denial_suppressed(&self, rpc: &'static str) {
        self.audit_denials_suppressed
            .get_or_create(&RpcLabels { rpc: rpc.to_owned() })
            .inc();
    }

    /// Counts a record whose values were shortened.
    pub fn audit_record_truncated(&self) {
        self.audit_records_truncated.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_family() {
        let m = metrics();
        m.request("FetchX509SVID", tonic::Code::Ok);
        m.attestation(Duration::from_micros(300));
        m.x509_minted(true);
        m.policy_reload(ReloadOutcome::Failed);
        m.audit_denial_suppressed("FetchJWTSVID");
        let text = m.encode();
        for name in [
            "attestd_requests_total{rpc=\"FetchX509SVID\",code=\"Ok\"}",
            "attestd_attestation_seconds_bucket",
            "attestd_svids_minted_total{kind=\"X509\"}",
            "attestd_x509_svid_rotations_total",
            "attestd_open_streams",
            "attestd_policy_reloads_total{outcome=\"Failed\"}",
            "attestd_audit_write_failures_total",
            "attestd_audit_denials_suppressed_total{rpc=\"FetchJWTSVID\"}",
            "attestd_audit_records_truncated_total",
            "attestd_open_connections",
            "attestd_connections_refused_total{reason=\"Reserve\"}",
            "attestd_connections_timed_out_total",
            "attestd_header_lists_refused_total",
            "attestd_authz_decisions_total{decision=\"Refused\"}",
            "attestd_authz_policy_reloads_total{outcome=\"Failed\"}",
            "attestd_audit_trail_failing",
            "attestd_authority_rotation_failures_total{credential=\"JwtKeys\"}",
            "attestd_authority_rotation_failing{credential=\"X509Ca\"}",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}

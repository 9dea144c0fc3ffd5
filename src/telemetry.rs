//! Observability: logs (`tracing` to stderr, which journald collects),
//! Prometheus metrics, the optional loopback health/metrics listener, and
//! systemd readiness and watchdog notifications. Never log keys or tokens.

mod health;
mod metrics;
mod systemd;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub(crate) use health::BoundedListener;
pub use health::{HealthError, Readiness, serve as serve_health};
pub use metrics::{ConnectionRefusal, Credential, DecisionOutcome, Metrics, ReloadOutcome, metrics};
pub use systemd::{notify_ready, notify_stopping, run_watchdog};

/// Installs the global subscriber: level from `RUST_LOG`, `info` by default.
/// Safe to call more than once (later calls keep the first subscriber).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

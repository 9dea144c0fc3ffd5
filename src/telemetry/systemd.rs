//! systemd integration (`Type=notify`): READY=1 once the socket accepts,
//! STOPPING=1 on shutdown, and watchdog keep-alives at half the interval
//! the unit asks for. Outside systemd (no NOTIFY_SOCKET) all are no-ops.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon is ready: the socket is bound and listening.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// Sends WATCHDOG=1 at half the unit's `WatchdogSec` for as long as the
/// runtime keeps scheduling this task; returns at once if no watchdog is
/// configured.
pub async fn run_watchdog() {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec) / 2;
    tracing::info!(?period, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

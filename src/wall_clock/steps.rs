//! Noticing clock steps as they happen: a `CLOCK_REALTIME` timerfd armed
//! for the far future with `TFD_TIMER_CANCEL_ON_SET` is cancelled by the
//! kernel whenever the clock is set discontinuously (`clock_settime`,
//! `settimeofday`, an NTP step, and on resume from suspend); its read then
//! returns.

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// Far enough ahead never to fire: the last second attestd records.
const NEVER: TimeSpec = TimeSpec::new(super::MAX_UNIX_SECONDS as i64, 0);

/// Starts waking every wall-clock sleeper at each clock step, until the
/// process ends, on a thread of its own (it blocks in `read`). Without a
/// timerfd (a seccomp filter, an old kernel) it says so: sleepers still
/// re-read the clock every 30 s.
pub fn watch_steps() {
    #[cfg(feature = "test-hooks")]
    tokio::spawn(super::test_offset::follow());
    let started = std::thread::Builder::new().name("clock-steps".into()).spawn(|| {
        if let Err(error) = follow_kernel() {
            tracing::warn!(%error, "cannot watch for wall-clock steps; a step is noticed within 30 s");
        }
    });
    if let Err(error) = started {
        tracing::warn!(%error, "cannot watch for wall-clock steps; a step is noticed within 30 s");
    }
}

fn follow_kernel() -> nix::Result<()> {
    let timer = TimerFd::new(ClockId::CLOCK_REALTIME, TimerFlags::TFD_CLOEXEC)?;
    loop {
        // Arming clears a cancellation.
        timer.set(
            Expiration::OneShot(NEVER),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
        )?;
        // Returns when cancelled by a step (or in the year 9999).
        timer.wait()?;
        tracing::info!(now = %crate::audit::rfc3339(super::now()), "wall clock stepped; deadlines checked again");
        super::stepped();
    }
}

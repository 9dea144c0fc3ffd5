//! The wall clock: certificate, key and token lifetimes, owners' terms and
//! audit times are all wall time, read here ([`now`]).
//!
//! Waiting for a wall-clock deadline needs care: tokio's timers are
//! monotonic, stop while the host is suspended, and do not move when the
//! clock is stepped (an NTP step, an operator's `date -s`, a VM restored
//! from a snapshot). [`sleep_until`] therefore sleeps in bounded slices and
//! re-reads the clock, and wakes at once when the kernel reports a step
//! ([`steps`]): after a step forward a rotation that is now due happens at
//! once, and after a step back a deadline that depends on the time is
//! worked out again ([`sleep_until_due`]): an SVID, root or key made "in
//! the future" is due at once.

mod steps;
#[cfg(feature = "test-hooks")]
mod test_offset;

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

pub use steps::watch_steps;

/// The longest single sleep before the wall clock is read again.
const MAX_SLICE: Duration = Duration::from_secs(30);

/// How far the clock may step back before credentials made just before the
/// step count as made in the future: what certificates are backdated by.
pub const STEP_TOLERANCE: Duration = Duration::from_secs(60);

/// Counts the clock steps seen; every wall-clock sleeper watches it.
static STEPS: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// The time now.
pub fn now() -> SystemTime {
    #[cfg(feature = "test-hooks")]
    return test_offset::offset(SystemTime::now());
    #[cfg(not(feature = "test-hooks"))]
    SystemTime::now()
}

/// `time` moved by `seconds` (unchanged if that leaves `SystemTime`'s
/// range): the clocks tests offset (this one's, and the owners').
pub fn shift(time: SystemTime, seconds: i64) -> SystemTime {
    let by = Duration::from_secs(seconds.unsigned_abs());
    match seconds >= 0 {
        true => time.checked_add(by),
        false => time.checked_sub(by),
    }
    .unwrap_or(time)
}

/// Wakes every wall-clock sleeper: the clock was stepped.
fn stepped() {
    STEPS.send_modify(|count| *count = count.wrapping_add(1));
}

/// Sleeps until the wall clock reaches `deadline` (returns at once if it has).
pub async fn sleep_until(deadline: SystemTime) {
    sleep_until_due(|_| deadline).await;
}

/// Sleeps until the wall clock reaches `due(now)`, asked again (with the
/// time then) whenever the clock steps, so a deadline worked out from the
/// time it was set is set again from the new time.
pub async fn sleep_until_due(mut due: impl FnMut(SystemTime) -> SystemTime) {
    let mut steps = STEPS.subscribe();
    let mut deadline = due(now());
    while let Ok(left) = deadline.duration_since(now()) {
        if left.is_zero() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(left.min(MAX_SLICE)) => {}
            _ = steps.changed() => deadline = due(now()),
        }
    }
}

/// Whole seconds since the Unix epoch (0 before it).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z), and so the
/// latest time attestd records.
pub const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

/// The time `seconds` after the Unix epoch, at most [`MAX_UNIX_SECONDS`]:
/// the seconds come from files and tokens (a `exp` claim, a corrupt
/// `ca.json`), and a larger value would overflow `SystemTime` (a panic)
/// or could not be written in the audit trail.
pub fn from_unix_seconds(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.min(MAX_UNIX_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_past_the_year_9999_are_its_last_second() {
        assert_eq!(unix_seconds(from_unix_seconds(u64::MAX)), MAX_UNIX_SECONDS);
        assert_eq!(
            unix_seconds(from_unix_seconds(i64::MAX as u64 + 1)),
            MAX_UNIX_SECONDS
        );
        assert_eq!(unix_seconds(from_unix_seconds(4_102_444_800)), 4_102_444_800);
    }

    #[test]
    fn shifts_both_ways_and_saturates_at_the_range() {
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(shift(epoch, 10), epoch + Duration::from_secs(10));
        assert_eq!(shift(epoch, -10), epoch - Duration::from_secs(10));
        assert_eq!(shift(epoch, i64::MAX), epoch, "out of range: unchanged");
        let t = SystemTime::now();
        assert_eq!(shift(shift(t, 86_400), -86_400), t, "a shift back undoes it");
    }

    #[tokio::test]
    async fn a_step_asks_for_the_deadline_again() {
        let far = now() + Duration::from_secs(3600);
        let mut asked = 0;
        let sleeper = sleep_until_due(move |now| {
            asked += 1;
            // The second time (after the step) the deadline has passed.
            if asked == 1 { far } else { now }
        });
        tokio::pin!(sleeper);
        assert!(futures::poll!(sleeper.as_mut()).is_pending());
        stepped();
        tokio::time::timeout(Duration::from_secs(1), sleeper)
            .await
            .expect("woken by the step");
    }
}

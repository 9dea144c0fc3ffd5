//! The clock owners' terms are judged by. A term ends at a UTC midnight, so
//! this is the wall clock; each admission reads it afresh, so an entry stops
//! granting the moment its term ends, with no reload.
//!
//! Built with the `test-hooks` feature (never in a deployed build), it adds
//! `ATTESTD_TEST_OWNER_CLOCK_OFFSET_SECS` (signed seconds) to the wall clock,
//! so end-to-end tests can bring a term to its end without waiting for
//! midnight. Only owners' terms see the offset: certificates, tokens and
//! rotation keep the true time, and [`to_wall`] converts between the two.

use std::time::{Duration, SystemTime};

use crate::wall_clock;

/// The time on the owners' clock.
pub fn now() -> SystemTime {
    shift(crate::wall_clock::now(), offset_secs())
}

/// The wall-clock time at which the owners' clock reads `time`.
pub fn to_wall(time: SystemTime) -> SystemTime {
    shift(time, offset_secs().saturating_neg())
}

/// Sleeps until the owners' clock reaches `time` (at once if it has).
pub async fn sleep_until(time: SystemTime) {
    wall_clock::sleep_until(to_wall(time)).await;
}

/// `time` moved by `seconds` (unchanged if that leaves `SystemTime`'s range).
fn shift(time: SystemTime, seconds: i64) -> SystemTime {
    let by = Duration::from_secs(seconds.unsigned_abs());
    match seconds >= 0 {
        true => time.checked_add(by),
        false => time.checked_sub(by),
    }
    .unwrap_or(time)
}

#[cfg(feature = "test-hooks")]
fn offset_secs() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("ATTESTD_TEST_OWNER_CLOCK_OFFSET_SECS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    })
}

#[cfg(not(feature = "test-hooks"))]
fn offset_secs() -> i64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_both_ways_and_saturates_at_the_range() {
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(shift(epoch, 10), epoch + Duration::from_secs(10));
        assert_eq!(shift(epoch, -10), epoch - Duration::from_secs(10));
        assert_eq!(shift(epoch, i64::MAX), epoch, "out of range: unchanged");
        let t = SystemTime::now();
        assert_eq!(shift(shift(t, 86_400), -86_400), t, "to_wall undoes the offset");
    }
}

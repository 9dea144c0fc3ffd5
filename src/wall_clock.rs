//! Waiting for wall-clock deadlines. Certificate and key lifetimes are wall
//! time, but tokio's timers are monotonic and stop while the host is
//! suspended; sleeping in bounded slices and re-reading the wall clock
//! notices a jump instead of oversleeping an expiry.

use std::time::{Duration, SystemTime};

/// The longest single sleep before the wall clock is read again.
const MAX_SLICE: Duration = Duration::from_secs(30);

/// Sleeps until the wall clock reaches `deadline` (returns at once if it has).
pub async fn sleep_until(deadline: SystemTime) {
    while let Ok(left) = deadline.duration_since(SystemTime::now()) {
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLICE)).await;
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
}

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

/// The time `seconds` after the Unix epoch.
pub fn from_unix_seconds(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

//! The clock owners' terms are judged by. A term ends at a UTC midnight, so
//! this is the wall clock; each admission reads it afresh, so an entry stops
//! granting the moment its term ends, with no reload.
//!
//! Built with the `test-hooks` feature (never in a deployed build), it adds
//! `ATTESTD_TEST_OWNER_CLOCK_OFFSET_SECS` (signed seconds) to the wall clock,
//! so end-to-end tests can bring a term to its end without waiting for
//! midnight. Only owners' terms see the offset: certificates, tokens and
//! rotation keep the true time, and [`to_wall`] converts between the two.

use std::time::SystemTime;

use crate::wall_clock;

/// The time on the owners' clock.
pub fn now() -> SystemTime {
    wall_clock::shift(wall_clock::now(), offset_secs())
}

/// The wall-clock time at which the owners' clock reads `time`.
pub fn to_wall(time: SystemTime) -> SystemTime {
    wall_clock::shift(time, offset_secs().saturating_neg())
}

/// Sleeps until the owners' clock reaches `time` (at once if it has).
pub async fn sleep_until(time: SystemTime) {
    wall_clock::sleep_until(to_wall(time)).await;
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

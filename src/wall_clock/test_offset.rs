//! Test-only clock steps, compiled in with the `test-hooks` feature (the
//! test command enables it; release builds never have it). The host's
//! clock cannot be stepped under a running test suite, so end-to-end tests
//! step attestd's instead: `ATTESTD_TEST_WALL_CLOCK_FILE` names a file
//! holding signed seconds added to the wall clock. It is read at start,
//! then polled; a change is a step, announced as the kernel's are.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

const VARIABLE: &str = "ATTESTD_TEST_WALL_CLOCK_FILE";
const POLL: Duration = Duration::from_millis(50);

/// Seconds added to the wall clock; `i64::MIN` until the file is first read.
static OFFSET: AtomicI64 = AtomicI64::new(i64::MIN);

/// `time` with the offset added.
pub fn offset(time: SystemTime) -> SystemTime {
    let mut seconds = OFFSET.load(Ordering::Relaxed);
    if seconds == i64::MIN {
        seconds = read();
        OFFSET.store(seconds, Ordering::Relaxed);
    }
    super::shift(time, seconds)
}

/// Polls the file until the process ends, announcing each change.
pub async fn follow() {
    if std::env::var_os(VARIABLE).is_none() {
        return;
    }
    loop {
        tokio::time::sleep(POLL).await;
        let seconds = read();
        if OFFSET.swap(seconds, Ordering::Relaxed) != seconds {
            tracing::info!(offset_secs = seconds, "test: wall clock stepped");
            super::stepped();
        }
    }
}

/// The file's offset; 0 without the variable or a readable number.
fn read() -> i64 {
    std::env::var_os(VARIABLE)
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

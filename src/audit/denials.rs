//! The rate limit on denial records of callers that hold no identity.
//!
//! Any local process can ask and be refused, as often as it likes; one
//! record per refusal would let it bury the decisions that matter. So per
//! uid, the first `per_uid` such records of a window are written one by one
//! (responders see who, which process, what it asked), and the rest are only
//! counted: at the end of the window one `suppressed` record per uid gives
//! their number, RPCs and reasons. Issuances, validations and policy
//! decisions about callers that hold an identity never come through here.
//!
//! Windows are fixed: they all end together on a timer, which also writes
//! the summaries when the flood has stopped. The limiter's memory is bounded:
//! at most `tracked_uids` uids are counted one by one per window; callers of
//! any further uid (and of no known uid) share one more bucket.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::bound::{MAX_VALUE_BYTES, shorten};
use super::{Outcome, Record, rfc3339};

/// Distinct reasons a summary names; further ones are counted together.
const MAX_REASONS: usize = 8;
/// The key that counts them.
const OTHER_REASONS: &str = "(other reasons)";
/// The `rpc` of a summary, which may cover several RPCs.
const ANY_RPC: &str = "*";

/// How many denial records of callers without an identity are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenialLimit {
    /// Records written per uid per window; the rest are summarised.
    pub per_uid: u32,
    /// The window.
    pub window: Duration,
    /// Uids counted one by one per window; further uids share one bucket.
    pub tracked_uids: usize,
}

impl Default for DenialLimit {
    fn default() -> Self {
        Self {
            per_uid: 20,
            window: Duration::from_secs(60),
            tracked_uids: 1024,
        }
    }
}

/// What a `suppressed` record stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DenialSummary {
    /// Denial records left out.
    pub count: u64,
    /// When the window began (RFC 3339); it ends at the record's `time`.
    pub since: String,
    /// How many of them each RPC had.
    pub rpcs: BTreeMap<&'static str, u64>,
    /// How many had each reason (bounded values; at most eight distinct,
    /// the rest under "(other reasons)").
    pub reasons: BTreeMap<String, u64>,
}

/// Counts denials per uid within the current window.
#[derive(Debug)]
pub(super) struct DenialLimiter {
    limit: DenialLimit,
    // std Mutex: held for a map lookup, never across an await.
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    since: SystemTime,
    uids: HashMap<u32, Bucket>,
    /// Uids beyond `tracked_uids`, and callers whose uid is unknown.
    untracked: Bucket,
}

#[derive(Debug, Default)]
struct Bucket {
    written: u32,
    suppressed: u64,
    rpcs: BTreeMap<&'static str, u64>,
    reasons: BTreeMap<String, u64>,
}

impl DenialLimiter {
    pub fn new(limit: DenialLimit) -> Self {
        Self {
            limit,
            window: Mutex::new(Window::new()),
        }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.limit.window
    }

    /// Whether this denial record is to be written; if not, it is counted
    /// for the window's summary.
    pub fn admit(&self, record: &Record) -> bool {
        let mut window = self.lock();
        let bucket = window.bucket(record.uid, self.limit.tracked_uids);
        if bucket.written < self.limit.per_uid {
            bucket.written += 1;
            return true;
        }
        bucket.suppress(record);
        false
    }

    /// Ends the window and starts the next: one summary record per uid (and
    /// for the untracked bucket) that had denials suppressed.
    pub fn end_window(&self) -> Vec<Record> {
        let ended = std::mem::replace(&mut *self.lock(), Window::new());
        let since = rfc3339(ended.since);
        let mut summaries: Vec<Record> = ended
            .uids
            .into_iter()
            .filter(|(_, bucket)| bucket.suppressed > 0)
            .map(|(uid, bucket)| self.summary(Some(uid), bucket, &since))
            .collect();
        summaries.sort_by_key(|record| record.uid);
        if ended.untracked.suppressed > 0 {
            summaries.push(self.summary(None, ended.untracked, &since));
        }
        summaries
    }

    fn summary(&self, uid: Option<u32>, bucket: Bucket, since: &str) -> Record {
        let whose = match uid {
            Some(uid) => format!("uid {uid}"),
            None => format!(
                "callers beyond the {} uids tracked per window, or of no known uid",
                self.limit.tracked_uids
            ),
        };
        let reason = format!(
            "{} denial records of {whose} left out by the rate limit ({} per uid per {})",
            bucket.suppressed,
            self.limit.per_uid,
            humantime::format_duration(self.limit.window)
        );
        let mut record = Record::new(ANY_RPC, Outcome::Suppressed, reason, None);
        record.uid = uid;
        record.suppressed = Some(DenialSummary {
            count: bucket.suppressed,
            since: since.to_owned(),
            rpcs: bucket.rpcs,
            reasons: bucket.reasons,
        });
        record
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // Counters only: a panic mid-update leaves them usable.
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Window {
    fn new() -> Self {
        Self {
            since: crate::wall_clock::now(),
            uids: HashMap::new(),
            untracked: Bucket::default(),
        }
    }

    fn bucket(&mut self, uid: Option<u32>, tracked_uids: usize) -> &mut Bucket {
        match uid {
            Some(uid) if self.uids.len() < tracked_uids || self.uids.contains_key(&uid) => {
                self.uids.entry(uid).or_default()
            }
            _ => &mut self.untracked,
        }
    }
}

impl Bucket {
    fn suppress(&mut self, record: &Record) {
        self.suppressed += 1;
        *self.rpcs.entry(record.rpc).or_default() += 1;
        let reason = shorten(&record.reason, MAX_VALUE_BYTES).unwrap_or_else(|| record.reason.clone());
        let key = match self.reasons.contains_key(&reason) || self.reasons.len() < MAX_REASONS {
            true => reason,
            false => OTHER_REASONS.to_owned(),
        };
        *self.reasons.entry(key).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(uid: Option<u32>, rpc: &'static str, reason: &str) -> Record {
        let mut record = Record::new(rpc, Outcome::Denied, reason, None);
        record.uid = uid;
        record
    }

    fn limiter(per_uid: u32, tracked_uids: usize) -> DenialLimiter {
        DenialLimiter::new(DenialLimit {
            per_uid,
            window: Duration::from_secs(60),
            tracked_uids,
        })
    }

    #[test]
    fn writes_the_first_of_each_uid_then_summarises_the_rest() {
        let limiter = limiter(3, 16);
        let admitted: Vec<bool> = (0..10)
            .map(|i| {
                let rpc = if i % 2 == 0 {
                    "FetchJWTSVID"
                } else {
                    "ValidateJWTSVID"
                };
                limiter.admit(&denial(
                    Some(1000),
                    rpc,
                    "no registration entry matches the caller",
                ))
            })
            .collect();
        assert_eq!(admitted.iter().filter(|a| **a).count(), 3);
        assert!(admitted[..3].iter().all(|a| *a));
        // Another uid has its own allowance.
        assert!(limiter.admit(&denial(Some(1001), "FetchX509SVID", "x")));

        let summaries = limiter.end_window();
        assert_eq!(summaries.len(), 1);
        let summary = &summaries[0];
        assert_eq!(
            (summary.outcome, summary.rpc, summary.uid),
            (Outcome::Suppressed, "*", Some(1000))
        );
        let counts = summary.suppressed.as_ref().unwrap();
        assert_eq!(counts.count, 7);
        assert_eq!(counts.rpcs["FetchJWTSVID"] + counts.rpcs["ValidateJWTSVID"], 7);
        assert_eq!(counts.reasons["no registration entry matches the caller"], 7);
        assert!(
            summary.reason.starts_with("7 denial records of uid 1000"),
            "{}",
            summary.reason
        );

        // A new window: the allowance is back, nothing left to summarise.
        assert!(limiter.admit(&denial(Some(1000), "FetchJWTSVID", "x")));
        assert!(limiter.end_window().is_empty());
    }

    #[test]
    fn memory_is_bounded_by_the_tracked_uids() {
        let limiter = limiter(1, 4);
        for uid in 0..10_000 {
            limiter.admit(&denial(Some(uid), "FetchX509SVID", &format!("reason {uid}")));
        }
        limiter.admit(&denial(None, "FetchX509SVID", "unknown caller"));
        {
            let window = limiter.lock();
            assert_eq!(window.uids.len(), 4);
            assert_eq!(window.untracked.reasons.len(), MAX_REASONS + 1);
        }
        let summaries = limiter.end_window();
        assert_eq!(summaries.len(), 1);
        let untracked = &summaries[0];
        assert_eq!(untracked.uid, None);
        let counts = untracked.suppressed.as_ref().unwrap();
        // The shared bucket wrote one record (its allowance), like a uid.
        assert_eq!(counts.count, 10_000 - 4 + 1 - 1);
        assert_eq!(counts.reasons[OTHER_REASONS], counts.count - MAX_REASONS as u64);
    }

    #[test]
    fn reasons_are_bounded() {
        let limiter = limiter(0, 4);
        limiter.admit(&denial(Some(7), "ValidateJWTSVID", &"k".repeat(100_000)));
        let summary = limiter.end_window().remove(0);
        let reasons = summary.suppressed.unwrap().reasons;
        assert!(reasons.keys().all(|k| k.len() <= MAX_VALUE_BYTES), "{reasons:?}");
    }
}

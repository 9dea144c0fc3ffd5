//! The descriptor limit. Every Workload API connection holds two
//! descriptors (its socket and a pidfd), and the soft RLIMIT_NOFILE that
//! processes inherit is often 1024 (systemd's default for services), which
//! a few local users at their connection caps would exhaust. attestd uses
//! no `select(2)`, so it may take the whole hard limit.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// What is assumed when the limit cannot even be read: the usual default.
const ASSUMED_SOFT_LIMIT: u64 = 1024;

/// Raises the soft RLIMIT_NOFILE to the hard limit, logs the outcome, and
/// returns the soft limit in effect. A failure to raise it is logged and
/// leaves the limit as it was (under the shipped unit, `LimitNOFILE=` has
/// set both already, and the system call filter refuses `setrlimit`).
pub fn raise_to_hard_limit() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, assumed = ASSUMED_SOFT_LIMIT, "cannot read RLIMIT_NOFILE");
            return ASSUMED_SOFT_LIMIT;
        }
    };
    if soft >= hard {
        tracing::info!(
            nofile = soft,
            "descriptor limit (RLIMIT_NOFILE) already at its hard limit"
        );
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = hard,
                "raised the descriptor limit (RLIMIT_NOFILE) to its hard limit"
            );
            hard
        }
        Err(error) => {
            tracing::warn!(%error, soft, hard, "could not raise the descriptor limit (RLIMIT_NOFILE); keeping it");
            soft
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_at_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(raise_to_hard_limit(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}

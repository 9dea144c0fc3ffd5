//! attestd's configuration file (`Config::parse`, from text: nothing on
//! the host is read). Never panics; an error names the file and a line
//! that exists; what loads keeps the rules the loader promises (entries of
//! the trust domain, never without selectors, federating only with
//! configured trust domains), and every lifetime it accepts can be added to
//! the clock and written in the audit trail.
#![no_main]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attestd::audit::rfc3339;
use attestd::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/etc/attestd/attestd.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new(PATH), text) {
        Ok(config) => {
            let federated = config.federated_trust_domains();
            for entry in &config.entries {
                assert!(entry.spiffe_id.belongs_to(&config.trust_domain));
                assert!(!entry.selectors.is_empty());
                assert!(entry.federates_with.windows(2).all(|w| w[0] < w[1]));
                assert!(entry.federates_with.iter().all(|td| federated.contains(td)));
                for ttl in [entry.x509_ttl, entry.jwt_ttl].into_iter().flatten() {
                    representable(ttl.0);
                }
                if let Some(tasks) = &entry.tasks {
                    representable(tasks.max_ttl);
                }
            }
            for ttl in [
                config.svid.x509_ttl,
                config.svid.jwt_ttl,
                config.ca.ttl,
                config.ca.jwt_key_ttl,
            ] {
                representable(ttl.0);
            }
        }
        Err(error) => well_placed(&error, text),
    }
});

/// A lifetime from now can be computed, and recorded as it is: RFC 3339
/// writes years up to 9999.
fn representable(ttl: Duration) {
    let expiry = SystemTime::now()
        .checked_add(ttl)
        .expect("a TTL that overflows the clock");
    assert!(
        expiry < UNIX_EPOCH + Duration::from_secs(253_402_300_800),
        "a TTL past the year 9999"
    );
    let _ = rfc3339(expiry);
}

fn well_placed(error: &ConfigError, text: &str) {
    assert_eq!(error.file, Path::new(PATH));
    if let Some(line) = error.line {
        assert!(
            line >= 1 && line <= text.lines().count().max(1) + 1,
            "line {line}"
        );
    }
    let _ = error.to_string();
}

//! A registration entry file of `entries_dir` (`parse_entries_file`, from
//! text). Never panics; an error names the file and a line that exists;
//! entries that load belong to the trust domain, have selectors (each of
//! which prints back as it parses), and federate only with configured
//! trust domains.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use attestd::config::parse_entries_file;
use attestd::selector::Selector;
use attestd::spiffe_id::TrustDomain;
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/etc/attestd/entries.d/team.toml";
static TRUST_DOMAIN: LazyLock<TrustDomain> = LazyLock::new(|| TrustDomain::new("example.org").unwrap());
static FEDERATED: LazyLock<Vec<TrustDomain>> =
    LazyLock::new(|| vec![TrustDomain::new("partner.test").unwrap()]);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_entries_file(Path::new(PATH), text, &TRUST_DOMAIN, &FEDERATED) {
        Ok(entries) => {
            for entry in &entries {
                assert!(entry.spiffe_id.belongs_to(&TRUST_DOMAIN));
                assert!(!entry.selectors.is_empty());
                for selector in &entry.selectors {
                    assert_eq!(&Selector::parse(&selector.to_string()).unwrap(), selector);
                }
                assert!(entry.federates_with.iter().all(|td| FEDERATED.contains(td)));
            }
        }
        Err(error) => {
            assert_eq!(error.file, Path::new(PATH));
            if let Some(line) = error.line {
                assert!(
                    line >= 1 && line <= text.lines().count().max(1) + 1,
                    "line {line}"
                );
            }
        }
    }
});

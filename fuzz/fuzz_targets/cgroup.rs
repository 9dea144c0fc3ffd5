//! `/proc/<pid>/cgroup` contents: parsing must never panic, and any
//! container id it concludes is 64 lowercase hex.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(facts) = attestd::attest::parse_cgroup(text)
        && let Some(id) = facts.container_id
    {
        assert!(
            id.len() == 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
});

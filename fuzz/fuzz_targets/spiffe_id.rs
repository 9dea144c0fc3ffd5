//! SPIFFE IDs (from policy and from presented JWT `sub` claims): parsing
//! must never panic, and what parses prints back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = attestd::spiffe_id::SpiffeId::new(text)
    {
        assert_eq!(id.to_string(), text);
    }
});

//! Policy selectors: parsing must never panic, and what parses prints back
//! unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(selector) = attestd::selector::Selector::parse(text)
    {
        assert_eq!(selector.to_string(), text);
    }
});

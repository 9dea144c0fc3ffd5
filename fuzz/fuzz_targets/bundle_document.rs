//! A foreign trust domain's SPIFFE bundle document (a JWKS with
//! `x509-svid` and `jwt-svid` keys), as read from a `[[federation]]`
//! `bundle_file` or a bundle endpoint (`ForeignBundle::parse`). Never
//! panics. A document that loads survives a round trip through attestd's
//! own bundle document (the one it serves and writes to `bundle.json`):
//! the same JWT authorities, the same sequence, and X.509 authorities that
//! are the original's (less those whose key type a JWK cannot express).
#![no_main]

use std::time::Duration;

use attestd::authority::BundleDocument;
use attestd::federation::ForeignBundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = ForeignBundle::parse(data) else {
        return;
    };
    let hint = bundle.refresh_hint().unwrap_or(Duration::from_secs(300));
    let document = BundleDocument::new(bundle.x509(), bundle.jwt(), bundle.sequence().unwrap_or(0), hint);
    let again = ForeignBundle::parse(document.to_json().as_bytes()).expect("attestd's own document parses");
    assert_eq!(again.jwt(), bundle.jwt());
    assert_eq!(again.sequence(), Some(bundle.sequence().unwrap_or(0)));
    assert_eq!(again.refresh_hint(), Some(hint));
    let mut originals = bundle.x509().roots().iter();
    for root in again.x509().roots() {
        assert!(
            originals.any(|original| original == root),
            "an X.509 authority appeared"
        );
    }
});

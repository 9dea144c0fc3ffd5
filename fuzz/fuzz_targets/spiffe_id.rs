//! SPIFFE IDs and trust domain names (from policy, from presented JWT `sub`
//! claims, from bundle and federation settings): parsing never panics,
//! what parses prints back unchanged, and an ID belongs to the trust
//! domain it names.
#![no_main]

use attestd::spiffe_id::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::new(text) {
        assert_eq!(id.to_string(), text);
        let td = id.trust_domain();
        assert!(id.belongs_to(&td));
        assert_eq!(TrustDomain::new(td.name()).unwrap(), td);
        assert_eq!(format!("{}{}", td.id_string(), id.path()), text);
    }
    if let Ok(td) = TrustDomain::new(text) {
        assert_eq!(td.name(), text);
        assert_eq!(
            SpiffeId::new(&format!("{}/w", td.id_string()))
                .unwrap()
                .trust_domain(),
            td
        );
    }
});

//! An upstream CA's three PEM files (`[ca] cert_file`, `key_file`,
//! `bundle_file`), checked from text as loading them checks them
//! (`check_upstream_pem`). Input: the three files' contents separated by
//! NUL bytes. Never panics; a CA that loads signs with the first
//! certificate of `cert_file`, chains to the `bundle_file` roots it
//! publishes, and has an expiry the audit trail can write.
#![no_main]

use std::path::PathBuf;

use attestd::audit::rfc3339;
use attestd::authority::{UpstreamFiles, check_upstream_pem};
use attestd::spiffe_id::TrustDomain;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(cert), Some(key), Some(bundle)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let Ok(key) = String::from_utf8(key.to_vec()) else {
        return;
    };
    let files = UpstreamFiles {
        cert_file: PathBuf::from("/etc/attestd/upstream/intermediate.pem"),
        key_file: PathBuf::from("/etc/attestd/upstream/intermediate.key"),
        bundle_file: PathBuf::from("/etc/attestd/upstream/root.pem"),
    };
    let trust_domain = TrustDomain::new("example.org").unwrap();
    let Ok((signer, roots)) = check_upstream_pem(&files, cert, key, bundle, &trust_domain) else {
        return;
    };
    let certificates = |text: &[u8]| -> Vec<Vec<u8>> {
        pem::parse_many(text)
            .unwrap()
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(pem::Pem::into_contents)
            .collect()
    };
    let chain = certificates(cert);
    assert_eq!(signer.cert_der(), chain[0].as_slice());
    assert_eq!(signer.chain(), chain.as_slice());
    assert_eq!(roots, certificates(bundle));
    let _ = rfc3339(signer.not_after());
    let _ = rfc3339(signer.not_before());
});

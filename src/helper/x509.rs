//! The X.509 files' contents, as spiffe-helper writes them: the chosen SVID's
//! certificate chain, its PKCS#8 key, and the trust bundle, all PEM.

use crate::client::{pem_blocks, split_der};
use crate::proto::{X509svid, X509svidResponse};

use super::config::X509Output;

/// Why a response could not be turned into files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509Error {
    /// The response holds no SVID with the configured hint.
    #[error("no X.509-SVID has the hint {0:?}")]
    NoSvidWithHint(String),
    /// The response holds no SVID at all.
    #[error("the response holds no X.509-SVID")]
    NoSvid,
    /// The SVID's certificate chain is empty or unparseable.
    #[error("the X.509-SVID of {0} has no certificate")]
    EmptyChain(String),
}

/// The three PEM documents of one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Documents {
    /// The SVID's SPIFFE ID (for logs).
    pub spiffe_id: String,
    /// The leaf's serial, lowercase hex (for logs).
    pub serial: String,
    /// The certificate chain, leaf first.
    pub certificates: String,
    /// The private key, PKCS#8.
    pub key: String,
    /// The CA certificates.
    pub bundle: String,
}

/// Picks the SVID (by `hint`, else the default one) and renders its files.
pub fn render(
    response: &X509svidResponse,
    hint: Option<&str>,
    output: &X509Output,
) -> Result<X509Documents, X509Error> {
    let svid = select(response, hint)?;
    let chain = split_der(&svid.x509_svid);
    let Some(leaf) = chain.first() else {
        return Err(X509Error::EmptyChain(svid.spiffe_id.clone()));
    };
    let mut certificates = chain.clone();
    let mut bundle = split_der(&svid.bundle);
    if output.add_intermediates_to_bundle {
        bundle.extend(certificates.drain(1..));
    }
    if output.include_federated_domains {
        let mut federated: Vec<_> = response.federated_bundles.iter().collect();
        federated.sort_by(|a, b| a.0.cmp(b.0));
        for (_, der) in federated {
            bundle.extend(split_der(der));
        }
    }
    if output.omit_expired {
        // As spiffe-helper: an expired CA (or chain certificate) would only
        // make peers' verification slower or noisier.
        let now = std::time::SystemTime::now();
        certificates.retain(|der| !expired(der, now));
        bundle.retain(|der| !expired(der, now));
    }
    Ok(X509Documents {
        spiffe_id: svid.spiffe_id.clone(),
        serial: serial_hex(leaf),
        certificates: pem_blocks("CERTIFICATE", &certificates),
        key: pem_blocks("PRIVATE KEY", &[svid.x509_svid_key.as_slice()]),
        bundle: pem_blocks("CERTIFICATE", &bundle),
    })
}

fn select<'a>(response: &'a X509svidResponse, hint: Option<&str>) -> Result<&'a X509svid, X509Error> {
    match hint {
        Some(hint) => response
            .svids
            .iter()
            .find(|svid| svid.hint == hint)
            .ok_or_else(|| X509Error::NoSvidWithHint(hint.to_owned())),
        None => response.svids.first().ok_or(X509Error::NoSvid),
    }
}

/// Whether the certificate's notAfter has passed (an unparseable one is
/// kept: the client layer already split these as certificates).
fn expired(der: &[u8], now: std::time::SystemTime) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let now = crate::wall_clock::unix_seconds(now);
    X509Certificate::from_der(der)
        .is_ok_and(|(_, cert)| u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0) < now)
}

fn serial_hex(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .map(|(_, cert)| hex::encode(cert.raw_serial()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helper::config::FileOutput;

    fn cert(name: &str, ca: bool) -> Vec<u8> {
        cert_until(name, ca, 2100)
    }

    fn cert_until(name: &str, ca: bool, year: i32) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn output(add_intermediates_to_bundle: bool, include_federated_domains: bool) -> X509Output {
        output_omitting(add_intermediates_to_bundle, include_federated_domains, false)
    }

    fn output_omitting(
        add_intermediates_to_bundle: bool,
        include_federated_domains: bool,
        omit_expired: bool,
    ) -> X509Output {
        let file = |name: &str| FileOutput {
            name: name.into(),
            mode: 0o644,
        };
        X509Output {
            svid: file("svid.pem"),
            key: file("svid_key.pem"),
            bundle: file("svid_bundle.pem"),
            add_intermediates_to_bundle,
            include_federated_domains,
            omit_expired,
        }
    }

    fn response() -> X509svidResponse {
        let svid = |id: &str, hint: &str| X509svid {
            spiffe_id: id.into(),
            x509_svid: [cert("leaf", false), cert("intermediate", true)].concat(),
            x509_svid_key: b"key".to_vec(),
            bundle: cert("root", true),
            hint: hint.into(),
        };
        X509svidResponse {
            svids: vec![
                svid("spiffe://example.org/a", "a"),
                svid("spiffe://example.org/b", "b"),
            ],
            crl: vec![],
            federated_bundles: [("spiffe://other.org".to_owned(), cert("other root", true))].into(),
        }
    }

    fn count(pem: &str) -> usize {
        pem.matches("BEGIN CERTIFICATE").count()
    }

    #[test]
    fn default_svid_chain_key_and_bundle() {
        let docs = render(&response(), None, &output(false, false)).unwrap();
        assert_eq!(docs.spiffe_id, "spiffe://example.org/a");
        assert_eq!((count(&docs.certificates), count(&docs.bundle)), (2, 1));
        assert!(docs.key.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!docs.serial.is_empty());
    }

    #[test]
    fn hint_intermediates_and_federation() {
        let docs = render(&response(), Some("b"), &output(true, true)).unwrap();
        assert_eq!(docs.spiffe_id, "spiffe://example.org/b");
        assert_eq!((count(&docs.certificates), count(&docs.bundle)), (1, 3));
        assert_eq!(
            render(&response(), Some("c"), &output(false, false)),
            Err(X509Error::NoSvidWithHint("c".into()))
        );
    }

    #[test]
    fn omit_expired_drops_expired_certificates_from_every_file() {
        let mut response = response();
        response.svids[0].bundle = [cert("root", true), cert_until("old root", true, 2001)].concat();
        let kept = render(&response, None, &output_omitting(true, false, false)).unwrap();
        assert_eq!(count(&kept.bundle), 3);
        let omitted = render(&response, None, &output_omitting(true, false, true)).unwrap();
        assert_eq!(
            count(&omitted.bundle),
            2,
            "the expired root is gone, the intermediate stays"
        );
        assert_eq!(count(&omitted.certificates), 1);
    }
}

//! X.509-SVID minting, shaped by what real SPIFFE clients check: exactly one
//! URI SAN, `cA=false`, a critical keyUsage with digitalSignature only,
//! serverAuth+clientAuth, validity inside the issuer's, a fresh P-256 key.

use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::{AuthorityError, SigningCa};
use crate::spiffe_id::SpiffeId;

/// Backdating absorbs small clock differences between hosts.
const BACKDATE: Duration = Duration::from_secs(10);

/// What an X.509-SVID certifies. Equal templates yield interchangeable SVIDs,
/// so the cache keys on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SvidTemplate {
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Requested lifetime (shortened to fit in the CA's).
    pub ttl: Duration,
    /// The latest an SVID may be valid until (the end of the entry owner's
    /// term): lifetimes are cut there, and nothing is minted after it.
    pub valid_until: Option<SystemTime>,
    /// In fleet mode, the SPIRE Server's id of the entry the SVID is
    /// minted for (the server signs by entry); none when signed here.
    pub remote_entry: Option<std::sync::Arc<str>>,
}

/// A minted X.509-SVID.
pub struct X509Svid {
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// DER certificates, leaf first.
    pub cert_chain: Vec<Vec<u8>>,
    /// Unencrypted PKCS#8 DER private key.
    pub private_key_pkcs8: Vec<u8>,
    /// The leaf's serial, lowercase hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for X509Svid {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl X509Svid {
    /// The chain as the Workload API sends it: DER certificates concatenated.
    pub fn chain_der(&self) -> Vec<u8> {
        self.cert_chain.concat()
    }
}

/// A random, positive 128-bit serial.
pub(super) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Clear the sign bit and keep the first byte non-zero, so the DER
    // INTEGER is positive and exactly 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

pub(super) fn mint(ca: &SigningCa, template: &SvidTemplate) -> Result<X509Svid, AuthorityError> {
    let now = crate::wall_clock::now();
    if ca.not_after() <= now {
        return Err(AuthorityError::CaExpired);
    }
    let not_before = (now - BACKDATE).max(ca.not_before());
    let mut not_after = (now + template.ttl).min(ca.not_after());
    if let Some(until) = template.valid_until {
        if until <= now {
            return Err(AuthorityError::TermEnded);
        }
        not_after = not_after.min(until);
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let serial = random_serial();
    let mut params = CertificateParams::default();
    params.distinguished_name = leaf_name();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = subject_alt_names(template)?;
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial.clone());
    params.not_before = OffsetDateTime::from(not_before);
    params.not_after = OffsetDateTime::from(not_after);

    let cert = params.signed_by(&key, ca.issuer())?;
    let mut cert_chain = vec![cert.der().to_vec()];
    cert_chain.extend(ca.chain().iter().cloned());
    Ok(X509Svid {
        spiffe_id: template.spiffe_id.clone(),
        cert_chain,
        private_key_pkcs8: key.serialize_der(),
        serial: hex::encode(serial.to_bytes()),
        not_before,
        not_after,
    })
}

fn leaf_name() -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "attestd");
    name
}

fn subject_alt_names(template: &SvidTemplate) -> Result<Vec<SanType>, rcgen::Error> {
    let mut sans = vec![SanType::URI(template.spiffe_id.as_str().try_into()?)];
    for dns in &template.dns_names {
        sans.push(SanType::DnsName(dns.as_str().try_into()?));
    }
    Ok(sans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn minted_leaf_has_the_spiffe_shape() {
        let (_dir, authority) = crate::authority::test_authority();
        let template = SvidTemplate {
            spiffe_id: SpiffeId::new("spiffe://example.org/agent").unwrap(),
            dns_names: vec!["agent.local".into()],
            ttl: Duration::from_secs(7200),
            valid_until: None,
            remote_entry: None,
        };
        let svid = authority.mint_x509(&template).unwrap();
        let (_, leaf) = X509Certificate::from_der(&svid.cert_chain[0]).unwrap();

        let bc = leaf.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        let ku = leaf.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && !ku.value.key_cert_sign() && !ku.value.crl_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        let uris: Vec<_> = san
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec!["spiffe://example.org/agent"]);
        // TTL longer than the CA's remaining life is cut to fit inside it.
        let bundle = authority.bundle();
        let (_, ca) = X509Certificate::from_der(bundle.roots()[0].as_slice()).unwrap();
        assert!(leaf.validity().not_after <= ca.validity().not_after);
        assert!(leaf.validity().not_before >= ca.validity().not_before);
        // The key is the leaf's.
        let key = KeyPair::try_from(svid.private_key_pkcs8.as_slice()).unwrap();
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn an_svid_ends_with_its_owners_term_and_none_is_minted_after_it() {
        let (_dir, authority) = crate::authority::test_authority();
        let until = SystemTime::now() + Duration::from_secs(120);
        let mut template = SvidTemplate {
            spiffe_id: SpiffeId::new("spiffe://example.org/agent").unwrap(),
            dns_names: vec![],
            ttl: Duration::from_secs(3600),
            valid_until: Some(until),
            remote_entry: None,
        };
        let svid = authority.mint_x509(&template).unwrap();
        let (_, leaf) = X509Certificate::from_der(&svid.cert_chain[0]).unwrap();
        let until_secs = until.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(
            leaf.validity().not_after.timestamp(),
            until_secs,
            "cut at the term's end"
        );
        assert_eq!(svid.not_after, until);

        template.valid_until = Some(SystemTime::now() - Duration::from_secs(1));
        assert!(matches!(
            authority.mint_x509(&template),
            Err(AuthorityError::TermEnded)
        ));
    }
}

//! The secrets Envoy consumes, encoded as its `Secret` messages: a TLS
//! certificate (the SVID's chain and key, inline PEM) or a validation
//! context (trust bundles, for Envoy's SPIFFE certificate validator or as
//! a plain `trusted_ca`).

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::spiffe_cert_validator_config::TrustDomain as ValidatorTrustDomain;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use crate::authority::X509Svid;

/// The name Envoy gives its SPIFFE certificate validator extension.
const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// One trust domain's X.509 authorities, as a validation context needs them.
pub(super) struct TrustBundle<'a> {
    /// The trust domain's name (`example.org`, no scheme).
    pub trust_domain: &'a str,
    /// DER certificates.
    pub roots: &'a [Vec<u8>],
}

/// How validation contexts are expressed to this Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Validator {
    /// Envoy's SPIFFE certificate validator: one entry per trust domain, so
    /// a peer is checked against its own trust domain's authorities.
    Spiffe,
    /// A plain `trusted_ca` (Envoy before 1.18, or asked for): one trust
    /// domain per validation context.
    TrustedCa,
}

/// An SVID as Envoy's TLS certificate secret named `name`.
pub(super) fn tls_certificate(name: &str, svid: &X509Svid) -> Any {
    let key = pem::encode(&pem::Pem::new("PRIVATE KEY", svid.private_key_pkcs8.clone()));
    pack_secret(
        name,
        secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(pem_certificates(&svid.cert_chain))),
            private_key: Some(inline(key.into_bytes())),
            ..TlsCertificate::default()
        }),
    )
}

/// A validation context named `name` trusting `bundles`. With
/// [`Validator::TrustedCa`], `bundles` holds exactly one trust domain (the
/// caller checks).
pub(super) fn validation_context(name: &str, validator: Validator, bundles: &[TrustBundle<'_>]) -> Any {
    let context = match validator {
        Validator::Spiffe => {
            let mut trust_domains: Vec<ValidatorTrustDomain> = bundles
                .iter()
                .map(|bundle| ValidatorTrustDomain {
                    name: bundle.trust_domain.to_owned(),
                    trust_bundle: Some(inline(pem_certificates(bundle.roots))),
                    ..ValidatorTrustDomain::default()
                })
                .collect();
            // A stable order: the same bundles always encode alike.
            trust_domains.sort_by(|a, b| a.name.cmp(&b.name));
            CertificateValidationContext {
                custom_validator_config: Some(TypedExtensionConfig {
                    name: SPIFFE_VALIDATOR.to_owned(),
                    typed_config: Some(pack_any(SpiffeCertValidatorConfig {
                        trust_domains,
                        ..SpiffeCertValidatorConfig::default()
                    })),
                }),
                ..CertificateValidationContext::default()
            }
        }
        Validator::TrustedCa => CertificateValidationContext {
            trusted_ca: Some(inline(pem_certificates(
                bundles.first().map_or(&[][..], |bundle| bundle.roots),
            ))),
            ..CertificateValidationContext::default()
        },
    };
    pack_secret(name, secret::Type::ValidationContext(context))
}

fn pack_secret(name: &str, secret: secret::Type) -> Any {
    pack_any(Secret {
        name: name.to_owned(),
        r#type: Some(secret),
    })
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..DataSource::default()
    }
}

fn pem_certificates(ders: &[Vec<u8>]) -> Vec<u8> {
    let blocks: Vec<pem::Pem> = ders
        .iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.clone()))
        .collect();
    pem::encode_many(&blocks).into_bytes()
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn unpack(any: &Any) -> Secret {
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
        );
        Secret::decode(any.value.as_slice()).unwrap()
    }

    #[test]
    fn spiffe_validator_lists_each_trust_domain_in_order() {
        let roots_a = vec![b"a-root".to_vec()];
        let roots_b = vec![b"b-root".to_vec(), b"b-second".to_vec()];
        let any = validation_context(
            "ALL",
            Validator::Spiffe,
            &[
                TrustBundle {
                    trust_domain: "zeta.org",
                    roots: &roots_b,
                },
                TrustBundle {
                    trust_domain: "alpha.org",
                    roots: &roots_a,
                },
            ],
        );
        let secret = unpack(&any);
        assert_eq!(secret.name, "ALL");
        let Some(secret::Type::ValidationContext(context)) = secret.r#type else {
            panic!("not a validation context");
        };
        let validator = context.custom_validator_config.unwrap();
        assert_eq!(validator.name, SPIFFE_VALIDATOR);
        let config =
            SpiffeCertValidatorConfig::decode(validator.typed_config.unwrap().value.as_slice()).unwrap();
        let names: Vec<&str> = config.trust_domains.iter().map(|td| td.name.as_str()).collect();
        assert_eq!(names, ["alpha.org", "zeta.org"]);
        let Some(Specifier::InlineBytes(pem_bytes)) =
            config.trust_domains[1].trust_bundle.clone().unwrap().specifier
        else {
            panic!("not inline");
        };
        let blocks = pem::parse_many(pem_bytes).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1].contents(), b"b-second");
        assert!(context.trusted_ca.is_none());
    }

    #[test]
    fn trusted_ca_carries_the_one_bundle() {
        let roots = vec![b"root".to_vec()];
        let any = validation_context(
            "ROOTCA",
            Validator::TrustedCa,
            &[TrustBundle {
                trust_domain: "example.org",
                roots: &roots,
            }],
        );
        let Some(secret::Type::ValidationContext(context)) = unpack(&any).r#type else {
            panic!("not a validation context");
        };
        assert!(context.custom_validator_config.is_none());
        let Some(Specifier::InlineBytes(pem_bytes)) = context.trusted_ca.unwrap().specifier else {
            panic!("not inline");
        };
        assert_eq!(pem::parse(pem_bytes).unwrap().contents(), b"root");
    }
}

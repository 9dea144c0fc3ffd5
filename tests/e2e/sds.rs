//! Envoy SDS v3 on the Workload API socket, spoken by a gRPC client built
//! from Envoy's own API definitions (the envoy-types crate): names,
//! versions and nonces, rejections, pushes on rotation, refusals. The real
//! Envoy is in `envoy.rs`.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::harness::{Daemon, key_matches, pem_certificates, serial_of, uri_san};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const ROOT_ID: &str = "spiffe://example.org/sds/root";
const SECOND_ID: &str = "spiffe://example.org/sds/second";

/// A daemon granting uid 0 (this test process) two identities; SVIDs live
/// `ttl`.
fn daemon(ttl: &str) -> Daemon {
    Daemon::start(&format!(
        "[svid]\nx509_ttl = \"{ttl}\"\n\
         [[entry]]\nspiffe_id = \"{ROOT_ID}\"\nselectors = [\"unix:uid:0\"]\nowner = \"mesh@example.org\"\n\
         [[entry]]\nspiffe_id = \"{SECOND_ID}\"\nselectors = [\"unix:uid:0\"]\nowner = \"mesh@example.org\"\n"
    ))
}

async fn client(daemon: &Daemon) -> SecretDiscoveryServiceClient<Channel> {
    SecretDiscoveryServiceClient::new(attestd::client::channel(&daemon.socket()).await.unwrap())
}

fn request(names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET_TYPE.into(),
        ..DiscoveryRequest::default()
    }
}

/// The secrets of a response, by name.
fn secrets(response: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(response.type_url, SECRET_TYPE);
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn named<'a>(secrets: &'a [Secret], name: &str) -> &'a Secret {
    secrets
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no secret named {name}"))
}

fn inline(source: &Option<DataSource>) -> Vec<u8> {
    match source.as_ref().and_then(|s| s.specifier.clone()) {
        Some(Specifier::InlineBytes(bytes)) => bytes,
        other => panic!("not inline bytes: {other:?}"),
    }
}

/// A TLS certificate secret: its leaf's URI SAN and serial, checked to
/// match its key.
fn certificate(secret: &Secret) -> (String, String) {
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("{} is not a TLS certificate", secret.name);
    };
    let chain = pem_certificates(&inline(&tls.certificate_chain));
    let key = pem::parse(inline(&tls.private_key)).unwrap();
    assert_eq!(key.tag(), "PRIVATE KEY", "PKCS#8");
    assert!(key_matches(&chain[0], key.contents()));
    (uri_san(&chain[0]), serial_of(&chain[0]))
}

/// A validation context for the SPIFFE validator: trust domain names and
/// their roots.
fn spiffe_validator(secret: &Secret) -> Vec<(String, Vec<Vec<u8>>)> {
    let Some(secret::Type::ValidationContext(context)) = &secret.r#type else {
        panic!("{} is not a validation context", secret.name);
    };
    let validator = context
        .custom_validator_config
        .as_ref()
        .expect("SPIFFE validator");
    assert_eq!(validator.name, "envoy.tls.cert_validator.spiffe");
    let config =
        SpiffeCertValidatorConfig::decode(validator.typed_config.as_ref().unwrap().value.as_slice()).unwrap();
    config
        .trust_domains
        .iter()
        .map(|td| (td.name.clone(), pem_certificates(&inline(&td.trust_bundle))))
        .collect()
}

fn bundle_roots(daemon: &Daemon) -> Vec<Vec<u8>> {
    let output = std::process::Command::new(crate::harness::attestd_bin())
        .args(["bundle", "show", "--format", "pem", "-c"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    crate::harness::assert_success(&output);
    pem_certificates(&output.stdout)
}

/// A stream whose requests the test sends one by one.
struct SdsStream {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl SdsStream {
    async fn open(daemon: &Daemon, first: DiscoveryRequest) -> Result<Self, tonic::Status> {
        let (requests, rx) = mpsc::channel(4);
        requests.send(first).await.unwrap();
        let responses = client(daemon)
            .await
            .stream_secrets(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { requests, responses })
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.requests.send(request).await.unwrap();
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(60), self.responses.message())
            .await
            .expect("an SDS response within a minute")
            .map(|m| m.expect("stream open"))
    }
}

#[tokio::test]
async fn stream_serves_named_secrets_and_pushes_each_rotation_once() {
    let daemon = daemon("6s");
    let mut stream = SdsStream::open(&daemon, request(&["default", "ROOTCA", SECOND_ID]))
        .await
        .unwrap();
    let first = stream.next().await.unwrap();
    assert_eq!(first.version_info, "1");
    assert!(!first.nonce.is_empty());
    let all = secrets(&first);
    assert_eq!(all.len(), 3, "exactly what was named");
    let (default_id, default_serial) = certificate(named(&all, "default"));
    assert_eq!(default_id, ROOT_ID, "default is the first identity");
    let (second_id, _) = certificate(named(&all, SECOND_ID));
    assert_eq!(second_id, SECOND_ID);
    let roots = bundle_roots(&daemon);
    assert_eq!(
        spiffe_validator(named(&all, "ROOTCA")),
        [("example.org".to_owned(), roots)]
    );

    // Envoy rejects the answer (NACK: the version it had, and why). The
    // rejected version is not sent again: the next answer is the next
    // rotation's.
    stream
        .send(DiscoveryRequest {
            response_nonce: first.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "test rejects it".into(),
                ..RpcStatus::default()
            }),
            ..request(&["default", "ROOTCA", SECOND_ID])
        })
        .await;
    // A stale request (an older nonce) asking for other names is ignored.
    stream
        .send(DiscoveryRequest {
            response_nonce: "not-the-last-nonce".into(),
            ..request(&["ROOTCA"])
        })
        .await;
    // Each rotation (of either identity) is a new version, pushed once.
    let mut version = 1;
    let pushed = loop {
        let pushed = stream.next().await.unwrap();
        version += 1;
        assert_eq!(
            pushed.version_info,
            version.to_string(),
            "one new version per change"
        );
        let all = secrets(&pushed);
        assert_eq!(all.len(), 3, "the stale request changed nothing");
        if certificate(named(&all, "default")).1 != default_serial {
            break pushed;
        }
        assert!(version < 6, "the default certificate never rotated");
    };

    // ACK, then a new subscription: answered at once, same version.
    stream
        .send(DiscoveryRequest {
            version_info: pushed.version_info.clone(),
            response_nonce: pushed.nonce.clone(),
            ..request(&["default", "ROOTCA", SECOND_ID])
        })
        .await;
    stream
        .send(DiscoveryRequest {
            version_info: pushed.version_info.clone(),
            response_nonce: pushed.nonce.clone(),
            ..request(&["spiffe://example.org"])
        })
        .await;
    let renamed = stream.next().await.unwrap();
    let all = secrets(&renamed);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, "spiffe://example.org");
    let renamed_version: u64 = renamed.version_info.parse().unwrap();
    assert!(renamed_version >= version, "{renamed_version} after {version}");

    // Every certificate sent was recorded once, under StreamSecrets.
    let records = daemon.audit_records();
    let issued: Vec<_> = records
        .iter()
        .filter(|r| r["rpc"] == "StreamSecrets" && r["outcome"] == "issued")
        .collect();
    assert!(issued.iter().any(|r| r["spiffe_id"] == ROOT_ID), "{issued:?}");
    let serials: std::collections::HashSet<_> = issued.iter().map(|r| r["serial"].to_string()).collect();
    assert_eq!(
        serials.len(),
        issued.len(),
        "no certificate recorded twice on one stream"
    );
}

#[tokio::test]
async fn an_empty_request_gets_everything_the_caller_holds() {
    let daemon = daemon("1h");
    let response = client(&daemon)
        .await
        .fetch_secrets(request(&[]))
        .await
        .unwrap()
        .into_inner();
    let all = secrets(&response);
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["spiffe://example.org", ROOT_ID, SECOND_ID]);
    assert_eq!(certificate(named(&all, SECOND_ID)).0, SECOND_ID);
    let all_bundles = client(&daemon)
        .await
        .fetch_secrets(request(&["ALL"]))
        .await
        .unwrap();
    let trust_domains = spiffe_validator(&secrets(all_bundles.get_ref())[0]);
    assert_eq!(trust_domains.len(), 1);
    assert_eq!(trust_domains[0].0, "example.org");
}

#[tokio::test]
async fn an_envoy_without_the_spiffe_validator_gets_a_trusted_ca() {
    let daemon = daemon("1h");
    let node = Node {
        id: "old-envoy".into(),
        metadata: Some(Struct {
            fields: [(
                "disable_spiffe_cert_validation".to_owned(),
                Value {
                    kind: Some(Kind::BoolValue(true)),
                },
            )]
            .into(),
        }),
        ..Node::default()
    };
    let response = client(&daemon)
        .await
        .fetch_secrets(DiscoveryRequest {
            node: Some(node.clone()),
            ..request(&["ROOTCA"])
        })
        .await
        .unwrap();
    let Some(secret::Type::ValidationContext(context)) = &secrets(response.get_ref())[0].r#type else {
        panic!("not a validation context");
    };
    assert!(context.custom_validator_config.is_none());
    assert_eq!(
        pem_certificates(&inline(&context.trusted_ca)),
        bundle_roots(&daemon)
    );
    // Every bundle at once needs the SPIFFE validator.
    let refused = client(&daemon)
        .await
        .fetch_secrets(DiscoveryRequest {
            node: Some(node),
            ..request(&["ALL"])
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
}

#[tokio::test]
async fn names_the_caller_holds_nothing_for_are_refused() {
    let daemon = daemon("1h");
    for names in [
        &["spiffe://example.org/someone-else"][..],
        &["default", "spiffe://other.org"],
        &["no-such-name"],
    ] {
        let refused = client(&daemon)
            .await
            .fetch_secrets(request(names))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{names:?}: {refused:?}"
        );
    }
    let mut stream = SdsStream::open(&daemon, request(&["spiffe://example.org/someone-else"]))
        .await
        .unwrap();
    assert_eq!(
        stream.next().await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let many: Vec<String> = (0..65).map(|i| format!("name-{i}")).collect();
    let refused = client(&daemon)
        .await
        .fetch_secrets(DiscoveryRequest {
            resource_names: many,
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let delta = client(&daemon)
        .await
        .delta_secrets(tokio_stream::iter([DeltaDiscoveryRequest::default()]))
        .await
        .unwrap_err();
    assert_eq!(delta.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn a_caller_without_an_identity_gets_nothing() {
    let daemon = Daemon::start(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/other\"\nselectors = [\"unix:uid:4242\"]\nowner = \"o@example.org\"\n",
    );
    for names in [&["ROOTCA"][..], &[]] {
        let refused = client(&daemon)
            .await
            .fetch_secrets(request(names))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    let refused = SdsStream::open(&daemon, request(&["default"])).await.err();
    let code = match refused {
        Some(status) => status.code(),
        None => panic!("the stream was accepted"),
    };
    assert_eq!(code, tonic::Code::PermissionDenied);
    let records = daemon.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r["rpc"] == "StreamSecrets" && r["outcome"] == "denied"),
        "{records:?}"
    );
    assert!(!records.iter().any(|r| r["outcome"] == "issued"));
}

#[tokio::test]
async fn federated_bundles_are_served_by_trust_domain_and_in_all() {
    let partner = Daemon::start_for("partner.example", "");
    let partner_roots = bundle_roots(&partner);
    let bundle_file = partner.dir.path().join("data/bundle.json");
    let daemon = Daemon::start(&format!(
        "[[federation]]\ntrust_domain = \"partner.example\"\nbundle_file = \"{}\"\n\
         [[entry]]\nspiffe_id = \"{ROOT_ID}\"\nselectors = [\"unix:uid:0\"]\nowner = \"mesh@example.org\"\n\
         federates_with = [\"partner.example\"]\n",
        bundle_file.display()
    ));
    let response = client(&daemon)
        .await
        .fetch_secrets(request(&["ALL", "spiffe://partner.example"]))
        .await
        .unwrap();
    let all = secrets(response.get_ref());
    let mut domains = spiffe_validator(named(&all, "ALL"));
    domains.sort();
    assert_eq!(
        domains,
        [
            ("example.org".to_owned(), bundle_roots(&daemon)),
            ("partner.example".to_owned(), partner_roots.clone()),
        ]
    );
    assert_eq!(
        spiffe_validator(named(&all, "spiffe://partner.example")),
        [("partner.example".to_owned(), partner_roots)]
    );
    // An empty request lists the foreign bundle by its trust domain ID too.
    let everything = client(&daemon).await.fetch_secrets(request(&[])).await.unwrap();
    let names: Vec<String> = secrets(everything.get_ref())
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        names,
        ["spiffe://example.org", "spiffe://partner.example", ROOT_ID]
    );
}

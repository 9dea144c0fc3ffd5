//! Requests without `workload.spiffe.io: true` are refused before any
//! attestation, with InvalidArgument; unoffered profiles are Unimplemented.

use futures::StreamExt;
use tonic::Code;
use tonic::metadata::MetadataValue;

use attestd::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use attestd::proto::*;

use crate::harness::Daemon;

const ENTRY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/root"
selectors = ["unix:uid:0"]
owner = "platform@example.org"
"#;

fn request<T>(message: T, header: Option<&'static str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = header {
        request
            .metadata_mut()
            .insert(SECURITY_HEADER, MetadataValue::from_static(value));
    }
    request
}

#[tokio::test]
async fn missing_or_wrong_header_is_invalid_argument_on_every_rpc() {
    let daemon = Daemon::start(ENTRY);
    let channel = attestd::client::channel(&daemon.socket()).await.unwrap();
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    for header in [None, Some("false"), Some("True")] {
        let codes = [
            raw.fetch_x509svid(request(X509svidRequest {}, header))
                .await
                .map(|_| ()),
            raw.fetch_x509_bundles(request(X509BundlesRequest {}, header))
                .await
                .map(|_| ()),
            raw.fetch_jwtsvid(request(
                JwtsvidRequest {
                    audience: vec!["a".into()],
                    spiffe_id: String::new(),
                },
                header,
            ))
            .await
            .map(|_| ()),
            raw.fetch_jwt_bundles(request(JwtBundlesRequest {}, header))
                .await
                .map(|_| ()),
            raw.validate_jwtsvid(request(
                ValidateJwtsvidRequest {
                    audience: "a".into(),
                    svid: "x".into(),
                },
                header,
            ))
            .await
            .map(|_| ()),
            raw.fetch_witsvid(request(
                WitsvidRequest {
                    spiffe_id: String::new(),
                },
                header,
            ))
            .await
            .map(|_| ()),
            raw.fetch_wit_bundles(request(WitBundlesRequest {}, header))
                .await
                .map(|_| ()),
        ];
        for (i, result) in codes.into_iter().enumerate() {
            let status = result.expect_err("request without the header must fail");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "rpc #{i} with header {header:?}: {status:?}"
            );
        }
    }
    // The same client, with the header, is served.
    let mut stream = raw
        .fetch_x509svid(request(X509svidRequest {}, Some("true")))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/root");
    // No header-less request got as far as attestation: nothing was audited
    // but the one real fetch.
    assert_eq!(daemon.audit_records().len(), 1);
}

#[tokio::test]
async fn wit_profile_is_unimplemented() {
    let daemon = Daemon::start(ENTRY);
    let channel = attestd::client::channel(&daemon.socket()).await.unwrap();
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let status = raw
        .fetch_witsvid(request(
            WitsvidRequest {
                spiffe_id: String::new(),
            },
            Some("true"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let status = raw
        .fetch_wit_bundles(request(WitBundlesRequest {}, Some("true")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

"""py-spiffe interop client of attestd's tests.

Fetches the caller's X.509 context (py-spiffe parses and checks every SVID,
including that the bundle is present and the key matches), verifies each
leaf's signature against the trust bundle, fetches a JWT-SVID for the given
audiences, validates it through the Workload API and offline against the
fetched JWT bundle, and prints one JSON object.

Usage: client.py SOCKET_URI AUDIENCE [AUDIENCE...]
"""

import json
import sys

from spiffe import JwtSvid, WorkloadApiClient


def verify_leaf(svid, bundle):
    """The leaf (or, with intermediates, the top of the chain) is issued by a
    bundle authority."""
    top = svid.cert_chain[-1]
    for authority in bundle.x509_authorities:
        try:
            top.verify_directly_issued_by(authority)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not this one"
            continue
    return False


def main():
    socket, audiences = sys.argv[1], sys.argv[2:]
    with WorkloadApiClient(socket_path=socket, default_timeout=10) as client:
        context = client.fetch_x509_context()
        svids = []
        for svid in context.x509_svids:
            bundle = context.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
            svids.append({"spiffe_id": str(svid.spiffe_id), "verified": verify_leaf(svid, bundle)})

        jwt = client.fetch_jwt_svid(audience=set(audiences))
        online = client.validate_jwt_svid(jwt.token, audiences[0])
        jwt_bundles = client.fetch_jwt_bundles()
        bundle = jwt_bundles.get_bundle_for_trust_domain(jwt.spiffe_id.trust_domain)
        offline = JwtSvid.parse_and_validate(jwt.token, bundle, set(audiences))

    print(json.dumps({
        "x509": svids,
        "jwt_subject": str(jwt.spiffe_id),
        "jwt_audience": sorted(jwt.audience),
        "online_subject": str(online.spiffe_id),
        "offline_subject": str(offline.spiffe_id),
    }))


if __name__ == "__main__":
    main()

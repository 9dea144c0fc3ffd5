"""Validates a JWT-SVID with PyJWT, a JWT library independent of attestd,
against a JWKS document (the JWT bundle of attestd's FetchJWTBundles).

Usage: pyjwt_validate.py JWKS_FILE TOKEN AUDIENCE

Prints the verified claims as JSON; exits non-zero if the token does not
verify (signature, expiry, audience).
"""

import json
import sys

import jwt


def main():
    jwks_file, token, audience = sys.argv[1:4]
    with open(jwks_file) as f:
        keys = jwt.PyJWKSet.from_dict(json.load(f))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims = jwt.decode(
        token, key, algorithms=["ES256"], audience=audience,
        options={"require": ["exp", "sub", "aud"]})
    print(json.dumps(claims))


if __name__ == "__main__":
    main()

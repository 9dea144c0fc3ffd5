//! The JWT files: a token per configured audience, refreshed at half its
//! lifetime, and the JWT bundles in spiffe-helper's format.

use std::time::{Duration, SystemTime};

use base64::Engine as _;

use crate::proto::{JwtBundlesResponse, JwtsvidResponse};
use crate::wall_clock;

/// The shortest wait before a token is fetched again, so a token that is
/// (nearly) expired on arrival does not make the helper spin.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Why a JWT-SVID response could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// No token has the configured hint.
    #[error("no JWT-SVID has the hint {0:?}")]
    NoSvidWithHint(String),
    /// The response holds no token.
    #[error("the response holds no JWT-SVID")]
    NoSvid,
    /// The token's claims hold no integer `exp`.
    #[error("the JWT-SVID of {0} has no readable exp claim")]
    NoExpiry(String),
}

/// The token to write and when to fetch the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The SPIFFE ID it was issued to (for logs).
    pub spiffe_id: String,
    /// The token, JWS compact (the file's whole contents, as spiffe-helper).
    pub token: String,
    /// Half-way between now and its `exp`.
    pub refresh_at: SystemTime,
}

/// Picks the token (by `hint`, else the first) and schedules its refresh.
pub fn token(response: &JwtsvidResponse, hint: Option<&str>, now: SystemTime) -> Result<Token, JwtError> {
    let svid = match hint {
        Some(hint) => response
            .svids
            .iter()
            .find(|svid| svid.hint == hint)
            .ok_or_else(|| JwtError::NoSvidWithHint(hint.to_owned()))?,
        None => response.svids.first().ok_or(JwtError::NoSvid)?,
    };
    // Our own daemon signed it; the claims are only read for scheduling.
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(&svid.svid)
        .map_err(|_| JwtError::NoExpiry(svid.spiffe_id.clone()))?;
    let exp = claims["exp"]
        .as_u64()
        .ok_or_else(|| JwtError::NoExpiry(svid.spiffe_id.clone()))?;
    let left = wall_clock::from_unix_seconds(exp)
        .duration_since(now)
        .unwrap_or_default();
    Ok(Token {
        spiffe_id: svid.spiffe_id.clone(),
        token: svid.svid.clone(),
        refresh_at: now + (left / 2).max(MIN_REFRESH),
    })
}

/// spiffe-helper's JWT bundle file: a JSON object mapping each trust domain
/// name to its JWKS, base64-encoded (standard alphabet, padded).
pub fn bundle_document(response: &JwtBundlesResponse) -> String {
    let bundles: serde_json::Map<String, serde_json::Value> = response
        .bundles
        .iter()
        .map(|(trust_domain, jwks)| {
            let name = trust_domain.strip_prefix("spiffe://").unwrap_or(trust_domain);
            let encoded = base64::engine::general_purpose::STANDARD.encode(jwks);
            (name.to_owned(), serde_json::Value::String(encoded))
        })
        .collect();
    serde_json::Value::Object(bundles).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Jwtsvid;

    fn unsigned_token(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"ES256","typ":"JWT"}"#), b64(claims))
    }

    #[test]
    fn refresh_at_half_life() {
        let now = wall_clock::from_unix_seconds(1_000);
        let response = JwtsvidResponse {
            svids: vec![
                Jwtsvid {
                    spiffe_id: "spiffe://example.org/a".into(),
                    svid: unsigned_token(r#"{"exp":1300}"#),
                    hint: "a".into(),
                },
                Jwtsvid {
                    spiffe_id: "spiffe://example.org/b".into(),
                    svid: unsigned_token(r#"{"exp":1001}"#),
                    hint: "b".into(),
                },
            ],
        };
        let first = token(&response, None, now).unwrap();
        assert_eq!(first.refresh_at, wall_clock::from_unix_seconds(1_150));
        let short = token(&response, Some("b"), now).unwrap();
        assert_eq!(short.spiffe_id, "spiffe://example.org/b");
        assert_eq!(short.refresh_at, now + MIN_REFRESH);
        assert_eq!(
            token(&response, Some("c"), now),
            Err(JwtError::NoSvidWithHint("c".into()))
        );
    }

    #[test]
    fn bundle_document_like_spiffe_helper() {
        let response = JwtBundlesResponse {
            bundles: [("spiffe://example.org".to_owned(), br#"{"keys":[]}"#.to_vec())].into(),
        };
        let document: serde_json::Value = serde_json::from_str(&bundle_document(&response)).unwrap();
        assert_eq!(document, serde_json::json!({"example.org": "eyJrZXlzIjpbXX0="}));
    }
}

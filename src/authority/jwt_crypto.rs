//! ES256 for `jsonwebtoken` through ring.
//!
//! jsonwebtoken encodes and checks the tokens; its cryptography is a
//! pluggable provider. Its RustCrypto provider computes P-256 without
//! precomputed tables: about 600 µs of CPU per fresh JWT-SVID on this
//! project's 2-core benchmark VM (a key parse and a signature, each a full
//! scalar multiplication), which made `FetchJWTSVID` cost four times an
//! X.509 fetch. ring's P-256 does the same in a fraction of that. ES256 is
//! the only algorithm attestd signs or accepts (see `check_header` in
//! `jwt.rs`); every other algorithm still goes to the RustCrypto provider,
//! as do the JWK helpers.

use std::sync::{Arc, LazyLock, Mutex};

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, rust_crypto};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: rust_crypto::DEFAULT_PROVIDER.key_utils.clone(),
});

/// Makes ring the process's jsonwebtoken provider for ES256. jsonwebtoken
/// keeps one provider per process, fixed at first use: call this before
/// any token is signed or checked (the JWT authority does, when built).
/// Later calls change nothing.
pub fn install() {
    if CryptoProvider::install_default(LazyLock::force(&PROVIDER)).is_err() {
        // Already ours, or jsonwebtoken was used first and fixed its
        // default: tokens are still right, only slower.
        tracing::debug!("jsonwebtoken's crypto provider was already chosen");
    }
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    match algorithm {
        Algorithm::ES256 => Ok(Box::new(Es256Signer::new(key)?)),
        other => (rust_crypto::DEFAULT_PROVIDER.signer_factory)(other, key),
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match algorithm {
        Algorithm::ES256 => Ok(Box::new(Es256Verifier(key.try_get_as_bytes()?.to_vec()))),
        other => (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(other, key),
    }
}

/// A P-256 key pair from a PKCS#8 document; signatures are `r || s`, as
/// JWS wants them.
struct Es256Signer(Arc<EcdsaKeyPair>);

/// The last key decoded, with the document it came from: jsonwebtoken asks
/// for a signer per token, and decoding checks the key pair (a scalar
/// multiplication, as long as the signature itself), while attestd signs
/// with one key until it rotates.
static LAST_KEY: Mutex<Option<(Vec<u8>, Arc<EcdsaKeyPair>)>> = Mutex::new(None);

impl Es256Signer {
    fn new(key: &EncodingKey) -> Result<Self, Error> {
        let pkcs8 = key.as_bytes();
        // Held for a compare, or one decode: never across a signature.
        let mut last = LAST_KEY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((document, pair)) = last.as_ref()
            && document.as_slice() == pkcs8
        {
            return Ok(Self(Arc::clone(pair)));
        }
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &SystemRandom::new())
            .map(Arc::new)
            .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
        *last = Some((pkcs8.to_vec(), Arc::clone(&pair)));
        Ok(Self(pair))
    }
}

impl Signer<Vec<u8>> for Es256Signer {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let signed = self
            .0
            .sign(&SystemRandom::new(), message)
            .map_err(|_| signature::Error::new())?;
        Ok(signed.as_ref().to_vec())
    }
}

impl JwtSigner for Es256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

/// An uncompressed SEC1 P-256 point (what a JWK's `x` and `y` make).
struct Es256Verifier(Vec<u8>);

impl Verifier<Vec<u8>> for Es256Verifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(message, signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Es256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signatures from either provider verify with the other: the wire
    /// format is the same.
    #[test]
    fn ring_and_rustcrypto_agree_on_es256() {
        let pkcs8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_der();
        let encoding = EncodingKey::from_ec_der(&pkcs8);
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        let decoding = DecodingKey::from_jwk(&jwk).unwrap();
        let message = b"header.claims";

        let ours = new_signer(&Algorithm::ES256, &encoding).unwrap();
        let theirs = (rust_crypto::DEFAULT_PROVIDER.signer_factory)(&Algorithm::ES256, &encoding).unwrap();
        let our_verifier = new_verifier(&Algorithm::ES256, &decoding).unwrap();
        let their_verifier =
            (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(&Algorithm::ES256, &decoding).unwrap();

        let by_ring = ours.try_sign(message).unwrap();
        let by_rustcrypto = theirs.try_sign(message).unwrap();
        assert_eq!(by_ring.len(), 64);
        assert!(their_verifier.verify(message, &by_ring).is_ok());
        assert!(our_verifier.verify(message, &by_rustcrypto).is_ok());
        assert!(our_verifier.verify(b"header.other", &by_ring).is_err());
        let mut forged = by_ring.clone();
        forged[10] ^= 1;
        assert!(our_verifier.verify(message, &forged).is_err());
    }

    /// The decoded key is reused only for the very same document.
    #[test]
    fn each_key_signs_for_itself() {
        let key = || {
            let pkcs8 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_der();
            let encoding = EncodingKey::from_ec_der(&pkcs8);
            let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
            (encoding, DecodingKey::from_jwk(&jwk).unwrap())
        };
        let (first, first_public) = key();
        let (second, second_public) = key();
        for (signing, public, other) in [
            (&first, &first_public, &second_public),
            (&second, &second_public, &first_public),
            (&first, &first_public, &second_public),
        ] {
            let signature = new_signer(&Algorithm::ES256, signing)
                .unwrap()
                .try_sign(b"m")
                .unwrap();
            let verifier = |key| new_verifier(&Algorithm::ES256, key).unwrap();
            assert!(verifier(public).verify(b"m", &signature).is_ok());
            assert!(verifier(other).verify(b"m", &signature).is_err());
        }
    }

    #[test]
    fn a_key_that_is_not_p256_pkcs8_is_refused() {
        let encoding = EncodingKey::from_ec_der(b"not a key");
        assert!(new_signer(&Algorithm::ES256, &encoding).is_err());
    }
}

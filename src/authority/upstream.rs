//! An upstream CA: attestd signs with an intermediate issued by an
//! organisation's root, so SVIDs of many hosts chain to one trust anchor.
//! The files (`[ca] cert_file`, `key_file`, `bundle_file`) are checked as a
//! whole and re-read when replaced; a replacement that does not check out
//! is logged and the previous CA kept.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use x509_parser::prelude::{FromDer, X509Certificate};

use super::AuthorityError;
use super::signing_ca::SigningCa;
use crate::spiffe_id::TrustDomain;

/// Where an upstream CA's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFiles {
    /// PEM: the intermediate attestd signs with, then any certificates
    /// between it and the root.
    pub cert_file: PathBuf,
    /// PEM: the intermediate's private key (PKCS#8).
    pub key_file: PathBuf,
    /// PEM: the root(s) relying parties trust: the trust bundle.
    pub bundle_file: PathBuf,
}

/// The loaded upstream CA.
#[derive(Debug)]
pub(super) struct UpstreamCa {
    files: UpstreamFiles,
    stamp: Vec<(u64, u64, i64, i64)>,
    signer: SigningCa,
    roots: Vec<Vec<u8>>,
}

impl UpstreamCa {
    /// Reads and checks the files.
    pub fn load(files: &UpstreamFiles, trust_domain: &TrustDomain) -> Result<Self, AuthorityError> {
        let stamp = stamp(files)?;
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| AuthorityError::Io {
                path: path.clone(),
                source,
            })
        };
        let (cert, bundle) = (read(&files.cert_file)?, read(&files.bundle_file)?);
        let key = read_key(&files.key_file)?;
        let (signer, roots) = check_pem(files, &cert, key, &bundle, trust_domain)?;
        Ok(Self {
            files: files.clone(),
            stamp,
            signer,
            roots,
        })
    }

    /// The intermediate that signs SVIDs.
    pub fn signer(&self) -> &SigningCa {
        &self.signer
    }

    /// The trust bundle: the roots.
    pub fn roots(&self) -> Vec<Vec<u8>> {
        self.roots.clone()
    }

    /// Re-reads the files if any was replaced or changed. Returns whether a
    /// new CA is in use; a broken replacement is an error and the current CA
    /// stays.
    pub fn reload_if_changed(&mut self, trust_domain: &TrustDomain) -> Result<bool, AuthorityError> {
        if stamp(&self.files)? == self.stamp {
            return Ok(false);
        }
        *self = Self::load(&self.files, trust_domain)?;
        Ok(true)
    }
}

/// The upstream CA's key as PKCS#8 PEM: PKCS#8 as it is, a P-256 key in
/// SEC1 form (`EC PRIVATE KEY`, what `openssl ecparam -genkey` writes)
/// converted; anything else refused with the key file named and how to
/// convert it.
fn read_key(path: &Path) -> Result<String, AuthorityError> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let invalid = |reason: String| AuthorityError::InvalidFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    })?;
    let block = pem::parse(&text).map_err(|e| invalid(format!("not a PEM private key: {e}")))?;
    let convert = format!(
        "convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in {0} -out {0}.pk8` and name that file",
        path.display()
    );
    let pkcs8 = match block.tag() {
        "PRIVATE KEY" => text,
        "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(block.contents())
            .map_err(|_| {
                invalid(format!(
                    "a SEC1 key attestd cannot read (only P-256 is converted): {convert}"
                ))
            })?
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| invalid(format!("converting the SEC1 key: {e}")))?
            .to_string(),
        "RSA PRIVATE KEY" => {
            return Err(invalid(format!(
                "a PKCS#1 RSA key; attestd reads PKCS#8: {convert}"
            )));
        }
        other => {
            return Err(invalid(format!(
                "holds {other:?}, not a private key in PKCS#8 (PRIVATE KEY)"
            )));
        }
    };
    rcgen::KeyPair::from_pem(&pkcs8).map_err(|e| invalid(format!("not a usable private key: {e}")))?;
    Ok(pkcs8)
}

/// (device, inode, mtime, size) of each file: a replacement by rename or an
/// in-place rewrite changes it.
fn stamp(files: &UpstreamFiles) -> Result<Vec<(u64, u64, i64, i64)>, AuthorityError> {
    [&files.cert_file, &files.key_file, &files.bundle_file]
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(path).map_err(|source| AuthorityError::Io {
                path: path.clone(),
                source,
            })?;
            Ok((
                meta.dev(),
                meta.ino(),
                meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
                meta.size() as i64,
            ))
        })
        .collect()
}

/// Checks an upstream CA given as its files' contents (`files` names them
/// in errors): the signer (the first certificate of `cert_file`, with the
/// rest as its chain) and the roots of `bundle_file`. Public for the fuzz
/// targets (fuzz/), which give it text without touching the host.
pub fn check_pem(
    files: &UpstreamFiles,
    cert: &[u8],
    key: String,
    bundle: &[u8],
    trust_domain: &TrustDomain,
) -> Result<(SigningCa, Vec<Vec<u8>>), AuthorityError> {
    let certs = pem_blocks(&files.cert_file, cert, "CERTIFICATE")?;
    let roots = pem_blocks(&files.bundle_file, bundle, "CERTIFICATE")?;
    if certs.is_empty() || roots.is_empty() {
        return Err(AuthorityError::InvalidFile {
            path: if certs.is_empty() {
                files.cert_file.clone()
            } else {
                files.bundle_file.clone()
            },
            reason: "no CERTIFICATE in the file".into(),
        });
    }
    check_chain(&files.cert_file, &certs, &roots)?;
    // SVIDs carry the intermediate and everything above it up to the
    // root, which relying parties already hold.
    let intermediate = certs[0].clone();
    let signer = SigningCa::from_parts(&files.cert_file, intermediate, certs, key, None, trust_domain)?;
    Ok((signer, roots))
}

fn pem_blocks(path: &Path, text: &[u8], tag: &str) -> Result<Vec<Vec<u8>>, AuthorityError> {
    let blocks = pem::parse_many(text).map_err(|e| AuthorityError::InvalidFile {
        path: path.to_owned(),
        reason: format!("not PEM: {e}"),
    })?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == tag)
        .map(pem::Pem::into_contents)
        .collect())
}

/// Each certificate must be signed by the next, and the last by one of the
/// roots: an SVID this CA signs then verifies against the bundle.
fn check_chain(path: &Path, chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), AuthorityError> {
    let invalid = |reason: String| AuthorityError::InvalidFile {
        path: path.to_owned(),
        reason,
    };
    fn parse<'a>(
        der: &'a [u8],
        invalid: &impl Fn(String) -> AuthorityError,
    ) -> Result<X509Certificate<'a>, AuthorityError> {
        X509Certificate::from_der(der)
            .map(|(_, cert)| cert)
            .map_err(|e| invalid(format!("bad certificate: {e}")))
    }
    let chain: Vec<X509Certificate<'_>> = chain
        .iter()
        .map(|der| parse(der, &invalid))
        .collect::<Result<_, _>>()?;
    let roots: Vec<X509Certificate<'_>> = roots
        .iter()
        .map(|der| parse(der, &invalid))
        .collect::<Result<_, _>>()?;
    for pair in chain.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| {
                invalid(format!(
                    "{} is not signed by {}",
                    pair[0].subject(),
                    pair[1].subject()
                ))
            })?;
    }
    let last = &chain[chain.len() - 1];
    if !roots
        .iter()
        .any(|root| last.verify_signature(Some(root.public_key())).is_ok())
    {
        return Err(invalid(format!(
            "{} is not signed by any root of the bundle_file",
            last.subject()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec1_p256_keys_are_read_and_pkcs1_is_refused_naming_the_key_file() {
        use p256::pkcs8::{DecodePrivateKey, LineEnding};
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::KeyPair::generate().unwrap();
        let key = p256::SecretKey::from_pkcs8_der(generated.serialized_der()).unwrap();
        let sec1 = dir.path().join("ca.key");
        std::fs::write(&sec1, key.to_sec1_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let pkcs8 = read_key(&sec1).unwrap();
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));

        let rsa = dir.path().join("rsa.key");
        std::fs::write(
            &rsa,
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = read_key(&rsa).unwrap_err().to_string();
        assert!(err.contains(&rsa.display().to_string()), "{err}");
        assert!(
            err.contains("PKCS#1 RSA key; attestd reads PKCS#8: convert it"),
            "{err}"
        );
        assert!(err.contains("openssl pkcs8 -topk8 -nocrypt"), "{err}");
    }
}

//! From Workload API answers to files: renders each configured output and
//! writes it into `cert_dir`. Shared by one-shot and daemon mode.

use std::time::SystemTime;

use super::HelperError;
use super::config::{FileOutput, HelperConfig, JwtSvidOutput, X509Output};
use super::files::{CertDir, File};
use super::jwt::{self, Token};
use super::x509::{self, X509Documents};
use crate::proto::{JwtBundlesResponse, JwtsvidResponse, X509svidResponse};

/// The helper's outputs over its directory.
#[derive(Debug)]
pub(super) struct Outputs {
    dir: CertDir,
    hint: Option<String>,
}

impl Outputs {
    /// Opens (creating if needed) the configured `cert_dir`.
    pub(super) fn open(config: &HelperConfig) -> Result<Self, HelperError> {
        let dir = CertDir::open(&config.cert_dir).map_err(|source| HelperError::CertDir {
            path: config.cert_dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            hint: config.hint.clone(),
        })
    }

    /// The files an X.509 update would produce.
    pub(super) fn render_x509(
        &self,
        output: &X509Output,
        response: &X509svidResponse,
    ) -> Result<X509Documents, HelperError> {
        Ok(x509::render(response, self.hint.as_deref(), output)?)
    }

    /// Publishes the certificate, key and bundle as one generation.
    pub(super) fn publish_x509(&self, output: &X509Output, docs: &X509Documents) -> Result<(), HelperError> {
        let files = [
            file(&output.svid, docs.certificates.as_bytes()),
            file(&output.key, docs.key.as_bytes()),
            file(&output.bundle, docs.bundle.as_bytes()),
        ];
        self.dir.publish(&files).map_err(|source| HelperError::Write {
            path: self.dir.path(&output.svid.name),
            source,
        })?;
        tracing::info!(spiffe_id = %docs.spiffe_id, serial = %docs.serial, "wrote X.509-SVID files");
        Ok(())
    }

    /// Writes the token of a JWT-SVID response; returns it with its refresh time.
    pub(super) fn write_jwt_svid(
        &self,
        output: &JwtSvidOutput,
        response: &JwtsvidResponse,
    ) -> Result<Token, HelperError> {
        let token = jwt::token(response, self.hint.as_deref(), SystemTime::now())?;
        self.write(&output.file, token.token.as_bytes())?;
        tracing::info!(spiffe_id = %token.spiffe_id, audience = ?output.audiences, "wrote JWT-SVID");
        Ok(token)
    }

    /// Writes the JWT bundles.
    pub(super) fn write_jwt_bundle(
        &self,
        output: &FileOutput,
        response: &JwtBundlesResponse,
    ) -> Result<(), HelperError> {
        self.write(output, jwt::bundle_document(response).as_bytes())?;
        tracing::info!(file = %output.name, "wrote JWT bundles");
        Ok(())
    }

    fn write(&self, output: &FileOutput, contents: &[u8]) -> Result<(), HelperError> {
        self.dir
            .write(file(output, contents))
            .map_err(|source| HelperError::Write {
                path: self.dir.path(&output.name),
                source,
            })
    }
}

fn file<'a>(output: &'a FileOutput, contents: &'a [u8]) -> File<'a> {
    File {
        name: &output.name,
        contents,
        mode: output.mode,
    }
}

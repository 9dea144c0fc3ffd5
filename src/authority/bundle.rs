//! The X.509 trust bundle of our trust domain.

/// The CA certificates relying parties trust, DER encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Bundle {
    roots: Vec<Vec<u8>>,
}

impl X509Bundle {
    /// A bundle of these DER certificates.
    pub fn new(roots: Vec<Vec<u8>>) -> Self {
        Self { roots }
    }

    /// Each CA certificate, DER.
    pub fn roots(&self) -> &[Vec<u8>] {
        &self.roots
    }

    /// The Workload API encoding: the DER certificates concatenated.
    pub fn concatenated_der(&self) -> Vec<u8> {
        self.roots.concat()
    }
}

//! A signer elsewhere: in fleet mode the SPIRE Server signs every SVID.
//! The authority knows it only by this interface (minting by template or
//! entry); the fleet module implements it over the server's API.

use std::future::Future;
use std::pin::Pin;

use super::{AuthorityError, JwtSvid, SvidTemplate, X509Svid};
use crate::spiffe_id::SpiffeId;

/// A boxed future, as a trait object's async methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Mints SVIDs by asking a remote authority.
pub trait RemoteSigner: Send + Sync + std::fmt::Debug {
    /// A fresh X.509-SVID (a new key) for `template`, which names the
    /// remote entry in `remote_entry`.
    fn mint_x509<'a>(&'a self, template: &'a SvidTemplate)
    -> BoxFuture<'a, Result<X509Svid, AuthorityError>>;

    /// A JWT-SVID for `spiffe_id` by the remote entry `remote_entry`,
    /// addressed to `audiences`.
    fn mint_jwt<'a>(
        &'a self,
        spiffe_id: &'a SpiffeId,
        remote_entry: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<JwtSvid, AuthorityError>>;
}

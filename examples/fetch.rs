//! The smallest Workload API client: fetches this process's X.509-SVID from
//! attestd with the `spiffe` crate and prints who it is and until when.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/attestd/api.sock cargo run --example fetch
//! ```

use spiffe::WorkloadApiClient;
use x509_parser::prelude::{FromDer, X509Certificate};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = WorkloadApiClient::connect_env().await?;
    let svid = client.fetch_x509_svid().await?;
    let (_, leaf) = X509Certificate::from_der(svid.leaf().as_bytes())?;
    println!("SPIFFE ID: {}", svid.spiffe_id());
    println!("Expires:   {}", leaf.validity().not_after);
    Ok(())
}

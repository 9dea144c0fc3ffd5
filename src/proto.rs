//! The Workload API messages and service, generated from
//! `proto/spiffe/workload.proto` by `build.rs`, and attestd's own agent API
//! (tasks and authorization) from `proto/attestd/agent/v1/agent.proto`;
//! and the SPIRE Server APIs fleet mode calls ([`spire`], from `proto/spire`,
//! following spire-api-sdk v1.13.3).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

pub mod codec;
pub mod json;

/// attestd's agent API (`attestd.agent.v1`): the `Tasks` and
/// `Authorization` services, served on the Workload API socket.
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/attestd.agent.v1.rs"));
}

/// The SPIRE Server APIs a node agent calls (clients only), in SPIRE's
/// packages, so the generated code's paths between them resolve.
pub mod spire {
    /// `spire.api.*`.
    pub mod api {
        /// `spire.api.types`: entries, SVIDs, bundles, selectors.
        pub mod types {
            include!(concat!(env!("OUT_DIR"), "/spire.api.types.rs"));
        }
        /// `spire.api.server.*`: the server's services.
        pub mod server {
            /// `spire.api.server.agent.v1`: node attestation, agent SVID renewal.
            pub mod agent {
                /// Version 1.
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.agent.v1.rs"));
                }
            }
            /// `spire.api.server.entry.v1`: the agent's authorized entries.
            pub mod entry {
                /// Version 1.
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.entry.v1.rs"));
                }
            }
            /// `spire.api.server.svid.v1`: workload SVIDs.
            pub mod svid {
                /// Version 1.
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.svid.v1.rs"));
                }
            }
            /// `spire.api.server.bundle.v1`: trust bundles.
            pub mod bundle {
                /// Version 1.
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.bundle.v1.rs"));
                }
            }
        }
    }
}

/// `google.rpc.Status`: how gRPC status details are encoded.
pub mod google_rpc {
    include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
}

/// The gRPC metadata key every Workload API request must carry with the
/// value [`SECURITY_HEADER_VALUE`].
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// The only accepted value of [`SECURITY_HEADER`].
pub const SECURITY_HEADER_VALUE: &str = "true";

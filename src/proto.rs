//! The Workload API messages and service, generated from
//! `proto/spiffe/workload.proto` by `build.rs`, and attestd's own agent API
//! (tasks and authorization) from `proto/attestd/agent/v1/agent.proto`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

pub mod codec;
pub mod json;

/// attestd's agent API (`attestd.agent.v1`): the `Tasks` and
/// `Authorization` services, served on the Workload API socket.
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/attestd.agent.v1.rs"));
}

/// The gRPC metadata key every Workload API request must carry with the
/// value [`SECURITY_HEADER_VALUE`].
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// The only accepted value of [`SECURITY_HEADER`].
pub const SECURITY_HEADER_VALUE: &str = "true";

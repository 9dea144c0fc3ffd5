//! The Workload API messages and service, generated from
//! `proto/spiffe/workload.proto` by `build.rs`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

/// The gRPC metadata key every Workload API request must carry with the
/// value [`SECURITY_HEADER_VALUE`].
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// The only accepted value of [`SECURITY_HEADER`].
pub const SECURITY_HEADER_VALUE: &str = "true";

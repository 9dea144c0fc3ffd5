//! attestd: a per-host SPIFFE Workload API daemon.
//!
//! The modules follow the data flow of one request (see DESIGN.md):
//! [`workload_api`] accepts a caller on the Unix socket, [`attest`] turns the
//! kernel's facts about it into [`selector`]s, the [`registry`] matches them
//! to registration entries, the [`svid_cache`] hands out the entry's current
//! SVID minted by the [`authority`], and [`audit`] records the decision.
//! Agents' tasks ([`tasks`]) bind a decision of the policy decision point
//! ([`authz`]) to a declared intent. [`federation`] keeps foreign trust
//! domains' bundles and serves ours; [`oidc`] publishes the JWT signing
//! keys to relying parties by OIDC discovery; [`sds`] serves Envoy. [`daemon`] wires these together; [`client`] is the CLI's Workload API
//! client, and [`helper`] the sidecar that writes rotated SVIDs to files.

// Only `sys` may use `unsafe` (system calls nix lacks), each with a SAFETY
// comment.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod atomic_file;
pub mod attest;
pub mod audit;
pub mod authority;
pub mod authz;
pub mod cli_docs;
pub mod client;
pub mod config;
pub mod daemon;
pub mod explain;
pub mod federation;
pub mod file_changes;
pub mod file_stamp;
pub mod fleet;
pub mod go_flags;
pub mod helper;
pub mod oidc;
pub mod policy_check;
pub mod proto;
pub mod registry;
pub mod sds;
pub mod selector;
pub mod spiffe_id;
pub mod svid_cache;
mod sys;
pub mod tasks;
pub mod telemetry;
pub mod wall_clock;
pub mod workload_api;

//! End-to-end tests: each starts the real `attestd` binary on a temporary
//! directory and talks to it over its socket with real SPIFFE clients (the
//! Rust `spiffe` crate in-process, go-spiffe, and attestd's own CLI run as
//! other uids). They run as root, as CI does, to switch uids.

mod agent_python;
mod attacks;
mod attestation;
mod audit;
mod audit_flood;
mod authz;
mod bundle_show;
mod ca;
mod clock_steps;
mod config_errors;
mod container;
mod envoy;
mod examples;
mod exhaustion;
mod faults;
mod federation;
mod fleet;
mod forgery;
mod gateway;
mod go_interop;
mod harness;
mod helper;
mod isolation;
mod jwt;
mod oidc;
mod operations;
mod owner;
mod packaged_systemd;
#[allow(dead_code)] // power cuts are the crash loop's; the attack tests stall it
#[path = "../../benches/crash_loop/power_cut_fs.rs"]
mod power_cut_fs;
mod py_interop;
mod restart;
mod robustness;
mod rotation;
mod scriptable_output;
mod sds;
mod security_header;
mod systemd_unit;
mod tasks;
mod x509_rust_client;

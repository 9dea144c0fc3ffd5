//! Generates the Workload API and attestd's agent API types and services
//! from `proto/` with protox, a pure-Rust protobuf compiler, so building
//! attestd needs no system `protoc`; and the clients of the SPIRE Server
//! APIs fleet mode calls (`proto/spire`, following spire-api-sdk v1.13.3).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let served = [
        "proto/spiffe/workload.proto",
        "proto/attestd/agent/v1/agent.proto",
    ];
    let spire = [
        "proto/spire/api/types/types.proto",
        "proto/spire/api/server/agent/v1/agent.proto",
        "proto/spire/api/server/entry/v1/entry.proto",
        "proto/spire/api/server/svid/v1/svid.proto",
        "proto/spire/api/server/bundle/v1/bundle.proto",
        "proto/google/rpc/status.proto",
    ];
    for proto in served.iter().chain(&spire) {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Smaller per-stream buffers than tonic's default (see the module).
        .codec_path("crate::proto::codec::SmallBuffers")
        .compile_fds(protox::compile(served, ["proto"])?)?;
    // attestd is only ever a client of SPIRE Server.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile(spire, ["proto"])?)?;
    Ok(())
}

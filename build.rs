//! Generates the Workload API and attestd's agent API types and services
//! from `proto/` with protox, a pure-Rust protobuf compiler, so building
//! attestd needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/spiffe/workload.proto",
        "proto/attestd/agent/v1/agent.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Smaller per-stream buffers than tonic's default (see the module).
        .codec_path("crate::proto::codec::SmallBuffers")
        .compile_fds(descriptors)?;
    Ok(())
}

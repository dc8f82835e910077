//! Compiles the demo gRPC service with `protox`, so no `protoc` binary is needed.

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto/demo.proto");
    let descriptors = protox::compile(["proto/demo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

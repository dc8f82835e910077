//! Compiles `nephilia/v1/*.proto` with protox (pure Rust), so no `protoc` is needed.
fn main() -> anyhow::Result<()> {
    let files = ["nephilia/v1/records.proto", "nephilia/v1/ingest.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles `nephilia/v1/*.proto` with protox (pure Rust), so no `protoc` is needed.
fn main() -> anyhow::Result<()> {
    let files = ["nephilia/v1/records.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}

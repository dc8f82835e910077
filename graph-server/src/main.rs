//! `nephilia-server`. The graph server (gRPC ingest, topology, HTTP API) is issue [5/6];
//! until it lands the binary says so instead of pretending to serve.
use std::process::ExitCode;

fn main() -> ExitCode {
    let version = env!("CARGO_PKG_VERSION");
    eprintln!(
        "nephilia-server {version}: the graph server is not part of this build yet; \
         use `nephilia-agent observe` to see connection records"
    );
    // The protocol crate is linked so the workspace keeps it building.
    let _ = nephilia_proto::v1::Outcome::Closed;
    ExitCode::FAILURE
}

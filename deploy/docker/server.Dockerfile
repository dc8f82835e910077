# syntax=docker/dockerfile:1
#
# nephilia-server: the graph server (gRPC ingest, HTTP API and web UI) as one binary.
# Build from the repository root (the whole workspace is the build context):
#   docker build -f deploy/docker/server.Dockerfile -t nephilia/nephilia-server:0.1.0 .

# ---- builder: stable Rust only. proto/ is compiled by protox in build.rs, so no protoc;
# nothing here touches eBPF, so no nightly, LLVM or bpf-linker.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nephilia-graph-server \
    && install -D -m 0755 target/release/nephilia-server /out/nephilia-server

# ---- runtime: glibc and libgcc, uid/gid 65532 (the Deployment sets the same).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/nephilia-server /usr/local/bin/nephilia-server
ENV LOG_FORMAT=json
USER 65532:65532
EXPOSE 9696 9697
ENTRYPOINT ["/usr/local/bin/nephilia-server"]

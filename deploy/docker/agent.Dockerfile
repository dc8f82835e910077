# syntax=docker/dockerfile:1
#
# nephilia-agent: the node agent with its eBPF programs embedded.
# Build from the repository root (the whole workspace is the build context):
#   docker build -f deploy/docker/agent.Dockerfile -t nephilia/nephilia-agent:0.1.0 .

# ---- builder: stable Rust for the agent, nightly + rust-src + bpf-linker for the eBPF
# programs, mirroring `cargo xtask setup` (xtask/src/setup.rs).
FROM rust:1.95-bookworm AS builder

# LLVM 22 for bpf-linker (bookworm carries it in bookworm-security).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev \
    && rm -rf /var/lib/apt/lists/*

# agent/build.rs builds ebpf/ with aya-build, which runs `rustup run nightly cargo
# build -Z build-std=core --target bpfel-unknown-none`: the toolchain must be named
# `nightly` and have the core sources.
RUN rustup toolchain install nightly --profile minimal --component rust-src

# The bpf-linker release xtask/src/setup.rs installs, built against LLVM 22.
ARG BPF_LINKER_VERSION=0.13.0
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked \
        --version ${BPF_LINKER_VERSION} --no-default-features --features llvm-22

WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied
# out of the cache mount so the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nephilia-agent \
    && install -D -m 0755 target/release/nephilia-agent /out/nephilia-agent

# ---- runtime: glibc and libgcc only. The agent runs as uid 0 with the capabilities the
# DaemonSet grants (deploy/helm/nephilia/templates/agent-daemonset.yaml), so this is not
# the :nonroot variant.
FROM gcr.io/distroless/cc-debian12
COPY --from=builder /out/nephilia-agent /usr/local/bin/nephilia-agent
ENV LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/nephilia-agent"]
CMD ["check"]

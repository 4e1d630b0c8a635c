# syntax=docker/dockerfile:1
# portico container image. Needs BuildKit (the default builder since Docker 23).
#
#   docker build -t portico:dev .                       # plain release build, minutes
#   docker build --build-arg PGO=1 -t portico:dev .     # profile-guided, ~3x as long
#
# Only Cargo.toml, Cargo.lock, src/ and benches/ are used (.dockerignore).
#
# PGO=1 builds the binary profile-guided (benches/pgo.sh): an instrumented
# build is trained on loopback with the load bench, then rebuilt with the
# profile. It takes about three times as long as a plain build and fetches
# rustup's llvm-tools component; what it buys is measured in benches/README.md.
# CI builds it the same way (.ci/run runs benches/pgo.sh).
#
# Cargo's registry and target directory live in BuildKit cache mounts, kept by
# the builder between builds: a rebuild after a change to src/ recompiles
# portico alone, and the dependency step below is reused as a layer until
# Cargo.toml or Cargo.lock changes.

FROM rust:1.95-slim-bookworm AS builder

# aws-lc-sys (rustls' crypto provider) compiles C with the cc crate: it needs a C
# compiler and the libc headers, no cmake and no clang. The slim image ships gcc
# already; installing it here keeps the requirement explicit.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# 1. Dependencies only, against stub sources: re-run only when Cargo.toml or
#    Cargo.lock changes, not when src/ or benches/ do. Cargo wants the file of
#    every declared target to exist when it reads the manifest, so the
#    library, the binary and the two benches get stubs (`cargo build` compiles
#    no bench).
RUN --mount=type=bind,source=Cargo.toml,target=/src/Cargo.toml \
    --mount=type=bind,source=Cargo.lock,target=/src/Cargo.lock \
    --mount=type=cache,id=portico-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=portico-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=portico-target,target=/src/target,sharing=locked \
    mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo '//! stub' > src/lib.rs \
 && echo 'fn main() {}' > benches/load.rs \
 && echo 'fn main() {}' > benches/hotpath.rs \
 && cargo build --release --locked \
 && rm -rf src benches

# 2. The real sources. COPY keeps the files' modification times, which may be
#    older than what the target cache last built (the stubs above, or an
#    earlier build): touch them all so that cargo rebuilds portico instead of
#    keeping a stale binary; the dependencies stay built. The target directory
#    is a cache mount, gone after this step, so the binary is copied out of it
#    here. benches/pgo.sh builds the load bench into target/release and the
#    instrumented and final binaries into target/pgo-gen and target/pgo.
ARG PGO=0
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,id=portico-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=portico-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=portico-target,target=/src/target,sharing=locked \
    find src benches -type f -exec touch {} + \
 && if [ "$PGO" = 1 ]; then \
      bin=$(bash benches/pgo.sh) && cp "$bin" /portico; \
    else \
      cargo build --release --locked && cp target/release/portico /portico; \
    fi \
 && /portico --version

# Runtime: glibc + libgcc (what a Rust binary links), no shell, no package
# manager, uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="portico" \
      org.opencontainers.image.description="TLS-terminating ambassador proxy for Kubernetes Pods" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /portico /usr/local/bin/portico

USER 65532:65532
# 8443: TLS listener; 9901: admin server (/healthz, /readyz, /metrics, /shutdown)
EXPOSE 8443 9901
ENTRYPOINT ["/usr/local/bin/portico"]

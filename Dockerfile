# portico container image.
#
#   docker build -t ghcr.io/example/portico:0.1.0 .
#   docker build --build-arg PGO=0 -t portico:dev .    # plain release build, faster
#
# Only Cargo.toml, Cargo.lock, src/ and benches/ are used.
#
# By default the binary is built profile-guided (benches/pgo.sh): an
# instrumented build is trained on loopback with the load bench, then rebuilt
# with the profile. On the bench machine that took 13-17 % off the CPU per
# request (benches/README.md). The build stage's steps, run outside Docker on
# 2 cores, took 13 minutes; a plain release build takes 3-4. The training needs
# loopback in the build container, which every builder gives, and adds rustup's
# llvm-tools component (fetched from the Rust project's servers).

FROM rust:1.95-slim-bookworm AS builder

# aws-lc-sys (rustls' crypto provider) compiles C with the cc crate: it needs a C
# compiler and the libc headers, no cmake and no clang. The slim image ships gcc
# already; installing it here keeps the requirement explicit.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# 1. Dependencies only: this layer is reused until Cargo.toml or Cargo.lock
#    changes. Cargo wants the file of every declared target to exist when it
#    reads the manifest, so the library and the binary get stubs and benches/
#    comes in as it is (`cargo build` does not compile benches).
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && echo '//! stub' > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# 2. The real sources. COPY keeps the files' modification times, which may be
#    older than the stub build above: touch the crate roots so that cargo
#    rebuilds the crate instead of keeping the stub binary. benches/pgo.sh
#    builds the load bench into target/release (reusing the layer above) and
#    the instrumented and final binaries into target/pgo-gen and target/pgo.
ARG PGO=1
COPY src ./src
RUN touch src/main.rs src/lib.rs \
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

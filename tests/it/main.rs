//! The integration tests: one binary, a module per concern, real sockets,
//! real TLS, real clients and real upstreams on 127.0.0.1 port 0. Run one
//! concern with `cargo test --test it MODULE::`.
//!
//! Four suites stay binaries of their own: `soak` (slow, and it counts the
//! heap through its own global allocator), `testssl` (needs testssl.sh),
//! `browser` (needs Chromium) and `pod_sim` (needs root for network
//! namespaces).

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod certificates;
mod cli;
mod deploy;
mod drain;
mod framing;
mod h2_abuse;
mod inject;
mod layering;
mod limits;
mod memory;
mod options;
mod proxy_protocol;
mod proxying;
mod reference;
mod routing;
mod telemetry;
mod timeouts;
mod tls_input;
mod upstream_failures;

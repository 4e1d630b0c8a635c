//! portico: a TLS-terminating ambassador for the primary container of a Pod.
//!
//! A request travels: [`listener`] (accept, connection limit, the
//! [`proxy_protocol`] header when a load balancer sends one) → [`tls`]
//! (handshake, SNI, client certificate) → [`server`] (HTTP/1.1 or HTTP/2 by
//! ALPN, header-read and idle timeouts) → [`stack`] (request id, limits,
//! headers, routing via [`routing`]) → [`upstream`] (pooled clients to the
//! primary). Imports point down this path, and any stage may use the leaves:
//! [`conn`] (the connection's facts, which the TLS stage fills, and its
//! clock, which the server and the stack keep), [`error`] (which turns every
//! failure into the reference's answer), [`config`], [`shutdown`] and
//! [`telemetry`]; `tests/it/layering.rs` holds the order and the back-edges
//! still to cut. Beside the data path: [`certs`], [`reload`] (certificate
//! and client CA rotation), [`admin`], [`readiness`], and [`app`], which
//! wires them. [`inject`] is the `portico inject` command, which edits
//! Kubernetes manifests and uses none of them.

pub mod admin;
#[cfg(feature = "mimalloc")]
pub mod alloc;
pub mod app;
pub mod certs;
pub mod config;
pub mod conn;
pub mod error;
pub mod inject;
pub mod listener;
pub mod proxy_protocol;
pub mod readiness;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod stack;
pub mod telemetry;
pub mod tls;
pub mod upstream;

//! The listener stage: accept TCP connections within `--max-connections`
//! (accepting pauses at the limit), survive descriptor exhaustion by backing
//! off, read the PROXY protocol header where `--proxy-protocol` asks for one,
//! and hand each connection to the TLS stage, then to the HTTP stage.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::config::Config;
use crate::conn::ConnInfo;
use crate::proxy_protocol::{self, ReadError};
use crate::server;
use crate::shutdown::{reached, Phase};
use crate::stack::Shared;
use crate::tls::stream::TlsStream;
use crate::tls::{HandshakeError, TlsAcceptor};

/// Accepts until the drain closes the listener.
pub async fn run(listener: TcpListener, tls: Arc<TlsAcceptor>, shared: Arc<Shared>) {
    let port = http::HeaderValue::from(listener.local_addr().map(|a| a.port()).unwrap_or(0));
    let inherits_nodelay = nodelay_on_listener(&listener);
    let slots = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let mut phase = shared.drain.subscribe();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = reached(&mut phase, Phase::Closing) => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if is_resource_exhaustion(&e) {
                        tracing::error!(error = %e, "cannot accept: out of file descriptors or memory; retrying in 100ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    } else {
                        tracing::debug!(error = %e, "accept failed");
                    }
                    continue;
                }
            },
            _ = reached(&mut phase, Phase::Closing) => return,
        };
        if !inherits_nodelay {
            let _ = tcp.set_nodelay(true);
        }
        let tls = tls.clone();
        let port = port.clone();
        let shared = shared.clone();
        let guard = shared.drain.track();
        tokio::spawn(async move {
            let _permit = permit;
            let _guard = guard;
            let m = &shared.metrics;
            m.connections_total.inc();
            m.connections_open.inc();
            // Boxed, and nothing of it held across the serving: the task of
            // an idle connection then holds a few pointers, not the
            // handshake's state (S5 in benches/).
            let serving = match Box::pin(handshake(&tls, tcp, peer, port, &shared.cfg)).await {
                Ok((stream, info)) => {
                    m.handshake(true);
                    Some(server::serve(stream, Arc::new(info), shared.clone()))
                }
                Err(e) => {
                    m.handshake(false);
                    match e {
                        Refused::Proxy(why) => {
                            tracing::debug!(peer = %peer, reason = %why, "PROXY protocol header refused");
                        }
                        Refused::Tls(client, e) => {
                            tracing::debug!(peer = %peer, client = %client, error = %e, "TLS handshake failed");
                        }
                    }
                    None
                }
            };
            if let Some(serving) = serving {
                serving.await;
            }
            shared.metrics.connections_open.dec();
        });
    }
}

/// Why a connection never reached the HTTP stage; both count as a failed handshake.
enum Refused {
    /// `--proxy-protocol`: no valid header in time, or a peer not allowed to send one.
    Proxy(String),
    /// The TLS handshake, with the client's address (the carried one, if any).
    Tls(SocketAddr, HandshakeError),
}

/// The PROXY header (with `--proxy-protocol`) and the TLS handshake, under
/// one `--handshake-timeout` deadline, so a header sent slowly cannot add a
/// second budget to the handshake's.
async fn handshake(
    tls: &TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
    port: http::HeaderValue,
    cfg: &Config,
) -> Result<(TlsStream, ConnInfo), Refused> {
    let mut timeout = cfg.handshake_timeout;
    let mut client = peer;
    if cfg.proxy_protocol {
        let from = &cfg.proxy_protocol_from;
        if !from.is_empty() && !from.iter().any(|c| c.contains(peer.ip())) {
            return Err(Refused::Proxy(
                "peer is outside --proxy-protocol-from".into(),
            ));
        }
        let header = if timeout.is_zero() {
            proxy_protocol::read_header(&mut tcp).await
        } else {
            let deadline = Instant::now() + timeout;
            let h = tokio::time::timeout_at(deadline, proxy_protocol::read_header(&mut tcp))
                .await
                .map_err(|_| {
                    Refused::Proxy("no complete PROXY header within --handshake-timeout".into())
                })?;
            // What is left of the one budget; zero would mean "no limit" to
            // the TLS stage, so a budget spent on the header ends here.
            timeout = deadline.saturating_duration_since(Instant::now());
            if timeout.is_zero() {
                return Err(Refused::Tls(peer, HandshakeError::Timeout));
            }
            h
        };
        match header {
            Ok(h) => client = h.source.unwrap_or(peer),
            Err(ReadError::Refused(r)) => return Err(Refused::Proxy(r.to_string())),
            Err(e) => return Err(Refused::Proxy(e.to_string())),
        }
    }
    let accept = tls.accept(tcp, client, port, timeout);
    let done = if cfg.allow_san.is_empty() {
        accept.await
    } else {
        // --allow-san's refusal is logged from inside the handshake: the span
        // gives that line the client's address.
        accept
            .instrument(tracing::info_span!("handshake", client = %client))
            .await
    };
    done.map_err(|e| Refused::Tls(client, e))
}

/// Sets TCP_NODELAY on the listening socket; true where accepted sockets
/// inherit it (Linux copies the listener's socket into each accepted one), so
/// that no connection needs a system call of its own for it.
fn nodelay_on_listener(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux")
        && socket2::SockRef::from(listener)
            .set_tcp_nodelay(true)
            .is_ok()
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_whether_inherited_or_set() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let inherits = nodelay_on_listener(&listener);
        assert_eq!(inherits, cfg!(target_os = "linux"));
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        if !inherits {
            tcp.set_nodelay(true).expect("nodelay");
        }
        assert!(tcp.nodelay().expect("read TCP_NODELAY"));
    }
}

//! The listener stage: accept TCP connections within `--max-connections`
//! (accepting pauses at the limit), survive descriptor exhaustion by backing
//! off, and hand each connection to the TLS stage, then to the HTTP stage.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::server;
use crate::shutdown::{reached, Phase};
use crate::stack::Shared;
use crate::tls::TlsAcceptor;

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
            let serving =
                match Box::pin(tls.accept(tcp, peer, port, shared.cfg.handshake_timeout)).await {
                    Ok((stream, info)) => {
                        m.handshake(true);
                        Some(server::serve(stream, Arc::new(info), shared.clone()))
                    }
                    Err(e) => {
                        m.handshake(false);
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
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

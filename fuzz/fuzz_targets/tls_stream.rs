//! portico's TLS stream adapter (`tls::stream::TlsStream`) after a real
//! handshake, fed arbitrary client records.
//!
//! Each input: a real TCP connection on loopback, a real handshake between
//! rustls's client and portico's `TlsAcceptor`, then records the client writes
//! straight to the socket, sealed under the client's traffic keys (so they
//! reach rustls's processing after decryption) or raw (garbage, cut records).
//! portico's side reads everything it is given and answers each read with a
//! write, as hyper would.
//!
//! Input layout: byte 0 picks the protocol (bit 0: TLS 1.2, else 1.3) and
//! whether the client's last record is a sealed close_notify (bit 1); the
//! client always ends with a FIN. Then records, each
//! `[kind][len][len bytes]`: kind bit 7 set writes the bytes raw; otherwise
//! they are sealed as one record of content type 20 + (kind % 4) (change
//! cipher spec, alert, handshake, application data), in TLS 1.3 with
//! `kind >> 2 & 15` bytes of padding.
//!
//! Properties, besides no panic and no hang: the plaintext portico reads is a
//! prefix of the application data the client sealed, in order; and when the
//! client sent nothing but sealed application data, portico reads all of it.

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[path = "../../tests/support/tlsrec.rs"]
#[allow(dead_code)]
mod tlsrec;

struct Setup {
    rt: tokio::runtime::Runtime,
    listener: TcpListener,
    addr: SocketAddr,
    acceptor: Arc<portico::tls::TlsAcceptor>,
    roots: rustls::RootCertStore,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let provider = portico::tls::provider();
    let (store, _) = portico::certs::CertStore::load(&[], &provider).expect("self-signed");
    let leaf = store.slots()[0].current.load().certified.cert[0].clone();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(leaf).expect("the self-signed leaf as its own root");
    let acceptor = portico::tls::TlsAcceptor::new(Arc::new(store), None, false, provider)
        .expect("acceptor");
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    Setup {
        rt,
        listener,
        addr,
        acceptor: Arc::new(acceptor),
        roots,
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let s = &*SETUP;
    s.rt.block_on(async {
        let version = if flags & 1 == 1 {
            &rustls::version::TLS12
        } else {
            &rustls::version::TLS13
        };
        let cfg = tlsrec::config(s.roots.clone(), version, None);
        let server = async {
            let (tcp, peer) = s.listener.accept().await.expect("accept");
            s.acceptor
                .accept(tcp, peer, http::HeaderValue::from_static("8443"), Duration::from_secs(5))
                .await
                .expect("handshake")
                .0
        };
        let (mut stream, mut client) = tokio::join!(server, tlsrec::Keyed::connect(s.addr, cfg));

        let mut wire = Vec::new();
        let mut sealed_data = Vec::new();
        let mut only_data = true;
        while let [kind, len, tail @ ..] = rest {
            let n = usize::from(*len).min(tail.len());
            let (bytes, tail) = tail.split_at(n);
            rest = tail;
            if kind & 0x80 != 0 {
                wire.extend_from_slice(bytes);
                only_data = false;
            } else {
                let typ = 20 + kind % 4;
                if typ == tlsrec::APPLICATION_DATA {
                    sealed_data.extend_from_slice(bytes);
                } else {
                    only_data = false;
                }
                let padding = if version == &rustls::version::TLS13 {
                    usize::from(kind >> 2 & 15)
                } else {
                    0
                };
                wire.extend(client.tx.seal(typ, bytes, padding));
            }
        }

        let reader = async {
            let mut read = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk)).await {
                    Ok(Ok(n @ 1..)) => {
                        read.extend_from_slice(&chunk[..n]);
                        if stream.write_all(b"HTTP/1.1 200 OK\r\n").await.is_err() {
                            break;
                        }
                        let _ = stream.flush().await;
                    }
                    _ => break,
                }
            }
            let _ = stream.shutdown().await;
            read
        };
        if flags & 2 == 2 {
            wire.extend(client.tx.seal(tlsrec::ALERT, &[1, 0], 0));
        }
        let writer = async {
            let _ = client.tcp.write_all(&wire).await;
            let _ = client.tcp.shutdown().await;
            // Take what portico sends, so its writes never wait on this end.
            let mut sink = [0u8; 16 * 1024];
            while let Ok(Ok(1..)) =
                tokio::time::timeout(Duration::from_millis(300), client.tcp.read(&mut sink)).await
            {}
            drop(client);
        };
        let (read, ()) = tokio::join!(reader, writer);
        assert!(
            sealed_data.starts_with(&read),
            "portico read {} bytes that are not the client's application data",
            read.len()
        );
        if only_data {
            assert_eq!(read.len(), sealed_data.len(), "all the application data is read");
        }
    });
});

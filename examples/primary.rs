//! A sample primary container: plain HTTP/1.1 on 127.0.0.1 (port from the
//! first argument, default 8080). It answers every request with what it
//! received, so the forwarding headers portico adds are visible, serves a small
//! page at `/`, and echoes WebSocket messages at `/ws`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// WebSocket messages echoed so far.
static ECHOES: AtomicU64 = AtomicU64::new(0);

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>portico sample primary</title></head>
<body>
<h1 id="title">Hello through portico</h1>
<p>This page came from the primary over plain HTTP; portico terminated TLS.</p>
<p>WebSocket: <span id="ws">connecting</span></p>
<script>
const ws = new WebSocket("wss://" + location.host + "/ws");
ws.onopen = () => ws.send("ping");
ws.onmessage = (e) => { document.getElementById("ws").textContent = "echo: " + e.data; };
ws.onerror = () => { document.getElementById("ws").textContent = "error"; };
// Answered once an echo went out: a pending fetch keeps a headless browser's
// --dump-dom waiting for the WebSocket, which by itself it does not.
fetch("/echoed");
</script>
</body></html>
"#;

async fn handle(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/ws" && req.headers().contains_key(header::UPGRADE) {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
            .unwrap_or_default();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            let Ok(upgraded) = upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
                ECHOES.fetch_add(1, Ordering::Release);
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        h.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        if let Ok(v) = header::HeaderValue::from_str(&key) {
            h.insert("sec-websocket-accept", v);
        }
        return Ok(resp);
    }
    if req.uri().path() == "/echoed" {
        // Waits (up to 5 s) for a WebSocket echo: see the page's script.
        for _ in 0..250 {
            if ECHOES.load(Ordering::Acquire) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        return Ok(resp);
    }
    if req.uri().path() == "/" {
        let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return Ok(resp);
    }
    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    text.push_str(&format!("\n{} body bytes\n", body.len()));
    Ok(Response::new(Full::new(Bytes::from(text))))
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr).await?;
    eprintln!("sample primary listening on http://{addr}");
    serve(listener).await
}

/// Serves the sample primary on `listener` (tests embed it this way).
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(handle))
                .with_upgrades()
                .await;
        });
    }
}

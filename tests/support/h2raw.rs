//! A hand-rolled HTTP/2 client: frames written byte by byte, for what no
//! well-behaved client sends (floods, resets, headers an HTTP/1 upstream
//! would read differently), and a reader that records what the server sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use super::{client_config, Portico, MS};

/// The client connection preface, frame types and flags.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame: the 9-byte header, then `payload`.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, `high` the bits above it.
pub fn int(out: &mut Vec<u8>, n: u8, high: u8, v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    let mut rest = v - max;
    while rest >= 128 {
        out.push((rest % 128 + 128) as u8);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A literal header field without indexing, new name, no Huffman.
pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    int(out, 7, 0, name.len());
    out.extend_from_slice(name);
    int(out, 7, 0, value.len());
    out.extend_from_slice(value);
}

/// A literal value for a static-table name (`:path` is 4, `:authority` 1).
pub fn literal_indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    int(out, 4, 0, index);
    int(out, 7, 0, value.len());
    out.extend_from_slice(value);
}

/// `method` (`:method` GET is static 2, POST 3), `:scheme https`, `path`,
/// `:authority localhost`, then `extra`.
pub fn request(post: bool, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![if post { 0x83 } else { 0x82 }, 0x87];
    literal_indexed_name(&mut b, 4, path.as_bytes());
    literal_indexed_name(&mut b, 1, b"localhost");
    for (n, v) in extra {
        literal(&mut b, n.as_bytes(), v.as_bytes());
    }
    b
}

/// A SETTINGS frame with these (identifier, value) pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// GOAWAY and RST_STREAM error codes (RFC 9113 §7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// What the server sent on a raw HTTP/2 connection.
#[derive(Debug, Default)]
pub struct H2Seen {
    /// GOAWAY error code, if one came.
    pub goaway: Option<u32>,
    /// When the connection ended (EOF or error).
    pub closed: Option<Instant>,
    /// RST_STREAM frames: (stream, code).
    pub resets: Vec<(u32, u32)>,
    /// HEADERS frames: (stream, first byte of the block; 0x88 is `:status 200`).
    pub heads: Vec<(u32, u8)>,
    /// DATA payload bytes, by stream.
    pub data: std::collections::HashMap<u32, usize>,
    pub frames: usize,
}

/// A raw HTTP/2 connection over TLS: the write half, and a task reading and
/// recording every frame the server sends.
pub struct RawH2 {
    pub wr: tokio::io::WriteHalf<TlsStream<TcpStream>>,
    pub seen: Arc<Mutex<H2Seen>>,
    pub reader: tokio::task::JoinHandle<()>,
    /// For a client opened not reading: starts the reader.
    pub start_reading: Arc<tokio::sync::Notify>,
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads one frame: (type, flags, stream, payload).
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

impl RawH2 {
    /// Connects (ALPN h2), sends the preface and `settings`, acknowledges the
    /// server's SETTINGS, then reads in the background (if `read`).
    pub async fn open(p: &Portico, settings: &[(u16, u32)], read: bool) -> Self {
        let sock = TcpSocket::new_v4().expect("socket");
        if !read {
            // A client that does not read: keep what the kernel buffers small.
            sock.set_recv_buffer_size(4096).expect("rcvbuf");
        }
        let tcp = sock.connect(p.tls_addr).await.expect("connect");
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(client_config(p.roots(), &[b"h2"], None)));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("tls");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(PREFACE).await.expect("preface");
        tls.write_all(&self::settings(settings))
            .await
            .expect("settings");
        loop {
            let (ty, flags, _, _) = tokio::time::timeout(MS(2000), read_frame(&mut tls))
                .await
                .expect("server SETTINGS in time")
                .expect("server SETTINGS");
            if ty == SETTINGS && flags & ACK == 0 {
                break;
            }
        }
        tls.write_all(&frame(SETTINGS, ACK, 0, &[]))
            .await
            .expect("settings ack");
        let (mut rd, wr) = tokio::io::split(tls);
        let seen = Arc::new(Mutex::new(H2Seen::default()));
        let s = seen.clone();
        let start_reading = Arc::new(tokio::sync::Notify::new());
        let go = start_reading.clone();
        let reader = tokio::spawn(async move {
            if !read {
                go.notified().await;
            }
            loop {
                match read_frame(&mut rd).await {
                    Ok((ty, _, stream, payload)) => {
                        let mut s = s.lock().expect("lock");
                        s.frames += 1;
                        match ty {
                            GOAWAY if payload.len() >= 8 => {
                                s.goaway = Some(u32::from_be_bytes([
                                    payload[4], payload[5], payload[6], payload[7],
                                ]));
                            }
                            RST_STREAM if payload.len() == 4 => {
                                let code = u32::from_be_bytes([
                                    payload[0], payload[1], payload[2], payload[3],
                                ]);
                                s.resets.push((stream, code));
                            }
                            HEADERS => {
                                s.heads
                                    .push((stream, payload.first().copied().unwrap_or(0)));
                            }
                            DATA => *s.data.entry(stream).or_default() += payload.len(),
                            _ => {}
                        }
                    }
                    Err(_) => {
                        s.lock().expect("lock").closed = Some(Instant::now());
                        return;
                    }
                }
            }
        });
        Self {
            wr,
            seen,
            reader,
            start_reading,
        }
    }

    /// Writes `bytes`; false once the server has stopped taking them (closed,
    /// or not reading for 1 s).
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(MS(1000), self.wr.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// How long after `since` the server closed the connection, if within `limit`.
    pub async fn closed_within(&self, since: Instant, limit: Duration) -> Option<Duration> {
        let deadline = since + limit;
        loop {
            if let Some(at) = self.seen.lock().expect("lock").closed {
                return Some(at.saturating_duration_since(since));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(MS(10)).await;
        }
    }
}

//! The TLS record layer of one client connection: rustls's unbuffered API over
//! the TCP stream, with buffers portico owns.
//!
//! rustls's buffered connection keeps a 4 KiB receive buffer for as long as
//! the connection lives and reads at most 4 KiB per call. Here the receive
//! buffer is allocated when the socket is readable and freed when the
//! connection waits with nothing in it, so an idle keep-alive connection holds
//! no buffer at all (S5 in benches/), and a read takes up to 32 KiB at once
//! (fewer reads per uploaded MiB). Outgoing records are sealed into one buffer
//! per thread and written from there; only what the socket did not take is
//! kept, per connection, until it is flushed.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Reads ask for this much room: two full records.
const READ_SIZE: usize = 32 * 1024;
/// A read is started only with at least this much room left.
const MIN_READ: usize = 8 * 1024;
/// Plaintext sealed per write call: the socket takes it in one write.
const WRITE_MAX: usize = 64 * 1024;
/// A TLS record's overhead at most (TLS 1.2 AES-GCM: 5 header, 8 nonce, 16 tag).
const RECORD_OVERHEAD: usize = 32;
/// rustls's largest record payload.
const RECORD_MAX: usize = 16 * 1024;

thread_local! {
    /// Records are sealed here and written from here: one buffer per thread;
    /// the records are `.0[...1]`.
    static SEALED: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    /// The SNI of the ClientHello rustls is resolving a certificate for.
    static SNI: Cell<Option<Option<Box<str>>>> = const { Cell::new(None) };
}

/// Called by the certificate resolver with the ClientHello's SNI: rustls asks
/// for a certificate (for full and resumed handshakes alike) while the
/// handshake's records are being processed on this thread, and its unbuffered
/// connection has no accessor for the name.
pub fn saw_sni(name: Option<&str>) {
    SNI.set(Some(name.map(Box::from)));
}

/// A server-side TLS connection over TCP.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext received: `rx[rx_at..]` is not processed yet.
    rx: Vec<u8>,
    rx_at: usize,
    /// Plaintext decrypted and not read yet: `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext the socket has not taken yet: `tx[tx_at..]`.
    tx: Vec<u8>,
    tx_at: usize,
    /// close_notify (or the end of the stream) has been read.
    read_done: bool,
    /// The TCP stream ended without close_notify.
    truncated: bool,
    /// close_notify has been queued.
    close_sent: bool,
    /// rustls refused the peer's input: it is not asked again.
    failed: bool,
    sni: Option<Box<str>>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

/// What rustls reached with the records at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// The handshake needs more records.
    Handshaking,
    /// The handshake is done and no whole record is left unprocessed.
    Traffic,
    /// Both sides have sent close_notify.
    Closed,
}

/// What to seal when rustls reaches the traffic state.
enum Seal<'a> {
    Nothing,
    Data(&'a [IoSlice<'a>], &'a mut usize),
    CloseNotify,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Runs the server handshake on `tcp` (no time limit: the caller sets one).
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = Self {
            tcp,
            conn,
            rx: Vec::new(),
            rx_at: 0,
            plain: Vec::new(),
            plain_at: 0,
            tx: Vec::new(),
            tx_at: 0,
            read_done: false,
            truncated: false,
            close_sent: false,
            failed: false,
            sni: None,
        };
        poll_fn(|cx| s.poll_handshake(cx)).await?;
        Ok(s)
    }

    /// The rustls connection: version, ALPN, the client's certificates.
    pub fn conn(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// The SNI the client sent.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Whether anything from the client is here already: plaintext, records
    /// or the end of the stream.
    fn has_input(&self) -> bool {
        self.plain_at < self.plain.len() || self.rx_at < self.rx.len() || self.read_done
    }

    /// Resolves when the client has sent something (or closed). The socket
    /// is peeked, not only asked: its readiness may be left over from the
    /// handshake's last read.
    pub async fn input(&self) -> io::Result<()> {
        if self.has_input() {
            return Ok(());
        }
        self.tcp.peek(&mut [0u8; 1]).await.map(drop)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            SNI.set(None);
            let reached = self.advance(None, Seal::Nothing, false);
            if let Some(sni) = SNI.take() {
                self.sni = sni;
            }
            let reached = match reached {
                Ok(r) => r,
                Err(e) => {
                    self.send_now();
                    return Poll::Ready(Err(e));
                }
            };
            // The handshake's flight must leave before more is read (and the
            // TLS 1.2 server Finished before the handshake counts as done).
            ready!(self.poll_flush_tx(cx))?;
            match reached {
                Reached::Traffic => {
                    self.shed();
                    return Poll::Ready(Ok(()));
                }
                Reached::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                Reached::Handshaking => {
                    if self.read_done {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "client closed the connection during the TLS handshake",
                        )));
                    }
                    ready!(self.poll_fill(cx))?;
                }
            }
        }
    }

    /// Feeds rustls the records received: decrypted data goes to `out`, then
    /// to `plain`; handshake records and alerts rustls produces are appended
    /// to `tx` (or to `sealed` when given); in the traffic state `seal` is
    /// sealed into the same buffer.
    fn advance(
        &mut self,
        mut out: Option<&mut ReadBuf<'_>>,
        mut seal: Seal<'_>,
        into_sealed: bool,
    ) -> io::Result<Reached> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS connection has failed",
            ));
        }
        let Self {
            conn,
            rx,
            rx_at,
            plain,
            plain_at,
            tx,
            read_done,
            failed,
            ..
        } = self;
        SEALED.with_borrow_mut(|(sealed, sealed_end)| {
            // Whatever an earlier call left (it failed half-way) is not this
            // connection's to send.
            *sealed_end = 0;
            let mut sink = if into_sealed {
                Sink {
                    buf: sealed,
                    end: 0,
                }
            } else {
                let end = tx.len();
                Sink { buf: tx, end }
            };
            let result = (|| loop {
                let UnbufferedStatus { mut discard, state } =
                    conn.process_tls_records(&mut rx[*rx_at..]);
                let mut reached = None;
                let mut refused = None;
                match state {
                    Err(e) => refused = Some(e),
                    Ok(ConnectionState::ReadTraffic(mut records)) => {
                        while let Some(record) = records.next_record() {
                            let record = match record {
                                Ok(r) => r,
                                Err(e) => {
                                    refused = Some(e);
                                    break;
                                }
                            };
                            discard += record.discard;
                            let payload = record.payload;
                            let mut taken = 0;
                            if *plain_at == plain.len() {
                                if let Some(out) = out.as_deref_mut() {
                                    taken = out.remaining().min(payload.len());
                                    out.put_slice(&payload[..taken]);
                                }
                            }
                            plain.extend_from_slice(&payload[taken..]);
                        }
                    }
                    Ok(ConnectionState::EncodeTlsData(mut data)) => sink.encode(&mut data)?,
                    Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
                    Ok(ConnectionState::BlockedHandshake) => reached = Some(Reached::Handshaking),
                    Ok(ConnectionState::PeerClosed) => *read_done = true,
                    Ok(ConnectionState::Closed) => {
                        *read_done = true;
                        reached = Some(Reached::Closed);
                    }
                    Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                        match std::mem::replace(&mut seal, Seal::Nothing) {
                            Seal::Nothing => {}
                            Seal::Data(slices, taken) => {
                                let mut budget = WRITE_MAX;
                                for s in slices {
                                    let s = &s[..s.len().min(budget)];
                                    if s.is_empty() {
                                        continue;
                                    }
                                    let room =
                                        s.len() + s.len().div_ceil(RECORD_MAX) * RECORD_OVERHEAD;
                                    sink.put(room, |buf| {
                                        traffic.encrypt(s, buf).map_err(Short::from)
                                    })?;
                                    *taken += s.len();
                                    budget -= s.len();
                                    if budget == 0 {
                                        break;
                                    }
                                }
                            }
                            Seal::CloseNotify => {
                                sink.put(RECORD_OVERHEAD + 2, |buf| {
                                    traffic.queue_close_notify(buf).map_err(Short::from)
                                })?;
                            }
                        }
                        reached = Some(Reached::Traffic);
                    }
                    Ok(_) => {
                        // Early data is not enabled; nothing else is expected.
                        refused = Some(rustls::Error::General("unexpected TLS state".into()));
                    }
                }
                *rx_at += discard;
                if *rx_at == rx.len() {
                    rx.clear();
                    *rx_at = 0;
                }
                if *plain_at == plain.len() && !plain.is_empty() {
                    plain.clear();
                    *plain_at = 0;
                }
                if let Some(e) = refused {
                    *failed = true;
                    queue_alerts(conn, &mut rx[*rx_at..], &mut sink);
                    return Err(tls_error(e));
                }
                if let Some(r) = reached {
                    return Ok(r);
                }
            })();
            if into_sealed {
                *sealed_end = sink.end;
            } else {
                // Room past the end is zeroes, not records to send.
                let end = sink.end;
                sink.buf.truncate(end);
            }
            result
        })
    }

    /// Best effort: writes what is queued (a fatal alert) without waiting.
    fn send_now(&mut self) {
        while self.tx_at < self.tx.len() {
            match self.tcp.try_write(&self.tx[self.tx_at..]) {
                Ok(n) if n > 0 => self.tx_at += n,
                _ => break,
            }
        }
    }

    /// Frees the receive and plaintext buffers when they are empty: done
    /// whenever the connection is about to wait.
    fn shed(&mut self) {
        if self.rx_at == self.rx.len() {
            self.rx = Vec::new();
            self.rx_at = 0;
        }
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
    }

    /// Reads from the socket into `rx`. The buffer is allocated only once the
    /// socket is readable, and freed when the connection waits with it empty.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            if self.tcp.poll_read_ready(cx)?.is_pending() {
                self.shed();
                return Poll::Pending;
            }
            if self.rx.capacity() - self.rx.len() < MIN_READ {
                if self.rx_at > 0 {
                    self.rx.drain(..self.rx_at);
                    self.rx_at = 0;
                }
                self.rx.reserve(READ_SIZE);
            }
            match self.tcp.try_read_buf(&mut self.rx) {
                Ok(0) => {
                    self.read_done = true;
                    self.truncated = true;
                    return Poll::Ready(Ok(0));
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush_tx(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_at < self.tx.len() {
            match ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.tx[self.tx_at..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.tx_at += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // Freed, not kept: an idle connection holds no send buffer.
        self.tx = Vec::new();
        self.tx_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what was sealed into the thread's buffer; what the socket does
    /// not take now is kept in `tx`.
    fn send_sealed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        SEALED.with_borrow_mut(|(sealed, end)| {
            let sealed_now = &sealed[..*end];
            *end = 0;
            let mut at = 0;
            if self.tx_at == self.tx.len() {
                while at < sealed_now.len() {
                    match Pin::new(&mut self.tcp).poll_write(cx, &sealed_now[at..]) {
                        Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Poll::Ready(Ok(n)) => at += n,
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => break,
                    }
                }
            }
            if at < sealed_now.len() {
                self.tx.extend_from_slice(&sealed_now[at..]);
            }
            Ok(())
        })
    }
}

/// Why a record did not fit.
enum Short {
    Need(usize),
    Failed(String),
}

impl From<EncryptError> for Short {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Short::Need(required_size)
            }
            e => Short::Failed(e.to_string()),
        }
    }
}

impl From<EncodeError> for Short {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Short::Need(required_size)
            }
            e => Short::Failed(e.to_string()),
        }
    }
}

/// Where records go: `buf[..end]`. `buf` past `end` is room zeroed by an
/// earlier use, so sealing does not clear memory each time.
struct Sink<'a> {
    buf: &'a mut Vec<u8>,
    end: usize,
}

impl Sink<'_> {
    /// Writes a record with `f`, given `room` bytes (more if rustls asks).
    fn put(
        &mut self,
        mut room: usize,
        mut f: impl FnMut(&mut [u8]) -> Result<usize, Short>,
    ) -> io::Result<()> {
        loop {
            let want = self.end + room;
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            match f(&mut self.buf[self.end..want]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(Short::Need(need)) if need > room => room = need,
                Err(Short::Need(need)) => {
                    return Err(io::Error::other(format!("a TLS record needs {need} bytes")))
                }
                Err(Short::Failed(e)) => return Err(io::Error::other(e)),
            }
        }
    }

    /// Copies a handshake record or alert rustls produced.
    fn encode(&mut self, data: &mut EncodeTlsData<'_, ServerConnectionData>) -> io::Result<()> {
        self.put(4096, |buf| data.encode(buf).map_err(Short::from))
    }
}

/// After an error, rustls has queued the alert that tells the peer why:
/// collects it (and nothing else) into `sink`. Only while rustls has records
/// queued: those are handed out before it would look at `rx` again, which a
/// failed connection must not do. `rx` is the unprocessed input, as rustls
/// expects it.
fn queue_alerts(conn: &mut UnbufferedServerConnection, rx: &mut [u8], sink: &mut Sink<'_>) {
    while conn.wants_write() {
        match conn.process_tls_records(rx).state {
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                if sink.encode(&mut data).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_at);
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    this.plain.clear();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            if this.rx_at < this.rx.len() {
                let r = this.advance(Some(buf), Seal::Nothing, false);
                // Tickets, alerts, a key update: sent as soon as possible.
                if this.tx_at < this.tx.len() {
                    if let Poll::Ready(Err(e)) = this.poll_flush_tx(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                if let Err(e) = r {
                    this.send_now();
                    return Poll::Ready(Err(e));
                }
                if buf.filled().len() > before || this.plain_at < this.plain.len() {
                    return Poll::Ready(Ok(()));
                }
            }
            if this.read_done {
                if this.truncated {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What the socket did not take last time goes first: at most one
        // write's worth waits per connection.
        ready!(this.poll_flush_tx(cx))?;
        let mut taken = 0;
        let unread = this.plain.len();
        this.advance(None, Seal::Data(bufs, &mut taken), true)?;
        if this.plain.len() > unread {
            // Records that were waiting were decrypted on the way: the
            // reader may be parked on the socket, which will not wake it.
            cx.waker().wake_by_ref();
        }
        this.send_sealed(cx)?;
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tx(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            // A connection rustls has failed has no close_notify to send.
            if this.advance(None, Seal::CloseNotify, false).is_err() {
                this.tx.clear();
                this.tx_at = 0;
            }
        }
        ready!(this.poll_flush_tx(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

//! One client connection's TLS: rustls's unbuffered API over the TCP stream.
//!
//! rustls carries out the whole protocol, the handshake and every record
//! after it: it decrypts records where they were read, encrypts into buffers
//! handed to it, answers KeyUpdates, refuses renegotiation, enforces its
//! limits and writes its own alerts. What this module owns is the buffers and
//! when the socket is read and written:
//!
//! - a buffer is the connection's only while it holds bytes: the receive
//!   buffer is allocated when the socket is readable and freed when the
//!   connection waits with nothing left in it; records are encrypted into one
//!   buffer per thread and written from there, and only what the socket did
//!   not take stays with the connection. An idle keep-alive connection holds
//!   its socket and rustls's state, and no buffer (S5 in benches/);
//! - what portico owes a client is bounded: while more than `TX_BOUND` bytes
//!   wait for a client that does not read, nothing more is read from it, so
//!   its KeyUpdates, warnings and requests cannot make portico queue without
//!   end;
//! - a lingering close, as nginx's `lingering_close` (see `LINGER_MAX`), as
//!   the HTTP stage asks through [`ClientStream`];
//! - TLS 1.3's session ticket leaves with the first response, in its write.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::conn::{ClientStream, Linger};

/// Reads ask for this much room: two full records.
const READ_SIZE: usize = 32 * 1024;
/// A read is started only with at least this much room left.
const MIN_READ: usize = 8 * 1024;
/// Plaintext encrypted per write call: the socket takes it in one write.
const WRITE_MAX: usize = 64 * 1024;
/// Bytes queued for the client past which nothing more is read from it until
/// it takes some: one write's worth plus what one read's records may ask rustls
/// to answer. Without it, a client that sends KeyUpdates or warnings and never
/// reads would have portico queue their answers without end.
const TX_BOUND: usize = WRITE_MAX + READ_SIZE;
/// Room per record beyond its plaintext (header, TLS 1.2's explicit nonce or
/// TLS 1.3's content type, the AEAD tag), rounded up: an estimate of the room
/// to encrypt into; rustls says if it needs more.
const RECORD_OVERHEAD: usize = 64;
/// rustls's record size for application data.
const MAX_FRAGMENT: usize = 16 * 1024;

/// A closing connection goes on reading, and discarding, what the client
/// still sends, for at most this long: closing a socket with unread bytes
/// sends a reset, which fails the client's writes and may destroy the answer
/// it has not read yet (nginx's `lingering_close`, `lingering_time`).
const LINGER_MAX: Duration = Duration::from_secs(10);
/// The lingering stops when the client sends nothing for this long
/// (nginx's `lingering_timeout`).
const LINGER_QUIET: Duration = Duration::from_secs(2);
/// Reads one poll of the lingering close makes before it yields the thread.
const LINGER_READS: usize = 64;

/// `send` flags for bytes a FIN will follow at once (see
/// `poll_send_before_fin`); a peer's reset is an error returned, as it is from
/// std's own sends, not a SIGPIPE, whatever the process does with the signal.
#[cfg(any(target_os = "linux", target_os = "android"))]
const MORE_FLAG: libc::c_int = libc::MSG_MORE | libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const MORE_FLAG: libc::c_int = 0;

thread_local! {
    /// Records are encrypted here and written from here: one buffer per
    /// thread. `.0[..1]` holds this write's records; the rest of `.0` is
    /// zeroed room kept for the next write.
    static SEALED: std::cell::RefCell<(Vec<u8>, usize)> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// What the handshake settled.
#[derive(Debug)]
pub struct Settled {
    /// TLS 1.3 (else 1.2).
    pub tls13: bool,
    /// ALPN chose HTTP/2.
    pub h2: bool,
    /// The client's verified certificate.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// A server-side TLS connection over TCP.
pub struct TlsStream {
    tcp: TcpStream,
    /// rustls's side of the connection; `None` once it has failed.
    conn: Option<Box<UnbufferedServerConnection>>,
    /// Received bytes rustls has not discarded yet: `rx[rx_at..]`. rustls
    /// decrypts records in place here.
    rx: Vec<u8>,
    rx_at: usize,
    /// Plaintext rustls handed over that the reader had no room for:
    /// `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Records the socket has not taken yet: `tx[tx_at..]`.
    tx: Vec<u8>,
    tx_at: usize,
    /// How many bytes at the front of `tx` are TLS 1.3's session ticket,
    /// held back from a flush so that it leaves in the next write.
    ticket: usize,
    /// close_notify (or the end of the stream) has been read.
    read_done: bool,
    /// The TCP stream ended without close_notify.
    truncated: bool,
    /// close_notify has been queued.
    close_sent: bool,
    /// Once the FIN is sent and the client has not finished: when the
    /// lingering close ends at the latest, and its quiet timer.
    linger: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

/// How far rustls got with the records at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// The handshake needs more records.
    Handshaking,
    /// Application data may flow; every whole record at hand is processed.
    Traffic,
    /// Both sides have sent close_notify: nothing more can be written.
    Closed,
}

/// Where the plaintext rustls hands over goes: the reader's buffer while it
/// has room, then `plain`.
struct Sink<'a, 'b> {
    buf: Option<&'a mut ReadBuf<'b>>,
    plain: &'a mut Vec<u8>,
}

impl Sink<'_, '_> {
    fn put(&mut self, mut data: &[u8]) {
        if let Some(buf) = self.buf.as_deref_mut() {
            let n = buf.remaining().min(data.len());
            buf.put_slice(&data[..n]);
            data = &data[n..];
        }
        self.plain.extend_from_slice(data);
    }
}

/// What to do with rustls's permission to write, when it comes.
type Writer<'w> = &'w mut dyn FnMut(&mut WriteTraffic<'_, ServerConnectionData>) -> io::Result<()>;

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the TLS connection has failed")
}

impl TlsStream {
    /// Runs the server handshake on `tcp` (no time limit: the caller sets one).
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<(Self, Settled)> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = Self {
            tcp,
            conn: Some(Box::new(conn)),
            rx: Vec::new(),
            rx_at: 0,
            plain: Vec::new(),
            plain_at: 0,
            tx: Vec::new(),
            tx_at: 0,
            ticket: 0,
            read_done: false,
            truncated: false,
            close_sent: false,
            linger: None,
        };
        poll_fn(|cx| s.poll_handshake(cx)).await?;
        let conn = s.conn.as_deref().ok_or_else(failed)?;
        let settled = Settled {
            tls13: conn.protocol_version() == Some(ProtocolVersion::TLSv1_3),
            h2: conn.alpn_protocol() == Some(b"h2"),
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned()),
        };
        Ok((s, settled))
    }

    /// Whether anything from the client is here already: plaintext, records
    /// or the end of the stream.
    fn has_input(&self) -> bool {
        self.plain_at < self.plain.len() || self.rx_at < self.rx.len() || self.read_done
    }

    /// Lets rustls process the records at hand (see `process`); on an error
    /// the connection fails, with the alert rustls chose sent best effort.
    fn process(
        &mut self,
        buf: Option<&mut ReadBuf<'_>>,
        write: Option<Writer<'_>>,
    ) -> io::Result<Reached> {
        let Some(conn) = self.conn.as_deref_mut() else {
            return Err(failed());
        };
        let mut sink = Sink {
            buf,
            plain: &mut self.plain,
        };
        let r = process(
            conn,
            &mut self.rx,
            &mut self.rx_at,
            &mut sink,
            &mut self.tx,
            &mut self.read_done,
            write,
        );
        if r.is_err() {
            self.conn = None;
            self.send_now();
        }
        r
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.process(None, None)? {
                Reached::Traffic => {
                    // What is queued now is TLS 1.3's session ticket: it
                    // leaves with the first response, in the same write (or
                    // before the connection waits for a request). TLS 1.2's
                    // last flight must leave before the handshake counts as
                    // done.
                    let tls13 = self
                        .conn
                        .as_deref()
                        .is_some_and(|c| c.protocol_version() == Some(ProtocolVersion::TLSv1_3));
                    if tls13 {
                        self.ticket = self.tx.len() - self.tx_at;
                    } else {
                        ready!(self.poll_flush_tx(cx))?;
                    }
                    self.shed();
                    return Poll::Ready(Ok(()));
                }
                Reached::Handshaking | Reached::Closed => {
                    // The handshake's flight must leave before more is read.
                    ready!(self.poll_flush_tx(cx))?;
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
                // Only what rustls has not discarded is kept.
                if self.rx_at > 0 {
                    self.rx.drain(..self.rx_at);
                    self.rx_at = 0;
                }
                self.rx.reserve(READ_SIZE);
            }
            // A read that leaves room in the buffer has drained the socket:
            // its readiness is cleared here, so the next wait registers
            // without a read that fails first (one system call less per
            // request). tokio clears only the readiness seen before the read:
            // bytes that arrive during or after it keep the socket ready.
            let room = self.rx.capacity() - self.rx.len();
            let mut got = 0;
            let read = self.tcp.try_io(Interest::READABLE, || {
                got = self.tcp.try_read_buf(&mut self.rx)?;
                if got > 0 && got < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(()) if got == 0 => {
                    self.read_done = true;
                    self.truncated = true;
                    return Poll::Ready(Ok(0));
                }
                Ok(()) => return Poll::Ready(Ok(got)),
                Err(_) if got > 0 => return Poll::Ready(Ok(got)),
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
        self.sent_all();
        Poll::Ready(Ok(()))
    }

    /// Everything queued has left: the send buffer is freed, not kept (an
    /// idle connection holds none), and no ticket is held back any more.
    fn sent_all(&mut self) {
        self.tx = Vec::new();
        self.tx_at = 0;
        self.ticket = 0;
    }

    /// Writes what is queued (close_notify, and whatever the socket has not
    /// taken yet) for the shutdown that follows: `MSG_MORE` makes the kernel
    /// hold the last bytes until the shutdown's FIN joins them, so they
    /// leave in one packet instead of two. Nothing waits on the flag: the
    /// shutdown, or the close if the shutdown never comes, sends them.
    fn poll_send_before_fin(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_at < self.tx.len() {
            ready!(self.tcp.poll_write_ready(cx))?;
            let tcp = &self.tcp;
            let rest = &self.tx[self.tx_at..];
            match tcp.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(tcp).send_with_flags(rest, MORE_FLAG)
            }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.tx_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.sent_all();
        Poll::Ready(Ok(()))
    }

    /// Whether the client has sent bytes not read yet, here or in the socket.
    fn has_unread(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        self.rx_at < self.rx.len()
            || self.plain_at < self.plain.len()
            || matches!(socket2::SockRef::from(&self.tcp).peek(&mut probe), Ok(1..))
    }

    /// The lingering close: reads and drops the client's bytes until it ends
    /// its side, falls quiet, or `LINGER_MAX` passes. Its errors end it too.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((end, quiet)) = &mut self.linger else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; 16 * 1024];
        for _ in 0..LINGER_READS {
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => return Future::poll(quiet.as_mut(), cx),
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            match self.tcp.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => quiet
                    .as_mut()
                    .reset((Instant::now() + LINGER_QUIET).min(*end)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
        // A client that sends as fast as it is read would hold the thread.
        if Instant::now() >= *end {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes this thread's freshly encrypted records; what the socket does
    /// not take now is kept in `tx`, behind anything already queued there.
    fn send_sealed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let queued = self.tx_at < self.tx.len();
        SEALED.with_borrow_mut(|(sealed, end)| {
            let sealed_now = &sealed[..*end];
            *end = 0;
            let mut at = 0;
            if !queued {
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
        })?;
        // What was queued (a session ticket, a KeyUpdate) leaves with these
        // records, in one write.
        if queued {
            if let Poll::Ready(Err(e)) = self.poll_flush_tx(cx) {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Lets rustls process the records in `rx[rx_at..]` until it has nothing
/// more to do with them: plaintext goes to `sink`, what rustls wants sent
/// (handshake messages, KeyUpdates, alerts) to the end of `tx`, and
/// `write`, if given, is called once rustls allows application data, before
/// anything else is read. On an error, the alert rustls queued for it is in
/// `tx` too.
fn process(
    conn: &mut UnbufferedServerConnection,
    rx: &mut Vec<u8>,
    rx_at: &mut usize,
    sink: &mut Sink<'_, '_>,
    tx: &mut Vec<u8>,
    read_done: &mut bool,
    mut write: Option<Writer<'_>>,
) -> io::Result<Reached> {
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut rx[*rx_at..]);
        let mut reached = None;
        let mut refusal = None;
        let mut wrote = Ok(());
        match state {
            Err(e) => refusal = Some(e),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(r) => {
                            discard += r.discard;
                            sink.put(r.payload);
                        }
                        Err(e) => {
                            refusal = Some(e);
                            break;
                        }
                    }
                }
            }
            Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, tx)?,
            Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
            Ok(ConnectionState::BlockedHandshake) => reached = Some(Reached::Handshaking),
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                if let Some(f) = write.take() {
                    wrote = f(&mut w);
                }
                reached = Some(Reached::Traffic);
            }
            Ok(ConnectionState::PeerClosed) => *read_done = true,
            Ok(ConnectionState::Closed) => {
                *read_done = true;
                reached = Some(Reached::Closed);
            }
            Ok(_) => {
                // Early data is not enabled; nothing else is expected.
                refusal = Some(rustls::Error::General("unexpected TLS state".into()));
            }
        }
        *rx_at += discard;
        if *rx_at == rx.len() {
            rx.clear();
            *rx_at = 0;
        }
        if let Some(e) = refusal {
            queue_alerts(conn, &mut rx[*rx_at..], tx);
            return Err(tls_error(e));
        }
        wrote?;
        if let Some(r) = reached {
            return Ok(r);
        }
    }
}

/// Copies a record rustls produced to the end of `out`.
fn encode(data: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match data.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(io::Error::other(e.to_string()));
            }
        }
    }
}

/// After an error, rustls has queued the alert that tells the peer why:
/// collects it (and nothing else) into `out`. Only while rustls has records
/// queued: those are handed out before it would look at `rx` again, which a
/// failed connection must not do.
fn queue_alerts(conn: &mut UnbufferedServerConnection, rx: &mut [u8], out: &mut Vec<u8>) {
    while conn.wants_write() {
        match conn.process_tls_records(rx).state {
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                if encode(&mut data, out).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Has rustls encrypt up to `WRITE_MAX` bytes of `bufs` as application data
/// into `sealed[*end..]`, keeping the zeroed room past `end` for the next
/// time; returns the plaintext bytes taken.
fn encrypt_writes(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    bufs: &[IoSlice<'_>],
    sealed: &mut Vec<u8>,
    end: &mut usize,
) -> io::Result<usize> {
    let mut taken = 0;
    for s in bufs {
        let s = &s[..s.len().min(WRITE_MAX - taken)];
        if s.is_empty() {
            if taken == WRITE_MAX {
                break;
            }
            continue;
        }
        let records = s.len().div_ceil(MAX_FRAGMENT);
        let mut room = s.len() + (records + 1) * RECORD_OVERHEAD;
        loop {
            if sealed.len() < *end + room {
                sealed.resize(*end + room, 0);
            }
            match w.encrypt(s, &mut sealed[*end..*end + room]) {
                Ok(n) => {
                    *end += n;
                    break;
                }
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                    if required_size > room =>
                {
                    room = required_size;
                }
                Err(e) => return Err(io::Error::other(format!("cannot encrypt: {e}"))),
            }
        }
        taken += s.len();
    }
    Ok(taken)
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.plain_at < this.plain.len() {
            let n = buf.remaining().min(this.plain.len() - this.plain_at);
            buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
            this.plain_at += n;
            if this.plain_at == this.plain.len() {
                this.plain = Vec::new();
                this.plain_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            // A client that does not take what it is owed is not read from:
            // its records could only make rustls owe it more.
            if this.tx.len() - this.tx_at > TX_BOUND {
                ready!(this.poll_flush_tx(cx))?;
            }
            // rustls acts only on what it is given: with no byte of the
            // client's unprocessed, it has nothing to hand over or answer
            // (what a write gave it to do, it did in that write's `process`).
            if this.rx_at < this.rx.len() {
                let queued = this.tx.len();
                this.process(Some(buf), None)?;
                // A KeyUpdate's answer or a warning: sent as soon as
                // possible. A session ticket still queued is not: the client
                // has sent a request, so the ticket leaves with the answer,
                // in its write.
                if this.tx.len() > queued {
                    if let Poll::Ready(Err(e)) = this.poll_flush_tx(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
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
        // What the socket did not take goes first: past one write's worth
        // waiting, the writer waits too.
        if this.tx.len() - this.tx_at > WRITE_MAX {
            ready!(this.poll_flush_tx(cx))?;
        }
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS close_notify",
            )));
        }
        let mut taken = 0;
        let reached = SEALED.with_borrow_mut(|(sealed, end)| {
            // Whatever an earlier call left (it failed half-way) is not this
            // connection's to send.
            *end = 0;
            let mut write = |w: &mut WriteTraffic<'_, ServerConnectionData>| {
                taken = encrypt_writes(w, bufs, sealed, end)?;
                Ok(())
            };
            this.process(None, Some(&mut write))
        })?;
        if reached != Reached::Traffic {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed",
            )));
        }
        this.send_sealed(cx)?;
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper flushes while it waits for its service's answer: a session
        // ticket alone waits for that answer and leaves in its write (one
        // system call less per new connection). If no answer ever comes,
        // the client has no use for the ticket.
        if this.tx_at == 0 && this.tx.len() == this.ticket {
            return Poll::Ready(Ok(()));
        }
        this.poll_flush_tx(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close(cx, Linger::Always)
    }
}

impl ClientStream for TlsStream {
    /// Resolves when the client has sent something (or closed). The socket
    /// is peeked, not only asked: its readiness may be left over from the
    /// handshake's last read.
    async fn input(&mut self) -> io::Result<()> {
        if self.has_input() {
            return Ok(());
        }
        // The session ticket, if it is still here: the client may wait.
        poll_fn(|cx| self.poll_flush_tx(cx)).await?;
        self.tcp.peek(&mut [0u8; 1]).await.map(drop)
    }

    /// Sends close_notify and the FIN, then lingers as `linger` says (see
    /// `LINGER_MAX`).
    fn poll_close(&mut self, cx: &mut Context<'_>, linger: Linger) -> Poll<io::Result<()>> {
        if !self.close_sent {
            self.close_sent = true;
            // A failed connection has no close_notify to send; one that
            // fails now has had its alert queued instead.
            if self.conn.is_some() {
                let mut note = Vec::new();
                let mut close = |w: &mut WriteTraffic<'_, ServerConnectionData>| {
                    note.resize(RECORD_OVERHEAD, 0);
                    let n = w.queue_close_notify(&mut note).map_err(|e| {
                        io::Error::other(format!("cannot encrypt close_notify: {e}"))
                    })?;
                    note.truncate(n);
                    Ok(())
                };
                // What rustls still owes the client (a KeyUpdate's answer)
                // goes first; what the client sent meanwhile is not read.
                if self.process(None, Some(&mut close)).is_ok() {
                    self.tx.extend_from_slice(&note);
                }
            }
        }
        if self.linger.is_none() {
            ready!(self.poll_send_before_fin(cx))?;
            ready!(Pin::new(&mut self.tcp).poll_shutdown(cx))?;
            let lingers = match linger {
                Linger::Always => true,
                Linger::IfUnread => self.has_unread(),
                Linger::Never => false,
            };
            // The client has finished (nothing can arrive to be reset), or
            // is not expected to send, or its bytes are another reader's.
            if self.read_done || !lingers {
                return Poll::Ready(Ok(()));
            }
            let now = Instant::now();
            self.linger = Some((now + LINGER_MAX, Box::pin(sleep_until(now + LINGER_QUIET))));
        }
        self.poll_linger(cx).map(Ok)
    }
}

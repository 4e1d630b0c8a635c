//! The TLS record layer of one client connection.
//!
//! The handshake runs on rustls's unbuffered API. Once it is done, rustls
//! hands over the traffic keys (`rustls::kernel`, the interface made for
//! kernel TLS) and keeps only what key updates need; records are then sealed
//! and opened here (`record.rs`), in place:
//!
//! - a received record is decrypted where it was read and copied once, into
//!   hyper's buffer (rustls's own connection copies each record twice more);
//! - an outgoing record is sealed straight into the buffer that is written
//!   (rustls copies each sealed record once or twice more);
//! - buffers belong to the connection only while it has bytes in them: the
//!   receive buffer is allocated when the socket is readable and freed when
//!   the connection waits, records are sealed into one buffer per thread, and
//!   only what the socket did not take stays with the connection. An idle
//!   keep-alive connection holds its socket, two AEAD keys and no buffer
//!   (S5 in benches/).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::kernel::KernelConnection;
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{ProtocolVersion, ServerConfig, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};

use super::record::{self, alert, Protection, Refused};

/// Reads ask for this much room: two full records.
const READ_SIZE: usize = 32 * 1024;
/// A read is started only with at least this much room left.
const MIN_READ: usize = 8 * 1024;
/// Plaintext sealed per write call: the socket takes it in one write.
const WRITE_MAX: usize = 64 * 1024;
/// Consecutive empty application-data records tolerated (rustls's figure).
const MAX_EMPTY_RECORDS: u8 = 32;
/// TLS 1.3 `user_canceled`, a warning that may precede close_notify.
const USER_CANCELED: u8 = 90;
/// TLS 1.3 `key_update` handshake message type.
const KEY_UPDATE: u8 = 24;

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

/// What the handshake settled, read before rustls hands the keys over.
#[derive(Debug)]
pub struct Settled {
    /// TLS 1.3 (else 1.2).
    pub tls13: bool,
    /// ALPN chose HTTP/2.
    pub h2: bool,
    /// The client's verified certificate.
    pub client_cert: Option<CertificateDer<'static>>,
    /// The SNI the client sent.
    pub sni: Option<Box<str>>,
}

/// After the handshake: the keys of both directions and rustls's remainder.
struct Traffic {
    kernel: KernelConnection<ServerConnectionData>,
    tx: Protection,
    rx: Protection,
    tls13: bool,
    /// Records one key may seal (the suite's confidentiality limit).
    limit: u64,
    empty_records: u8,
}

enum Tls {
    Handshake(Box<UnbufferedServerConnection>),
    Traffic(Box<Traffic>),
    Failed,
}

/// A server-side TLS connection over TCP.
pub struct TlsStream {
    tcp: TcpStream,
    tls: Tls,
    /// Ciphertext received: `rx[rx_at..]` is not processed yet.
    rx: Vec<u8>,
    rx_at: usize,
    /// Plaintext opened in place and not read yet: `rx[ready]`.
    ready: Range<usize>,
    /// Plaintext rustls decrypted during the handshake (a request that came
    /// with the client's Finished) and not read yet: `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext the socket has not taken yet: `tx[tx_at..]`.
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
    sni: Option<Box<str>>,
    settled: Option<Settled>,
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
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn refused(what: &str, a: Refused) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} (TLS alert {})", a.0),
    )
}

impl TlsStream {
    /// Runs the server handshake on `tcp` (no time limit: the caller sets one).
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<(Self, Settled)> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = Self {
            tcp,
            tls: Tls::Handshake(Box::new(conn)),
            rx: Vec::new(),
            rx_at: 0,
            ready: 0..0,
            plain: Vec::new(),
            plain_at: 0,
            tx: Vec::new(),
            tx_at: 0,
            ticket: 0,
            read_done: false,
            truncated: false,
            close_sent: false,
            linger: None,
            sni: None,
            settled: None,
        };
        poll_fn(|cx| s.poll_handshake(cx)).await?;
        let settled = s
            .settled
            .take()
            .ok_or_else(|| io::Error::other("handshake ended without its parameters"))?;
        Ok((s, settled))
    }

    /// Whether anything from the client is here already: plaintext, records
    /// or the end of the stream.
    fn has_input(&self) -> bool {
        self.plain_at < self.plain.len()
            || !self.ready.is_empty()
            || self.rx_at < self.rx.len()
            || self.read_done
    }

    /// Resolves when the client has sent something (or closed). The socket
    /// is peeked, not only asked: its readiness may be left over from the
    /// handshake's last read.
    pub async fn input(&mut self) -> io::Result<()> {
        if self.has_input() {
            return Ok(());
        }
        // The session ticket, if it is still here: the client may wait.
        poll_fn(|cx| self.poll_flush_tx(cx)).await?;
        self.tcp.peek(&mut [0u8; 1]).await.map(drop)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Tls::Handshake(conn) = &mut self.tls else {
                return Poll::Ready(Err(io::Error::other("the TLS handshake has failed")));
            };
            SNI.set(None);
            let reached = advance(
                conn,
                &mut self.rx,
                &mut self.rx_at,
                &mut self.plain,
                &mut self.tx,
                &mut self.read_done,
            );
            if let Some(sni) = SNI.take() {
                self.sni = sni;
            }
            let reached = match reached {
                Ok(r) => r,
                Err(e) => {
                    self.tls = Tls::Failed;
                    self.send_now();
                    return Poll::Ready(Err(e));
                }
            };
            match reached {
                Reached::Traffic => {
                    // What is queued now is TLS 1.3's session ticket: it
                    // leaves with the first response, in the same write (or
                    // before the connection waits for a request). TLS 1.2's
                    // last flight must leave before the handshake counts as
                    // done.
                    let tls13 = matches!(&self.tls,
                        Tls::Handshake(c) if c.protocol_version() == Some(ProtocolVersion::TLSv1_3));
                    if tls13 {
                        self.ticket = self.tx.len() - self.tx_at;
                    } else {
                        ready!(self.poll_flush_tx(cx))?;
                    }
                    self.start_traffic()?;
                    self.shed();
                    return Poll::Ready(Ok(()));
                }
                Reached::Handshaking => {
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

    /// Takes the traffic keys from rustls: from here on records are sealed
    /// and opened in `record.rs`.
    fn start_traffic(&mut self) -> io::Result<()> {
        let Tls::Handshake(conn) = std::mem::replace(&mut self.tls, Tls::Failed) else {
            return Err(io::Error::other("no handshake to finish"));
        };
        let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
        let sni = self.sni.take();
        self.settled = Some(Settled {
            tls13,
            h2: conn.alpn_protocol() == Some(b"h2"),
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned()),
            sni,
        });
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
        let limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        self.tls = Tls::Traffic(Box::new(Traffic {
            kernel,
            tx: Protection::new(tls13, tx_seq, tx).map_err(io::Error::other)?,
            rx: Protection::new(tls13, rx_seq, rx).map_err(io::Error::other)?,
            tls13,
            limit,
            empty_records: 0,
        }));
        Ok(())
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

    /// Sends a fatal alert (best effort) and fails the connection.
    fn fail(&mut self, what: &str, a: Refused) -> io::Error {
        if let Tls::Traffic(t) = &mut self.tls {
            let _ = t.alert(2, a.0, &mut self.tx);
        }
        self.tls = Tls::Failed;
        self.send_now();
        refused(what, a)
    }

    /// Frees the receive and plaintext buffers when they are empty: done
    /// whenever the connection is about to wait.
    fn shed(&mut self) {
        if self.rx_at == self.rx.len() && self.ready.is_empty() {
            self.rx = Vec::new();
            self.rx_at = 0;
            self.ready = 0..0;
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
                // Only unprocessed bytes are moved: nothing opened is pending
                // when more is read.
                if self.rx_at > 0 && self.ready.is_empty() {
                    self.rx.drain(..self.rx_at);
                    self.rx_at = 0;
                    self.ready = 0..0;
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
            || !self.ready.is_empty()
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

    /// Opens the next whole record in `rx`, if there is one, and acts on it.
    /// `Ok(false)`: no whole record is there.
    fn open_next(&mut self) -> io::Result<bool> {
        let Tls::Traffic(t) = &mut self.tls else {
            return Err(io::Error::other("the TLS connection has failed"));
        };
        let avail = &self.rx[self.rx_at..];
        if avail.len() < record::HEADER {
            return Ok(false);
        }
        let len = usize::from(u16::from_be_bytes([avail[3], avail[4]]));
        if avail[1] != 3 {
            return Err(self.fail(
                "a record with a foreign version",
                Refused(alert::DECODE_ERROR),
            ));
        }
        if len > record::MAX_PLAINTEXT + 2048 {
            return Err(self.fail("a record too long", Refused(alert::RECORD_OVERFLOW)));
        }
        if avail.len() < record::HEADER + len {
            return Ok(false);
        }
        let start = self.rx_at;
        let end = start + record::HEADER + len;
        let rec = &mut self.rx[start..end];
        let opened = match t.rx.open(rec) {
            Ok(o) => o,
            Err(a) => return Err(self.fail("a record that does not open", a)),
        };
        self.rx_at = end;
        let plain = start + opened.plain.start..start + opened.plain.end;
        match opened.typ {
            record::APPLICATION_DATA => {
                if plain.is_empty() {
                    t.empty_records += 1;
                    if t.empty_records > MAX_EMPTY_RECORDS {
                        return Err(
                            self.fail("too many empty records", Refused(alert::UNEXPECTED_MESSAGE))
                        );
                    }
                } else {
                    t.empty_records = 0;
                    self.ready = plain;
                }
            }
            record::ALERT => {
                let body = &self.rx[plain];
                let [level, desc] = body else {
                    return Err(
                        self.fail("an alert that does not parse", Refused(alert::DECODE_ERROR))
                    );
                };
                match (*level, *desc) {
                    (_, alert::CLOSE_NOTIFY) => self.read_done = true,
                    // TLS 1.2 warnings, and TLS 1.3's user_canceled, are only
                    // news; anything else ends the connection.
                    (1, d) if !t.tls13 || d == USER_CANCELED => {}
                    (_, d) => {
                        self.tls = Tls::Failed;
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!("the client sent TLS alert {d}"),
                        ));
                    }
                }
            }
            record::HANDSHAKE if t.tls13 => {
                let body = &self.rx[plain];
                // One whole KeyUpdate, the last message of its record: it
                // must not share a record with what the next key protects.
                match body {
                    [KEY_UPDATE, 0, 0, 1, requested @ (0 | 1)] => {
                        let requested = *requested == 1;
                        let (seq, secrets) = t.kernel.update_rx_secret().map_err(tls_error)?;
                        t.rx = Protection::new(true, seq, secrets).map_err(io::Error::other)?;
                        if requested {
                            update_tx_key(t, &mut self.tx)?;
                        }
                    }
                    _ => {
                        return Err(self.fail(
                            "a handshake message after the handshake",
                            Refused(alert::UNEXPECTED_MESSAGE),
                        ))
                    }
                }
            }
            record::HANDSHAKE => {
                // A TLS 1.2 client asking to renegotiate: refused with a
                // warning, as rustls does; the connection stays usable.
                t.alert(1, alert::NO_RENEGOTIATION, &mut self.tx)?;
            }
            _ => {
                return Err(self.fail(
                    "an unexpected record type",
                    Refused(alert::UNEXPECTED_MESSAGE),
                ))
            }
        }
        if self.rx_at == self.rx.len() && self.ready.is_empty() {
            self.rx.clear();
            self.rx_at = 0;
            self.ready = 0..0;
        }
        Ok(true)
    }

    /// Writes what was sealed into the thread's buffer; what the socket does
    /// not take now is kept in `tx`.
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
        // What was queued (a session ticket, a key update) leaves with these
        // records, in one write.
        if queued {
            if let Poll::Ready(Err(e)) = self.poll_flush_tx(cx) {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Traffic {
    /// Queues an alert (`level` 1 warning, 2 fatal) at the end of `out`.
    fn alert(&mut self, level: u8, desc: u8, out: &mut Vec<u8>) -> io::Result<()> {
        seal_into_vec(&mut self.tx, record::ALERT, &[level, desc], out)
            .map_err(|a| refused("cannot seal an alert", a))
    }
}

/// Sends a KeyUpdate under the current key and switches to the next one.
fn update_tx_key(t: &mut Traffic, out: &mut Vec<u8>) -> io::Result<()> {
    seal_into_vec(&mut t.tx, record::HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)
        .map_err(|a| refused("cannot seal a key update", a))?;
    let (seq, secrets) = t.kernel.update_tx_secret().map_err(tls_error)?;
    t.tx = Protection::new(true, seq, secrets).map_err(io::Error::other)?;
    Ok(())
}

/// Seals one record at the end of `out`.
fn seal_into_vec(
    tx: &mut Protection,
    typ: u8,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Refused> {
    let start = out.len();
    out.resize(start + Protection::sealed_len(plain.len()), 0);
    let n = tx.seal(typ, plain, &mut out[start..])?;
    out.truncate(start + n);
    Ok(())
}

/// Seals `bufs` (up to `WRITE_MAX` bytes) as application-data records into
/// `sealed[*end..]`, keeping the zeroed room past `end` for the next time;
/// returns the plaintext bytes taken.
fn seal_writes(
    t: &mut Traffic,
    bufs: &[IoSlice<'_>],
    sealed: &mut Vec<u8>,
    end: &mut usize,
    tx: &mut Vec<u8>,
) -> io::Result<usize> {
    let mut taken = 0;
    for s in bufs {
        for chunk in s.chunks(record::MAX_PLAINTEXT) {
            let chunk = &chunk[..chunk.len().min(WRITE_MAX - taken)];
            if chunk.is_empty() {
                break;
            }
            if t.tx.seq() >= t.limit {
                if !t.tls13 {
                    return Err(io::Error::other(
                        "the TLS 1.2 key has sealed all the records it may",
                    ));
                }
                // The KeyUpdate goes before this write's records: flush
                // them first, in order, through `tx`.
                tx.extend_from_slice(&sealed[..*end]);
                *end = 0;
                update_tx_key(t, tx)?;
            }
            let want = *end + Protection::sealed_len(chunk.len());
            if sealed.len() < want {
                sealed.resize(want, 0);
            }
            let n =
                t.tx.seal(record::APPLICATION_DATA, chunk, &mut sealed[*end..want])
                    .map_err(|a| refused("cannot seal a record", a))?;
            *end += n;
            taken += chunk.len();
            if taken == WRITE_MAX {
                return Ok(taken);
            }
        }
    }
    Ok(taken)
}

/// Feeds rustls the handshake records received: handshake records and
/// alerts it produces are appended to `tx`; application data that came
/// with the client's Finished goes to `plain`.
fn advance(
    conn: &mut UnbufferedServerConnection,
    rx: &mut Vec<u8>,
    rx_at: &mut usize,
    plain: &mut Vec<u8>,
    tx: &mut Vec<u8>,
    read_done: &mut bool,
) -> io::Result<Reached> {
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut rx[*rx_at..]);
        let mut reached = None;
        let mut refusal = None;
        match state {
            Err(e) => refusal = Some(e),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(r) => {
                            discard += r.discard;
                            plain.extend_from_slice(r.payload);
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
            Ok(ConnectionState::WriteTraffic(_)) => reached = Some(Reached::Traffic),
            Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
                *read_done = true;
                reached = Some(Reached::Handshaking);
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
        if let Some(r) = reached {
            return Ok(r);
        }
    }
}

/// Copies a handshake record or alert rustls produced to the end of `out`.
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
/// failed connection must not do. `rx` is the unprocessed input, as rustls
/// expects it.
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
            if !this.ready.is_empty() {
                let n = buf.remaining().min(this.ready.len());
                buf.put_slice(&this.rx[this.ready.start..this.ready.start + n]);
                this.ready.start += n;
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                if this.ready.is_empty() && this.rx_at == this.rx.len() {
                    this.rx.clear();
                    this.rx_at = 0;
                    this.ready = 0..0;
                }
            }
            let queued = this.tx.len();
            let opened = this.open_next();
            // A key update's answer or a warning: sent as soon as possible.
            // A session ticket still queued is not: the client has sent a
            // request, so the ticket leaves with the answer, in its write.
            if this.tx.len() > queued {
                if let Poll::Ready(Err(e)) = this.poll_flush_tx(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            match opened {
                Err(e) => return Poll::Ready(Err(e)),
                Ok(true) => continue,
                Ok(false) => {}
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
        let Tls::Traffic(t) = &mut this.tls else {
            return Poll::Ready(Err(io::Error::other("the TLS connection has failed")));
        };
        let taken = SEALED.with_borrow_mut(|(sealed, end)| {
            // Whatever an earlier call left (it failed half-way) is not this
            // connection's to send.
            *end = 0;
            seal_writes(t, bufs, sealed, end, &mut this.tx)
        })?;
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

/// Whether a close lingers (see `LINGER_MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Until the client ends its side or falls quiet: it may be sending a
    /// request the answer cut short (a refused body, a pipelined request).
    Always,
    /// Only if the client's bytes are already waiting (nginx's heuristic):
    /// portico chose to close a connection with no request on it (a drain,
    /// a timeout), and a client that sends nothing must not hold it open.
    IfUnread,
    /// Not at all: another reader still takes the client's bytes (a tunnel
    /// whose other direction goes on after this one ended).
    Never,
}

impl TlsStream {
    /// Sends close_notify and the FIN, then lingers as `linger` says.
    pub fn poll_close(&mut self, cx: &mut Context<'_>, linger: Linger) -> Poll<io::Result<()>> {
        if !self.close_sent {
            self.close_sent = true;
            // A failed connection has no close_notify to send.
            if let Tls::Traffic(t) = &mut self.tls {
                t.alert(1, alert::CLOSE_NOTIFY, &mut self.tx)?;
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

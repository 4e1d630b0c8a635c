//! portico's own HTTP/1.1 exchange for requests without a body, the bulk of
//! traffic: the head is written and the answer read by the request's own
//! task, on a connection that has no task of its own. hyper's client, kept for
//! uploads and upgrades, runs a task per connection and hands each request
//! and response through channels to it; without that hand-off a proxied
//! request costs markedly fewer instructions (`benches/callgrind.sh S1` and
//! `S2` measure it; docs/perf-log.md has the figures).
//!
//! The response is framed as RFC 9112 section 6.3 says, strictly: a head
//! over [`HEAD_MAX`] or with more than [`HEADERS_MAX`] fields, a bad
//! `Content-Length`, or a malformed chunk is a bad upstream response, and a
//! connection whose framing was in doubt is never reused.
//!
//! A response body returns its connection, when it has ended, to a [`Pool`]:
//! all this module knows of the pool it came from.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Stream;
pub use crate::error::RawError;

/// The largest response head (and chunk trailer section) accepted, as hyper's
/// client enforced before (Envoy's default is 60 KiB).
pub const HEAD_MAX: usize = 64 * 1024;
/// The most header fields in a response head, hyper's default.
pub const HEADERS_MAX: usize = 100;
/// What one read asks for at least.
const READ_MIN: usize = 8 * 1024;
/// What one read of a long body asks for at most.
const READ_MAX: usize = 64 * 1024;
/// The longest chunk-size line, extensions included.
const CHUNK_LINE_MAX: usize = 4 * 1024;

/// A keep-alive connection to a primary that portico drives itself.
pub struct RawConn {
    io: Stream,
    /// Bytes read and not yet used; empty whenever the connection is idle.
    buf: BytesMut,
}

impl RawConn {
    /// A fresh connection.
    pub fn new(io: Stream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The stream, for hyper's client to take over (the buffer is empty).
    pub fn into_stream(self) -> Stream {
        self.io
    }

    /// Whether the primary closed this idle connection (or, against the
    /// protocol, wrote to it). Costs no system call unless the reactor saw
    /// the socket become readable since the last read.
    pub fn closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let ready = match &self.io {
            Stream::Tcp(s) => s.poll_read_ready(&mut cx),
            Stream::Unix(s) => s.poll_read_ready(&mut cx),
        };
        match ready {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut one = [0u8; 1];
                let r = match &self.io {
                    Stream::Tcp(s) => s.try_read(&mut one),
                    Stream::Unix(s) => s.try_read(&mut one),
                };
                !matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more into the buffer; `Ok(0)` at the primary's end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_MIN {
            self.buf.reserve(want.clamp(READ_MIN, READ_MAX));
        }
        std::pin::pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }
}

/// Writes a request head, with no body, into `out`.
pub fn encode_head<B>(req: &http::Request<B>, out: &mut BytesMut) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.extend_from_slice(b" ");
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        // Without a body there is no framing to state, whatever the client sent.
        if name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Where a connection goes back when the response it carried has ended.
pub trait Pool: Send + Sync {
    /// Takes back `conn`, idle now: its response has been read to the end.
    fn check_in(&self, conn: RawConn);
}

/// How the rest of the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at the given step.
    Chunked(Chunk),
    /// Until the primary closes.
    Eof,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// A parsed response head and how its body is framed.
struct Head {
    resp: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

/// When a failed request may go again on another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// Writing it failed: the connection was gone, the primary saw nothing.
    Always,
    /// It was written and the connection ended without a byte of answer:
    /// the primary may have acted on it (RFC 9110 section 9.2.2).
    IfIdempotent,
    /// An answer had begun.
    Never,
}

/// Sends a bodiless request's head on `conn` and reads the answer's head;
/// the body is read by the returned [`RawBody`], which returns the
/// connection to `pool` at its end. `Err` says whether the request may go
/// again.
pub async fn exchange<B, P: Pool + 'static>(
    mut conn: RawConn,
    req: &http::Request<B>,
    pool: &Arc<P>,
) -> Result<Response<RawBody>, (RawError, Again)> {
    // The read buffer is empty between exchanges: the head is encoded in it,
    // so no buffer is allocated per request.
    encode_head(req, &mut conn.buf);
    if let Err(e) = conn.io.write_all(&conn.buf).await {
        return Err((e.into(), Again::Always));
    }
    conn.buf.clear();
    let method = req.method();
    let parsed = std::future::poll_fn(|cx| poll_head(&mut conn, method, cx)).await?;
    let Head {
        resp,
        framing,
        keep_alive,
    } = parsed;
    let mut body = RawBody {
        conn: Some(conn),
        framing,
        keep_alive,
        pool: pool.clone(),
    };
    // No body to read: hyper never polls one that is empty from the start.
    if matches!(body.framing, Framing::Length(0) | Framing::Done) {
        body.end();
    }
    Ok(resp.map(|()| body))
}

/// Reads until a final response head is parsed; informational (1xx) heads
/// other than 101 are read past, as hyper's client does.
fn poll_head(
    conn: &mut RawConn,
    method: &Method,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, (RawError, Again)>> {
    let mut again = if conn.buf.is_empty() {
        Again::IfIdempotent
    } else {
        Again::Never
    };
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, method) {
                Ok(Some(h)) => return Poll::Ready(Ok(h)),
                Ok(None) if conn.buf.len() >= HEAD_MAX => {
                    let e = RawError::Bad("response head too large");
                    return Poll::Ready(Err((e, Again::Never)));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err((e, Again::Never))),
            }
        }
        match ready!(conn.poll_fill(cx, READ_MIN)) {
            Ok(0) => {
                let e = eof("the primary closed the connection before a complete response head");
                return Poll::Ready(Err((e, again)));
            }
            Ok(_) => again = Again::Never,
            Err(e) => return Poll::Ready(Err((e.into(), again))),
        }
    }
}

/// What the framing fields of a head said, gathered while it is read:
/// comparing each name once is cheaper than looking three up afterwards.
#[derive(Default)]
struct Fields {
    length: Option<u64>,
    /// Transfer-Encoding was present; its last coding was `chunked`.
    te: Option<bool>,
    close: bool,
    keep_alive: bool,
}

impl Fields {
    fn see(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), RawError> {
        if *name == CONTENT_LENGTH {
            for part in value.split(|&b| b == b',') {
                let n = parse_decimal(trim(part)).ok_or(RawError::Bad("bad Content-Length"))?;
                if self.length.is_some_and(|l| l != n) {
                    return Err(RawError::Bad("conflicting Content-Length values"));
                }
                self.length = Some(n);
            }
        } else if *name == TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().map(trim);
            self.te = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        } else if *name == CONNECTION {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                }
            }
        }
        Ok(())
    }
}

/// Parses one complete response head off the front of `buf`; `None` if it
/// is not all there yet.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, RawError> {
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_MAX];
        let mut r = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut r,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(RawError::Bad("too many header fields"))
            }
            Err(_) => return Err(RawError::Bad("malformed response head")),
        };
        if len > HEAD_MAX {
            return Err(RawError::Bad("response head too large"));
        }
        let code = r.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| RawError::Bad("bad status code"))?;
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            let _ = buf.split_to(len);
            continue;
        }
        // Values become slices of the head, not copies of it; the head is
        // frozen only once httparse's borrow of it has ended.
        let n = r.headers.len();
        let mut seen = Fields::default();
        let mut spans: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(n);
        let base = buf.as_ptr() as usize;
        for f in r.headers.iter() {
            let name = HeaderName::from_bytes(f.name.as_bytes())
                .map_err(|_| RawError::Bad("bad header field name"))?;
            seen.see(&name, f.value)?;
            let start = f.value.as_ptr() as usize - base;
            spans.push((name, start, start + f.value.len()));
        }
        if version == Version::HTTP_10 && seen.te.is_some() {
            return Err(RawError::Bad("Transfer-Encoding in an HTTP/1.0 response"));
        }
        let head = buf.split_to(len).freeze();
        // One more for the X-Request-Id portico adds, so that it does not
        // grow (reallocate) the table of every response.
        let mut headers = HeaderMap::with_capacity(n + 1);
        for (name, start, end) in spans {
            // RFC 9112 section 6.3: the coding wins, and an intermediary
            // removes the length before it passes the message on.
            if seen.te.is_some() && name == CONTENT_LENGTH {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| RawError::Bad("bad header field value"))?;
            headers.append(name, value);
        }
        let framing = framing(&seen, status, method);
        // A 101 to a request that asked for no upgrade leaves the connection
        // in an unknown protocol; a length given with a coding, in doubt.
        let keep_alive = !seen.close
            && (version == Version::HTTP_11 || seen.keep_alive)
            && status != StatusCode::SWITCHING_PROTOCOLS
            && !(seen.te.is_some() && seen.length.is_some())
            && framing != Framing::Eof;
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        return Ok(Some(Head {
            resp,
            framing,
            keep_alive,
        }));
    }
}

/// RFC 9112 section 6.3, for a response to `method`.
fn framing(seen: &Fields, status: StatusCode, method: &Method) -> Framing {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS
    {
        return Framing::Done;
    }
    match (seen.te, seen.length) {
        (Some(true), _) => Framing::Chunked(Chunk::Size),
        (Some(false), _) | (None, None) => Framing::Eof,
        (None, Some(n)) => Framing::Length(n),
    }
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// A chunk-size line, extensions ignored; `None` if malformed.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = trim(&line[digits..]);
    if !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(v))
    })
}

/// The body of a response read on a [`RawConn`].
pub struct RawBody {
    conn: Option<RawConn>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<dyn Pool>,
}

impl RawBody {
    /// The body has ended: the connection goes back to its pool if nothing
    /// about it is in doubt.
    fn end(&mut self) {
        self.framing = Framing::Done;
        if let Some(mut c) = self.conn.take() {
            if self.keep_alive && c.buf.is_empty() {
                // What a long body's reads left is not kept while idle.
                if c.buf.capacity() > READ_MIN {
                    c.buf = BytesMut::new();
                }
                self.pool.check_in(c);
            }
        }
    }

    fn fail(&mut self, e: RawError) -> Poll<Option<Result<Frame<Bytes>, RawError>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    fn truncated(&mut self) -> Poll<Option<Result<Frame<Bytes>, RawError>>> {
        self.fail(eof(
            "the primary closed the connection inside the response body",
        ))
    }
}

/// What the body decoder gave for what the buffer holds.
enum BodyStep {
    /// Body data.
    Data(Bytes),
    /// The trailer section; the body has ended.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed (about this many).
    More(usize),
}

/// Decodes what `buf` holds of a body framed by `framing`, which it advances.
fn step_body(framing: &mut Framing, buf: &mut BytesMut) -> Result<BodyStep, RawError> {
    match *framing {
        Framing::Done => Ok(BodyStep::End),
        Framing::Length(n) => {
            if buf.is_empty() {
                return Ok(BodyStep::More(usize::try_from(n).unwrap_or(usize::MAX)));
            }
            let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let left = n - take as u64;
            *framing = if left == 0 {
                Framing::Done
            } else {
                Framing::Length(left)
            };
            Ok(BodyStep::Data(buf.split_to(take).freeze()))
        }
        Framing::Eof => {
            if buf.is_empty() {
                return Ok(BodyStep::More(READ_MAX));
            }
            Ok(BodyStep::Data(buf.split().freeze()))
        }
        Framing::Chunked(mut step) => loop {
            match step_chunked(buf, step)? {
                Stepped::Data(data, next) => {
                    *framing = Framing::Chunked(next);
                    return Ok(BodyStep::Data(data));
                }
                Stepped::Next(next) => {
                    step = next;
                    *framing = Framing::Chunked(next);
                }
                Stepped::End(trailers) => {
                    *framing = Framing::Done;
                    return Ok(trailers.map_or(BodyStep::End, BodyStep::Trailers));
                }
                Stepped::More(want) => return Ok(BodyStep::More(want)),
            }
        },
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = RawError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RawError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match step_body(&mut this.framing, &mut conn.buf) {
                Ok(BodyStep::Data(data)) => {
                    // Back to the pool with the last byte, before hyper asks
                    // again only to hear that the body has ended.
                    if this.framing == Framing::Done {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(BodyStep::Trailers(t)) => {
                    this.end();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(BodyStep::End) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(BodyStep::More(want)) => match ready!(conn.poll_fill(cx, want)) {
                    Ok(0) if this.framing == Framing::Eof => {
                        this.keep_alive = false;
                        this.end();
                        return Poll::Ready(None);
                    }
                    Ok(0) => return this.truncated(),
                    Ok(_) => {}
                    Err(e) => return this.fail(RawError::Io(e)),
                },
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// What one step of the chunked decoder gave.
enum Stepped {
    /// Chunk data, and the step after it.
    Data(Bytes, Chunk),
    /// Framing was consumed; go on at this step.
    Next(Chunk),
    /// The last chunk and its trailers (if any) were read.
    End(Option<HeaderMap>),
    /// More bytes are needed (about this many).
    More(usize),
}

/// Decodes what `buf` holds at `step` of a chunked body.
fn step_chunked(buf: &mut BytesMut, step: Chunk) -> Result<Stepped, RawError> {
    match step {
        Chunk::Size => {
            let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > CHUNK_LINE_MAX {
                    return Err(RawError::Bad("chunk-size line too long"));
                }
                return Ok(Stepped::More(READ_MIN));
            };
            if lf > CHUNK_LINE_MAX || lf == 0 || buf[lf - 1] != b'\r' {
                return Err(RawError::Bad("malformed chunk-size line"));
            }
            let size = parse_chunk_size(&buf[..lf - 1]).ok_or(RawError::Bad("bad chunk size"))?;
            let _ = buf.split_to(lf + 1);
            Ok(Stepped::Next(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(n) => {
            if buf.is_empty() {
                return Ok(Stepped::More(usize::try_from(n).unwrap_or(usize::MAX)));
            }
            let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let data = buf.split_to(take).freeze();
            let left = n - take as u64;
            let next = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Stepped::Data(data, next))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Stepped::More(READ_MIN));
            }
            if &buf[..2] != b"\r\n" {
                return Err(RawError::Bad("chunk data longer than its size"));
            }
            let _ = buf.split_to(2);
            Ok(Stepped::Next(Chunk::Size))
        }
        Chunk::Trailers => {
            if buf.len() >= 2 && &buf[..2] == b"\r\n" {
                let _ = buf.split_to(2);
                return Ok(Stepped::End(None));
            }
            let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut t = HeaderMap::with_capacity(fields.len());
                    for f in fields.iter() {
                        let name = HeaderName::from_bytes(f.name.as_bytes())
                            .map_err(|_| RawError::Bad("bad trailer field name"))?;
                        let value = HeaderValue::from_bytes(f.value)
                            .map_err(|_| RawError::Bad("bad trailer field value"))?;
                        t.append(name, value);
                    }
                    let _ = buf.split_to(len);
                    Ok(Stepped::End(Some(t)))
                }
                Ok(httparse::Status::Partial) if buf.len() >= HEAD_MAX => {
                    Err(RawError::Bad("trailer section too large"))
                }
                Ok(httparse::Status::Partial) => Ok(Stepped::More(READ_MIN)),
                Err(httparse::Error::TooManyHeaders) => {
                    Err(RawError::Bad("too many trailer fields"))
                }
                Err(_) => Err(RawError::Bad("malformed trailer section")),
            }
        }
    }
}

/// A response decoded from memory by [`decode`].
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The final status.
    pub status: u16,
    /// The head's fields.
    pub headers: HeaderMap,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The trailer section of a chunked body.
    pub trailers: Option<HeaderMap>,
    /// Whether the connection would go back to the pool.
    pub reusable: bool,
}

fn eof(what: &'static str) -> RawError {
    RawError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, what))
}

/// Decodes the response to `method` in `input`, handed to the decoder `piece`
/// bytes at a time as reads would hand it; the end of `input` is the primary
/// closing. The same decoder as on a connection, without one: for the fuzz
/// target, which checks that where reads split a response changes nothing.
pub fn decode(input: &[u8], method: &Method, piece: usize) -> Result<Decoded, RawError> {
    let mut pieces = input.chunks(piece.max(1));
    let mut buf = BytesMut::new();
    let head = loop {
        if !buf.is_empty() {
            match parse_head(&mut buf, method)? {
                Some(h) => break h,
                None if buf.len() >= HEAD_MAX => {
                    return Err(RawError::Bad("response head too large"))
                }
                None => {}
            }
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => return Err(eof("end of input inside the head")),
        }
    };
    let mut framing = head.framing;
    let mut keep_alive = head.keep_alive;
    let mut body = Vec::new();
    let mut trailers = None;
    loop {
        match step_body(&mut framing, &mut buf)? {
            BodyStep::Data(d) => body.extend_from_slice(&d),
            BodyStep::Trailers(t) => {
                trailers = Some(t);
                break;
            }
            BodyStep::End => break,
            BodyStep::More(_) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None if framing == Framing::Eof => {
                    keep_alive = false;
                    break;
                }
                None => return Err(eof("end of input inside the body")),
            },
        }
    }
    let (parts, ()) = head.resp.into_parts();
    Ok(Decoded {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        trailers,
        reusable: keep_alive && buf.is_empty() && pieces.next().is_none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &[u8], method: Method) -> Result<Option<Head>, RawError> {
        let mut b = BytesMut::from(raw);
        parse_head(&mut b, &method)
    }

    /// The head of a complete, valid response to a GET.
    fn complete(raw: &[u8]) -> Head {
        parsed(raw, Method::GET).expect("ok").expect("complete")
    }

    #[test]
    fn content_length_frames_the_body_and_keeps_the_connection() {
        let h = complete(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx: y\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.resp.headers()["x"], "y");
    }

    #[test]
    fn informational_heads_are_read_past() {
        let h = complete(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        );
        assert_eq!(h.resp.status(), 204);
        assert_eq!(h.framing, Framing::Done);
        assert!(h.resp.headers().get("link").is_none());
    }

    #[test]
    fn conflicting_or_malformed_lengths_are_bad_responses() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(
                matches!(parsed(raw, Method::GET), Err(RawError::Bad(_))),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let h = complete(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
    }

    #[test]
    fn transfer_encoding_wins_over_length_and_the_connection_is_not_reused() {
        let h =
            complete(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        assert!(!h.keep_alive);
        assert!(h.resp.headers().get("content-length").is_none());
        assert!(matches!(
            parsed(
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET
            ),
            Err(RawError::Bad(_))
        ));
        let h = complete(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Eof);
        assert!(!h.keep_alive);
    }

    #[test]
    fn http_1_0_closes_unless_it_says_keep_alive_and_close_always_closes() {
        let h = |raw: &[u8]| parsed(raw, Method::GET).expect("ok").expect("complete");
        assert!(!h(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(
            h(b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n").keep_alive
        );
        assert!(
            !h(b"HTTP/1.1 200 OK\r\nconnection: x, close\r\ncontent-length: 0\r\n\r\n").keep_alive
        );
        assert!(h(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
    }

    #[test]
    fn a_head_response_has_no_body_whatever_its_length_says() {
        let h = parsed(
            b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n",
            Method::HEAD,
        )
        .expect("ok")
        .expect("complete");
        assert_eq!(h.framing, Framing::Done);
    }

    #[test]
    fn a_partial_head_waits_and_garbage_is_bad() {
        assert!(matches!(
            parsed(b"HTTP/1.1 200 OK\r\ncont", Method::GET),
            Ok(None)
        ));
        assert!(matches!(
            parsed(b"SSH-2.0-OpenSSH\r\n\r\n", Method::GET),
            Err(RawError::Bad(_))
        ));
        assert!(matches!(
            parsed(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", Method::GET),
            Err(RawError::Bad(_))
        ));
    }

    #[test]
    fn chunk_sizes_parse_with_extensions_and_reject_junk() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"1A;name=value"), Some(26));
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_chunk_size(b"1ffffffffffffffff"), None);
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"x"), None);
        assert_eq!(parse_chunk_size(b"1 2"), None);
        assert_eq!(parse_chunk_size(b"-1"), None);
    }

    /// Runs the chunked decoder over `raw` as if it all had been read.
    fn decode(raw: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), RawError> {
        let mut buf = BytesMut::from(raw);
        let mut step = Chunk::Size;
        let mut out = Vec::new();
        loop {
            match step_chunked(&mut buf, step)? {
                Stepped::Data(d, next) => {
                    out.extend_from_slice(&d);
                    step = next;
                }
                Stepped::Next(next) => step = next,
                Stepped::End(t) => return Ok((out, t)),
                Stepped::More(_) => return Err(RawError::Bad("incomplete")),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_their_trailers() {
        let (b, t) = decode(b"5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n").expect("decoded");
        assert_eq!(b, b"hello!");
        assert!(t.is_none());
        let (b, t) = decode(b"2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n").expect("decoded");
        assert_eq!(b, b"ok");
        assert_eq!(t.expect("trailers")["grpc-status"], "0");
    }

    #[test]
    fn chunk_data_longer_than_its_size_or_bare_lf_is_bad() {
        assert!(matches!(
            decode(b"2\r\nokk\r\n0\r\n\r\n"),
            Err(RawError::Bad(_))
        ));
        assert!(matches!(
            decode(b"2\nok\r\n0\r\n\r\n"),
            Err(RawError::Bad(_))
        ));
        assert!(matches!(
            decode(b"zz\r\nok\r\n0\r\n\r\n"),
            Err(RawError::Bad(_))
        ));
    }

    #[test]
    fn the_request_head_carries_the_headers_and_no_framing() {
        let mut r = http::Request::get("/a?b=c").body(()).expect("request");
        r.headers_mut()
            .insert("host", HeaderValue::from_static("app"));
        r.headers_mut()
            .insert("transfer-encoding", HeaderValue::from_static("chunked"));
        r.headers_mut().append("x", HeaderValue::from_static("1"));
        r.headers_mut().append("x", HeaderValue::from_static("2"));
        let mut out = BytesMut::new();
        encode_head(&r, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /a?b=c HTTP/1.1\r\nhost: app\r\nx: 1\r\nx: 2\r\n\r\n"
        );
    }
}

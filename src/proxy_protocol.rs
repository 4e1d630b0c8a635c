//! The PROXY protocol (HAProxy's v1 text and v2 binary headers) that a TCP
//! load balancer puts in front of the ClientHello, so that portico learns the
//! client's address rather than the balancer's (`--proxy-protocol`).
//!
//! The parser is pure ([`parse`]) and strict; [`read_header`] drives it over a
//! socket without ever consuming a byte past the header: it peeks, and
//! consumes only bytes the parser has claimed, so a ClientHello that arrives in
//! the same segment is left in the socket for rustls. It is our own rather
//! than the `ppp` crate's (2.3) because that one brings a second `thiserror`
//! major, while the format is small and fixed and the reader needs one answer
//! a general parser does not promise: that bytes still arriving all belong to
//! the header. `fuzz/fuzz_targets/proxy_header.rs` holds it to that.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub use crate::config::cidr::Cidr;

/// The v2 signature (12 bytes).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// A v1 line is at most 107 bytes, CRLF included (the protocol's own limit).
pub const V1_MAX: usize = 107;
/// The largest v2 header taken, TLVs included. The protocol allows 64 KiB;
/// the balancers we know of send a few dozen bytes of TLVs, and a bound keeps
/// what a connection holds before its handshake small.
pub const V2_MAX: usize = 16 + 4096;
/// Bytes peeked at a time.
const PEEK: usize = 512;

/// What a complete header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// 1 (text) or 2 (binary).
    pub version: u8,
    /// The client's address; `None` for a v2 `LOCAL` header (the balancer's
    /// own health check), v1 `UNKNOWN` or a v2 `UNSPEC` family, where the
    /// connection's own peer stands.
    pub source: Option<SocketAddr>,
    /// The header's length in bytes: what precedes the ClientHello.
    pub len: usize,
}

/// The outcome of [`parse`] on the bytes seen so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Every byte given belongs to a header that is not complete yet.
    Incomplete,
    /// A whole header, whose `len` may be less than the bytes given.
    Complete(Header),
}

/// Why a connection's PROXY header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The bytes are neither a v1 nor a v2 header.
    NotProxy,
    /// A v1 line that does not hold.
    BadV1(&'static str),
    /// A v2 version other than 2.
    V2Version(u8),
    /// A v2 command other than `LOCAL` and `PROXY`.
    V2Command(u8),
    /// A v2 header that does not hold.
    BadV2(&'static str),
    /// A v2 header longer than [`V2_MAX`].
    TooLong(usize),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotProxy => write!(f, "no PROXY protocol header (v1 or v2 signature)"),
            Self::BadV1(why) => write!(f, "malformed PROXY v1 header: {why}"),
            Self::V2Version(v) => write!(f, "PROXY v2 header with unknown version {v}"),
            Self::V2Command(c) => write!(f, "PROXY v2 header with unknown command {c}"),
            Self::BadV2(why) => write!(f, "malformed PROXY v2 header: {why}"),
            Self::TooLong(n) => write!(
                f,
                "PROXY v2 header of {n} bytes, more than the {V2_MAX} taken"
            ),
        }
    }
}

/// Parses the start of a connection. `Incomplete` is only said of bytes that
/// all belong to the header, so a reader may consume every byte given then;
/// `Complete` names the exact length, so it consumes no byte past the header.
pub fn parse(buf: &[u8]) -> Result<Parsed, Refusal> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return parse_v1(buf);
    }
    Err(Refusal::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Refusal> {
    let window = &buf[..buf.len().min(V1_MAX)];
    // Anything but the CRLF that ends the line is printable ASCII.
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if window.iter().any(|&b| !(0x20..0x7f).contains(&b)) {
            return Err(Refusal::BadV1("a byte that is not printable ASCII"));
        }
        return if buf.len() >= V1_MAX {
            Err(Refusal::BadV1("no CRLF within 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    if window[..cr].iter().any(|&b| !(0x20..0x7f).contains(&b)) {
        return Err(Refusal::BadV1("a byte that is not printable ASCII"));
    }
    if window[cr] != b'\r' {
        return Err(Refusal::BadV1("a bare LF"));
    }
    match window.get(cr + 1) {
        None if buf.len() < V1_MAX => return Ok(Parsed::Incomplete),
        None => return Err(Refusal::BadV1("no CRLF within 107 bytes")),
        Some(b'\n') => {}
        Some(_) => return Err(Refusal::BadV1("a CR not followed by LF")),
    }
    let len = cr + 2;
    // Only ASCII was let through above.
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..cr])
        .map_err(|_| Refusal::BadV1("not ASCII"))?;
    let mut fields = line.split(' ');
    let proto = fields.next().unwrap_or("");
    if proto == "UNKNOWN" {
        // The sender does not know the client: the rest of the line is ignored.
        return Ok(Parsed::Complete(Header {
            version: 1,
            source: None,
            len,
        }));
    }
    let four = match proto {
        "TCP4" => true,
        "TCP6" => false,
        _ => return Err(Refusal::BadV1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Refusal::BadV1(
            "not four fields after the protocol, one space apart",
        ));
    };
    let ip = |s: &str| -> Result<IpAddr, Refusal> {
        let ip = if four {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        } else {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        };
        ip.map_err(|_| Refusal::BadV1("an address that does not match the protocol"))
    };
    let port = |s: &str| -> Result<u16, Refusal> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Refusal::BadV1("a port that is not a number"));
        }
        s.parse()
            .map_err(|_| Refusal::BadV1("a port greater than 65535"))
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    ip(dst)?;
    port(dport)?;
    Ok(Parsed::Complete(Header {
        version: 1,
        source: Some(source),
        len,
    }))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Refusal> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(Refusal::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(Refusal::V2Command(c)),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    let (family, proto) = (fam >> 4, fam & 0x0f);
    if family > 3 || proto > 2 {
        return Err(Refusal::BadV2("unknown address family or protocol"));
    }
    let Some(l) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let body = usize::from(u16::from_be_bytes([l[0], l[1]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Err(Refusal::TooLong(len));
    }
    // The address block's size is known from the family: a length that cannot
    // hold it is refused before waiting for bytes that would not help.
    let need = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if body < need {
        return Err(Refusal::BadV2("length shorter than its address block"));
    }
    let Some(h) = buf.get(..len) else {
        return Ok(Parsed::Incomplete);
    };
    let header = |source| {
        Ok(Parsed::Complete(Header {
            version: 2,
            source,
            len,
        }))
    };
    if local {
        // The balancer's own connection (a health check): addresses ignored.
        return header(None);
    }
    let a = &h[16..];
    match (family, proto) {
        // UNSPEC: the sender does not know the client; the peer stands.
        (0, _) => header(None),
        (1, 1) => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            header(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        (2, 1) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[..16]);
            header(Some(SocketAddr::new(
                Ipv6Addr::from(o).into(),
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        _ => Err(Refusal::BadV2(
            "not TCP over IPv4 or IPv6 (UDP or a Unix socket)",
        )),
    }
}

/// Why [`read_header`] returned no header.
#[derive(Debug)]
pub enum ReadError {
    /// The header did not hold.
    Refused(Refusal),
    /// The peer closed before the header was complete.
    Eof,
    /// The socket failed.
    Io(std::io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(r) => r.fmt(f),
            Self::Eof => write!(f, "connection closed before a complete PROXY header"),
            Self::Io(e) => write!(f, "reading the PROXY header: {e}"),
        }
    }
}

/// How many more bytes a reader consumes after `parse` saw `buf`, of which
/// the first `held` were consumed already: all of a valid prefix, or exactly
/// up to the end of a complete header.
pub fn consume(buf: &[u8], held: usize) -> Result<(usize, Option<Header>), Refusal> {
    match parse(buf)? {
        Parsed::Incomplete => Ok((buf.len() - held, None)),
        Parsed::Complete(h) => Ok((h.len - held, Some(h))),
    }
}

/// Reads one PROXY header off `tcp` and nothing after it (no timeout of its
/// own: the caller holds the deadline).
pub async fn read_header(tcp: &mut TcpStream) -> Result<Header, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(PEEK);
    loop {
        let held = buf.len();
        buf.resize(held + PEEK, 0);
        // peek waits for bytes beyond those consumed; it cannot spin, since
        // each round consumes all it saw or ends.
        let n = tcp.peek(&mut buf[held..]).await.map_err(ReadError::Io)?;
        buf.truncate(held + n);
        if n == 0 {
            return Err(ReadError::Eof);
        }
        let (take, done) = consume(&buf, held).map_err(ReadError::Refused)?;
        buf.truncate(held + take);
        tcp.read_exact(&mut buf[held..])
            .await
            .map_err(ReadError::Io)?;
        if let Some(h) = done {
            return Ok(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 TCP over IPv4 body: 203.0.113.7:51234 -> 192.0.2.1:443, then
    /// one TLV (type 0xea, "vpc") that the parser must skip.
    fn tcp4_body_with_tlv() -> Vec<u8> {
        let mut body = vec![203, 0, 113, 7, 192, 0, 2, 1, 0xc8, 0x22, 1, 0xbb];
        body.extend_from_slice(&[0xea, 0, 3, b'v', b'p', b'c']);
        body
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn complete(buf: &[u8]) -> Header {
        match parse(buf) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown_give_the_source_and_the_exact_length() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n";
        let mut buf = line.to_vec();
        buf.extend_from_slice(b"\x16\x03\x01rest");
        assert_eq!(
            complete(&buf),
            Header {
                version: 1,
                source: Some("203.0.113.7:51234".parse().expect("valid")),
                len: line.len()
            }
        );
        let h = complete(b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n");
        assert_eq!(
            h.source,
            Some("[2001:db8::7]:65535".parse().expect("valid"))
        );
        let h = complete(b"PROXY UNKNOWN\r\n");
        assert_eq!((h.source, h.len), (None, 15));
        let h = complete(b"PROXY UNKNOWN ffff:: 1.2.3.4 1 2\r\n");
        assert_eq!(h.source, None);
    }

    #[test]
    fn v1_refusals_name_what_is_wrong() {
        for (bad, why) in [
            (
                &b"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n"[..],
                "four fields",
            ),
            (b"PROXY TCP4 203.0.113.7  192.0.2.1 1 2\r\n", "four fields"),
            (b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", "address"),
            (b"PROXY TCP6 192.0.2.7 192.0.2.1 1 2\r\n", "address"),
            (b"PROXY TCP4 192.0.2.7 192.0.2.1 65536 2\r\n", "65535"),
            (b"PROXY TCP4 192.0.2.7 192.0.2.1 -1 2\r\n", "number"),
            (b"PROXY TCP4 192.0.2.7 192.0.2.1 1 2\n", "bare LF"),
            (b"PROXY TCP4 192.0.2.7 192.0.2.1 1 2\rX", "CR not followed"),
            (b"PROXY UDP4 192.0.2.7 192.0.2.1 1 2\r\n", "TCP4, TCP6"),
            (b"PROXY TCP4 192.0.2.7\x00 192.0.2.1 1 2\r\n", "printable"),
        ] {
            match parse(bad) {
                Err(Refusal::BadV1(w)) => assert!(w.contains(why), "{bad:?}: {w}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(
            parse(&long),
            Err(Refusal::BadV1("no CRLF within 107 bytes"))
        );
        assert_eq!(parse(b"\x16\x03\x01"), Err(Refusal::NotProxy));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Refusal::NotProxy));
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let body = tcp4_body_with_tlv();
        let h = v2(1, 0x11, &body);
        let mut buf = h.clone();
        buf.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            complete(&buf),
            Header {
                version: 2,
                source: Some("203.0.113.7:51234".parse().expect("valid")),
                len: h.len()
            }
        );
        let mut body6 = Vec::new();
        body6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("valid").octets());
        body6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("valid").octets());
        body6.extend_from_slice(&[0, 80, 1, 0xbb]);
        assert_eq!(
            complete(&v2(1, 0x21, &body6)).source,
            Some("[2001:db8::7]:80".parse().expect("valid"))
        );
        let local = v2(0, 0x00, &[]);
        assert_eq!(
            complete(&local),
            Header {
                version: 2,
                source: None,
                len: 16
            }
        );
        // LOCAL ignores whatever addresses it carries.
        assert_eq!(complete(&v2(0, 0x11, &body)).source, None);
    }

    #[test]
    fn v2_refusals() {
        let body = [0u8; 12];
        let mut h = v2(1, 0x11, &body);
        h[12] = 0x31;
        assert_eq!(parse(&h), Err(Refusal::V2Version(3)));
        assert_eq!(parse(&v2(2, 0x11, &body)), Err(Refusal::V2Command(2)));
        assert!(matches!(parse(&v2(1, 0x12, &body)), Err(Refusal::BadV2(_))));
        assert!(matches!(
            parse(&v2(1, 0x31, &[0; 216])),
            Err(Refusal::BadV2(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x11, &[0; 11])),
            Err(Refusal::BadV2(_))
        ));
        assert!(matches!(parse(&v2(1, 0x51, &body)), Err(Refusal::BadV2(_))));
        let mut big = v2(1, 0x11, &body);
        big[14..16].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(parse(&big[..16]), Err(Refusal::TooLong(5016)));
    }

    #[test]
    fn every_proper_prefix_of_a_header_is_incomplete() {
        let body = tcp4_body_with_tlv();
        for h in [
            v2(1, 0x11, &body),
            v2(0, 0x00, &[]),
            b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
        ] {
            for k in 0..h.len() {
                assert_eq!(parse(&h[..k]), Ok(Parsed::Incomplete), "{k} of {h:?}");
            }
            assert_eq!(complete(&h).len, h.len());
        }
    }

    #[test]
    fn reads_in_any_piece_size_consume_the_header_and_nothing_after_it() {
        let body = tcp4_body_with_tlv();
        for h in [
            v2(1, 0x11, &body),
            v2(0, 0x00, &[]),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n".to_vec(),
        ] {
            let mut input = h.clone();
            input.extend_from_slice(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n");
            for piece in 1..=input.len() {
                let mut held = 0;
                let header = loop {
                    let seen = (held + piece).min(input.len());
                    let (take, done) = consume(&input[..seen], held).expect("valid");
                    held += take;
                    if let Some(d) = done {
                        break d;
                    }
                    assert_eq!(held, seen);
                };
                assert_eq!((held, header.len), (h.len(), h.len()), "pieces of {piece}");
            }
        }
    }
}

//! The PROXY protocol header parser (`proxy_protocol::parse`) and the way the
//! listener drives it over a socket (`proxy_protocol::consume`).
//!
//! Input: one byte for the size of the reads the bytes arrive in (1 to 256),
//! then the bytes a peer sends (a header, maybe, and what follows it).
//!
//! Invariants: the reader consumes exactly the header and not one byte of
//! what follows (so a ClientHello behind it reaches rustls untouched), and
//! where the reads split the bytes changes nothing (same header, or a refusal
//! where one read is refused, or still incomplete where the bytes end early);
//! every proper prefix of a header is incomplete, never refused; a header is
//! within the protocol's bounds (v1 107 bytes, v2 `V2_MAX`); a client address
//! written back as a v1 line and as a v2 header parses to the same address.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use portico::proxy_protocol::{consume, parse, Header, Parsed, V1_MAX, V2_MAX, V2_SIGNATURE};

/// Reads `input` in pieces of `piece` bytes as `read_header` does (peek,
/// then consume what the parser claims): the header and the bytes consumed,
/// `Err` for a refusal, `Ok(None)` when the input ends first.
fn read(input: &[u8], piece: usize) -> Result<Option<(Header, usize)>, ()> {
    let mut held = 0;
    loop {
        let seen = (held + piece).min(input.len());
        if seen == held {
            return Ok(None);
        }
        let (take, done) = consume(&input[..seen], held).map_err(|_| ())?;
        assert!(take <= seen - held, "consumed bytes never seen");
        held += take;
        if let Some(h) = done {
            return Ok(Some((h, held)));
        }
        assert_eq!(held, seen, "an incomplete header consumed all it saw");
    }
}

fn v1_line(src: SocketAddr) -> String {
    let (proto, dst) = match src {
        SocketAddr::V4(_) => ("TCP4", "192.0.2.1"),
        SocketAddr::V6(_) => ("TCP6", "2001:db8::1"),
    };
    format!("PROXY {proto} {} {dst} {} 443\r\n", src.ip(), src.port())
}

fn v2_header(src: SocketAddr) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    let mut body = Vec::new();
    match src {
        SocketAddr::V4(a) => {
            h.push(0x21);
            h.push(0x11);
            body.extend_from_slice(&a.ip().octets());
            body.extend_from_slice(&[192, 0, 2, 1]);
        }
        SocketAddr::V6(a) => {
            h.push(0x21);
            h.push(0x21);
            body.extend_from_slice(&a.ip().octets());
            body.extend_from_slice(&[0; 16]);
        }
    }
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, input)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece) + 1;
    let whole = parse(input);
    let split = read(input, piece);
    match (&whole, &split) {
        (Ok(Parsed::Complete(h)), Ok(Some((g, consumed)))) => {
            assert_eq!(h, g, "reads of {piece} bytes parsed otherwise");
            assert_eq!(*consumed, h.len, "consumed past (or short of) the header");
        }
        (Ok(Parsed::Incomplete), Ok(None)) | (Err(_), Err(())) => {}
        _ => panic!("reads of {piece} bytes: {split:?}; one read: {whole:?}"),
    }
    let Ok(Parsed::Complete(h)) = whole else {
        return;
    };
    assert!(h.len <= input.len());
    match h.version {
        1 => assert!(h.len <= V1_MAX),
        2 => assert!((16..=V2_MAX).contains(&h.len)),
        v => panic!("version {v}"),
    }
    // The header alone, without what follows, is the same header, and no
    // shorter piece of it is refused.
    assert_eq!(parse(&input[..h.len]), Ok(Parsed::Complete(h)));
    for k in 0..h.len {
        assert_eq!(parse(&input[..k]), Ok(Parsed::Incomplete), "prefix of {k}");
    }
    if let Some(src) = h.source {
        let line = v1_line(src);
        match parse(line.as_bytes()) {
            Ok(Parsed::Complete(b)) => assert_eq!(b.source, Some(src), "{line:?}"),
            other => panic!("{line:?}: {other:?}"),
        }
        let bin = v2_header(src);
        match parse(&bin) {
            Ok(Parsed::Complete(b)) => assert_eq!((b.source, b.len), (Some(src), bin.len())),
            other => panic!("{bin:?}: {other:?}"),
        }
    }
});

//! `--allow-san` patterns and what portico reads from a client certificate.
//!
//! The whole input is tried both ways: as pattern text (one a line) and as a
//! DER certificate. Never a panic; a pattern prints as text that parses back to
//! itself; `identity` and `xfcc` agree on whether the DER is a certificate;
//! every certificate gets an `X-Forwarded-Client-Cert` value that is a valid
//! field value and, read back by an independent parser, is one element with
//! exactly the DER's SHA-256, its RFC 4514 subject, then its URI and DNS names
//! (control characters percent-encoded): no SAN can forge a key or element.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::tls::san::SanPattern;
use portico::tls::{identity, rfc4514, xfcc};
use x509_parser::prelude::{FromDer, X509Certificate};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let id = identity(data);
    for line in text.lines().take(64) {
        if let Ok(p) = SanPattern::parse(line) {
            let again = SanPattern::parse(&p.to_string());
            assert_eq!(again.as_ref(), Ok(&p), "{line:?} -> {p}");
            if let Some(id) = &id {
                let _ = p.matches(id);
            }
        }
    }

    let x = xfcc(data);
    let parsed = X509Certificate::from_der(data).ok();
    assert_eq!(id.is_some(), parsed.is_some());
    let Some((_, cert)) = &parsed else {
        assert!(x.is_none(), "xfcc of something that is not a certificate");
        return;
    };
    let subject = rfc4514(cert.subject());
    let _ = rfc4514(cert.issuer());
    // Every parsed certificate gets the header, and it is a valid field value.
    let v = x.expect("X-Forwarded-Client-Cert for a parsed certificate");
    assert!(
        v.as_bytes().iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
        "{v:?}"
    );
    let s = std::str::from_utf8(v.as_bytes()).expect("UTF-8");
    // Read back as a consumer would: one element, `;`-separated pairs, values
    // bare or quoted. The pairs must be exactly the certificate's names.
    let pairs = parse_element(s).unwrap_or_else(|| panic!("unparsable {s:?}"));
    let id = id.as_ref().expect("identity");
    let mut want = vec![
        ("Hash".to_string(), String::new()),
        ("Subject".to_string(), encode_controls(&subject)),
    ];
    want.extend(id.uri.iter().map(|u| ("URI".to_string(), encode_controls(u))));
    want.extend(id.dns.iter().map(|d| ("DNS".to_string(), encode_controls(d))));
    assert_eq!(pairs.len(), want.len(), "{s:?}");
    let hash = &pairs[0].1;
    assert_eq!(pairs[0].0, "Hash");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{s:?}"
    );
    assert_eq!(&pairs[1..], &want[1..], "{s:?}");
});

/// Control characters as `%xx`, the one change portico makes to a name.
fn encode_controls(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if c.is_control() && c != '\t' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One XFCC element as (key, value) pairs; None if it is not well formed or
/// holds a second element.
fn parse_element(s: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut key = String::new();
        loop {
            match chars.next()? {
                '=' => break,
                c if c.is_ascii_alphabetic() => key.push(c),
                _ => return None,
            }
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if matches!(c, ';' | ',' | '"' | '=' | '\\' | ' ') {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
        match chars.next() {
            None => return Some(pairs),
            Some(';') => {}
            Some(_) => return None,
        }
    }
}

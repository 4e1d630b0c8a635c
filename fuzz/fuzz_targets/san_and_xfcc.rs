//! `--allow-san` patterns and what portico reads from a client certificate.
//!
//! The whole input is tried both ways: as pattern text (one a line) and as a
//! DER certificate. Never a panic; a pattern prints as text that parses back to
//! itself; `identity` and `xfcc` agree on whether the DER is a certificate; an
//! `X-Forwarded-Client-Cert` value holds no control character and is exactly
//! the DER's SHA-256, its RFC 4514 subject quoted, then its URI and DNS names.
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
    if let Some((_, cert)) = &parsed {
        let subject = rfc4514(cert.subject());
        let _ = rfc4514(cert.issuer());
        if let Some(v) = &x {
            // A valid field value: no control characters (UTF-8 from the
            // certificate passes through as obs-text, as Envoy passes it).
            assert!(
                v.as_bytes()
                    .iter()
                    .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
                "{v:?}"
            );
            let s = std::str::from_utf8(v.as_bytes()).expect("UTF-8");
            let rest = s.strip_prefix("Hash=").expect("Hash= first");
            assert!(rest.is_char_boundary(64), "{s:?}");
            let (hash, rest) = rest.split_at(64);
            assert!(hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            let mut quoted = String::from(";Subject=\"");
            for c in subject.chars() {
                if c == '"' || c == '\\' {
                    quoted.push('\\');
                }
                quoted.push(c);
            }
            quoted.push('"');
            assert!(rest.starts_with(&quoted), "{s:?}");
            let id = id.as_ref().expect("identity");
            let mut tail = String::new();
            for u in &id.uri {
                tail.push_str(";URI=");
                tail.push_str(u);
            }
            for d in &id.dns {
                tail.push_str(";DNS=");
                tail.push_str(d);
            }
            assert_eq!(&rest[quoted.len()..], tail, "{s:?}");
        } else {
            // Only a name with a control character keeps the header away.
            let id = id.as_ref().expect("identity");
            let ctl = |t: &str| t.chars().any(|c| c != '\t' && (c < ' ' || c == '\x7f'));
            assert!(
                ctl(&subject) || id.uri.iter().any(|u| ctl(u)) || id.dns.iter().any(|d| ctl(d)),
                "no X-Forwarded-Client-Cert for {subject:?} {id:?}"
            );
        }
    } else {
        assert!(x.is_none(), "xfcc of something that is not a certificate");
    }
});

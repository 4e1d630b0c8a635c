//! Record protection after the handshake: one direction's AEAD key, IV and
//! sequence number, sealing and opening TLS 1.3 and TLS 1.2 records
//! (RFC 8446 section 5.2; RFC 5288 for TLS 1.2 AES-GCM, RFC 7905 for
//! ChaCha20-Poly1305). rustls made the keys and keeps the secrets for key
//! updates (`rustls::kernel`); records are sealed from the caller's plaintext
//! straight into the buffer that is written, and opened in place where they
//! were read, with no copy in between.

use std::ops::Range;

use aws_lc_rs::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, NONCE_LEN,
};
use rustls::ConnectionTrafficSecrets;

/// An alert record.
pub const ALERT: u8 = 21;
/// A handshake record.
pub const HANDSHAKE: u8 = 22;
/// An application-data record.
pub const APPLICATION_DATA: u8 = 23;

/// The record header: type, legacy version, length.
pub const HEADER: usize = 5;
/// The largest plaintext a record may carry.
pub const MAX_PLAINTEXT: usize = 1 << 14;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce.
const EXPLICIT: usize = 8;

/// Alert descriptions portico sends.
pub mod alert {
    /// The peer closes its side.
    pub const CLOSE_NOTIFY: u8 = 0;
    /// A record of the wrong type.
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    /// A record that does not decrypt.
    pub const BAD_RECORD_MAC: u8 = 20;
    /// A record that is too long.
    pub const RECORD_OVERFLOW: u8 = 22;
    /// A message that does not parse.
    pub const DECODE_ERROR: u8 = 50;
    /// TLS 1.2 renegotiation is refused (a warning).
    pub const NO_RENEGOTIATION: u8 = 100;
}

/// Why a record could not be opened: the alert to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub u8);

/// Which record format the connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Tls13,
    Tls12Gcm,
    Tls12Chacha,
}

/// One direction's record protection.
pub struct Protection {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    format: Format,
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protection")
            .field("seq", &self.seq)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// What an opened record holds: its type and where its plaintext is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The (inner, for TLS 1.3) content type.
    pub typ: u8,
    /// The plaintext, as a range of the record passed to `open`.
    pub plain: Range<usize>,
}

impl Protection {
    /// From rustls's secrets for one direction, starting at `seq`.
    pub fn new(tls13: bool, seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Self, String> {
        let (alg, key, iv, chacha) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv, false),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv, false),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&CHACHA20_POLY1305, key, iv, true)
            }
            _ => return Err("unsupported cipher suite for record protection".into()),
        };
        let format = match (tls13, chacha) {
            (true, _) => Format::Tls13,
            (false, false) => Format::Tls12Gcm,
            (false, true) => Format::Tls12Chacha,
        };
        let key =
            UnboundKey::new(alg, key.as_ref()).map_err(|_| "unusable traffic key".to_string())?;
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| "unusable traffic IV".to_string())?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
            format,
        })
    }

    /// The next record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// The most a record of `len` plaintext bytes takes sealed.
    pub fn sealed_len(len: usize) -> usize {
        HEADER + EXPLICIT + len + 1 + TAG
    }

    /// Seals `plain` (at most `MAX_PLAINTEXT`) as one record of type `typ`
    /// into the start of `out` (at least `sealed_len(plain.len())` long);
    /// returns the record's length.
    pub fn seal(&mut self, typ: u8, plain: &[u8], out: &mut [u8]) -> Result<usize, Refused> {
        let nonce = self.nonce();
        // TLS 1.3's inner content type is sealed after the plaintext, as the
        // "extra" plaintext ahead of the tag.
        let inner_type = [typ];
        let (outer, body_at, extra): (u8, usize, &[u8]) = match self.format {
            Format::Tls13 => (APPLICATION_DATA, HEADER, &inner_type),
            Format::Tls12Gcm => (typ, HEADER + EXPLICIT, &[]),
            Format::Tls12Chacha => (typ, HEADER, &[]),
        };
        let len = body_at - HEADER + plain.len() + extra.len() + TAG;
        let total = HEADER + len;
        if plain.len() > MAX_PLAINTEXT || out.len() < total {
            return Err(Refused(alert::RECORD_OVERFLOW));
        }
        let len16 = u16::try_from(len).map_err(|_| Refused(alert::RECORD_OVERFLOW))?;
        let header = [outer, 3, 3, (len16 >> 8) as u8, len16 as u8];
        out[..HEADER].copy_from_slice(&header);
        let mut aad12 = [0u8; 13];
        let aad: &[u8] = match self.format {
            Format::Tls13 => &header,
            Format::Tls12Gcm | Format::Tls12Chacha => {
                tls12_aad(&mut aad12, self.seq, typ, plain.len());
                &aad12
            }
        };
        if self.format == Format::Tls12Gcm {
            out[HEADER..HEADER + EXPLICIT].copy_from_slice(&nonce[4..]);
        }
        // The plaintext is encrypted from where the caller has it straight
        // into the record: copying it in first and sealing in place cost a
        // tenth of a bulk download's CPU (S4D).
        let (cipher, extra_and_tag) = out[body_at..total].split_at_mut(plain.len());
        self.key
            .seal_out_of_place_scatter(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                plain,
                cipher,
                extra,
                extra_and_tag,
            )
            .map_err(|_| Refused(alert::BAD_RECORD_MAC))?;
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(Refused(alert::BAD_RECORD_MAC))?;
        Ok(total)
    }

    /// Opens the whole record `rec` (header included) in place.
    pub fn open(&mut self, rec: &mut [u8]) -> Result<Opened, Refused> {
        let outer = rec[0];
        let body = rec.len() - HEADER;
        let (body_at, nonce) = match self.format {
            Format::Tls13 => {
                if outer != APPLICATION_DATA {
                    return Err(Refused(alert::UNEXPECTED_MESSAGE));
                }
                if body > MAX_PLAINTEXT + 256 {
                    return Err(Refused(alert::RECORD_OVERFLOW));
                }
                (HEADER, self.nonce())
            }
            Format::Tls12Gcm => {
                if body < EXPLICIT + TAG {
                    return Err(Refused(alert::DECODE_ERROR));
                }
                let mut n = self.iv;
                n[4..].copy_from_slice(&rec[HEADER..HEADER + EXPLICIT]);
                (HEADER + EXPLICIT, n)
            }
            Format::Tls12Chacha => (HEADER, self.nonce()),
        };
        if rec.len() < body_at + TAG {
            return Err(Refused(alert::DECODE_ERROR));
        }
        let sealed_len = rec.len() - body_at - TAG;
        if self.format != Format::Tls13 && sealed_len > MAX_PLAINTEXT {
            return Err(Refused(alert::RECORD_OVERFLOW));
        }
        let mut aad12 = [0u8; 13];
        let aad: &[u8] = match self.format {
            Format::Tls13 => {
                aad12[..HEADER].copy_from_slice(&rec[..HEADER]);
                &aad12[..HEADER]
            }
            _ => {
                tls12_aad(&mut aad12, self.seq, outer, sealed_len);
                &aad12
            }
        };
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut rec[body_at..],
            )
            .map_err(|_| Refused(alert::BAD_RECORD_MAC))?
            .len();
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(Refused(alert::BAD_RECORD_MAC))?;
        let plain = &rec[body_at..body_at + plain_len];
        match self.format {
            Format::Tls13 => {
                // The inner type is the last non-zero byte; zeros after it pad.
                let end = plain
                    .iter()
                    .rposition(|&b| b != 0)
                    .ok_or(Refused(alert::UNEXPECTED_MESSAGE))?;
                if end > MAX_PLAINTEXT {
                    return Err(Refused(alert::RECORD_OVERFLOW));
                }
                Ok(Opened {
                    typ: plain[end],
                    plain: body_at..body_at + end,
                })
            }
            _ => Ok(Opened {
                typ: outer,
                plain: body_at..body_at + plain_len,
            }),
        }
    }
}

fn tls12_aad(aad: &mut [u8; 13], seq: u64, typ: u8, len: usize) {
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn pair(tls13: bool, which: u8) -> (Protection, Protection) {
        let mk = || {
            let key: [u8; 32] = std::array::from_fn(|i| i as u8);
            let iv: [u8; 12] = std::array::from_fn(|i| 100 + i as u8);
            let (k, iv) = (AeadKey::from(key), Iv::new(iv));
            match which {
                0 => ConnectionTrafficSecrets::Aes256Gcm { key: k, iv },
                _ => ConnectionTrafficSecrets::Chacha20Poly1305 { key: k, iv },
            }
        };
        (
            Protection::new(tls13, 7, mk()).expect("tx"),
            Protection::new(tls13, 7, mk()).expect("rx"),
        )
    }

    #[test]
    fn sealed_records_open_to_the_same_type_and_plaintext_in_every_format() {
        for (tls13, which) in [(true, 0), (true, 1), (false, 0), (false, 1)] {
            let (mut tx, mut rx) = pair(tls13, which);
            for (typ, plain) in [
                (APPLICATION_DATA, &b"GET / HTTP/1.1\r\n\r\n"[..]),
                (ALERT, &[1, 0][..]),
                (APPLICATION_DATA, &[][..]),
                (APPLICATION_DATA, &[0u8; MAX_PLAINTEXT][..]),
            ] {
                let mut out = vec![0u8; Protection::sealed_len(plain.len())];
                let n = tx.seal(typ, plain, &mut out).expect("seal");
                let rec = &mut out[..n];
                assert_eq!(
                    usize::from(u16::from_be_bytes([rec[3], rec[4]])),
                    n - HEADER
                );
                let opened = rx.open(rec).expect("open");
                assert_eq!(opened.typ, typ, "tls13={tls13} alg={which}");
                assert_eq!(&rec[opened.plain.clone()], plain);
            }
            assert_eq!(tx.seq(), 11);
            assert_eq!(rx.seq(), 11);
        }
    }

    #[test]
    fn a_changed_byte_a_replayed_record_or_a_foreign_type_is_refused() {
        let (mut tx, mut rx) = pair(true, 0);
        let mut out = vec![0u8; Protection::sealed_len(4)];
        let n = tx.seal(APPLICATION_DATA, b"ping", &mut out).expect("seal");
        let mut flipped = out[..n].to_vec();
        flipped[HEADER + 1] ^= 1;
        assert_eq!(rx.open(&mut flipped), Err(Refused(alert::BAD_RECORD_MAC)));
        // The failed open did not consume a sequence number.
        let mut good = out[..n].to_vec();
        assert!(rx.open(&mut good).is_ok());
        let mut replay = out[..n].to_vec();
        assert_eq!(rx.open(&mut replay), Err(Refused(alert::BAD_RECORD_MAC)));
        let mut outer = out[..n].to_vec();
        outer[0] = HANDSHAKE;
        assert_eq!(rx.open(&mut outer), Err(Refused(alert::UNEXPECTED_MESSAGE)));
    }
}

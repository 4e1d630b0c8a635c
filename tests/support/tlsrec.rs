//! A TLS client whose records after the handshake are written by hand, for
//! tests that must send what no well-behaved client sends (an over-padded
//! record, a second ClientHello, a KeyUpdate in two pieces) and read the
//! alert portico answers with. The handshake is rustls's client; its traffic
//! keys come out with `dangerous_extract_secrets`, and records are sealed and
//! opened here with aws-lc-rs, as RFC 8446 §5.2 and RFC 5246 §6.2.3.3 say.
//! Only the test's peer does this: portico's records are rustls's. Also
//! used by the `tls_stream` fuzz target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Content types.
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// One direction's key, IV and sequence number.
pub struct Keys {
    tls13: bool,
    /// TLS 1.2 AES-GCM carries an explicit nonce in each record.
    explicit_nonce: bool,
    key: LessSafeKey,
    iv: [u8; 12],
    /// The next record's sequence number.
    pub seq: u64,
}

impl Keys {
    fn new(tls13: bool, (seq, secrets): (u64, ConnectionTrafficSecrets)) -> Self {
        let (alg, key, iv, gcm) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => panic!("an AEAD this test does not know"),
        };
        let iv: [u8; 12] = iv.as_ref().try_into().expect("12-byte IV");
        Self {
            tls13,
            explicit_nonce: gcm && !tls13,
            key: LessSafeKey::new(UnboundKey::new(alg, key.as_ref()).expect("key")),
            iv,
            seq,
        }
    }

    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn tls12_aad(&self, typ: u8, len: usize) -> [u8; 13] {
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&self.seq.to_be_bytes());
        aad[8] = typ;
        aad[9..11].copy_from_slice(&[3, 3]);
        aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
        aad
    }

    /// One record of type `typ` carrying `payload`; in TLS 1.3 followed by
    /// `padding` zero bytes inside the encryption.
    pub fn seal(&mut self, typ: u8, payload: &[u8], padding: usize) -> Vec<u8> {
        let nonce = self.nonce();
        let mut out;
        if self.tls13 {
            let mut inner = payload.to_vec();
            inner.push(typ);
            inner.resize(inner.len() + padding, 0);
            let len = inner.len() + 16;
            let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
            self.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(header),
                    &mut inner,
                )
                .expect("seal");
            out = header.to_vec();
            out.extend_from_slice(&inner);
        } else {
            let aad = self.tls12_aad(typ, payload.len());
            let mut body = payload.to_vec();
            self.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut body,
                )
                .expect("seal");
            let explicit = if self.explicit_nonce { 8 } else { 0 };
            let len = body.len() + explicit;
            out = vec![typ, 3, 3, (len >> 8) as u8, len as u8];
            if self.explicit_nonce {
                out.extend_from_slice(&nonce[4..]);
            }
            out.extend_from_slice(&body);
        }
        self.seq += 1;
        out
    }

    /// Opens one whole record (header included): its content type and
    /// plaintext.
    pub fn open(&mut self, record: &[u8]) -> Result<(u8, Vec<u8>), String> {
        let (header, body) = record.split_at(5);
        let mut body = body.to_vec();
        let plain = if self.tls13 {
            let mut inner = self
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(self.nonce()),
                    Aad::from(<[u8; 5]>::try_from(header).expect("header")),
                    &mut body,
                )
                .map_err(|_| format!("record {} does not open", self.seq))?
                .to_vec();
            while inner.last() == Some(&0) {
                inner.pop();
            }
            let typ = inner.pop().ok_or("an empty TLS 1.3 record")?;
            (typ, inner)
        } else {
            let typ = header[0];
            let (nonce, sealed) = if self.explicit_nonce {
                let mut n = [0u8; 12];
                n[..4].copy_from_slice(&self.iv[..4]);
                n[4..].copy_from_slice(&body[..8]);
                (n, &mut body[8..])
            } else {
                (self.nonce(), &mut body[..])
            };
            let aad = self.tls12_aad(typ, sealed.len().saturating_sub(16));
            let plain = self
                .key
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
                .map_err(|_| format!("record {} does not open", self.seq))?;
            (typ, plain.to_vec())
        };
        self.seq += 1;
        Ok(plain)
    }
}

/// A TCP connection after a rustls client's handshake, its keys in hand.
pub struct Keyed {
    pub tcp: TcpStream,
    pub tx: Keys,
    pub rx: Keys,
    got: Vec<u8>,
}

/// A client configuration for one protocol version, trusting `roots`,
/// offering only `suite` if given, HTTP/1.1 by ALPN.
pub fn config(
    roots: RootCertStore,
    version: &'static rustls::SupportedProtocolVersion,
    suite: Option<rustls::CipherSuite>,
) -> rustls::ClientConfig {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(s) = suite {
        provider.cipher_suites.retain(|c| c.suite() == s);
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

impl Keyed {
    /// Connects and shakes hands with `cfg` (secret extraction is turned on here).
    pub async fn connect(addr: SocketAddr, mut cfg: rustls::ClientConfig) -> Self {
        cfg.enable_secret_extraction = true;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let (tcp, conn) = tls.into_inner();
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let secrets = conn.dangerous_extract_secrets().expect("secrets");
        Self {
            tcp,
            tx: Keys::new(tls13, secrets.tx),
            rx: Keys::new(tls13, secrets.rx),
            got: Vec::new(),
        }
    }

    /// Seals and sends one record.
    pub async fn send(&mut self, typ: u8, payload: &[u8], padding: usize) -> std::io::Result<()> {
        let r = self.tx.seal(typ, payload, padding);
        self.tcp.write_all(&r).await
    }

    /// The next record portico sends, opened; `None` when the connection
    /// ends (or nothing comes within `within`).
    pub async fn next_record(&mut self, within: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.got.len() >= 5 {
                let len = usize::from(u16::from_be_bytes([self.got[3], self.got[4]]));
                if self.got.len() >= 5 + len {
                    let record: Vec<u8> = self.got.drain(..5 + len).collect();
                    return Some(self.rx.open(&record).expect("portico's record opens"));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(n @ 1..)) => self.got.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Records until an alert, the end of the connection, or `within`:
    /// the alert's (level, description), if one came, and the application
    /// data before it.
    pub async fn until_alert(&mut self, within: Duration) -> (Option<(u8, u8)>, Vec<u8>) {
        let mut data = Vec::new();
        while let Some((typ, plain)) = self.next_record(within).await {
            match (typ, &plain[..]) {
                (ALERT, [level, desc]) => return (Some((*level, *desc)), data),
                (APPLICATION_DATA, _) => data.extend_from_slice(&plain),
                _ => {}
            }
        }
        (None, data)
    }

    /// Whether the connection ends (EOF or reset) within `within`, after
    /// any records still on their way.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

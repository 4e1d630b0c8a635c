//! The TLS stage: rustls server configuration (versions, ALPN, server cipher
//! order, session tickets, client verification) and the timed handshake that
//! turns a TCP stream into a TLS stream (the HTTP stage's
//! [`ClientStream`](crate::conn::ClientStream)) plus the connection's facts
//! ([`ConnInfo`]: the SNI, noted here by the handshake's certificate
//! resolver, the TLS version, ALPN, the client certificate).

pub mod san;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::TcpStream;
use x509_parser::prelude::*;

use crate::certs::CertStore;
use crate::config::{ClientAuth, Config};
use crate::conn::{ClientFor, ConnInfo};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use san::{ClientIdentity, SanPattern};
use stream::TlsStream;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// `--handshake-timeout` passed.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The peer sent something rustls refused, or went away.
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

/// The crypto provider everything TLS uses: aws-lc-rs, with AES-128-GCM
/// preferred (the server's order is used): as strong as needed for TLS and
/// cheaper per byte than AES-256-GCM, which aws-lc-rs lists first.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    use rustls::CipherSuite::*;
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        TLS13_AES_128_GCM_SHA256 => 0,
        TLS13_AES_256_GCM_SHA384 => 1,
        TLS13_CHACHA20_POLY1305_SHA256 => 2,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        _ => 5,
    };
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

/// The client verification policy, rebuilt when `--client-ca` changes.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    /// The CA bundle file.
    pub ca: std::path::PathBuf,
    /// required or optional.
    pub auth: ClientAuth,
    /// `--allow-san`.
    pub allow: Arc<Vec<SanPattern>>,
}

impl ClientPolicy {
    /// From the configuration; `None` without `--client-ca`.
    pub fn from_config(cfg: &Config) -> Option<Self> {
        cfg.client_ca.as_ref().map(|ca| Self {
            ca: ca.clone(),
            auth: cfg.client_auth,
            allow: Arc::new(cfg.allow_san.clone()),
        })
    }

    /// Reads the CA bundle and builds the verifier.
    pub fn verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let pem = std::fs::read(&self.ca)
            .map_err(|e| format!("cannot read {}: {e}", self.ca.display()))?;
        let mut roots = RootCertStore::empty();
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: invalid PEM: {e}", self.ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", self.ca.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: no PEM certificate found", self.ca.display()));
        }
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = match self.auth {
            ClientAuth::Required => builder,
            ClientAuth::Optional => builder.allow_unauthenticated(),
        };
        let inner = builder
            .build()
            .map_err(|e| format!("{}: {e}", self.ca.display()))?;
        if self.allow.is_empty() {
            Ok(inner)
        } else {
            Ok(Arc::new(AllowSanVerifier {
                inner,
                allow: self.allow.clone(),
            }))
        }
    }
}

/// Why the acceptor could not be built: the client CA bundle (the
/// `--client-ca` file) or anything else of the TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum AcceptorError {
    /// The `--client-ca` bundle could not be read or used.
    #[error("{0}")]
    ClientCa(String),
    /// Anything else (the ticketer, the server configuration).
    #[error("{0}")]
    Setup(String),
}

/// Holds the current `ServerConfig`; a client-CA change swaps in a new one.
pub struct TlsAcceptor {
    config: ArcSwap<ServerConfig>,
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    tls13_only: bool,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Builds the acceptor over the certificate store and client policy.
    pub fn new(
        store: Arc<CertStore>,
        client: Option<&ClientPolicy>,
        tls13_only: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, AcceptorError> {
        let verifier = match client {
            Some(p) => Some(p.verifier(&provider).map_err(AcceptorError::ClientCa)?),
            None => None,
        };
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
            AcceptorError::Setup(format!("cannot create a TLS session ticketer: {e}"))
        })?;
        // The resolver reads the store per handshake, so a server certificate
        // rotation keeps this config and its ticket keys: no handshake storm.
        let config = build_config(&store, verifier, tls13_only, &provider, ticketer)
            .map_err(AcceptorError::Setup)?;
        Ok(Self {
            config: ArcSwap::from_pointee(config),
            store,
            provider,
            tls13_only,
        })
    }

    /// Swaps in a new client verifier. Tickets and the session cache are replaced
    /// too, so no session established under the old trust can be resumed.
    pub fn set_client_policy(&self, client: Option<&ClientPolicy>) -> Result<(), String> {
        let verifier = match client {
            Some(p) => Some(p.verifier(&self.provider)?),
            None => None,
        };
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| format!("cannot create a TLS session ticketer: {e}"))?;
        let config = build_config(
            &self.store,
            verifier,
            self.tls13_only,
            &self.provider,
            ticketer,
        )?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// The certificate store.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// Runs a handshake within `timeout` (zero: no limit).
    ///
    /// Each connection gets its own copy of the `ServerConfig` (a few
    /// reference counts and the ALPN list) whose certificate resolver notes
    /// the SNI: rustls's unbuffered connection has no accessor for it.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        port: HeaderValue,
        timeout: Duration,
    ) -> Result<(TlsStream, ConnInfo), HandshakeError> {
        let sni = Arc::new(SniNoted {
            store: self.store.clone(),
            sni: std::sync::Mutex::new(None),
        });
        let mut config = ServerConfig::clone(&self.config.load());
        config.cert_resolver = sni.clone();
        let hs = TlsStream::accept(tcp, Arc::new(config));
        let (stream, settled) = if timeout.is_zero() {
            hs.await.map_err(HandshakeError::Failed)?
        } else {
            tokio::time::timeout(timeout, hs)
                .await
                .map_err(|_| HandshakeError::Timeout)?
                .map_err(HandshakeError::Failed)?
        };
        let info = ConnInfo {
            peer,
            client_for: ClientFor::new(peer.ip()),
            port,
            sni: sni.take(),
            tls_version: if settled.tls13 { "TLSv1.3" } else { "TLSv1.2" },
            h2: settled.h2,
            xfcc: settled.client_cert.and_then(|leaf| xfcc(leaf.as_ref())),
        };
        Ok((stream, info))
    }
}

fn build_config(
    store: &Arc<CertStore>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    tls13_only: bool,
    provider: &Arc<CryptoProvider>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
) -> Result<ServerConfig, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The reference promises the server's cipher-suite order, not the client's.
    config.ignore_client_order = true;
    config.ticketer = ticketer;
    // One TLS 1.3 ticket per handshake, not rustls's two: a client resumes
    // one connection with it (and gets a fresh one then); the second cost
    // every full handshake an HKDF, an AEAD seal and a record.
    config.send_tls13_tickets = 1;
    config.session_storage = ServerSessionMemoryCache::new(4096);
    Ok(config)
}

/// The certificate store as one connection's resolver: it notes the SNI the
/// ClientHello carried (rustls asks for a certificate in full and resumed
/// handshakes alike).
#[derive(Debug)]
struct SniNoted {
    store: Arc<CertStore>,
    sni: std::sync::Mutex<Option<Box<str>>>,
}

impl SniNoted {
    fn take(&self) -> Option<Box<str>> {
        self.sni.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl ResolvesServerCert for SniNoted {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            *self.sni.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::from(name));
        }
        self.store.resolve(hello)
    }
}

/// Wraps a WebPKI verifier and refuses verified certificates whose identity
/// matches no `--allow-san` pattern, so the handshake itself fails.
#[derive(Debug)]
struct AllowSanVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Arc<Vec<SanPattern>>,
}

impl ClientCertVerifier for AllowSanVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = identity(end_entity.as_ref()).unwrap_or_default();
        if self.allow.iter().any(|p| p.matches(&id)) {
            Ok(ok)
        } else {
            tracing::info!(
                dns = ?id.dns, uri = ?id.uri, cn = ?id.cn,
                "client certificate refused: no --allow-san pattern matches"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The DNS, URI and CN identities of a certificate.
pub fn identity(der: &[u8]) -> Option<ClientIdentity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut id = ClientIdentity::default();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => id.dns.push(d.to_string()),
                GeneralName::URI(u) => id.uri.push(u.to_string()),
                _ => {}
            }
        }
    }
    id.cn = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    Some(id)
}

/// Envoy's `X-Forwarded-Client-Cert`: `Hash=..;Subject="..";URI=..;DNS=..`.
///
/// Always a valid field value for a parsed certificate: control characters
/// are percent-encoded (a name holding one must not cost the primary the whole
/// header), and a URI or DNS value that holds a separator (`,` `;` `=`), a
/// quote, a backslash or a space is quoted as Envoy quotes it, so a crafted
/// SAN cannot forge a second element or key.
pub fn xfcc(der: &[u8]) -> Option<HeaderValue> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = String::with_capacity(256);
    out.push_str("Hash=");
    for &b in hash.as_ref() {
        push_hex(&mut out, b);
    }
    out.push_str(";Subject=");
    push_quoted(&mut out, &rfc4514(cert.subject()));
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                out.push_str(";URI=");
                push_xfcc_value(&mut out, u);
            }
        }
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                out.push_str(";DNS=");
                push_xfcc_value(&mut out, d);
            }
        }
    }
    HeaderValue::from_str(&out).ok()
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// `c` percent-encoded when it may not stand in a field value.
fn push_char(out: &mut String, c: char) {
    if c.is_control() && c != '\t' {
        let mut buf = [0u8; 4];
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            out.push('%');
            push_hex(out, b);
        }
    } else {
        out.push(c);
    }
}

fn push_quoted(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        push_char(out, c);
    }
    out.push('"');
}

/// An XFCC value: bare when it is plain, quoted when it holds a separator.
pub fn push_xfcc_value(out: &mut String, v: &str) {
    if v.is_empty()
        || v.chars()
            .any(|c| matches!(c, ',' | ';' | '=' | '"' | '\\' | ' ' | '\t'))
    {
        push_quoted(out, v);
    } else {
        for c in v.chars() {
            push_char(out, c);
        }
    }
}

/// A distinguished name as RFC 4514 text: last RDN first, `,` between RDNs.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut rdns = Vec::new();
    for rdn in name.iter().collect::<Vec<_>>().into_iter().rev() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let key = match oid.as_str() {
                "2.5.4.3" => "CN".to_string(),
                "2.5.4.6" => "C".to_string(),
                "2.5.4.7" => "L".to_string(),
                "2.5.4.8" => "ST".to_string(),
                "2.5.4.9" => "STREET".to_string(),
                "2.5.4.10" => "O".to_string(),
                "2.5.4.11" => "OU".to_string(),
                "0.9.2342.19200300.100.1.25" => "DC".to_string(),
                "0.9.2342.19200300.100.1.1" => "UID".to_string(),
                _ => oid,
            };
            let value = match attr.as_str() {
                Ok(s) => escape_rfc4514(s),
                Err(_) => {
                    let mut hex = String::from("#");
                    for b in attr.attr_value().data.iter() {
                        hex.push_str(&format!("{b:02x}"));
                    }
                    hex
                }
            };
            parts.push(format!("{key}={value}"));
        }
        rdns.push(parts.join("+"));
    }
    rdns.join(",")
}

fn escape_rfc4514(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{escape_rfc4514, push_xfcc_value};

    fn value(v: &str) -> String {
        let mut out = String::new();
        push_xfcc_value(&mut out, v);
        out
    }

    #[test]
    fn xfcc_values_are_quoted_when_they_hold_separators() {
        assert_eq!(value("spiffe://ns/sa"), "spiffe://ns/sa");
        assert_eq!(value("a;DNS=evil"), "\"a;DNS=evil\"");
        assert_eq!(value("a,Hash=00"), "\"a,Hash=00\"");
        assert_eq!(value("q\"\\"), "\"q\\\"\\\\\"");
        assert_eq!(value(""), "\"\"");
    }

    #[test]
    fn xfcc_control_characters_are_percent_encoded() {
        assert_eq!(value("a\nb\r\u{7f}"), "a%0ab%0d%7f");
        assert_eq!(value("ä"), "ä");
    }

    #[test]
    fn escapes() {
        assert_eq!(escape_rfc4514("a,b"), "a\\,b");
        assert_eq!(escape_rfc4514(" x "), "\\ x\\ ");
        assert_eq!(escape_rfc4514("#x"), "\\#x");
        assert_eq!(escape_rfc4514("plain"), "plain");
    }
}

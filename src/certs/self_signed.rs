//! The certificate portico serves when none is configured: ephemeral, self-signed,
//! for `localhost` and this host's name, so a first run works with one command.

use std::path::Path;

use rustls::crypto::CryptoProvider;

use super::load::{from_pem, CertError, LoadedCert};

/// This machine's host name (the Pod name in Kubernetes), if it can be read.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Generates an ECDSA P-256 certificate for `localhost`, 127.0.0.1, ::1 and the host name.
pub fn generate(provider: &CryptoProvider) -> Result<LoadedCert, CertError> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(h) = host_name() {
        if h != "localhost" {
            names.push(h);
        }
    }
    let fail = |e: rcgen::Error| CertError::BadCert {
        path: "<self-signed>".into(),
        what: format!("cannot generate a self-signed certificate: {e}"),
    };
    let mut params = rcgen::CertificateParams::new(names).map_err(fail)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    // Valid from a day ago (clock skew) for a year: ephemeral, but not forever.
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
    params.not_after = (now + std::time::Duration::from_secs(365 * 86_400)).into();
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    from_pem(
        cert.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
        Path::new("<self-signed>"),
        Path::new("<self-signed>"),
        provider,
    )
}

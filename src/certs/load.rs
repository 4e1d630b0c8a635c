//! Reading one certificate/key pair from PEM files and checking it whole:
//! both parse, the key matches the leaf, and what the leaf says (names, validity).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::*;

/// Why a pair could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Which of the pair it is.
        file: PairFile,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("{path}: {what}")]
    BadCert {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key file holds no usable private key.
    #[error("{path}: {what}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key is not the leaf's.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// One file of a certificate/key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairFile {
    /// The PEM chain.
    Cert,
    /// The PEM key.
    Key,
}

impl CertError {
    /// The file at fault: for a mismatch the key, which does not belong to
    /// the certificate.
    pub fn file(&self) -> PairFile {
        match self {
            Self::Read { file, .. } => *file,
            Self::BadCert { .. } => PairFile::Cert,
            Self::BadKey { .. } | Self::Mismatch { .. } => PairFile::Key,
        }
    }
}

/// A parsed, matched pair and what its leaf says.
#[derive(Debug)]
pub struct LoadedCert {
    /// What rustls serves.
    pub certified: Arc<CertifiedKey>,
    /// DNS names of the leaf (SANs, lower case), for SNI.
    pub dns_names: Vec<String>,
    /// The leaf's subject common name, if any.
    pub common_name: Option<String>,
    /// The issuer, as RFC 4514 text.
    pub issuer: String,
    /// Validity start, unix seconds.
    pub not_before: i64,
    /// Validity end, unix seconds.
    pub not_after: i64,
    /// Key algorithm, e.g. `ECDSA P-256`, `RSA-2048`.
    pub key_type: String,
    /// The raw bytes of both files, to tell a real change from a re-read.
    pub raw: (Vec<u8>, Vec<u8>),
}

impl LoadedCert {
    /// The name the metrics' `cert` label uses: the first DNS name, else the CN.
    pub fn label(&self) -> String {
        self.dns_names
            .first()
            .cloned()
            .or_else(|| self.common_name.clone())
            .unwrap_or_else(|| "unnamed".to_string())
    }

    /// `Some(reason)` when the leaf is expired or not yet valid at `now` (unix seconds).
    pub fn validity_problem(&self, now: i64) -> Option<String> {
        if now < self.not_before {
            Some(format!(
                "certificate {} is not valid before {}",
                self.label(),
                fmt_unix(self.not_before)
            ))
        } else if now > self.not_after {
            Some(format!(
                "certificate {} expired at {}",
                self.label(),
                fmt_unix(self.not_after)
            ))
        } else {
            None
        }
    }
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Formats unix seconds as RFC 3339 UTC (`2026-11-26T21:51:12Z`).
pub fn fmt_unix(t: i64) -> String {
    // Civil-from-days (H. Hinnant): exact for the proleptic Gregorian calendar.
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn read(path: &Path, file: PairFile) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        file,
        source,
    })
}

/// Reads and checks a pair from its files.
pub fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<LoadedCert, CertError> {
    let cert_pem = read(cert, PairFile::Cert)?;
    let key_pem = read(key, PairFile::Key)?;
    from_pem(cert_pem, key_pem, cert, key, provider)
}

/// Checks a pair given as PEM bytes; the paths only name it in errors.
pub fn from_pem(
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<LoadedCert, CertError> {
    let bad_cert = |what: String| CertError::BadCert {
        path: cert_path.to_path_buf(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(format!("invalid PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(bad_cert(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::BadKey {
        path: key_path.to_path_buf(),
        what: format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;

    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref())
        .map_err(|e| bad_cert(format!("the first certificate does not parse: {e}")))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                dns_names.push(d.to_ascii_lowercase());
            }
        }
    }
    let common_name = leaf
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let issuer = leaf.issuer().to_string();
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    let key_type = key_type(&leaf);

    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| CertError::BadKey {
            path: key_path.to_path_buf(),
            what: format!("unsupported private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        // Providers that cannot derive a public key cannot check; aws-lc-rs can.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(CertError::Mismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
    }
    Ok(LoadedCert {
        certified: Arc::new(certified),
        dns_names,
        common_name,
        issuer,
        not_before,
        not_after,
        key_type,
        raw: (cert_pem, key_pem),
    })
}

fn key_type(leaf: &X509Certificate<'_>) -> String {
    match leaf.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("RSA-{}", rsa.key_size()),
        Ok(x509_parser::public_key::PublicKey::EC(ec)) => match ec.key_size() {
            256 => "ECDSA P-256".to_string(),
            384 => "ECDSA P-384".to_string(),
            521 => "ECDSA P-521".to_string(),
            n => format!("ECDSA {n}-bit"),
        },
        _ => {
            let oid = leaf.public_key().algorithm.algorithm.to_id_string();
            if oid == "1.3.101.112" {
                "Ed25519".to_string()
            } else {
                oid
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_unix;

    #[test]
    fn rfc3339() {
        assert_eq!(fmt_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_unix(1_795_729_872), "2026-11-26T21:51:12Z");
        assert_eq!(fmt_unix(951_782_400), "2000-02-29T00:00:00Z");
    }
}

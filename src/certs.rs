//! The server certificates: loaded at start, held per source in a slot that a
//! reload can swap, and picked per handshake by SNI.

pub mod load;
pub mod self_signed;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertSource;
pub use load::{CertError, LoadedCert, PairFile};

/// One configured certificate source and the pair it serves now.
#[derive(Debug)]
pub struct Slot {
    /// Where it is read from; `None` for the self-signed default.
    pub source: Option<CertSource>,
    /// The pair in service.
    pub current: ArcSwap<LoadedCert>,
}

/// Every slot, in configuration order: the first serves unknown or absent SNI.
#[derive(Debug)]
pub struct CertStore {
    slots: Vec<Slot>,
}

/// Why the certificates could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A configured pair: the option that named the file at fault, and why.
    #[error("--{option}: {error}")]
    Source {
        /// `tls-cert`, `tls-key` or `tls-dir`.
        option: &'static str,
        /// What is wrong with the file.
        #[source]
        error: CertError,
    },
    /// The self-signed default could not be made.
    #[error("{0}")]
    SelfSigned(#[source] CertError),
}

/// What loading at start found wrong but serves anyway (the reference: an expired leaf
/// that is all there is keeps serving), for an ERROR line at start and `check`.
pub type StartWarnings = Vec<String>;

impl CertStore {
    /// Loads every source; with none, generates the self-signed default.
    pub fn load(
        sources: &[CertSource],
        provider: &CryptoProvider,
    ) -> Result<(Self, StartWarnings), LoadError> {
        let now = load::unix_now();
        let mut slots = Vec::new();
        let mut warnings = Vec::new();
        for src in sources {
            let loaded = load::load_pair(&src.cert, &src.key, provider).map_err(|error| {
                let option = match error.file() {
                    PairFile::Cert => src.option,
                    PairFile::Key => src.key_option(),
                };
                LoadError::Source { option, error }
            })?;
            if let Some(problem) = loaded.validity_problem(now) {
                warnings.push(format!(
                    "{} ({}): {problem}",
                    src.cert.display(),
                    src.option
                ));
            }
            slots.push(Slot {
                source: Some(src.clone()),
                current: ArcSwap::from_pointee(loaded),
            });
        }
        if slots.is_empty() {
            slots.push(Slot {
                source: None,
                current: ArcSwap::from_pointee(
                    self_signed::generate(provider).map_err(LoadError::SelfSigned)?,
                ),
            });
        }
        Ok((Self { slots }, warnings))
    }

    /// The slots in configuration order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if self.slots.len() > 1 {
            if let Some(name) = sni {
                let guards: Vec<_> = self.slots.iter().map(|s| s.current.load()).collect();
                if let Some(c) = guards
                    .iter()
                    .find(|c| c.dns_names.iter().any(|n| n.eq_ignore_ascii_case(name)))
                {
                    return c.certified.clone();
                }
                if let Some(c) = guards
                    .iter()
                    .find(|c| c.dns_names.iter().any(|n| wildcard_matches(n, name)))
                {
                    return c.certified.clone();
                }
            }
        }
        self.slots[0].current.load().certified.clone()
    }
}

/// `*.example.com` matches exactly one more label (RFC 6125), as clients check it.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard_matches;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(wildcard_matches("*.example.com", "a.example.com"));
        assert!(wildcard_matches("*.example.com", "A.Example.com"));
        assert!(!wildcard_matches("*.example.com", "a.b.example.com"));
        assert!(!wildcard_matches("*.example.com", "example.com"));
        assert!(!wildcard_matches("example.com", "example.com"));
    }
}

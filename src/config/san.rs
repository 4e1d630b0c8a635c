//! `--allow-san` patterns as configured: which verified client identities may
//! connect. The TLS stage matches them (`tls/san.rs`).

use std::fmt;

/// One `--allow-san` pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SanPattern {
    /// `dns:NAME`, or `dns:*.suffix` (stored as `.suffix`, any deeper name).
    Dns(String),
    /// `dns:*.suffix`: stored as `.suffix`.
    DnsWildcard(String),
    /// `uri:URI` exact.
    Uri(String),
    /// `uri:PREFIX*`: any URI that starts with PREFIX.
    UriPrefix(String),
    /// `cn:NAME`: the subject common name, exact.
    Cn(String),
}

impl SanPattern {
    /// Parses `dns:NAME`, `uri:URI` or `cn:NAME`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}' must be dns:NAME, uri:URI or cn:NAME"))?;
        if value.is_empty() {
            return Err(format!("'{s}' has an empty value"));
        }
        match kind {
            "dns" => match value.strip_prefix("*.") {
                Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => Ok(
                    Self::DnsWildcard(format!(".{}", suffix.to_ascii_lowercase())),
                ),
                Some(_) => Err(format!("'{s}' has an invalid wildcard")),
                None if value.contains('*') => {
                    Err(format!("'{s}': a DNS wildcard may only be a leading '*.'"))
                }
                None => Ok(Self::Dns(value.to_ascii_lowercase())),
            },
            "uri" => match value.strip_suffix('*') {
                Some(prefix) => Ok(Self::UriPrefix(prefix.to_string())),
                None => Ok(Self::Uri(value.to_string())),
            },
            "cn" => Ok(Self::Cn(value.to_string())),
            _ => Err(format!(
                "'{s}': unknown kind '{kind}' (use dns:, uri: or cn:)"
            )),
        }
    }
}

impl fmt::Display for SanPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(n) => write!(f, "dns:{n}"),
            Self::DnsWildcard(s) => write!(f, "dns:*{s}"),
            Self::Uri(u) => write!(f, "uri:{u}"),
            Self::UriPrefix(p) => write!(f, "uri:{p}*"),
            Self::Cn(c) => write!(f, "cn:{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_patterns() {
        assert!(SanPattern::parse("ip:1.2.3.4").is_err());
        assert!(SanPattern::parse("dns:").is_err());
        assert!(SanPattern::parse("dns:a.*.com").is_err());
        assert!(SanPattern::parse("nocolon").is_err());
    }
}

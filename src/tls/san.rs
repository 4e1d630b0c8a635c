//! `--allow-san` patterns: which verified client identities may connect.

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

/// The identities a client certificate carries, as the patterns see them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// DNS SANs in certificate order.
    pub dns: Vec<String>,
    /// URI SANs in certificate order.
    pub uri: Vec<String>,
    /// Subject common names.
    pub cn: Vec<String>,
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

    /// Whether this pattern accepts the identity.
    pub fn matches(&self, id: &ClientIdentity) -> bool {
        match self {
            Self::Dns(name) => id.dns.iter().any(|d| d.eq_ignore_ascii_case(name)),
            Self::DnsWildcard(suffix) => id.dns.iter().any(|d| {
                d.len() > suffix.len()
                    && d.is_char_boundary(d.len() - suffix.len())
                    && d[d.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }),
            Self::Uri(u) => id.uri.iter().any(|x| x == u),
            Self::UriPrefix(p) => id.uri.iter().any(|x| x.starts_with(p.as_str())),
            Self::Cn(cn) => id.cn.iter().any(|x| x == cn),
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

    fn id() -> ClientIdentity {
        ClientIdentity {
            dns: vec!["client.shop.svc".into()],
            uri: vec!["spiffe://cluster.local/ns/shop/sa/web".into()],
            cn: vec!["web".into()],
        }
    }

    #[test]
    fn each_kind() {
        let ok = |p: &str| SanPattern::parse(p).expect(p).matches(&id());
        assert!(ok("dns:client.shop.svc"));
        assert!(ok("dns:CLIENT.shop.svc"));
        assert!(ok("dns:*.shop.svc"));
        assert!(!ok("dns:*.client.shop.svc"));
        assert!(!ok("dns:shop.svc"));
        assert!(ok("uri:spiffe://cluster.local/ns/shop/*"));
        assert!(ok("uri:spiffe://cluster.local/ns/shop/sa/web"));
        assert!(!ok("uri:spiffe://cluster.local/ns/other/*"));
        assert!(!ok("uri:spiffe://cluster.local/ns/shop/sa/we"));
        assert!(ok("cn:web"));
        assert!(!ok("cn:Web"));
    }

    #[test]
    fn bad_patterns() {
        assert!(SanPattern::parse("ip:1.2.3.4").is_err());
        assert!(SanPattern::parse("dns:").is_err());
        assert!(SanPattern::parse("dns:a.*.com").is_err());
        assert!(SanPattern::parse("nocolon").is_err());
    }
}

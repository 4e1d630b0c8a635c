//! Matching `--allow-san` patterns against a verified client certificate's
//! identities. The pattern and its parser are configuration (`config/san.rs`).

pub use crate::config::san::SanPattern;

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
}

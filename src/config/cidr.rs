//! `--proxy-protocol-from` networks: an IPv4 or IPv6 network in CIDR notation,
//! and whether an address is in it.

use std::fmt;
use std::net::IpAddr;

/// An IPv4 or IPv6 network in CIDR notation (a bare address is one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a CIDR (e.g. 10.0.0.0/8, 2001:db8::/32 or one address)");
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) && b.len() <= 3 => {
                b.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        if bits > max {
            return Err(bad());
        }
        let c = Self { net, bits };
        if c.masked(net) != net {
            return Err(format!(
                "'{s}' has host bits set past /{bits} (did you mean {}/{bits}?)",
                c.masked(net)
            ));
        }
        Ok(c)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }

    /// Whether `ip` is in the network; an IPv4-mapped IPv6 address (a `[::]`
    /// listener's IPv4 peer) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(ip) == self.net
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.0.0.0/8").expect("valid");
        assert!(c.contains("10.200.3.4".parse().expect("valid")));
        assert!(c.contains("::ffff:10.1.2.3".parse().expect("valid")));
        assert!(!c.contains("11.0.0.1".parse().expect("valid")));
        assert!(!c.contains("::1".parse().expect("valid")));
        let one = Cidr::parse("192.0.2.9").expect("valid");
        assert_eq!(one.to_string(), "192.0.2.9/32");
        assert!(one.contains("192.0.2.9".parse().expect("valid")));
        assert!(!one.contains("192.0.2.8".parse().expect("valid")));
        let all = Cidr::parse("0.0.0.0/0").expect("valid");
        assert!(all.contains("1.2.3.4".parse().expect("valid")));
        let v6 = Cidr::parse("2001:db8::/32").expect("valid");
        assert!(v6.contains("2001:db8:ffff::1".parse().expect("valid")));
        assert!(!v6.contains("2001:db9::1".parse().expect("valid")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1/8",
            "nope",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(Cidr::parse("10.0.0.1/8")
            .expect_err("refused")
            .contains("10.0.0.0/8"));
    }
}

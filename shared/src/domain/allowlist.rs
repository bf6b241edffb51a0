//! Per-tenant IP allow-lists: IPv4 and IPv6 CIDRs, parsed once at the boundary.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// At most this many entries per tenant (a list, not a firewall).
pub const MAX_CIDRS: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllowListError {
    #[error("`{0}` is not an IPv4 or IPv6 CIDR such as 203.0.113.0/24 or 2001:db8::/32")]
    InvalidCidr(String),
    #[error("at most {MAX_CIDRS} CIDRs are allowed")]
    TooMany,
}

/// An empty list allows any address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpAllowList(Vec<IpNet>);

/// `::ffff:a.b.c.d/(96+n)` names the IPv4 network `a.b.c.d/n`; clients are compared as
/// IPv4 (see [`IpAllowList::allows`]), so it is kept in that form.
fn ipv4_if_mapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        net => net,
    }
}

impl IpAllowList {
    /// Parses CIDRs (a bare address means a single host). Host bits are cleared, so
    /// `203.0.113.7/24` is stored as `203.0.113.0/24`; duplicates collapse.
    pub fn parse<S: AsRef<str>>(cidrs: &[S]) -> Result<Self, AllowListError> {
        if cidrs.len() > MAX_CIDRS {
            return Err(AllowListError::TooMany);
        }
        let mut nets = Vec::with_capacity(cidrs.len());
        for raw in cidrs {
            let raw = raw.as_ref().trim();
            let net = raw
                .parse::<IpNet>()
                .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| AllowListError::InvalidCidr(raw.chars().take(64).collect()))?
                .trunc();
            let net = ipv4_if_mapped(net);
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        Ok(Self(nets))
    }

    /// The stored form: canonical CIDR strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a client at `ip` may call. An unknown address is refused unless the list
    /// is empty (fail closed). IPv4-mapped IPv6 addresses match IPv4 entries.
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(ip) = ip else {
            return false;
        };
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn an_empty_list_allows_everyone_even_an_unknown_address() {
        let l = IpAllowList::parse::<&str>(&[]).unwrap();
        assert!(l.allows(ip("198.51.100.1")));
        assert!(l.allows(None));
    }

    #[test]
    fn ipv4_and_ipv6_cidrs_match_only_their_ranges() {
        let l = IpAllowList::parse(&["203.0.113.0/24", "2001:db8::/32"]).unwrap();
        assert!(l.allows(ip("203.0.113.200")));
        assert!(!l.allows(ip("203.0.114.1")));
        assert!(l.allows(ip("2001:db8:1::5")));
        assert!(!l.allows(ip("2001:db9::1")));
        assert!(!l.allows(None), "an unknown client address is refused");
    }

    #[test]
    fn ipv4_mapped_ipv6_clients_match_ipv4_entries() {
        let l = IpAllowList::parse(&["127.0.0.1"]).unwrap();
        assert!(l.allows(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn an_ipv4_network_written_as_ipv4_mapped_ipv6_is_that_ipv4_network() {
        // It was kept as IPv6 and never matched: clients are compared as IPv4.
        let l = IpAllowList::parse(&["::ffff:203.0.113.0/120", "::FFFF:198.51.100.7"]).unwrap();
        assert_eq!(l.to_strings(), vec!["203.0.113.0/24", "198.51.100.7/32"]);
        assert!(l.allows(ip("203.0.113.9")));
        assert!(l.allows(ip("::ffff:203.0.113.9")));
        assert!(l.allows(ip("198.51.100.7")));
        assert!(!l.allows(ip("203.0.114.1")));
        // Wider than the mapped range: an IPv6 network like any other.
        let wide = IpAllowList::parse(&["::ffff:0:0/95"]).unwrap();
        assert_eq!(wide.to_strings(), vec!["::fffe:0:0/95"]);
    }

    #[test]
    fn host_bits_are_cleared_and_duplicates_collapse() {
        let l = IpAllowList::parse(&["203.0.113.7/24", "203.0.113.0/24", "10.0.0.1"]).unwrap();
        assert_eq!(l.to_strings(), vec!["203.0.113.0/24", "10.0.0.1/32"]);
    }

    #[test]
    fn invalid_cidrs_and_overlong_lists_are_refused() {
        for bad in ["203.0.113.0/33", "not-an-ip", "2001:db8::/129", "", "1.2.3"] {
            assert!(IpAllowList::parse(&[bad]).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_CIDRS)
            .map(|i| format!("10.0.{}.0/24", i % 250))
            .collect();
        assert_eq!(IpAllowList::parse(&many), Err(AllowListError::TooMany));
    }
}

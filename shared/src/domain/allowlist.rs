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

/// One entry: an address in the standard library's strict form (no leading zeros, so
/// `010.0.0.1` is refused rather than read as decimal where another reader takes it as
/// octal), optionally `/` and a prefix length of plain digits. (ipnet's own parser read
/// `010.0.0.1/8` as `10.0.0.0/8` while the bare `010.0.0.1` was refused.)
fn cidr(raw: &str) -> Option<IpNet> {
    let (addr, prefix) = match raw.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (raw, None),
    };
    let addr = addr.parse::<IpAddr>().ok()?;
    match prefix {
        None => Some(IpNet::from(addr)),
        Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
            IpNet::new(addr, p.parse().ok()?).ok()
        }
        Some(_) => None,
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
            let net = cidr(raw)
                .ok_or_else(|| AllowListError::InvalidCidr(raw.chars().take(64).collect()))?
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
    fn an_entry_with_leading_zeros_or_an_odd_prefix_is_refused_in_every_form() {
        for bad in [
            "010.0.0.1",
            "010.0.0.1/8",
            "10.0.0.1/+8",
            "10.0.0.1/",
            "10.0.0.1/0008",
            "10.0.0.1/33",
            "2001:db8::/129",
            "10.0.0.1/8/8",
            "10.0.0.1 /8",
        ] {
            assert!(
                matches!(
                    IpAllowList::parse(&[bad]),
                    Err(AllowListError::InvalidCidr(_))
                ),
                "{bad}"
            );
        }
        let l = IpAllowList::parse(&["10.0.0.1/8", "10.0.0.1/08", "2001:db8::1/32"]).unwrap();
        assert_eq!(l.to_strings(), ["10.0.0.0/8", "2001:db8::/32"]);
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

    // ---- properties (issue 14): the parser takes tenants' and operators' input ----

    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A network as the test knows it: family, bits and prefix, independent of ipnet.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Net {
        V4(u32, u8),
        V6(u128, u8),
    }

    impl Net {
        fn network(self) -> Net {
            match self {
                Net::V4(a, p) => {
                    Net::V4(a & u32::MAX.checked_shl(32 - u32::from(p)).unwrap_or(0), p)
                }
                Net::V6(a, p) => Net::V6(
                    a & u128::MAX.checked_shl(128 - u32::from(p)).unwrap_or(0),
                    p,
                ),
            }
        }
        fn canonical(self) -> String {
            match self.network() {
                Net::V4(a, p) => format!("{}/{p}", Ipv4Addr::from(a)),
                Net::V6(a, p) => format!("{}/{p}", Ipv6Addr::from(a)),
            }
        }
        fn contains(self, ip: IpAddr) -> bool {
            match (self, ip) {
                (Net::V4(a, p), IpAddr::V4(x)) => {
                    p == 0 || (a ^ u32::from(x)) >> (32 - u32::from(p)) == 0
                }
                (Net::V6(a, p), IpAddr::V6(x)) => {
                    p == 0 || (a ^ u128::from(x)) >> (128 - u32::from(p)) == 0
                }
                _ => false,
            }
        }
        /// An address inside the network: its bits with random host bits.
        fn address(self, host: u128) -> IpAddr {
            match self {
                Net::V4(a, p) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(p)).unwrap_or(0);
                    IpAddr::V4(Ipv4Addr::from((a & mask) | (host as u32 & !mask)))
                }
                Net::V6(a, p) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(p)).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from((a & mask) | (host & !mask)))
                }
            }
        }
    }

    /// An IPv4-mapped IPv6 client is its IPv4 address (`::ffff:a.b.c.d`).
    fn client(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) if u128::from(v6) >> 32 == 0xffff => {
                IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32))
            }
            ip => ip,
        }
    }

    fn net() -> BoxedStrategy<Net> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Net::V4(a, p)),
            (any::<u128>(), 0u8..=128).prop_map(|(a, p)| Net::V6(a, p)),
            // Narrow ones, where neighbours fall outside.
            (any::<u32>(), 24u8..=32).prop_map(|(a, p)| Net::V4(a, p)),
            (any::<u128>(), 100u8..=128).prop_map(|(a, p)| Net::V6(a, p)),
        ]
        .boxed()
    }

    /// How a person might write the network (host bits kept, any spacing, IPv6 long or
    /// short, a single host without a prefix).
    fn written(n: Net) -> BoxedStrategy<String> {
        let pad = prop::sample::select(vec!["", " ", "\t", "  "]);
        let text = match n {
            Net::V4(a, p) => {
                let ip = Ipv4Addr::from(a);
                if p == 32 {
                    prop_oneof![Just(format!("{ip}/32")), Just(ip.to_string())].boxed()
                } else {
                    Just(format!("{ip}/{p}")).boxed()
                }
            }
            Net::V6(a, p) => {
                let ip = Ipv6Addr::from(a);
                let long = ip
                    .segments()
                    .iter()
                    .map(|s| format!("{s:X}"))
                    .collect::<Vec<_>>()
                    .join(":");
                let mut forms = vec![format!("{ip}/{p}"), format!("{long}/{p}")];
                if p == 128 {
                    forms.push(ip.to_string());
                }
                prop::sample::select(forms).boxed()
            }
        };
        (pad.clone(), text, pad)
            .prop_map(|(a, t, b)| format!("{a}{t}{b}"))
            .boxed()
    }

    /// Networks and how they were written.
    type Written = Vec<(Net, String)>;

    fn nets(max: usize) -> BoxedStrategy<Written> {
        prop::collection::vec(net().prop_flat_map(|n| (Just(n), written(n))), 1..max).boxed()
    }

    /// Clients near and far: inside a network, just outside one, IPv4-mapped, anywhere.
    fn clients(list: Written) -> BoxedStrategy<(Written, Vec<IpAddr>)> {
        let nets: Vec<Net> = list.iter().map(|(n, _)| *n).collect();
        let one = (
            prop::sample::select(nets),
            any::<u128>(),
            0u8..=128,
            0u8..4,
            any::<u128>(),
        )
            .prop_map(|(n, host, bit, how, anywhere)| {
                let inside = n.address(host);
                match (how, inside) {
                    (0, ip) => ip,
                    (1, IpAddr::V4(v4)) => {
                        IpAddr::V4(Ipv4Addr::from(u32::from(v4) ^ (1 << (bit % 32))))
                    }
                    (1, IpAddr::V6(v6)) => {
                        IpAddr::V6(Ipv6Addr::from(u128::from(v6) ^ (1 << (bit % 128))))
                    }
                    (2, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
                    (2, ip) => ip,
                    _ if anywhere % 2 == 0 => IpAddr::V4(Ipv4Addr::from(anywhere as u32)),
                    _ => IpAddr::V6(Ipv6Addr::from(anywhere)),
                }
            });
        (Just(list), prop::collection::vec(one, 1..8)).boxed()
    }

    proptest! {
        #![proptest_config(crate::props::config(3_000))]

        #[test]
        fn any_text_is_parsed_without_panicking_and_what_parses_round_trips(
            raw in prop_oneof![
                prop::collection::vec(prop_oneof![
                    crate::props::re("\\PC{0,24}"),
                    crate::props::re("[0-9a-fA-F:./ ]{0,45}"),
                    crate::props::re("[0-9]{1,4}(\\.[0-9]{1,4}){0,4}(/[0-9]{1,4})?"),
                    net().prop_flat_map(written),
                ], 0..6),
                prop::collection::vec(net().prop_flat_map(written), 0..6),
            ]
        ) {
            if let Ok(list) = IpAllowList::parse(&raw) {
                let stored = list.to_strings();
                prop_assert!(stored.len() <= raw.len());
                let again = IpAllowList::parse(&stored).unwrap();
                prop_assert_eq!(&again, &list);
                prop_assert_eq!(again.to_strings(), stored);
            }
        }

        #[test]
        fn a_written_network_is_stored_as_its_canonical_cidr_once(list in nets(8)) {
            let raw: Vec<&str> = list.iter().map(|(_, w)| w.as_str()).collect();
            let parsed = IpAllowList::parse(&raw).unwrap();
            let mut expected: Vec<String> = Vec::new();
            for (n, _) in &list {
                let c = n.canonical();
                if !expected.contains(&c) {
                    expected.push(c);
                }
            }
            prop_assert_eq!(parsed.to_strings(), expected);
            prop_assert_eq!(IpAllowList::parse(&parsed.to_strings()).unwrap(), parsed);
        }

        #[test]
        fn a_client_is_allowed_exactly_when_some_network_holds_its_address(
            (list, ips) in nets(6).prop_flat_map(clients)
        ) {
            let raw: Vec<&str> = list.iter().map(|(_, w)| w.as_str()).collect();
            let parsed = IpAllowList::parse(&raw).unwrap();
            for ip in ips {
                let expected = list.iter().any(|(n, _)| n.contains(client(ip)));
                let by_ipnet = parsed.0.iter().any(|n| n.contains(&client(ip)));
                prop_assert_eq!(expected, by_ipnet, "{} against {:?}", ip, raw);
                prop_assert_eq!(parsed.allows(Some(ip)), expected, "{} against {:?}", ip, raw);
            }
            prop_assert!(!parsed.allows(None));
        }

        #[test]
        fn every_address_of_a_listed_network_is_allowed_however_it_arrives(
            list in nets(6),
            hosts in prop::collection::vec(any::<u128>(), 1..8),
        ) {
            let raw: Vec<&str> = list.iter().map(|(_, w)| w.as_str()).collect();
            let parsed = IpAllowList::parse(&raw).unwrap();
            for ((n, _), host) in list.iter().cycle().zip(hosts) {
                let ip = n.address(host);
                prop_assert!(parsed.allows(Some(ip)), "{} in {:?}", ip, n);
                if let IpAddr::V4(v4) = ip {
                    let mapped = IpAddr::V6(v4.to_ipv6_mapped());
                    prop_assert!(parsed.allows(Some(mapped)), "{} in {:?}", mapped, n);
                }
            }
        }

        #[test]
        fn an_ipv4_network_written_as_ipv4_mapped_ipv6_admits_its_addresses(
            a in any::<u32>(), p in 0u8..=32, host in any::<u32>(), mapped_client in any::<bool>(),
        ) {
            let v4 = Net::V4(a, p);
            let written = format!("::ffff:{}/{}", Ipv4Addr::from(a), 96 + u32::from(p));
            let parsed = IpAllowList::parse(&[written.as_str()]).unwrap();
            let IpAddr::V4(inside) = v4.address(u128::from(host)) else { unreachable!() };
            let ip = if mapped_client { IpAddr::V6(inside.to_ipv6_mapped()) } else { IpAddr::V4(inside) };
            prop_assert!(parsed.allows(Some(ip)), "{} refused by {}", ip, written);
            prop_assert_eq!(IpAllowList::parse(&parsed.to_strings()).unwrap(), parsed);
        }

        #[test]
        fn more_than_the_maximum_entries_are_refused_whatever_they_are(
            n in MAX_CIDRS + 1..MAX_CIDRS + 20, entry in net().prop_flat_map(written),
        ) {
            let raw = vec![entry; n];
            prop_assert_eq!(IpAllowList::parse(&raw), Err(AllowListError::TooMany));
        }
    }
}

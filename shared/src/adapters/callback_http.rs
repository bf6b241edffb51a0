//! Outbound status callbacks over HTTP, guarded against SSRF: outside local mode only
//! `https`, and only to public addresses. The host is resolved here, every address is
//! checked, and the connection goes to the checked address (no second lookup a DNS
//! rebinding could answer differently); redirects are never followed; proxies are not used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

/// Why a callback URL is refused (the words are the client's, at PUT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the callback url is not a valid absolute URL")]
    Invalid,
    #[error("the callback url must use https")]
    NotHttps,
    #[error("the callback url may not contain a user name or password")]
    Credentials,
    #[error("the callback url is longer than 2048 characters")]
    TooLong,
    #[error("the callback url points at a private, loopback or otherwise non-public address")]
    NonPublic,
    /// The host's name resolves, now, to a non-public address (DNS answers change: the
    /// delivery tries again later, unlike [`Self::NonPublic`], refused by the URL's text).
    #[error("the callback host resolves to a private, loopback or otherwise non-public address")]
    ResolvesNonPublic,
    #[error("the callback host could not be resolved")]
    Unresolvable,
}

/// Whether `ip` is a public unicast address a callback may reach.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    let in_net = |net: [u8; 4], bits: u32| {
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
    };
    !(o[0] == 0 // "this network"
        || o[0] == 10 // private
        || o[0] == 127 // loopback
        || in_net([100, 64, 0, 0], 10) // carrier-grade NAT
        || in_net([169, 254, 0, 0], 16) // link-local (cloud metadata)
        || in_net([172, 16, 0, 0], 12) // private
        || in_net([192, 0, 0, 0], 24) // IETF protocol assignments
        || in_net([192, 0, 2, 0], 24) // documentation
        || in_net([192, 88, 99, 0], 24) // 6to4 relay anycast
        || in_net([192, 168, 0, 0], 16) // private
        || in_net([198, 18, 0, 0], 15) // benchmarking
        || in_net([198, 51, 100, 0], 24) // documentation
        || in_net([203, 0, 113, 0], 24) // documentation
        || o[0] >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    // IPv4 inside IPv6: judged by the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        // NAT64 well-known prefix 64:ff9b::/96
        return is_public_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        ));
    }
    if seg[0] == 0x2002 {
        // 6to4: the embedded IPv4 address decides
        return is_public_v4(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    // Only global unicast (2000::/3), minus its special-purpose blocks.
    (seg[0] & 0xe000) == 0x2000
        && !(seg[0] == 0x2001 && seg[1] < 0x0200) // 2001::/23 IETF protocol assignments (Teredo, ORCHID, ...)
        && !(seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        && !(seg[0] == 0x3fff && seg[1] < 0x1000) // documentation 3fff::/20
}

/// Parses and checks a callback URL's shape (no DNS): absolute http(s), `https` unless
/// `allow_private`, no credentials, and an IP-literal host must be public unless
/// `allow_private`. Names are checked again after resolution, at each delivery.
pub fn validate_url(raw: &str, allow_private: bool) -> Result<Url, TargetError> {
    if raw.len() > 2048 {
        return Err(TargetError::TooLong);
    }
    let url = Url::parse(raw.trim()).map_err(|_| TargetError::Invalid)?;
    // As it is stored and checked again at each delivery: percent-encoding can make a URL
    // that was short enough as typed too long.
    if url.as_str().len() > 2048 {
        return Err(TargetError::TooLong);
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(TargetError::NotHttps),
        _ => return Err(TargetError::Invalid),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::Credentials);
    }
    match url.host() {
        None => Err(TargetError::Invalid),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty() {
                return Err(TargetError::Invalid);
            }
            if !allow_private
                && (d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal"))
            {
                return Err(TargetError::NonPublic);
            }
            Ok(url)
        }
        Some(url::Host::Ipv4(ip)) if allow_private || is_public_v4(ip) => Ok(url),
        Some(url::Host::Ipv6(ip)) if allow_private || is_public_v6(ip) => Ok(url),
        Some(_) => Err(TargetError::NonPublic),
    }
}

/// Why an attempt did not deliver, to be tried again later: the log's words, and a short
/// [`class`](Self::class) (what a tenant's record of a given-up callback keeps). Never the
/// receiver's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryReason {
    /// The receiver answered this non-2xx status.
    #[error("receiver answered http {0}")]
    Status(u16),
    #[error("receiver did not answer in time")]
    Timeout,
    /// No connection (refused, reset, TLS).
    #[error("could not reach the receiver")]
    Connect,
    /// Connected, but the request or its answer failed otherwise.
    #[error("the request to the receiver failed")]
    Request,
    /// The host's name did not resolve (or not in time).
    #[error("{}", TargetError::Unresolvable)]
    Unresolvable,
    #[error("http client: {0}")]
    Client(String),
}

impl RetryReason {
    /// `http_{status}`, `timeout`, `connect`, `request`, `unresolvable` or `client`.
    pub fn class(&self) -> String {
        match self {
            RetryReason::Status(code) => format!("http_{code}"),
            RetryReason::Timeout => "timeout".into(),
            RetryReason::Connect => "connect".into(),
            RetryReason::Request => "request".into(),
            RetryReason::Unresolvable => "unresolvable".into(),
            RetryReason::Client(_) => "client".into(),
        }
    }
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver answered 2xx.
    Delivered,
    /// Not delivered this time (non-2xx, timeout, connection): try again later.
    Retry(RetryReason),
    /// The target may never be called (a non-public address, a bad URL): do not retry.
    Refused(TargetError),
}

/// Resolves `url`'s host to the addresses it may be connected to: every address the name
/// has, in the resolver's order, once each (the connection tries the next when one does
/// not answer, as a browser would), or none if any of them is not public.
async fn checked_addresses(url: &Url, allow_private: bool) -> Result<Vec<SocketAddr>, Delivery> {
    let port = url
        .port_or_known_default()
        .ok_or(Delivery::Refused(TargetError::Invalid))?;
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(d)) => match tokio::net::lookup_host((d, port)).await {
            Ok(a) => a.collect(),
            Err(_) => return Err(Delivery::Retry(RetryReason::Unresolvable)),
        },
        None => return Err(Delivery::Refused(TargetError::Invalid)),
    };
    connectable(addrs, allow_private)
}

/// The addresses a callback may connect to, of those a name resolved to: all of them,
/// without repeats, when every one is public (a name that also resolves inside is
/// refused); an empty answer is a lookup to try again.
fn connectable(addrs: Vec<SocketAddr>, allow_private: bool) -> Result<Vec<SocketAddr>, Delivery> {
    if !allow_private && addrs.iter().any(|a| !is_public_ip(a.ip())) {
        return Err(Delivery::Refused(TargetError::ResolvesNonPublic));
    }
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for a in addrs {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    if unique.is_empty() {
        return Err(Delivery::Retry(RetryReason::Unresolvable));
    }
    Ok(unique)
}

/// POSTs `body` to `raw_url` with `headers`, to a checked address only.
pub async fn post(
    raw_url: &str,
    allow_private: bool,
    timeout: Duration,
    headers: &[(&str, String)],
    body: String,
) -> Delivery {
    let url = match validate_url(raw_url, allow_private) {
        Ok(u) => u,
        Err(e) => return Delivery::Refused(e),
    };
    // The name's lookup counts toward the timeout too: a DNS server that never answers
    // must not hold a batch (and other tenants' callbacks in it) longer than a receiver.
    let started = tokio::time::Instant::now();
    let addrs = match tokio::time::timeout(timeout, checked_addresses(&url, allow_private)).await {
        Ok(Ok(a)) => a,
        Ok(Err(d)) => return d,
        Err(_) => return Delivery::Retry(RetryReason::Unresolvable),
    };
    let timeout = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(100));
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout);
    if let Some(url::Host::Domain(d)) = url.host() {
        // Connect only to the addresses checked above (the next if one does not answer),
        // keep the name for TLS and Host.
        builder = builder.resolve_to_addrs(d, &addrs);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return Delivery::Retry(RetryReason::Client(e.to_string())),
    };
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "Kirim-Status-Callback/1");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    match req.body(body).send().await {
        Ok(res) if res.status().is_success() => Delivery::Delivered,
        Ok(res) => Delivery::Retry(RetryReason::Status(res.status().as_u16())),
        Err(e) if e.is_timeout() => Delivery::Retry(RetryReason::Timeout),
        Err(e) if e.is_connect() => Delivery::Retry(RetryReason::Connect),
        Err(_) => Delivery::Retry(RetryReason::Request),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> bool {
        is_public_ip(s.parse().unwrap())
    }

    #[test]
    fn private_loopback_link_local_and_reserved_ipv4_are_not_public() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "100.64.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!v4(ip), "{ip} must not count as public");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "52.95.110.1",
        ] {
            assert!(v4(ip), "{ip} is public");
        }
    }

    #[test]
    fn ipv6_is_public_only_in_global_unicast_outside_special_blocks() {
        for ip in [
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "fec0::1",
            "100::1",
        ] {
            assert!(!v4(ip), "{ip} must not count as public");
        }
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(v4(ip), "{ip} is public");
        }
    }

    #[test]
    fn callback_urls_must_be_https_public_and_without_credentials() {
        assert!(validate_url("https://hooks.example.com/kirim", false).is_ok());
        assert_eq!(
            validate_url("http://hooks.example.com/kirim", false),
            Err(TargetError::NotHttps)
        );
        assert_eq!(
            validate_url("ftp://example.com/", false),
            Err(TargetError::Invalid)
        );
        assert_eq!(validate_url("not a url", false), Err(TargetError::Invalid));
        assert_eq!(validate_url("/relative", false), Err(TargetError::Invalid));
        assert_eq!(
            validate_url("https://user:pw@example.com/", false),
            Err(TargetError::Credentials)
        );
        for bad in [
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.5/",
            "https://localhost/",
            "https://[::ffff:192.168.0.1]/",
            "https://metadata.google.internal/",
        ] {
            assert_eq!(
                validate_url(bad, false),
                Err(TargetError::NonPublic),
                "{bad}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(2100));
        assert_eq!(validate_url(&long, false), Err(TargetError::TooLong));
    }

    #[test]
    fn a_url_accepted_as_typed_is_accepted_again_as_stored() {
        // 820 bytes as typed, about 2,420 once percent-encoded: refused when set, not
        // accepted then refused at every delivery.
        let typed = format!("https://example.com/{}", "é".repeat(400));
        assert_eq!(validate_url(&typed, false), Err(TargetError::TooLong));
        let fits = format!("https://example.com/{}", "é".repeat(300));
        let stored = validate_url(&fits, false).expect("fits encoded");
        assert!(validate_url(stored.as_str(), false).is_ok());
    }

    #[test]
    fn local_mode_allows_http_and_loopback() {
        assert!(validate_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(validate_url("http://localhost/hook", true).is_ok());
        assert_eq!(
            validate_url("ftp://127.0.0.1/", true),
            Err(TargetError::Invalid)
        );
    }

    #[tokio::test]
    async fn a_non_public_address_is_refused_before_any_connection() {
        // A name that resolves to loopback (`localhost` is also refused by its text, before
        // any lookup; here the lookup is what refuses it).
        let url = Url::parse("https://localhost:9/x").unwrap();
        assert_eq!(
            checked_addresses(&url, false).await,
            Err(Delivery::Refused(TargetError::ResolvesNonPublic))
        );
        assert_eq!(
            post(
                "https://127.0.0.1:9/x",
                false,
                Duration::from_secs(1),
                &[],
                "{}".into()
            )
            .await,
            Delivery::Refused(TargetError::NonPublic)
        );
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_public_address_of_a_name_is_kept_in_order_for_the_connection_to_fall_back_to() {
        let resolved = vec![
            at("[2606:4700::1111]:443"),
            at("203.0.113.9:443"),
            at("8.8.8.8:443"),
            at("203.0.113.9:443"),
        ];
        // 203.0.113.0/24 is documentation space (not public): with it the name is refused.
        assert_eq!(
            connectable(resolved.clone(), false),
            Err(Delivery::Refused(TargetError::ResolvesNonPublic))
        );
        let public = vec![
            at("[2606:4700::1111]:443"),
            at("1.1.1.1:443"),
            at("8.8.8.8:443"),
            at("1.1.1.1:443"),
        ];
        assert_eq!(
            connectable(public, false),
            Ok(vec![
                at("[2606:4700::1111]:443"),
                at("1.1.1.1:443"),
                at("8.8.8.8:443")
            ])
        );
        assert_eq!(
            connectable(resolved, true).map(|a| a.len()),
            Ok(3),
            "local mode keeps private addresses too"
        );
        assert_eq!(
            connectable(vec![], false),
            Err(Delivery::Retry(RetryReason::Unresolvable))
        );
    }
}

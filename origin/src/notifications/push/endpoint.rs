//! The guard against server-side request forgery (see the parent module's doc): which
//! endpoints a push may go to, checked when subscribing ([`check_endpoint`]) and again
//! at every send ([`endpoint_url`] and the resolver of [`client`], on the addresses
//! actually connected to).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Connecting to a push endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole request to a push endpoint: resolving, connecting, sending, the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Resolving an endpoint's host when subscribing.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_ENDPOINT_LEN: usize = 2048;

/// IPv4 networks no push goes to: (network, prefix length, what it is).
const REFUSED_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "in \"this\" network (0/8)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (10/8)"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared address space (100.64/10)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127/8)"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local (169.254/16)"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (172.16/12)"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments (192.0.0/24)"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation (192.0.2/24)"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private (192.168/16)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (198.18/15)"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation (198.51.100/24)"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation (203.0.113/24)"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224/4)"),
    // Holds the broadcast address too.
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240/4)"),
];

/// IPv6 networks no push goes to: (network, prefix length, what it is).
const REFUSED_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified (::)"),
    (Ipv6Addr::LOCALHOST, 128, "loopback (::1)"),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, "local-use NAT64 (64:ff9b:1::/48)"),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only (100::/64)"),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, "documentation (2001:db8::/32)"),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique local (fc00::/7)"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local (fe80::/10)"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local (fec0::/10)"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast (ff00::/8)"),
];

/// IPv6 networks whose addresses carry an IPv4 address, judged by it: (network, prefix
/// length, how far right of the IPv4 address's last bit the address ends).
const EMBEDDING_V6: &[(Ipv6Addr, u8, u32)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, 0),    // IPv4-mapped
    (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96, 0),    // IPv4-translated (SIIT)
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96, 0),         // IPv4-compatible (deprecated)
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96, 0), // NAT64, well-known prefix
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, 80),   // 6to4: 2002:AABB:CCDD::/48
];

/// Whether the top `len` of `bits` bits of `addr` and `net` agree.
fn in_prefix(addr: u128, net: u128, len: u8, bits: u32) -> bool {
    let len = u32::from(len);
    len == 0 || (addr ^ net) >> (bits - len) == 0
}

/// Why no push may go to `ip`, if none may: the reserved range it is in. An IPv6
/// address that carries an IPv4 address (mapped, compatible, NAT64, 6to4) is judged by
/// that IPv4 address, since that is where a connection to it ends up.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => REFUSED_V4
            .iter()
            .find(|(net, len, _)| in_prefix(u32::from(v4).into(), u32::from(*net).into(), *len, 32))
            .map(|(_, _, what)| *what),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            if let Some((_, _, what)) =
                REFUSED_V6.iter().find(|(net, len, _)| in_prefix(bits, (*net).into(), *len, 128))
            {
                return Some(what);
            }
            EMBEDDING_V6.iter().find(|(net, len, _)| in_prefix(bits, (*net).into(), *len, 128)).and_then(
                |(_, _, shift)| refused_range(IpAddr::V4(Ipv4Addr::from(((bits >> shift) & 0xffff_ffff) as u32))),
            )
        }
    }
}

/// Whether a push may go to `ip` (see [`refused_range`]).
pub fn is_public(ip: IpAddr) -> bool {
    refused_range(ip).is_none()
}

/// The checks of an endpoint that need no name resolution, made when subscribing and
/// again before each send: the length, the scheme, and the address when the host is
/// one (an IP literal is connected to as is: no resolver sees it). Why not, if not.
pub(super) fn endpoint_url(endpoint: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(format!("longer than {MAX_ENDPOINT_LEN} bytes"));
    }
    let url = reqwest::Url::parse(endpoint).map_err(|_| "not a URL".to_owned())?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ if allow_private => return Err("must be an http(s) URL".into()),
        _ => return Err("must be an https URL".into()),
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("needs a host")?;
    // The URL parser has already turned every spelling of an address (`0x7f.1`,
    // `2130706433`, `[::ffff:7f00:1]`) into its canonical form.
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse::<IpAddr>();
    if let (Ok(ip), false) = (literal, allow_private) {
        if let Some(range) = refused_range(ip) {
            return Err(format!("{ip} is {range}: pushes go to public addresses only"));
        }
    }
    Ok(url)
}

/// Whether `endpoint` may receive pushes, as checked when subscribing: why not, if not.
/// Beyond [`endpoint_url`], a host name must resolve, and only to public addresses
/// (unless private ones are allowed: then it is not resolved at all, so development and
/// tests may name hosts that resolve only where the pushes are sent from).
pub async fn check_endpoint(endpoint: &str, allow_private: bool) -> Result<(), String> {
    let url = endpoint_url(endpoint, allow_private)?;
    let host = url.host_str().unwrap_or_default();
    if allow_private || host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let addresses: Vec<IpAddr> = match resolved {
        Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
        _ => Vec::new(),
    };
    // One answer for "does not resolve" and "resolves to a private address": which of
    // the two would tell a stranger what names our own network has.
    if addresses.is_empty() || !addresses.iter().copied().all(is_public) {
        return Err(format!("its host `{host}` must resolve, and to public addresses only"));
    }
    Ok(())
}

/// Resolves a push endpoint's host at send time and keeps its public addresses only
/// (none left: an error, and the delivery is retried). The check is on the addresses
/// actually connected to, so a name that was public when subscribed and points
/// inside since (DNS rebinding) reaches nothing.
struct PublicAddressesOnly;

impl reqwest::dns::Resolve for PublicAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client every push is sent with: it follows no redirect, uses no proxy (one
/// would connect on our behalf to addresses our resolver never saw), gives up quickly,
/// and reaches public addresses only (unless private ones are allowed).
pub(super) fn client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let builder = if allow_private { builder } else { builder.dns_resolver(Arc::new(PublicAddressesOnly)) };
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each range on both sides of its edges, and the IPv6 forms that carry an IPv4 address.
    const ADDRESSES: &[(&str, bool)] = &[
        // (address, refused)
        ("0.0.0.0", true),
        ("0.255.255.255", true),
        ("1.0.0.0", false),
        ("1.1.1.1", false),
        ("8.8.8.8", false),
        ("9.255.255.255", false),
        ("10.0.0.0", true),
        ("10.255.255.255", true),
        ("11.0.0.0", false),
        ("100.63.255.255", false),
        ("100.64.0.0", true),
        ("100.127.255.255", true),
        ("100.128.0.0", false),
        ("126.255.255.255", false),
        ("127.0.0.0", true),
        ("127.0.0.1", true),
        ("127.255.255.255", true),
        ("128.0.0.0", false),
        ("169.253.255.255", false),
        ("169.254.0.0", true),
        ("169.254.169.254", true),
        ("169.254.255.255", true),
        ("169.255.0.0", false),
        ("172.15.255.255", false),
        ("172.16.0.0", true),
        ("172.31.255.255", true),
        ("172.32.0.0", false),
        ("191.255.255.255", false),
        ("192.0.0.0", true),
        ("192.0.0.255", true),
        ("192.0.1.0", false),
        ("192.0.1.255", false),
        ("192.0.2.0", true),
        ("192.0.2.255", true),
        ("192.0.3.0", false),
        ("192.167.255.255", false),
        ("192.168.0.0", true),
        ("192.168.255.255", true),
        ("192.169.0.0", false),
        ("198.17.255.255", false),
        ("198.18.0.0", true),
        ("198.19.255.255", true),
        ("198.20.0.0", false),
        ("198.51.99.255", false),
        ("198.51.100.0", true),
        ("198.51.100.255", true),
        ("198.51.101.0", false),
        ("203.0.112.255", false),
        ("203.0.113.0", true),
        ("203.0.113.255", true),
        ("203.0.114.0", false),
        ("223.255.255.255", false),
        ("224.0.0.0", true),
        ("239.255.255.255", true),
        ("240.0.0.0", true),
        ("255.255.255.254", true),
        ("255.255.255.255", true),
        // IPv6
        ("::", true),
        ("::1", true),
        ("2001:4860:4860::8888", false),
        ("2606:4700:4700::1111", false),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("2001:db8::", true),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("2001:db9::", false),
        ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("fc00::", true),
        ("fd12:3456::1", true),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("fe00::", false),
        ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("fe80::", true),
        ("fe80::1", true),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("ff00::", true),
        ("ff02::1", true),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        // IPv4-mapped ::ffff:0:0/96: the IPv4 address decides.
        ("::ffff:127.0.0.1", true),
        ("::ffff:10.1.2.3", true),
        ("::ffff:169.254.169.254", true),
        ("::ffff:0.0.0.0", true),
        ("::ffff:8.8.8.8", false),
        ("::fffe:ffff:ffff", false), // just below the mapped range, outside ::/96 too
        // IPv4-compatible ::/96.
        ("::127.0.0.1", true),
        ("::10.0.0.1", true),
        ("::8.8.8.8", false),
        ("::1:0:0", false), // just above ::/96
        // IPv4-translated ::ffff:0:0:0/96.
        ("::ffff:0:127.0.0.1", true),
        ("::ffff:0:8.8.8.8", false),
        // NAT64 64:ff9b::/96, and its local-use /48.
        ("64:ff9b::127.0.0.1", true),
        ("64:ff9b::192.168.0.1", true),
        ("64:ff9b::8.8.8.8", false),
        ("64:ff9b:1::8.8.8.8", true),
        // 6to4 2002::/16: the IPv4 address is the next 32 bits.
        ("2002:7f00:1::", true),
        ("2002:a00:1::1", true),
        ("2002:a9fe:a9fe::", true),
        ("2002:808:808::1", false),
        ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("2003::1", false),
    ];

    #[test]
    fn the_address_classifier_refuses_every_non_public_range_and_nothing_else() {
        for (address, refused) in ADDRESSES {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(refused_range(ip).is_some(), *refused, "{address}: {:?}", refused_range(ip));
            assert_eq!(is_public(ip), !refused, "{address}");
        }
        assert_eq!(refused_range("::ffff:127.0.0.1".parse().unwrap()), Some("loopback (127/8)"));
        assert_eq!(refused_range("2002:a9fe:a9fe::".parse().unwrap()), Some("link-local (169.254/16)"));
    }

    #[tokio::test]
    async fn subscribing_refuses_plain_http_and_every_non_public_endpoint() {
        let refused = [
            "http://8.8.8.8/push",
            "ftp://8.8.8.8/push",
            "not a url",
            "https://10.0.0.1/push",
            "https://127.0.0.1:8443/push",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]/push",
            "https://[::ffff:127.0.0.1]/push",
            "https://[::ffff:7f00:1]/push",
            "https://[fe80::1]/push",
            "https://[64:ff9b::a00:1]/push",
            "https://[2002:c0a8:101::1]/push",
            "https://0x7f.1/push",     // 127.0.0.1, however spelled
            "https://2130706433/push", // 127.0.0.1 as one number
            "https://017700000001/",   // and in octal
            "https://localhost/push",  // a name that resolves to loopback
            "https://localhost./push",
            "https://no-such-host.invalid/push", // a name that does not resolve
        ];
        for endpoint in refused {
            let why = check_endpoint(endpoint, false).await;
            assert!(why.is_err(), "{endpoint} was accepted");
        }
        let long = format!("https://8.8.8.8/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert!(check_endpoint(&long, false).await.unwrap_err().contains("longer"));
        let why = check_endpoint("https://[::ffff:127.0.0.1]/", false).await.unwrap_err();
        assert!(why.contains("127.0.0.1") && why.contains("loopback"), "{why}");
        let why = check_endpoint("https://localhost/", false).await.unwrap_err();
        assert!(why.contains("public"), "{why}");
        assert_eq!(
            check_endpoint("https://no-such-host.invalid/", false).await.unwrap_err(),
            "its host `no-such-host.invalid` must resolve, and to public addresses only",
            "the same answer as for a private address: no map of our network"
        );
        assert!(check_endpoint("http://8.8.8.8/", false).await.unwrap_err().contains("https"));

        for endpoint in ["https://8.8.8.8/push/abc", "https://8.8.8.8:8443/push", "https://[2606:4700:4700::1111]/push"]
        {
            assert_eq!(check_endpoint(endpoint, false).await, Ok(()), "{endpoint}");
        }
    }

    #[tokio::test]
    async fn development_may_push_to_http_and_to_private_addresses() {
        for endpoint in [
            "http://127.0.0.1:9/push",
            "https://10.0.0.1/push",
            "http://localhost:9/push",
            "https://push.example.net/send/abc", // not resolved when subscribing
        ] {
            assert_eq!(check_endpoint(endpoint, true).await, Ok(()), "{endpoint}");
        }
        assert!(check_endpoint("ftp://127.0.0.1/", true).await.is_err());
        assert!(check_endpoint("not a url", true).await.is_err());
        let long = format!("http://127.0.0.1/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert!(check_endpoint(&long, true).await.is_err());
    }

    #[tokio::test]
    async fn the_send_time_resolver_keeps_public_addresses_only() {
        use reqwest::dns::Resolve;
        let refused = PublicAddressesOnly.resolve("localhost".parse().unwrap()).await;
        let why = refused.err().expect("localhost is loopback only").to_string();
        assert!(why.contains("no public address"), "{why}");
    }
}

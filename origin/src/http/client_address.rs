//! Whose request it is, by address. Behind a load balancer every TCP peer is the
//! balancer, so the client is named in `X-Forwarded-For`; but anyone can send that
//! header, so it counts only when the peer is one of the operator's proxies
//! (`DROPS_TRUSTED_PROXIES`, CIDRs). Otherwise the peer is the client.
//!
//! Through trusted proxies the header is read from the right (each proxy appends the
//! address it got the request from): the first address that is not a trusted proxy
//! is the client. What a client wrote further left is its own claim and is ignored;
//! so is everything left of an entry that is not an address. A request whose every
//! hop is a trusted proxy is the leftmost one's.
//!
//! The middleware [`resolve`] puts the answer in the request's extensions as
//! [`ClientAddress`], for the per-client limits (`overload`) and anyone else who
//! needs to know the client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address, as [`resolve`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The networks whose `X-Forwarded-For` is believed.
pub type TrustedProxies = Arc<[IpNet]>;

fn trusted(address: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&address))
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (some proxies add it).
fn entry_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry.parse::<IpAddr>().or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip())).ok().map(|ip| ip.to_canonical())
}

/// The client of a request from `peer` carrying `headers`, given the `proxies` whose
/// word is believed (see the module's doc).
pub fn client_of(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted(peer, proxies) {
        return peer;
    }
    // Several headers are one list, in order.
    let entries: Vec<&str> =
        headers.get_all(FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(address) = entry_address(entry) else { break };
        client = address;
        if !trusted(address, proxies) {
            break;
        }
    }
    client
}

/// The middleware: [`ClientAddress`] for every request served with its peer known.
pub async fn resolve(State(proxies): State<TrustedProxies>, mut req: Request, next: Next) -> Response {
    if let Some(peer) = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()) {
        let client = client_of(peer, req.headers(), &proxies);
        req.extensions_mut().insert(ClientAddress(client));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::config::parse_proxies;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_a_trusted_peer_may_name_the_client() {
        let proxies = parse_proxies("10.0.0.0/8, 192.168.1.7").unwrap();
        let claim = forwarded(&["203.0.113.9"]);
        assert_eq!(
            client_of(ip("198.51.100.4"), &claim, &proxies),
            ip("198.51.100.4"),
            "an untrusted peer is the client"
        );
        assert_eq!(client_of(ip("198.51.100.4"), &claim, &[]), ip("198.51.100.4"), "nobody is trusted by default");
        assert_eq!(client_of(ip("10.1.2.3"), &claim, &proxies), ip("203.0.113.9"));
        assert_eq!(client_of(ip("192.168.1.7"), &claim, &proxies), ip("203.0.113.9"));
        assert_eq!(client_of(ip("192.168.1.8"), &claim, &proxies), ip("192.168.1.8"), "a /32 is one host");
        assert_eq!(client_of(ip("10.1.2.3"), &HeaderMap::new(), &proxies), ip("10.1.2.3"), "no header: the peer");
        // An IPv4 peer seen on a dual-stack socket.
        assert_eq!(client_of(ip("::ffff:10.1.2.3"), &claim, &proxies), ip("203.0.113.9"));
    }

    #[test]
    fn the_header_is_read_from_the_right_past_trusted_hops_only() {
        let proxies = parse_proxies("10.0.0.0/8,2001:db8:ffff::/48").unwrap();
        // The client forged the leftmost entry; the first untrusted from the right is it.
        let chain = forwarded(&["1.2.3.4, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(client_of(ip("10.0.0.1"), &chain, &proxies), ip("203.0.113.9"));
        // Several headers are one list.
        let split = forwarded(&["1.2.3.4", "203.0.113.9", "10.0.0.2"]);
        assert_eq!(client_of(ip("10.0.0.1"), &split, &proxies), ip("203.0.113.9"));
        // Garbage stops the walk: the hop that wrote it is the client.
        let junk = forwarded(&["203.0.113.9, not-an-address, 10.0.0.2"]);
        assert_eq!(client_of(ip("10.0.0.1"), &junk, &proxies), ip("10.0.0.2"));
        // Ports, IPv6, all hops trusted.
        assert_eq!(client_of(ip("10.0.0.1"), &forwarded(&["203.0.113.9:4711"]), &proxies), ip("203.0.113.9"));
        assert_eq!(client_of(ip("10.0.0.1"), &forwarded(&["[2001:db8::5]:80"]), &proxies), ip("2001:db8::5"));
        assert_eq!(client_of(ip("2001:db8:ffff::1"), &forwarded(&["2001:db8::5"]), &proxies), ip("2001:db8::5"));
        assert_eq!(client_of(ip("10.0.0.1"), &forwarded(&["10.0.0.3, 10.0.0.2"]), &proxies), ip("10.0.0.3"));
    }
}

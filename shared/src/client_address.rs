//! The client address the edge vouches for.
//!
//! The origin limits requests per client address. A request that reaches it
//! straight from the client is limited per the TCP peer; a request the edge proxies
//! comes from one of the edge's few addresses, so the edge names the real client
//! (the address Cloudflare gives it) in [`CLIENT_HEADER`], and proves it with
//! [`CLIENT_SIGNATURE_HEADER`]: `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
//!
//! The MAC covers `"<t>\n<address>"`, the address exactly as sent in the header, under
//! a key derived from the edge → origin secret for this one purpose
//! (`HMAC(secret, `[`KEY_PURPOSE`]`)`), so it can never pass for an internal-call
//! signature made with the same secret, nor one of those for it. A header older
//! (or newer) than [`TOLERANCE_SECS`] is refused, so a captured pair is worth little
//! and not for long. The origin trusts the address only when the signature checks;
//! anything else (no header, a forged or stale one, an address that does not parse)
//! is limited per peer, so a client calling the origin directly cannot buy itself a
//! fresh budget by naming someone else.
//!
//! Comparisons go through `Mac::verify_slice`, which is constant-time.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::signing::SignatureError;

type HmacSha256 = Hmac<Sha256>;

/// The client address, as the edge saw it (`CF-Connecting-IP`).
pub const CLIENT_HEADER: &str = "x-drops-client";
/// `t=<unix>,v1=<hex>`: the edge's word for [`CLIENT_HEADER`].
pub const CLIENT_SIGNATURE_HEADER: &str = "x-drops-client-sig";
/// How far the signature's time may be from the origin's clock. The edge signs as it
/// sends, so this only has to cover clock skew and the trip.
pub const TOLERANCE_SECS: i64 = 60;
/// Derives this purpose's key from the edge → origin secret.
pub const KEY_PURPOSE: &[u8] = b"drops client address v1";

fn keyed(secret: &[u8]) -> HmacSha256 {
    let mut derive = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    derive.update(KEY_PURPOSE);
    let key = derive.finalize().into_bytes();
    HmacSha256::new_from_slice(&key).expect("HMAC takes any key length")
}

fn client_mac(secret: &[u8], client: &str, timestamp: i64) -> HmacSha256 {
    let mut m = keyed(secret);
    m.update(timestamp.to_string().as_bytes());
    m.update(b"\n");
    m.update(client.as_bytes());
    m
}

/// The [`CLIENT_SIGNATURE_HEADER`] value for `client` (sent as is in
/// [`CLIENT_HEADER`]), signed at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], client: &str, timestamp: i64) -> String {
    let mac = client_mac(secret, client, timestamp).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(mac))
}

/// Both headers the edge sets on a request it sends on a client's behalf.
pub fn headers(secret: &[u8], client: &str, timestamp: i64) -> [(&'static str, String); 2] {
    [(CLIENT_HEADER, client.to_owned()), (CLIENT_SIGNATURE_HEADER, sign(secret, client, timestamp))]
}

/// The address the edge vouches for, if `client` and `signature` (the two header
/// values) check against `secret` at `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    client: Option<&str>,
    signature: Option<&str>,
    now: i64,
) -> Result<IpAddr, SignatureError> {
    let (client, signature) = match (client, signature) {
        (Some(c), Some(s)) => (c, s),
        _ => return Err(SignatureError::Missing),
    };
    let address: IpAddr = client.parse().map_err(|_| SignatureError::Malformed)?;
    let mut timestamp = None;
    let mut mac = None;
    for part in signature.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) if timestamp.is_none() => {
                timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", v)) if mac.is_none() => mac = Some(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => return Err(SignatureError::Malformed),
        }
    }
    let (Some(timestamp), Some(mac)) = (timestamp, mac) else {
        return Err(SignatureError::Malformed);
    };
    if secret.is_empty() {
        return Err(SignatureError::Mismatch);
    }
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    client_mac(secret, client, timestamp).verify_slice(&mac).map_err(|_| SignatureError::Mismatch)?;
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::sign_internal;

    const NOW: i64 = 1_800_000_000;
    const SECRET: &[u8] = b"edge-to-origin";

    #[test]
    fn a_signed_address_checks_and_nothing_else_does() {
        let sig = sign(SECRET, "203.0.113.7", NOW);
        let ok = |client: &str, sig: &str, now: i64| verify(SECRET, Some(client), Some(sig), now);
        assert_eq!(ok("203.0.113.7", &sig, NOW), Ok("203.0.113.7".parse().unwrap()));
        assert_eq!(ok("203.0.113.7", &sig, NOW - TOLERANCE_SECS), Ok("203.0.113.7".parse().unwrap()));
        // Another address under the same signature: someone else's budget is not for sale.
        assert_eq!(ok("203.0.113.8", &sig, NOW), Err(SignatureError::Mismatch));
        // The same address spelled differently is another header value.
        let v6 = sign(SECRET, "2001:db8::1", NOW);
        assert_eq!(ok("2001:db8::1", &v6, NOW), Ok("2001:db8::1".parse().unwrap()));
        assert_eq!(ok("2001:0db8::1", &v6, NOW), Err(SignatureError::Mismatch));
        // Too old, too new.
        assert_eq!(ok("203.0.113.7", &sig, NOW + TOLERANCE_SECS + 1), Err(SignatureError::Stale));
        assert_eq!(ok("203.0.113.7", &sig, NOW - TOLERANCE_SECS - 1), Err(SignatureError::Stale));
        // Another secret.
        assert_eq!(verify(b"other", Some("203.0.113.7"), Some(&sig), NOW), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"", Some("203.0.113.7"), Some(&sig), NOW), Err(SignatureError::Mismatch));
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        let sig = sign(SECRET, "203.0.113.7", NOW);
        assert_eq!(verify(SECRET, None, Some(&sig), NOW), Err(SignatureError::Missing));
        assert_eq!(verify(SECRET, Some("203.0.113.7"), None, NOW), Err(SignatureError::Missing));
        for client in ["", "localhost", "203.0.113.7:443", "203.0.113.7, 10.0.0.1", " 203.0.113.7"] {
            assert_eq!(verify(SECRET, Some(client), Some(&sig), NOW), Err(SignatureError::Malformed), "{client:?}");
        }
        let mac = sig.split("v1=").nth(1).unwrap();
        for bad in [
            String::new(),
            mac.to_owned(),
            format!("v1={mac}"),
            format!("t={NOW}"),
            format!("t=soon,v1={mac}"),
            format!("t={NOW},v1=zz"),
            format!("t={NOW},v1={mac},v2=00"),
            format!("t={NOW},t={NOW},v1={mac}"),
        ] {
            assert_eq!(verify(SECRET, Some("203.0.113.7"), Some(&bad), NOW), Err(SignatureError::Malformed), "{bad}");
        }
    }

    #[test]
    fn the_headers_are_what_verify_reads() {
        let [(name, client), (sig_name, sig)] = headers(SECRET, "198.51.100.4", NOW);
        assert_eq!((name, sig_name), (CLIENT_HEADER, CLIENT_SIGNATURE_HEADER));
        assert_eq!(verify(SECRET, Some(&client), Some(&sig), NOW), Ok("198.51.100.4".parse().unwrap()));
    }

    #[test]
    fn an_internal_call_signature_is_no_client_signature() {
        // The same secret signs internal calls: a MAC made for one must never pass as
        // the other, whatever the fields.
        let client = "203.0.113.7";
        let internal = sign_internal(SECRET, "", "", NOW, client.as_bytes());
        let as_client = format!("t={NOW},v1={internal}");
        assert_eq!(verify(SECRET, Some(client), Some(&as_client), NOW), Err(SignatureError::Mismatch));
        let plain = hex::encode({
            let mut m = HmacSha256::new_from_slice(SECRET).unwrap();
            m.update(format!("{NOW}\n{client}").as_bytes());
            m.finalize().into_bytes()
        });
        let raw = format!("t={NOW},v1={plain}");
        assert_eq!(verify(SECRET, Some(client), Some(&raw), NOW), Err(SignatureError::Mismatch));
    }
}

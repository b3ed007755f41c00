//! HMAC-SHA256 signatures.
//!
//! - Internal calls between the edge and the origin: the signature covers the method,
//!   the path (with query), a unix timestamp and the raw body, so a captured request
//!   cannot be replayed on another route or after [`TOLERANCE_SECS`].
//! - Payment webhooks: Stripe's scheme, `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`
//!   over `"<t>.<raw body>"`, where any `v1` may match any configured secret (rotation).
//!
//! Comparisons go through `Mac::verify_slice`, which is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const TOLERANCE_SECS: i64 = 300;
pub const TIMESTAMP_HEADER: &str = "x-drops-timestamp";
pub const SIGNATURE_HEADER: &str = "x-drops-signature";
pub const STRIPE_SIGNATURE_HEADER: &str = "stripe-signature";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header missing")]
    Missing,
    #[error("signature header malformed")]
    Malformed,
    #[error("timestamp outside the tolerance window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(secret).expect("HMAC takes any key length")
}

fn internal_mac(secret: &[u8], method: &str, path: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut m = mac(secret);
    m.update(method.to_ascii_uppercase().as_bytes());
    m.update(b"\n");
    m.update(path.as_bytes());
    m.update(b"\n");
    m.update(timestamp.to_string().as_bytes());
    m.update(b"\n");
    m.update(body);
    m
}

/// Hex signature for an internal call.
pub fn sign_internal(secret: &[u8], method: &str, path: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(internal_mac(secret, method, path, timestamp, body).finalize().into_bytes())
}

/// Checks an internal call's headers against its method, path and body at `now` (unix s).
pub fn verify_internal(
    secret: &[u8],
    method: &str,
    path: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let (timestamp, signature) = match (timestamp, signature) {
        (Some(t), Some(s)) => (t, s),
        _ => return Err(SignatureError::Missing),
    };
    let ts: i64 = timestamp.trim().parse().map_err(|_| SignatureError::Malformed)?;
    let sig = hex::decode(signature.trim()).map_err(|_| SignatureError::Malformed)?;
    if secret.is_empty() {
        return Err(SignatureError::Mismatch);
    }
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    internal_mac(secret, method, path, ts, body).verify_slice(&sig).map_err(|_| SignatureError::Mismatch)
}

/// A `Stripe-Signature` header value for `body`, signed at `timestamp`.
pub fn stripe_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    format!("t={timestamp},v1={}", hex::encode(m.finalize().into_bytes()))
}

/// Verifies a `Stripe-Signature` header: any `v1` matching any of `secrets`.
pub fn verify_stripe_signature(
    header: Option<&str>,
    secrets: &[&[u8]],
    body: &[u8],
    now: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match k {
            "t" => timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {} // other schemes (v0) are ignored, as Stripe's own libraries do
        }
    }
    let ts = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let mut m = mac(secret);
        m.update(ts.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        for candidate in &candidates {
            if m.clone().verify_slice(candidate).is_ok() {
                return Ok(ts);
            }
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn internal_round_trip_and_tamper() {
        let sig = sign_internal(b"k", "POST", "/internal/v1/reservations", NOW, b"{}");
        let ts = NOW.to_string();
        let ok = |m: &str, p: &str, b: &[u8], now: i64| verify_internal(b"k", m, p, Some(&ts), Some(&sig), b, now);
        assert_eq!(ok("POST", "/internal/v1/reservations", b"{}", NOW), Ok(()));
        assert_eq!(ok("post", "/internal/v1/reservations", b"{}", NOW + 299), Ok(()));
        assert_eq!(ok("POST", "/internal/v1/purge", b"{}", NOW), Err(SignatureError::Mismatch));
        assert_eq!(ok("PUT", "/internal/v1/reservations", b"{}", NOW), Err(SignatureError::Mismatch));
        assert_eq!(ok("POST", "/internal/v1/reservations", b"{ }", NOW), Err(SignatureError::Mismatch));
        assert_eq!(ok("POST", "/internal/v1/reservations", b"{}", NOW + 301), Err(SignatureError::Stale));
        assert_eq!(
            verify_internal(b"other", "POST", "/internal/v1/reservations", Some(&ts), Some(&sig), b"{}", NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify_internal(b"k", "POST", "/x", None, Some(&sig), b"{}", NOW), Err(SignatureError::Missing));
        assert_eq!(
            verify_internal(b"k", "POST", "/x", Some("abc"), Some(&sig), b"{}", NOW),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn stripe_scheme_with_rotation() {
        let body = br#"{"id":"evt_1"}"#;
        let header = stripe_signature(b"whsec_old", NOW, body);
        assert_eq!(verify_stripe_signature(Some(&header), &[b"whsec_new", b"whsec_old"], body, NOW), Ok(NOW));
        assert_eq!(verify_stripe_signature(Some(&header), &[b"whsec_new"], body, NOW), Err(SignatureError::Mismatch));
        assert_eq!(
            verify_stripe_signature(Some(&header), &[b"whsec_old"], body, NOW + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(verify_stripe_signature(None, &[b"whsec_old"], body, NOW), Err(SignatureError::Missing));
        // Two v1 values, the second valid: accepted (the provider signs with both secrets during rotation).
        let v1 = header.split("v1=").nth(1).unwrap();
        let both = format!("t={NOW},v1={},v1={v1}", "00".repeat(32));
        assert_eq!(verify_stripe_signature(Some(&both), &[b"whsec_old"], body, NOW), Ok(NOW));
    }
}

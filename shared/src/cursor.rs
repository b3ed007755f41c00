//! List paging, defined once for the origin (which issues cursors and reads every
//! list) and the edge (which caches the drop lists and must refuse a forged cursor
//! or a junk query before it costs a cache entry or an origin query).
//!
//! **Cursors are signed.** A cursor names a position in one list: a 64-bit key (a
//! time in microseconds, or a sequence number) and an id. It is
//! `base64url(version ‖ key ‖ id ‖ tag)` without padding: 1 + 8 (big-endian) + 16 +
//! 20 bytes = 45 bytes = exactly [`CURSOR_LEN`] (60) characters of `[A-Za-z0-9_-]`
//! ([`CURSOR_PATTERN`]). `tag` is HMAC-SHA256, cut to 20 bytes, over the version,
//! the list's name (length-prefixed) and the position, under a key derived from the
//! origin → edge secret for this one purpose (`HMAC(secret, `[`KEY_PURPOSE`]`)`):
//! the origin signs, the edge verifies with the same secret, and a cursor can never
//! pass for any other signature made with it. A list's name says whose list it is
//! where that matters (`orders-<user>`, `followers-<creator>`), so a cursor of
//! another list, or another user's, does not verify. Rotating the secret voids the
//! cursors out there (a client starts again from the first page).
//!
//! **`limit`** is 1 to [`MAX_PAGE_LIMIT`], default [`DEFAULT_PAGE_LIMIT`], written as
//! decimal digits; anything else is refused (400), not clamped: the OpenAPI
//! document declares `minimum: 1, maximum: 100`, and a value it forbids is refused
//! like any other. [`Limit::canonical`] is how a page is keyed: the default is not
//! written, so `?limit=20`, `?limit=020` and no `limit` are one page.
//!
//! Comparisons of tags are constant-time (`Mac::verify_truncated_left`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::api::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};

type HmacSha256 = Hmac<Sha256>;

/// Derives the cursors' key from the origin → edge secret.
pub const KEY_PURPOSE: &[u8] = b"drops list cursor v1";
/// Characters in every cursor.
pub const CURSOR_LEN: usize = 60;
/// Every cursor matches this (the OpenAPI document says so); a string that matches
/// it is a cursor only if its tag verifies, which no pattern can say.
pub const CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]{60}$";

const VERSION: u8 = 1;
const TAG_BYTES: usize = 20;
const RAW_BYTES: usize = 1 + 8 + 16 + TAG_BYTES;

/// A position in a list: the last row a page gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// What the list is ordered by first: a time in microseconds, a sequence
    /// number, or 0 for lists ordered by id alone.
    pub key: i64,
    pub id: Uuid,
}

/// Why a cursor is refused. Whatever the reason, the answer is the same 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCursor;

impl std::fmt::Display for BadCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("query `cursor`: not a cursor of this list")
    }
}

/// The key cursors are signed with.
#[derive(Clone)]
pub struct CursorKey(HmacSha256);

impl CursorKey {
    /// The cursors' key, from the origin → edge secret.
    pub fn derive(origin_to_edge_secret: &[u8]) -> Self {
        let mut derive = HmacSha256::new_from_slice(origin_to_edge_secret).expect("HMAC takes any key length");
        derive.update(KEY_PURPOSE);
        let key = derive.finalize().into_bytes();
        CursorKey(HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"))
    }

    fn mac(&self, list: &str, body: &[u8]) -> HmacSha256 {
        let mut m = self.0.clone();
        m.update(&[VERSION]);
        m.update(&(list.len() as u32).to_be_bytes());
        m.update(list.as_bytes());
        m.update(body);
        m
    }

    /// The cursor that points past `at` in `list`.
    pub fn sign(&self, list: &str, at: Position) -> String {
        let mut raw = Vec::with_capacity(RAW_BYTES);
        raw.push(VERSION);
        raw.extend_from_slice(&at.key.to_be_bytes());
        raw.extend_from_slice(at.id.as_bytes());
        let tag = self.mac(list, &raw[1..]).finalize().into_bytes();
        raw.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The position `cursor` points past, if this key signed it for `list`.
    pub fn verify(&self, list: &str, cursor: &str) -> Result<Position, BadCursor> {
        if cursor.len() != CURSOR_LEN {
            return Err(BadCursor);
        }
        let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| BadCursor)?;
        if raw.len() != RAW_BYTES || raw[0] != VERSION {
            return Err(BadCursor);
        }
        let (body, tag) = raw[1..].split_at(8 + 16);
        self.mac(list, body).verify_truncated_left(tag).map_err(|_| BadCursor)?;
        let key = i64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        let id = Uuid::from_slice(&body[8..]).map_err(|_| BadCursor)?;
        Ok(Position { key, id })
    }
}

/// A page size the API takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

/// Why a `limit` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLimit;

impl std::fmt::Display for BadLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "query `limit`: must be 1 to {MAX_PAGE_LIMIT}")
    }
}

impl Limit {
    /// `limit` as the query gave it (`None`: not given): decimal digits naming 1 to
    /// [`MAX_PAGE_LIMIT`].
    pub fn parse(raw: Option<&str>) -> Result<Self, BadLimit> {
        let Some(raw) = raw else { return Ok(Limit(DEFAULT_PAGE_LIMIT)) };
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadLimit);
        }
        match raw.trim_start_matches('0').parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(Limit(n)),
            _ => Err(BadLimit),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// How the limit is written in a page's canonical address: not at all when it
    /// is the default.
    pub fn canonical(self) -> Option<String> {
        (self.0 != DEFAULT_PAGE_LIMIT).then(|| self.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> CursorKey {
        CursorKey::derive(b"test-origin-to-edge-secret")
    }

    #[test]
    fn a_cursor_verifies_for_its_list_alone_and_has_the_documented_shape() {
        let at = Position { key: 1_800_000_000_123_456, id: Uuid::from_u128(42) };
        let c = key().sign("live", at);
        assert_eq!(c.len(), CURSOR_LEN);
        assert!(c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{c}");
        assert_eq!(key().verify("live", &c), Ok(at));
        assert_eq!(key().verify("upcoming", &c), Err(BadCursor), "another list's");
        assert_eq!(CursorKey::derive(b"another secret").verify("live", &c), Err(BadCursor), "another key's");
        for bad in ["", "x", &c[1..], &format!("{c}A"), &format!("{}=", &c[..59]), &c.replace(|_: char| true, "!")] {
            assert_eq!(key().verify("live", bad), Err(BadCursor), "{bad}");
        }
    }

    #[test]
    fn the_list_name_is_length_prefixed_in_the_tag() {
        // "ab" + position and "a" + "b…" must not collide.
        let at = Position { key: 0, id: Uuid::nil() };
        assert_ne!(key().sign("ab", at), key().sign("a", at));
    }

    #[test]
    fn limits_are_digits_from_1_to_100_and_the_default_is_not_written() {
        assert_eq!(Limit::parse(None).map(Limit::get), Ok(20));
        assert_eq!(Limit::parse(Some("20")).unwrap().canonical(), None);
        assert_eq!(Limit::parse(Some("020")).unwrap().canonical(), None);
        assert_eq!(Limit::parse(Some("7")).unwrap().canonical(), Some("7".into()));
        assert_eq!(Limit::parse(Some("100")).map(Limit::get), Ok(100));
        assert_eq!(Limit::parse(Some("0000000000000000000000000100")).map(Limit::get), Ok(100));
        for bad in ["", "0", "000", "101", "-1", "+5", " 5", "5 ", "1e2", "abc", "99999999999999999999"] {
            assert_eq!(Limit::parse(Some(bad)), Err(BadLimit), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_position_round_trips(k in any::<i64>(), id in any::<u128>(), list in "[a-z0-9-]{0,60}") {
            let at = Position { key: k, id: Uuid::from_u128(id) };
            let c = key().sign(&list, at);
            prop_assert_eq!(c.len(), CURSOR_LEN);
            prop_assert_eq!(key().verify(&list, &c), Ok(at));
        }

        #[test]
        fn any_change_to_a_cursor_is_refused(k in any::<i64>(), id in any::<u128>(), at in 0usize..CURSOR_LEN, to in "[A-Za-z0-9_-]") {
            let c = key().sign("orders", Position { key: k, id: Uuid::from_u128(id) });
            let mut changed = c.clone().into_bytes();
            changed[at] = to.as_bytes()[0];
            let changed = String::from_utf8(changed).unwrap();
            prop_assume!(changed != c);
            prop_assert_eq!(key().verify("orders", &changed), Err(BadCursor));
        }

        #[test]
        fn made_up_cursors_are_refused(s in "[A-Za-z0-9_-]{60}") {
            prop_assert_eq!(key().verify("live", &s), Err(BadCursor));
        }
    }
}

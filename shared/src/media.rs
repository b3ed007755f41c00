//! Media: what a file is (judged by its bytes, never by what the client claims),
//! the name it is stored and served under (the SHA-256 of its bytes and an
//! extension, so a new upload is a new URL and nothing is ever purged), and the
//! signed, expiring links of private files.
//!
//! The edge stores and serves the bytes (R2, the Cache API); the origin keeps the
//! record of who uploaded what, and holds products' `image_url`s to it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest file `POST /v1/media` takes.
pub const MAX_MEDIA_BYTES: usize = 10 * 1024 * 1024;
/// How long the link answered with a private upload lasts.
pub const UPLOAD_LINK_TTL_SECONDS: u32 = 3_600;
/// The longest link `POST /v1/private/{key}/links` mints: a week.
pub const MAX_LINK_TTL_SECONDS: u32 = 604_800;
/// Path prefix of public media.
pub const PUBLIC_PREFIX: &str = "/v1/media/";
/// Path prefix of private media (reachable only with a signed link).
pub const PRIVATE_PREFIX: &str = "/v1/private/";

/// The kinds of file the platform takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaType {
    Png,
    Jpeg,
    Webp,
    Mp4,
    Webm,
}

impl MediaType {
    pub const ALL: [MediaType; 5] = [Self::Png, Self::Jpeg, Self::Webp, Self::Mp4, Self::Webm];

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
            Self::Mp4 => "mp4",
            Self::Webm => "webm",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Mp4 => "video/mp4",
            Self::Webm => "video/webm",
        }
    }

    fn from_extension(ext: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.extension() == ext)
    }
}

/// ISO base media major brands of MP4 video. Other `ftyp` files (HEIC, AVIF,
/// QuickTime, 3GP) are not taken: browsers do not all play or show them.
const MP4_BRANDS: &[&[u8; 4]] = &[
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso8", b"mp41", b"mp42", b"avc1", b"M4V ", b"M4VP",
    b"dash", b"mmp4", b"MSNV",
];

/// How many leading bytes [`sniff`] reads: it judges any longer file by these
/// alone, so an upload can be typed as it streams past.
pub const SNIFF_BYTES: usize = 128;

/// What `bytes` are, from their leading bytes; `None` for anything not taken.
pub fn sniff(bytes: &[u8]) -> Option<MediaType> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 8 {
        return Some(MediaType::Png);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) && bytes.len() > 3 {
        return Some(MediaType::Jpeg);
    }
    if bytes.len() >= 16 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" && &bytes[12..15] == b"VP8" {
        return Some(MediaType::Webp);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" && MP4_BRANDS.iter().any(|b| &bytes[8..12] == *b) {
        return Some(MediaType::Mp4);
    }
    if bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) && ebml_doc_type_is_webm(bytes) {
        return Some(MediaType::Webm);
    }
    None
}

/// Matroska and WebM share the EBML magic; the header's DocType (element 0x4282)
/// tells them apart.
fn ebml_doc_type_is_webm(bytes: &[u8]) -> bool {
    let header = &bytes[..bytes.len().min(SNIFF_BYTES)];
    header.windows(7).any(|w| w[0] == 0x42 && w[1] == 0x82 && w[2] == 0x84 && &w[3..7] == b"webm")
}

/// A stored file's name: the SHA-256 of its bytes, lowercase hex, and the
/// extension of its sniffed type (`<64 hex>.<ext>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaKey {
    digest: [u8; 32],
    kind: MediaType,
}

impl MediaKey {
    /// The key of `bytes`, if they are a file the platform takes.
    pub fn of(bytes: &[u8]) -> Option<Self> {
        let kind = sniff(bytes)?;
        Some(Self { digest: Sha256::digest(bytes).into(), kind })
    }

    /// The key of a file of `kind` whose SHA-256 is `digest`.
    pub fn from_digest(digest: [u8; 32], kind: MediaType) -> Self {
        Self { digest, kind }
    }

    pub fn kind(&self) -> MediaType {
        self.kind
    }

    /// A strong validator: the bytes behind a key never change.
    pub fn etag(&self) -> String {
        format!("\"{}\"", hex::encode(self.digest))
    }

    /// Where the public file is served: `/v1/media/<key>`.
    pub fn public_path(&self) -> String {
        format!("{PUBLIC_PREFIX}{self}")
    }

    /// The key a product's `image_url` names: the path `/v1/media/<key>` and nothing else.
    pub fn from_public_url(url: &str) -> Option<Self> {
        url.strip_prefix(PUBLIC_PREFIX)?.parse().ok()
    }
}

impl fmt::Display for MediaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", hex::encode(self.digest), self.kind.extension())
    }
}

impl FromStr for MediaKey {
    type Err = ();

    /// Strict: lowercase hex only, one of the extensions above; anything else names nothing.
    fn from_str(s: &str) -> Result<Self, ()> {
        let (hash, ext) = s.split_once('.').ok_or(())?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(());
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hash, &mut digest).map_err(|_| ())?;
        Ok(Self { digest, kind: MediaType::from_extension(ext).ok_or(())? })
    }
}

impl Serialize for MediaKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MediaKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| serde::de::Error::custom("not a media key (`<sha-256 hex>.<png|jpg|webp|mp4|webm>`)"))
    }
}

/// Who may fetch a file: anyone at its public URL, or only holders of a signed link.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Visibility {
    #[default]
    Public,
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Why a private link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// Missing, malformed, or not made with our secret for this key and expiry (403).
    InvalidSignature,
    /// Genuine, but past its expiry (410).
    Expired,
}

fn link_mac(secret: &[u8], key: &MediaKey, expires: i64) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"drops-private-media-v1\n");
    mac.update(key.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac
}

/// The path of a link to private `key` valid until `expires` (unix seconds).
pub fn private_link(secret: &[u8], key: &MediaKey, expires: i64) -> String {
    let sig = hex::encode(link_mac(secret, key, expires).finalize().into_bytes());
    format!("{PRIVATE_PREFIX}{key}?exp={expires}&sig={sig}")
}

/// The expiry of a link minted at `now` for `ttl_seconds`, in whole seconds (what
/// the link carries, so the stated expiry is the real one).
pub fn link_expiry(now: DateTime<Utc>, ttl_seconds: u32) -> DateTime<Utc> {
    let expires = now.timestamp() + i64::from(ttl_seconds);
    DateTime::from_timestamp(expires, 0).unwrap_or(now)
}

/// Checks a link's `exp` and `sig` query values at `now` (unix seconds). The
/// signature is checked first, in constant time: a forged link is refused as
/// forged whatever expiry it claims.
pub fn verify_link(
    secret: &[u8],
    key: &MediaKey,
    exp: Option<&str>,
    sig: Option<&str>,
    now: i64,
) -> Result<(), LinkRefusal> {
    let (Some(exp), Some(sig)) = (exp, sig) else { return Err(LinkRefusal::InvalidSignature) };
    let expires: i64 = exp.parse().map_err(|_| LinkRefusal::InvalidSignature)?;
    let sig = hex::decode(sig).map_err(|_| LinkRefusal::InvalidSignature)?;
    if secret.is_empty() || expires.to_string() != exp {
        return Err(LinkRefusal::InvalidSignature);
    }
    link_mac(secret, key, expires).verify_slice(&sig).map_err(|_| LinkRefusal::InvalidSignature)?;
    if now >= expires {
        return Err(LinkRefusal::Expired);
    }
    Ok(())
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No header, a unit other than bytes, several ranges, or a header that does
    /// not parse: the whole file (RFC 9110 lets a server ignore what it does not serve).
    Whole,
    /// The bytes `first..=last`.
    Part { first: u64, last: u64 },
    /// A range starting past the end: 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Reads a single-range `Range: bytes=…` header against a file of `size` bytes.
pub fn range_request(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return RangeRequest::Whole };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeRequest::Whole };
    let number = |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-n`: the last n bytes.
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Part { first: size.saturating_sub(n), last: size - 1 },
            None => RangeRequest::Whole,
        },
        (false, _) => {
            let Some(first) = number(first) else { return RangeRequest::Whole };
            let last = if last.is_empty() { Some(u64::MAX) } else { number(last) };
            match last {
                Some(last) if last < first => RangeRequest::Whole,
                Some(_) if first >= size => RangeRequest::Unsatisfiable,
                Some(last) => RangeRequest::Part { first, last: last.min(size - 1) },
                None => RangeRequest::Whole,
            }
        }
        (true, true) => RangeRequest::Whole,
    }
}

/// Whether an `If-None-Match` header names `etag` (or is `*`), weak or strong.
pub fn none_match(header: Option<&str>, etag: &str) -> bool {
    header.is_some_and(|h| h.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const WEBM: &[u8] = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm\x42\x87";

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(sniff(PNG), Some(MediaType::Png));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), Some(MediaType::Jpeg));
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEBPVP8 \x18\0\0\0"), Some(MediaType::Webp));
        assert_eq!(sniff(b"\0\0\0\x20ftypisom\0\0\x02\0"), Some(MediaType::Mp4));
        assert_eq!(sniff(WEBM), Some(MediaType::Webm));
        // Look-alikes and other formats.
        assert_eq!(sniff(b"\0\0\0\x18ftypheic\0\0\0\0"), None, "HEIC is not taken");
        assert_eq!(sniff(b"\0\0\0\x18ftypavif\0\0\0\0"), None, "AVIF is not taken");
        assert_eq!(sniff(b"RIFF\x24\0\0\0WAVEfmt "), None, "a WAV file");
        assert_eq!(sniff(&WEBM.iter().map(|&b| if b == b'w' { b'x' } else { b }).collect::<Vec<_>>()), None);
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), None);
        assert_eq!(sniff(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), None);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n"), None, "a signature and nothing else");
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn the_leading_bytes_alone_decide() {
        let mut files = vec![PNG.to_vec(), b"\xff\xd8\xff\xe0\0\x10JFIF".to_vec(), WEBM.to_vec(), b"GIF89a".to_vec()];
        // A WebM whose DocType sits at the very end of what is read.
        let mut late = b"\x1a\x45\xdf\xa3".to_vec();
        late.resize(SNIFF_BYTES - 7, 0xEC);
        late.extend(b"\x42\x82\x84webm");
        files.push(late);
        for file in files {
            let judged = sniff(&file);
            let mut longer = file.clone();
            longer.extend(std::iter::repeat_n(0x42, 4 * SNIFF_BYTES));
            assert_eq!(sniff(&longer), judged, "{file:?}");
            assert_eq!(sniff(&longer[..SNIFF_BYTES]), judged, "{file:?}: its first {SNIFF_BYTES} bytes");
        }
    }

    #[test]
    fn keys_are_the_hash_and_parse_strictly() {
        let key = MediaKey::of(PNG).unwrap();
        let text = key.to_string();
        assert_eq!(text, format!("{}.png", hex::encode(Sha256::digest(PNG))));
        assert_eq!(text.parse::<MediaKey>(), Ok(key));
        assert_eq!(MediaKey::from_public_url(&key.public_path()), Some(key));
        assert_eq!(key.etag(), format!("\"{}\"", &text[..64]));
        for bad in [
            text.to_uppercase(),
            text.replace(".png", ".gif"),
            text.replace(".png", ""),
            text[1..].to_owned(),
            format!("{text}/x"),
            format!("../{text}"),
        ] {
            assert!(bad.parse::<MediaKey>().is_err(), "{bad}");
        }
        assert_eq!(MediaKey::from_public_url(&format!("https://elsewhere{}", key.public_path())), None);
        assert_eq!(MediaKey::from_public_url(&format!("/v1/private/{key}")), None);
    }

    #[test]
    fn links_are_signed_over_key_and_expiry() {
        let key = MediaKey::of(PNG).unwrap();
        let other = MediaKey::of(b"\xff\xd8\xff\xe0\0\x10JFIF").unwrap();
        let now = 1_800_000_000;
        let link = private_link(b"s", &key, now + 60);
        let query = link.split_once('?').unwrap().1;
        let value = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)).map(|v| v.to_owned());
        let (exp, sig) = (value("exp=").unwrap(), value("sig=").unwrap());
        assert!(link.starts_with(&format!("/v1/private/{key}?")));
        assert_eq!(verify_link(b"s", &key, Some(&exp), Some(&sig), now), Ok(()));
        assert_eq!(verify_link(b"s", &key, Some(&exp), Some(&sig), now + 60), Err(LinkRefusal::Expired));
        let later = (now + 3_600).to_string();
        assert_eq!(verify_link(b"s", &key, Some(&later), Some(&sig), now), Err(LinkRefusal::InvalidSignature));
        assert_eq!(verify_link(b"s", &other, Some(&exp), Some(&sig), now), Err(LinkRefusal::InvalidSignature));
        assert_eq!(verify_link(b"t", &key, Some(&exp), Some(&sig), now), Err(LinkRefusal::InvalidSignature));
        assert_eq!(
            verify_link(b"s", &key, Some(&format!("+{exp}")), Some(&sig), now),
            Err(LinkRefusal::InvalidSignature)
        );
        assert_eq!(verify_link(b"s", &key, None, Some(&sig), now), Err(LinkRefusal::InvalidSignature));
        assert_eq!(verify_link(b"s", &key, Some(&exp), Some("zz"), now), Err(LinkRefusal::InvalidSignature));
        // A forged link that has also expired is still refused as forged.
        assert_eq!(
            verify_link(b"s", &key, Some(&exp), Some(&"0".repeat(64)), now + 999),
            Err(LinkRefusal::InvalidSignature)
        );
    }

    #[test]
    fn ranges_of_a_ten_byte_file() {
        use RangeRequest::*;
        let r = |h: &str| range_request(Some(h), 10);
        assert_eq!(range_request(None, 10), Whole);
        assert_eq!(r("bytes=0-3"), Part { first: 0, last: 3 });
        assert_eq!(r("bytes=4-"), Part { first: 4, last: 9 });
        assert_eq!(r("bytes=2-99"), Part { first: 2, last: 9 });
        assert_eq!(r("bytes=-3"), Part { first: 7, last: 9 });
        assert_eq!(r("bytes=-30"), Part { first: 0, last: 9 });
        assert_eq!(r("bytes=10-"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=5-2"), Whole);
        assert_eq!(r("bytes=0-1,4-5"), Whole);
        assert_eq!(r("items=0-1"), Whole);
        assert_eq!(r("bytes=+1-2"), Whole);
        assert_eq!(r("bytes=-"), Whole);
        assert_eq!(range_request(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn if_none_match_names_the_etag() {
        assert!(none_match(Some("\"a\""), "\"a\""));
        assert!(none_match(Some("\"b\", W/\"a\""), "\"a\""));
        assert!(none_match(Some("*"), "\"a\""));
        assert!(!none_match(Some("\"b\""), "\"a\""));
        assert!(!none_match(None, "\"a\""));
    }
}

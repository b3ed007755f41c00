//! Media: uploads into R2 and the files served from it (`drops_shared::media` names
//! and judges them).
//!
//! - `POST /v1/media` ([`upload`]): a creator or an admin sends the raw bytes; they
//!   stream into R2 as they arrive (never held whole), typed by their leading bytes
//!   and named by their SHA-256; the file is published under its name only once
//!   the origin has recorded who uploaded what. The same bytes twice are one object.
//! - `GET /v1/media/{key}`: public files through the Cache API, immutable, with
//!   `ETag`/304 and single `Range`s (206) so video can seek. A range is read from
//!   R2 as a range (never the whole file, which may be 10 MiB, to cut it).
//! - Private files (`?visibility=private`) are only served on a link signed with
//!   `MEDIA_LINK_SECRET` over the key and an expiry (`/v1/private/{key}?exp=&sig=`),
//!   minted by whoever uploaded them or by an admin.
//!
//! R2 layout: `public/<key>` and `private/<key>` hold the bytes (custom metadata:
//! the first uploader and when); `private-uploaders/<key>/<user id>` is an empty
//! marker per uploader of a private file, so any of them may mint links;
//! `uploads/<id>` holds an upload while it arrives and until it is published or
//! refused (never served).

mod upload;

pub use upload::upload;

use drops_shared::api::{CreateLink, PrivateLink};
use drops_shared::auth::{verify_bearer, Role};
use drops_shared::media::{self, LinkRefusal, MediaKey, RangeRequest, Visibility};
use drops_shared::problem::{ErrorCode, Problem};
use worker::{Bucket, Cache, Context, Env, Headers, Range, Request, Response, ResponseBody};

use crate::config::EdgeConfig;
use crate::http::{self, header, now_ms, now_utc, EdgeResult};

/// The R2 bucket binding. The bucket itself is never public: only this Worker reads it.
pub const MEDIA_BINDING: &str = "MEDIA";

const PUBLIC_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

fn object_name(visibility: Visibility, key: &MediaKey) -> String {
    format!("{}/{key}", visibility.as_str())
}

fn uploader_marker(key: &MediaKey, user: uuid::Uuid) -> String {
    format!("private-uploaders/{key}/{user}")
}

fn bucket(env: &Env) -> worker::Result<Bucket> {
    env.bucket(MEDIA_BINDING)
}

/// `GET /v1/media/{key}`: from the Cache API, filled from R2 on a miss. A range is
/// read from R2 alone (the cache gives the size when it has the file).
pub async fn public(req: &Request, env: &Env, ctx: &Context, key: &str) -> EdgeResult {
    let key: MediaKey = key.parse().map_err(|_| ErrorCode::NotFound)?;
    let cfg = EdgeConfig::get(env)?;
    let cache_key = crate::pages::cache_url(&cfg, &req.url()?, &key.public_path());
    let file = Stored::new(env, Visibility::Public, &key, PUBLIC_CACHE_CONTROL)?;
    let ask = Ask::of(req, &key);
    if let Some(cached) = Cache::default().get(cache_key.as_str(), true).await.ok().flatten() {
        let size = cached.headers().get("content-length")?.and_then(|v| v.parse().ok());
        let body = cached.into_parts().1;
        if let Some(size) = size {
            let mut resp = file.answer(req, ask, size, Some(body)).await?;
            resp.headers_mut().set("x-cache", "HIT")?;
            return Ok(resp);
        }
        discard(Some(body));
    }
    let mut resp = if ask == Ask::Whole {
        // The whole file: read once, streamed both to the client and into the cache.
        let (size, body) = file.whole().await?;
        let headers = file_headers(&key, Some(size), PUBLIC_CACHE_CONTROL)?;
        let mut fresh = Response::builder().with_headers(headers).body(body);
        let copy = fresh.cloned()?;
        ctx.wait_until(async move {
            if let Err(e) = Cache::default().put(cache_key.as_str(), copy).await {
                worker::console_warn!("caching {cache_key} failed: {e}");
            }
        });
        file.answer(req, ask, size, Some(fresh.into_parts().1)).await?
    } else {
        let size = file.size().await?;
        file.answer(req, ask, size, None).await?
    };
    resp.headers_mut().set("x-cache", "MISS")?;
    Ok(resp)
}

/// `GET /v1/private/{key}?exp=&sig=`: straight from R2, for holders of a good link.
pub async fn private(req: &Request, env: &Env, key: &str) -> EdgeResult {
    let key: MediaKey = key.parse().map_err(|_| ErrorCode::NotFound)?;
    let cfg = EdgeConfig::get(env)?;
    let url = req.url()?;
    let query = |name: &str| url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned());
    let (exp, sig) = (query("exp"), query("sig"));
    media::verify_link(cfg.media_link_secret.as_bytes(), &key, exp.as_deref(), sig.as_deref(), now_ms() / 1000)
        .map_err(|refusal| match refusal {
            LinkRefusal::InvalidSignature => {
                Problem::new(ErrorCode::InvalidSignature, Some("this link was not signed for this file".to_owned()))
                    .with_status(403)
            }
            LinkRefusal::Expired => Problem::new(ErrorCode::LinkExpired, Some("this link has expired".to_owned())),
        })?;
    let file = Stored::new(env, Visibility::Private, &key, "private")?;
    let ask = Ask::of(req, &key);
    if ask == Ask::Whole {
        let (size, body) = file.whole().await?;
        return file.answer(req, ask, size, Some(body)).await;
    }
    let size = file.size().await?;
    file.answer(req, ask, size, None).await
}

/// `POST /v1/private/{key}/links` `{"ttl_seconds"}`: for the file's uploaders and
/// admins; anyone else learns nothing (404, as for a key that does not exist).
pub async fn mint_link(mut req: Request, env: &Env, key: &str) -> EdgeResult {
    let cfg = EdgeConfig::get(env)?;
    let caller = verify_bearer(header(&req, "authorization").as_deref(), cfg.jwt_secret.as_bytes(), now_utc())?;
    let key: MediaKey = key.parse().map_err(|_| ErrorCode::NotFound)?;
    let body: CreateLink = drops_shared::json::from_slice(&http::read_body(&mut req).await?)?;
    body.validate()?;
    let bucket = bucket(env)?;
    let exists = bucket.head(object_name(Visibility::Private, &key)).await?.is_some();
    let allowed =
        exists && (caller.role == Role::Admin || bucket.head(uploader_marker(&key, caller.user_id)).await?.is_some());
    if !allowed {
        return Err(Problem::new(ErrorCode::NotFound, Some("no private file of yours has this key".to_owned())).into());
    }
    let expires_at = media::link_expiry(now_utc(), body.ttl_seconds);
    let url = media::private_link(cfg.media_link_secret.as_bytes(), &key, expires_at.timestamp());
    http::json(201, &PrivateLink { url, expires_at })
}

/// The headers every answer about a file carries.
fn file_headers(key: &MediaKey, size: Option<u64>, cache_control: &str) -> worker::Result<Headers> {
    let headers = Headers::new();
    headers.set("content-type", key.kind().content_type())?;
    headers.set("cache-control", cache_control)?;
    headers.set("etag", &key.etag())?;
    headers.set("accept-ranges", "bytes")?;
    // The type is ours, from the bytes: browsers must not guess another.
    headers.set("x-content-type-options", "nosniff")?;
    if let Some(size) = size {
        headers.set("content-length", &size.to_string())?;
    }
    Ok(headers)
}

/// What a request asks of a file, from its headers alone (before its size is known).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ask {
    /// The client has it (`If-None-Match`): 304.
    NotModified,
    Whole,
    /// A `Range` header, judged against the file's size.
    Range(String),
}

impl Ask {
    fn of(req: &Request, key: &MediaKey) -> Ask {
        let etag = key.etag();
        if media::none_match(header(req, "if-none-match").as_deref(), &etag) {
            return Ask::NotModified;
        }
        // `If-Range` naming another version asks for the whole file; ours never changes.
        let if_range_matches = header(req, "if-range").is_none_or(|v| v.trim() == etag);
        match header(req, "range").filter(|_| if_range_matches) {
            Some(range) => Ask::Range(range),
            None => Ask::Whole,
        }
    }
}

/// A file in R2 and how answers about it are headed.
struct Stored<'k> {
    bucket: Bucket,
    name: String,
    key: &'k MediaKey,
    cache_control: &'static str,
}

impl<'k> Stored<'k> {
    fn new(env: &Env, visibility: Visibility, key: &'k MediaKey, cache_control: &'static str) -> worker::Result<Self> {
        Ok(Self { bucket: bucket(env)?, name: object_name(visibility, key), key, cache_control })
    }

    /// The file's size, from its metadata (404 when there is no such file).
    async fn size(&self) -> EdgeResult<u64> {
        Ok(self.bucket.head(&self.name).await?.ok_or(ErrorCode::NotFound)?.size())
    }

    /// The file's size and its bytes, as a stream from R2 (404 when there is no such file).
    async fn whole(&self) -> EdgeResult<(u64, ResponseBody)> {
        let object = self.bucket.get(&self.name).execute().await?.ok_or(ErrorCode::NotFound)?;
        Ok((object.size(), object.body().ok_or(ErrorCode::NotFound)?.response_body()?))
    }

    /// Answers `ask` about the file, of `size` bytes: 304 when the client has it,
    /// 206 for a satisfiable single range (only its bytes are read, from R2), 416
    /// for one past the end, else 200 with `whole` (the whole body when the caller
    /// has it; read from R2 otherwise). A body not used is cancelled, unread.
    async fn answer(&self, req: &Request, ask: Ask, size: u64, whole: Option<ResponseBody>) -> EdgeResult {
        let head = req.method() == worker::Method::Head;
        let range = match ask {
            Ask::NotModified => {
                discard(whole);
                let headers = file_headers(self.key, None, self.cache_control)?;
                headers.delete("content-type")?;
                return Ok(Response::builder().with_status(304).with_headers(headers).empty());
            }
            Ask::Whole => RangeRequest::Whole,
            Ask::Range(range) => media::range_request(Some(&range), size),
        };
        match range {
            RangeRequest::Whole => {
                let resp = Response::builder().with_headers(file_headers(self.key, Some(size), self.cache_control)?);
                if head {
                    discard(whole);
                    return Ok(resp.empty());
                }
                let body = match whole {
                    Some(body) => body,
                    None => self.whole().await?.1,
                };
                Ok(resp.body(body))
            }
            RangeRequest::Part { first, last } => {
                discard(whole);
                let headers = file_headers(self.key, Some(last - first + 1), self.cache_control)?;
                headers.set("content-range", &format!("bytes {first}-{last}/{size}"))?;
                let resp = Response::builder().with_status(206).with_headers(headers);
                if head {
                    return Ok(resp.empty());
                }
                let range = Range::OffsetWithLength { offset: first, length: last - first + 1 };
                let part = self.bucket.get(&self.name).range(range).execute().await?.ok_or(ErrorCode::NotFound)?;
                Ok(resp.body(part.body().ok_or(ErrorCode::NotFound)?.response_body()?))
            }
            RangeRequest::Unsatisfiable => {
                discard(whole);
                let mut resp = http::problem_response(
                    &Problem::new(ErrorCode::InvalidRequest, Some(format!("the file has {size} bytes")))
                        .with_status(416),
                )?;
                resp.headers_mut().set("content-range", &format!("bytes */{size}"))?;
                Ok(resp)
            }
        }
    }
}

/// Lets go of a body without reading it (a stream is cancelled).
fn discard(body: Option<ResponseBody>) {
    if let Some(ResponseBody::Stream(stream)) = body {
        let _ = stream.cancel();
    }
}

//! Media: uploads into R2 and the files served from it (`drops_shared::media` names
//! and judges them).
//!
//! - `POST /v1/media`: a creator or an admin sends the raw bytes; their type is
//!   sniffed, their SHA-256 names them, they go into R2 once, and the origin records
//!   who uploaded what before the answer. The same bytes twice are one object.
//! - `GET /v1/media/{key}`: public files through the Cache API, immutable, with
//!   `ETag`/304 and single `Range`s (206) so video can seek. A range is read from
//!   R2 as a range (never the whole file, which may be 10 MiB, to cut it).
//! - Private files (`?visibility=private`) are only served on a link signed with
//!   `MEDIA_LINK_SECRET` over the key and an expiry (`/v1/private/{key}?exp=&sig=`),
//!   minted by whoever uploaded them or by an admin.
//!
//! R2 layout: `public/<key>` and `private/<key>` hold the bytes (custom metadata:
//! the first uploader and when); `private-uploaders/<key>/<user id>` is an empty
//! marker per uploader of a private file, so any of them may mint links.

use drops_shared::api::{CreateLink, PrivateLink, UploadedMedia};
use drops_shared::auth::{verify_bearer, Identity, Role};
use drops_shared::internal::{Body, MediaUpload, RecordMedia};
use drops_shared::media::{self, LinkRefusal, MediaKey, RangeRequest, Visibility, MAX_MEDIA_BYTES};
use drops_shared::problem::{ErrorCode, Problem};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use worker::{Bucket, Cache, Context, Env, Headers, HttpMetadata, Range, Request, Response, ResponseBody};

use crate::config::EdgeConfig;
use crate::http::{self, header, now_ms, now_utc, EdgeResult};
use crate::origin;

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

/// `POST /v1/media[?visibility=public|private]`
pub async fn upload(mut req: Request, env: &Env) -> EdgeResult {
    let cfg = EdgeConfig::get(env)?;
    let uploader = verify_bearer(header(&req, "authorization").as_deref(), cfg.jwt_secret.as_bytes(), now_utc())?;
    uploader.require(&[Role::Creator, Role::Admin])?;
    let visibility = visibility(&req.url()?)?;
    let (bytes, digest) = read_media(&mut req).await?;
    let kind = media::sniff(&bytes).ok_or_else(|| {
        Problem::new(
            ErrorCode::UnsupportedMediaType,
            Some("the bytes are not a PNG, JPEG, WebP, MP4 or WebM file".to_owned()),
        )
    })?;
    let key = MediaKey::from_digest(digest, kind);
    let size = bytes.len() as u64;
    let uploaded_at = now_utc();
    store(&bucket(env)?, visibility, &key, bytes, digest, &uploader, uploaded_at).await?;
    record(
        &cfg,
        MediaUpload {
            key,
            visibility,
            content_type: kind.content_type().to_owned(),
            size,
            uploaded_by: uploader.user_id,
            uploaded_by_role: uploader.role,
            uploaded_at,
        },
    )
    .await?;

    let (url, expires_at) = match visibility {
        Visibility::Public => (key.public_path(), None),
        Visibility::Private => {
            let expires_at = media::link_expiry(uploaded_at, media::UPLOAD_LINK_TTL_SECONDS);
            (media::private_link(cfg.media_link_secret.as_bytes(), &key, expires_at.timestamp()), Some(expires_at))
        }
    };
    let answer = UploadedMedia {
        key: key.to_string(),
        url: url.clone(),
        visibility,
        content_type: kind.content_type().to_owned(),
        size,
        expires_at,
    };
    let mut resp = http::json(201, &answer)?;
    if visibility == Visibility::Public {
        resp.headers_mut().set("location", &url)?;
    }
    Ok(resp)
}

fn visibility(url: &worker::Url) -> EdgeResult<Visibility> {
    let mut found = None;
    for (name, value) in url.query_pairs() {
        match (name.as_ref(), found) {
            ("visibility", None) => {
                found = Some(value.parse::<Visibility>().map_err(|_| {
                    Problem::new(ErrorCode::InvalidRequest, Some("`visibility` is `public` or `private`".to_owned()))
                })?)
            }
            _ => {
                return Err(Problem::new(
                    ErrorCode::InvalidRequest,
                    Some(format!("unexpected query parameter `{name}` (only `visibility`, once)")),
                )
                .into())
            }
        }
    }
    Ok(found.unwrap_or_default())
}

/// Reads an upload, hashing as it arrives. A declared length over the limit is
/// refused before any of the body is read; an undeclared one as soon as it passes it.
async fn read_media(req: &mut Request) -> EdgeResult<(Vec<u8>, [u8; 32])> {
    let too_large = || {
        Problem::new(ErrorCode::PayloadTooLarge, Some(format!("media files are limited to {MAX_MEDIA_BYTES} bytes")))
    };
    let declared = header(req, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_MEDIA_BYTES) {
        return Err(too_large().into());
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
    let mut hasher = Sha256::new();
    // A request without a body has no stream: it is an empty file.
    if let Ok(mut stream) = req.stream() {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > MAX_MEDIA_BYTES {
                return Err(too_large().into());
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
    }
    Ok((bytes, hasher.finalize().into()))
}

/// Puts the bytes in R2 unless they are there already (the key is their hash, so
/// what is there is the same), and marks a private file's uploader.
async fn store(
    bucket: &Bucket,
    visibility: Visibility,
    key: &MediaKey,
    bytes: Vec<u8>,
    digest: [u8; 32],
    uploader: &Identity,
    uploaded_at: chrono::DateTime<chrono::Utc>,
) -> worker::Result<()> {
    let name = object_name(visibility, key);
    if bucket.head(&name).await?.is_none() {
        let metadata = HttpMetadata { content_type: Some(key.kind().content_type().to_owned()), ..Default::default() };
        let custom = [
            ("uploaded_by".to_owned(), uploader.user_id.to_string()),
            ("uploaded_at".to_owned(), uploaded_at.to_rfc3339()),
        ];
        // R2 checks the bytes against the digest: a body damaged in transit is refused.
        bucket
            .put(&name, bytes)
            .http_metadata(metadata)
            .custom_metadata(std::collections::HashMap::from(custom))
            .sha256(digest.to_vec())
            .execute()
            .await?;
    }
    if visibility == Visibility::Private {
        bucket.put(uploader_marker(key, uploader.user_id), Vec::<u8>::new()).execute().await?;
    }
    Ok(())
}

/// The origin's record of the upload, before the client hears it worked: an
/// upload it cannot record is answered 503 (the stored bytes wait for the retry).
async fn record(cfg: &EdgeConfig, upload: MediaUpload) -> EdgeResult<()> {
    let unrecorded = |why: String| {
        worker::console_warn!("media {} not recorded: {why}", upload.key);
        Problem::new(ErrorCode::Overloaded, Some("the upload could not be recorded; retry shortly".to_owned()))
    };
    match origin::signed(cfg, &RecordMedia {}, &upload.to_bytes()).await {
        Ok(resp) if (200..300).contains(&resp.status_code()) => Ok(()),
        Ok(resp) => Err(unrecorded(format!("origin answered {}", resp.status_code())).into()),
        Err(e) => Err(unrecorded(e.to_string()).into()),
    }
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

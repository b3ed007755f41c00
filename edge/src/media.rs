//! Media: uploads into R2 and the files served from it (`drops_shared::media` names
//! and judges them).
//!
//! - `POST /v1/media`: a creator or an admin sends the raw bytes; their type is
//!   sniffed, their SHA-256 names them, they go into R2 once, and the origin records
//!   who uploaded what before the answer. The same bytes twice are one object.
//! - `GET /v1/media/{key}`: public files through the Cache API, immutable, with
//!   `ETag`/304 and single `Range`s (206) so video can seek.
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
use worker::{Bucket, Cache, Context, Env, Headers, HttpMetadata, Request, Response, ResponseBody};

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

/// `GET /v1/media/{key}`: from the Cache API, filled from R2 on a miss.
pub async fn public(req: &Request, env: &Env, ctx: &Context, key: &str) -> EdgeResult {
    let key: MediaKey = key.parse().map_err(|_| ErrorCode::NotFound)?;
    let cfg = EdgeConfig::get(env)?;
    let cache_key = crate::pages::cache_url(&cfg, &req.url()?, &key.public_path());
    let cache = Cache::default();
    let (body, size, x_cache) = match cache.get(cache_key.as_str(), true).await.ok().flatten() {
        Some(cached) => {
            let size = cached.headers().get("content-length")?.and_then(|v| v.parse().ok());
            (cached.into_parts().1, size, "HIT")
        }
        None => {
            let object = bucket(env)?.get(object_name(Visibility::Public, &key)).execute().await?;
            let object = object.ok_or(ErrorCode::NotFound)?;
            let size = object.size();
            let body = object.body().ok_or(ErrorCode::NotFound)?.response_body()?;
            let headers = file_headers(&key, Some(size), PUBLIC_CACHE_CONTROL)?;
            let mut fresh = Response::builder().with_headers(headers).body(body);
            let copy = fresh.cloned()?;
            ctx.wait_until(async move {
                if let Err(e) = Cache::default().put(cache_key.as_str(), copy).await {
                    worker::console_warn!("caching {cache_key} failed: {e}");
                }
            });
            (fresh.into_parts().1, Some(size), "MISS")
        }
    };
    let mut resp = serve(req, &key, body, size, PUBLIC_CACHE_CONTROL).await?;
    resp.headers_mut().set("x-cache", x_cache)?;
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
    let object = bucket(env)?.get(object_name(Visibility::Private, &key)).execute().await?;
    let object = object.ok_or(ErrorCode::NotFound)?;
    let size = object.size();
    let body = object.body().ok_or(ErrorCode::NotFound)?.response_body()?;
    serve(req, &key, body, Some(size), "private").await
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

/// Answers a request for a file whose whole body is `body`: 304 when the client
/// has it, 206 for a satisfiable single range, 416 for one past the end, else 200.
async fn serve(
    req: &Request,
    key: &MediaKey,
    body: ResponseBody,
    size: Option<u64>,
    cache_control: &str,
) -> EdgeResult {
    let etag = key.etag();
    if media::none_match(header(req, "if-none-match").as_deref(), &etag) {
        let headers = file_headers(key, None, cache_control)?;
        headers.delete("content-type")?;
        return Ok(Response::builder().with_status(304).with_headers(headers).empty());
    }
    // `If-Range` naming another version asks for the whole file; ours never changes.
    let if_range_matches = header(req, "if-range").is_none_or(|v| v.trim() == etag);
    let range = header(req, "range").filter(|_| if_range_matches);
    let head = req.method() == worker::Method::Head;
    let Some(range) = range else {
        let resp = Response::builder().with_headers(file_headers(key, size, cache_control)?);
        return Ok(if head { resp.empty() } else { resp.body(body) });
    };
    // A range needs the size: read the body (at most MAX_MEDIA_BYTES) and cut it.
    let mut whole = Response::builder().body(body);
    let bytes = whole.bytes().await?;
    let total = bytes.len() as u64;
    match media::range_request(Some(&range), total) {
        RangeRequest::Whole => {
            let resp = Response::builder().with_headers(file_headers(key, Some(total), cache_control)?);
            Ok(if head { resp.empty() } else { resp.fixed(bytes) })
        }
        RangeRequest::Part { first, last } => {
            let headers = file_headers(key, Some(last - first + 1), cache_control)?;
            headers.set("content-range", &format!("bytes {first}-{last}/{total}"))?;
            let resp = Response::builder().with_status(206).with_headers(headers);
            Ok(if head { resp.empty() } else { resp.fixed(bytes[first as usize..=last as usize].to_vec()) })
        }
        RangeRequest::Unsatisfiable => {
            let mut resp = http::problem_response(
                &Problem::new(ErrorCode::InvalidRequest, Some(format!("the file has {total} bytes"))).with_status(416),
            )?;
            resp.headers_mut().set("content-range", &format!("bytes */{total}"))?;
            Ok(resp)
        }
    }
}

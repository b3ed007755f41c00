//! `POST /v1/media[?visibility=public|private]`: an upload streams through the
//! Worker into R2, never held whole (ten 10 MiB uploads at once would take most of
//! an isolate's 128 MB).
//!
//! 1. The body streams into a staging object, `uploads/<id>`, hashed and typed by
//!    its leading bytes as it passes: with its length declared, as one streamed
//!    put; without (chunked), as a multipart upload of [`PART_BYTES`] parts (R2's
//!    smallest), or one put when it all fits in the first part.
//! 2. The origin records the file (`RecordMedia`). Refused or unreachable, the
//!    upload is a 503, its staging object is deleted and nothing is published.
//! 3. Recorded, it is published: copied from staging to `public/<key>` or
//!    `private/<key>` (R2 checks the copy against the hash the Worker computed),
//!    unless the same bytes are there already; then staging is cleared.
//!
//! A staging object left behind by a Worker that died midway is never served;
//! in production an R2 lifecycle rule on `uploads/` removes it after a day.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use drops_shared::api::UploadedMedia;
use drops_shared::auth::{verify_bearer, Identity, Role};
use drops_shared::internal::{Body, MediaUpload, RecordMedia};
use drops_shared::media::{self, MediaKey, MediaType, Visibility, MAX_MEDIA_BYTES, SNIFF_BYTES};
use drops_shared::problem::{ErrorCode, Problem};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use worker::{Bucket, ByteStream, Context, Data, Env, FixedLengthStream, HttpMetadata, Request, UploadedPart};

use super::{bucket, object_name, uploader_marker};
use crate::config::EdgeConfig;
use crate::http::{self, header, new_id, now_utc, EdgeResult};
use crate::origin;

/// The size of each part of a multipart upload but the last: R2's minimum. A
/// chunked upload holds at most one part in memory.
const PART_BYTES: usize = 5 * 1024 * 1024;

pub async fn upload(mut req: Request, env: &Env, ctx: &Context) -> EdgeResult {
    let cfg = EdgeConfig::get(env)?;
    let uploader = verify_bearer(header(&req, "authorization").as_deref(), cfg.jwt_secret.as_bytes(), now_utc())?;
    uploader.require(&[Role::Creator, Role::Admin])?;
    let visibility = visibility(&req.url()?)?;
    let declared = header(&req, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_MEDIA_BYTES as u64) {
        return Err(too_large().into());
    }
    // A request without a body has no stream: an empty file, which is no type we take.
    let body = req.stream().map_err(|_| unsupported())?;
    let bucket = bucket(env)?;
    let staging = format!("uploads/{}", new_id());
    let staged = match declared {
        Some(length) => stage_declared(&bucket, &staging, body, length).await,
        None => stage_chunked(&bucket, &staging, body).await,
    };
    // A refusal or failure while the body streamed left nothing in staging.
    let file = staged?;
    let uploaded_at = now_utc();
    let key = MediaKey::from_digest(file.digest, file.kind);
    let recorded = record(
        &cfg,
        MediaUpload {
            key,
            visibility,
            content_type: file.kind.content_type().to_owned(),
            size: file.size,
            uploaded_by: uploader.user_id,
            uploaded_by_role: uploader.role,
            uploaded_at,
        },
    )
    .await;
    let published = match recorded {
        Ok(()) => publish(&bucket, &staging, visibility, &key, &file, &uploader, uploaded_at).await.map_err(Into::into),
        Err(refused) => Err(refused),
    };
    let clear = bucket.clone();
    ctx.wait_until(async move {
        if let Err(e) = clear.delete(&staging).await {
            worker::console_warn!("staged upload {staging} not deleted: {e}");
        }
    });
    published?;

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
        content_type: file.kind.content_type().to_owned(),
        size: file.size,
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

fn too_large() -> Problem {
    Problem::new(ErrorCode::PayloadTooLarge, Some(format!("media files are limited to {MAX_MEDIA_BYTES} bytes")))
}

fn unsupported() -> Problem {
    Problem::new(
        ErrorCode::UnsupportedMediaType,
        Some("the bytes are not a PNG, JPEG, WebP, MP4 or WebM file".to_owned()),
    )
}

/// An upload as it arrived: its type, hash and size.
struct Staged {
    kind: MediaType,
    digest: [u8; 32],
    size: u64,
}

/// What the Worker learns of an upload as its bytes pass: their hash, their count
/// and their leading bytes. It refuses the rest as soon as the file is too large or
/// its leading bytes are no type we take.
struct Intake {
    hasher: Sha256,
    size: u64,
    head: Vec<u8>,
    refused: Option<Problem>,
}

impl Intake {
    fn new() -> Self {
        Self { hasher: Sha256::new(), size: 0, head: Vec::with_capacity(SNIFF_BYTES), refused: None }
    }

    fn take(&mut self, chunk: &[u8]) -> Result<(), Problem> {
        if self.size + chunk.len() as u64 > MAX_MEDIA_BYTES as u64 {
            return Err(self.refuse(too_large()));
        }
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        if self.head.len() < SNIFF_BYTES {
            let room = SNIFF_BYTES - self.head.len();
            self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if self.head.len() == SNIFF_BYTES && media::sniff(&self.head).is_none() {
                return Err(self.refuse(unsupported()));
            }
        }
        Ok(())
    }

    fn refuse(&mut self, problem: Problem) -> Problem {
        self.refused = Some(problem.clone());
        problem
    }

    /// The file, once every byte has passed.
    fn finish(&mut self) -> Result<Staged, Problem> {
        let kind = media::sniff(&self.head).ok_or_else(unsupported)?;
        let digest = std::mem::take(&mut self.hasher).finalize().into();
        Ok(Staged { kind, digest, size: self.size })
    }
}

/// A body of declared `length`, streamed into `staging` by one put.
async fn stage_declared(bucket: &Bucket, staging: &str, body: ByteStream, length: u64) -> EdgeResult<Staged> {
    let intake = Rc::new(RefCell::new(Intake::new()));
    let tap = intake.clone();
    let passing = body.map(move |chunk| {
        let chunk = chunk?;
        tap.borrow_mut().take(&chunk).map_err(|p| worker::Error::RustError(p.to_json()))?;
        Ok(chunk)
    });
    let put = bucket.put(staging, FixedLengthStream::wrap(passing, length)).execute().await;
    let mut intake = intake.borrow_mut();
    // The put failed because the intake cut the stream: the client hears why.
    if let Some(refused) = intake.refused.clone() {
        return Err(refused.into());
    }
    put?;
    Ok(intake.finish()?)
}

/// A body of unknown length (chunked), into `staging` in parts of [`PART_BYTES`];
/// one that fits in a part is one put.
async fn stage_chunked(bucket: &Bucket, staging: &str, mut body: ByteStream) -> EdgeResult<Staged> {
    let mut intake = Intake::new();
    let mut part = Vec::new();
    let mut multipart: Option<(worker::MultipartUpload, Vec<UploadedPart>)> = None;
    let streamed = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            intake.take(&chunk)?;
            let mut rest = chunk.as_slice();
            while !rest.is_empty() {
                let (now, later) = rest.split_at(rest.len().min(PART_BYTES - part.len()));
                // Grown by doubling, but never past a part: a plain `extend` would
                // double 4 MiB to 8 MiB to hold a 5 MiB part.
                if part.len() + now.len() > part.capacity() {
                    let want = (2 * part.capacity()).max(part.len() + now.len()).min(PART_BYTES);
                    part.reserve_exact(want - part.len());
                }
                part.extend_from_slice(now);
                rest = later;
                if part.len() == PART_BYTES {
                    if multipart.is_none() {
                        multipart = Some((bucket.create_multipart_upload(staging).execute().await?, Vec::new()));
                    }
                    if let Some((upload, parts)) = multipart.as_mut() {
                        let number = parts.len() as u16 + 1;
                        parts.push(upload.upload_part(number, copied_out(&part)?).await?);
                    }
                    // The buffer is kept for the next part: allocated once per upload.
                    part.clear();
                }
            }
        }
        EdgeResult::Ok(())
    }
    .await;
    if let Err(e) = streamed {
        if let Some((upload, _)) = multipart {
            if let Err(abort) = upload.abort().await {
                worker::console_warn!("multipart upload of {staging} not aborted: {abort}");
            }
        }
        return Err(e);
    }
    let file = intake.finish()?;
    match multipart {
        None => {
            bucket.put(staging, part).execute().await?;
        }
        Some((upload, mut parts)) => {
            if !part.is_empty() {
                let number = parts.len() as u16 + 1;
                parts.push(upload.upload_part(number, part).await?);
            }
            upload.complete(parts).await?;
        }
    }
    Ok(file)
}

/// A copy of `bytes` outside wasm memory, as a body of known length (which R2
/// asks of a stream), so the buffer they came from can be reused at once.
fn copied_out(bytes: &[u8]) -> worker::Result<Data> {
    let copy = worker::js_sys::Uint8Array::from(bytes);
    let body = worker::web_sys::Response::new_with_opt_buffer_source(Some(&copy))?
        .body()
        .ok_or_else(|| worker::Error::RustError("a response of bytes has no body".to_owned()))?;
    Ok(Data::ReadableStream(body))
}

/// The origin's record of the upload, before it is published or the client hears
/// it worked: an upload it cannot record is answered 503, and nothing of it stays.
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

/// Copies the staged upload to its name unless the same bytes are there already
/// (the name is their hash), and marks a private file's uploader.
async fn publish(
    bucket: &Bucket,
    staging: &str,
    visibility: Visibility,
    key: &MediaKey,
    file: &Staged,
    uploader: &Identity,
    uploaded_at: chrono::DateTime<chrono::Utc>,
) -> worker::Result<()> {
    let name = object_name(visibility, key);
    if bucket.head(&name).await?.is_none() {
        let staged = bucket
            .get(staging)
            .execute()
            .await?
            .ok_or_else(|| worker::Error::RustError(format!("staged upload {staging} is gone")))?;
        let Some(worker::ResponseBody::Stream(bytes)) = staged.body().map(|b| b.response_body()).transpose()? else {
            return Err(worker::Error::RustError(format!("staged upload {staging} has no body")));
        };
        let metadata = HttpMetadata { content_type: Some(file.kind.content_type().to_owned()), ..Default::default() };
        let custom = [
            ("uploaded_by".to_owned(), uploader.user_id.to_string()),
            ("uploaded_at".to_owned(), uploaded_at.to_rfc3339()),
        ];
        // R2 checks the copy against the hash taken as the bytes arrived: a file
        // damaged on its way is refused, never published under a name it does not match.
        bucket
            .put(&name, Data::ReadableStream(bytes))
            .http_metadata(metadata)
            .custom_metadata(HashMap::from(custom))
            .sha256(file.digest.to_vec())
            .execute()
            .await?;
    }
    if visibility == Visibility::Private {
        bucket.put(uploader_marker(key, uploader.user_id), Vec::<u8>::new()).execute().await?;
    }
    Ok(())
}

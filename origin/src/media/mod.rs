//! Media: the record of the files the edge stores in R2. The edge takes an upload
//! (`POST /v1/media`), judges its type by its bytes, stores it under its
//! content-addressed key (`<sha-256 hex>.<ext>`, [`MediaKey`]) and serves it
//! (`GET /v1/media/{key}`, and private files behind signed, expiring links); the
//! origin never sees the bytes. Before the edge answers the upload it tells the
//! origin on the signed internal route [`RecordMedia`], and this area records the
//! file and its uploader. The record is what the catalogue holds a product's
//! `image_url` to ([`is_public`]): only a public file the platform stored.
//!
//! Recording is idempotent: the same bytes uploaded again (by anyone) are the same
//! key, so the file's row is written once, by its first upload; each uploader of a
//! file is kept once ("who uploaded what", for audits), and written to the audit
//! log (`media.uploaded`, the uploader its actor) when first kept. The same bytes
//! stored public and private are two files.
//!
//! Owns the tables `media` and `media_uploads`. Stands on no other area but the
//! audit log; the catalogue stands on it.

use axum::extract::State;
use axum::routing::on;
use axum::{Json, Router};
use drops_shared::auth::Identity;
use drops_shared::internal::{Endpoint, MediaRecorded, MediaUpload, RecordMedia};
use drops_shared::media::{MediaKey, Visibility, MAX_MEDIA_BYTES};
use drops_shared::problem::ErrorCode;
use sqlx::{Connection, PgConnection, PgExecutor};

use crate::audit::{self, NewEntry};
use crate::http::error::ApiError;
use crate::http::extract::{method_of, Answer, RequestId, Signed};
use crate::state::Core;

pub fn router(core: Core) -> Router {
    Router::new().route(RecordMedia::PATH, on(method_of::<RecordMedia>(), record_upload)).with_state(core)
}

/// The edge stored a file: record it and its uploader.
#[tracing::instrument(skip_all, fields(key = %call.body.key, visibility = call.body.visibility.as_str()))]
async fn record_upload(
    State(core): State<Core>,
    request_id: RequestId,
    call: Signed<RecordMedia>,
) -> Answer<RecordMedia> {
    let upload = call.body;
    check(&upload)?;
    let mut conn = core.db.acquire().await?;
    let first_upload = record(&mut conn, &upload, Some(&request_id)).await?;
    drop(conn);
    audit::settled(&core).await;
    Ok(Json(MediaRecorded { first_upload }))
}

/// What the edge says of a file must agree with its key: the type is the one its
/// extension names, and the size one the edge takes.
fn check(upload: &MediaUpload) -> Result<(), ApiError> {
    let kind = upload.key.kind();
    if upload.content_type != kind.content_type() {
        return Err(ApiError::code(
            ErrorCode::InvalidRequest,
            format!("field `content_type`: a `.{}` key is `{}`", kind.extension(), kind.content_type()),
        ));
    }
    if upload.size == 0 || upload.size > MAX_MEDIA_BYTES as u64 {
        return Err(ApiError::code(
            ErrorCode::InvalidRequest,
            format!("field `size`: must be 1 to {MAX_MEDIA_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Records `upload` (the file, if new at its visibility, and its uploader, if new for
/// it, with its audit entry) atomically, in the caller's transaction if there is
/// one, as done in request `request_id` (none: the platform's own seeding). Returns whether the file was new. Recording the same upload again changes
/// nothing.
pub async fn record(
    conn: &mut PgConnection,
    upload: &MediaUpload,
    request_id: Option<&RequestId>,
) -> sqlx::Result<bool> {
    let mut tx = conn.begin().await?;
    let (visibility, key) = (upload.visibility.as_str(), upload.key.to_string());
    let size = i64::try_from(upload.size).unwrap_or(i64::MAX);
    let inserted = sqlx::query_scalar!(
        "INSERT INTO media (visibility, key, content_type, size, uploaded_by) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (visibility, key) DO NOTHING RETURNING true AS \"inserted!\"",
        visibility,
        key,
        upload.content_type,
        size,
        upload.uploaded_by
    )
    .fetch_optional(&mut *tx)
    .await?;
    let new_uploader = sqlx::query!(
        "INSERT INTO media_uploads (visibility, key, user_id, uploaded_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (visibility, key, user_id) DO NOTHING",
        visibility,
        key,
        upload.uploaded_by,
        upload.uploaded_at
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if new_uploader {
        // The edge's call carries the request id it passes on for the client, if any.
        let data = serde_json::json!({
            "key": key, "visibility": visibility, "content_type": upload.content_type, "size": size,
            "uploaded_at": upload.uploaded_at, "first_upload": inserted.is_some(),
        });
        let uploader = Identity { user_id: upload.uploaded_by, role: upload.uploaded_by_role };
        let entry = NewEntry::system("media.uploaded", "media", &key, data);
        let entry = match request_id {
            Some(ids) => entry.by(uploader, ids),
            None => NewEntry { actor: Some(uploader), ..entry },
        };
        audit::append(&mut tx, vec![entry]).await?;
    }
    tx.commit().await?;
    Ok(inserted.is_some())
}

/// Whether `key` names a public file the platform stored.
pub async fn is_public(db: impl PgExecutor<'_>, key: &MediaKey) -> sqlx::Result<bool> {
    let found = sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM media WHERE visibility = $1 AND key = $2) AS \"found!\"",
        Visibility::Public.as_str(),
        key.to_string()
    )
    .fetch_one(db)
    .await?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use drops_shared::media::MediaType;
    use uuid::Uuid;

    use super::*;

    fn upload(content_type: &str, size: u64) -> MediaUpload {
        MediaUpload {
            key: MediaKey::from_digest([7; 32], MediaType::Png),
            visibility: Visibility::Public,
            content_type: content_type.to_owned(),
            size,
            uploaded_by: Uuid::from_u128(1),
            uploaded_by_role: drops_shared::auth::Role::Creator,
            uploaded_at: Utc::now(),
        }
    }

    #[test]
    fn an_upload_must_agree_with_its_key() {
        assert!(check(&upload("image/png", 1)).is_ok());
        assert!(check(&upload("image/png", MAX_MEDIA_BYTES as u64)).is_ok());
        for bad in [upload("image/jpeg", 10), upload("image/png", 0), upload("image/png", MAX_MEDIA_BYTES as u64 + 1)] {
            match check(&bad) {
                Err(ApiError::Problem(p)) => assert_eq!(p.status, 400, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}

//! The origin's one error type. Every variant renders as `application/problem+json`
//! with a contract code; internal failures are logged with detail and shown to the
//! client only as `internal_error`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use drops_shared::problem::{ErrorCode, Problem, PROBLEM_CONTENT_TYPE};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.code)]
    Problem(Problem),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn code(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::Problem(Problem::new(code, Some(detail.into())))
    }

    pub fn not_found() -> Self {
        Self::Problem(ErrorCode::NotFound.into())
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

impl From<ErrorCode> for ApiError {
    fn from(c: ErrorCode) -> Self {
        Self::Problem(c.into())
    }
}

/// Postgres errors that a client caused become 4xx; the rest are ours.
fn from_database(err: &sqlx::Error) -> Option<Problem> {
    let db = err.as_database_error()?;
    match db.code().as_deref() {
        Some("23505") => Some(Problem::new(ErrorCode::Conflict, Some("that already exists".into()))),
        Some("23503") => Some(Problem::new(ErrorCode::NotFound, Some("a referenced resource does not exist".into()))),
        // Text Postgres cannot store (U+0000): the request's, not ours. The extractors
        // refuse it by field first; this catches any path they do not cover.
        Some("22021" | "22P05") => Some(Problem::new(
            ErrorCode::InvalidRequest,
            Some("a text field holds a character that cannot be stored".into()),
        )),
        _ => None,
    }
}

pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, problem.to_json()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    if matches!(problem.status, 429 | 503) {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match &self {
            ApiError::Problem(p) => p.clone(),
            ApiError::Database(e) => from_database(e).unwrap_or_else(|| {
                tracing::error!(error = %e, "database error");
                ErrorCode::Internal.into()
            }),
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                ErrorCode::Internal.into()
            }
        };
        problem_response(&problem)
    }
}

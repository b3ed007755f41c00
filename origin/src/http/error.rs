//! The origin's one error type. Every variant renders as `application/problem+json`
//! with a contract code; internal failures are logged with detail and shown to the
//! client only as `internal_error`. A pool that could not hand out a connection in
//! time is not a failure of the request: it is 503 `overloaded` with `Retry-After`.
//!
//! A refusal (429 or 503) made because the origin protects itself carries a
//! [`Refusal`] in its response's extensions: the reason `/metrics` counts it under.

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

/// Why the origin turned a request away; counted on `/metrics` as
/// `drops_http_refusals_total{route, reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client (or the caller of a signed route) is over its rate.
    RateLimited,
    /// Too many requests in flight and the short queue full or waited out.
    Overloaded,
    /// No database connection within the pool's acquire timeout.
    PoolExhausted,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::PoolExhausted => "pool_exhausted",
        }
    }

    /// The problem answer, marked with this reason, with `Retry-After: retry_after_secs`.
    pub fn response(self, detail: &str, retry_after_secs: u64) -> Response {
        let code = match self {
            Self::RateLimited => ErrorCode::RateLimited,
            Self::Overloaded | Self::PoolExhausted => ErrorCode::Overloaded,
        };
        let mut resp = problem_response(&Problem::new(code, Some(detail.to_owned())));
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        resp.extensions_mut().insert(self);
        resp
    }
}

/// The pool had no connection to give within its acquire timeout, however deep in
/// an `anyhow` chain the error sits.
fn pool_exhausted(err: &ApiError) -> bool {
    let timed_out = |e: &sqlx::Error| matches!(e, sqlx::Error::PoolTimedOut);
    match err {
        ApiError::Database(e) => timed_out(e),
        ApiError::Internal(e) => e.chain().any(|c| c.downcast_ref::<sqlx::Error>().is_some_and(timed_out)),
        ApiError::Problem(_) => false,
    }
}

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
        if pool_exhausted(&self) {
            tracing::warn!("no database connection within the acquire timeout; answering 503");
            return Refusal::PoolExhausted.response("the database is busy; retry shortly", 1);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_pool_is_503_overloaded_with_retry_after_never_500() {
        let direct = ApiError::Database(sqlx::Error::PoolTimedOut).into_response();
        let wrapped = ApiError::Internal(anyhow::Error::new(sqlx::Error::PoolTimedOut).context("loading the drop"))
            .into_response();
        for resp in [direct, wrapped] {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
            assert_eq!(resp.extensions().get::<Refusal>(), Some(&Refusal::PoolExhausted));
        }
        let other = ApiError::Database(sqlx::Error::RowNotFound).into_response();
        assert_eq!(other.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(other.extensions().get::<Refusal>().is_none());
    }

    #[test]
    fn a_refusal_carries_its_reason_and_wait() {
        let resp = Refusal::RateLimited.response("slow down", 7);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
        assert_eq!(resp.extensions().get::<Refusal>(), Some(&Refusal::RateLimited));
        let resp = Refusal::Overloaded.response("busy", 0);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1", "never `Retry-After: 0`");
    }
}

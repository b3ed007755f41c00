//! Honest keep-alive. An answer may go out before the request's body was read to
//! its end (a 429 is decided before the guard reads the body, a body declared over
//! the limit is never read, one found over it is read no further: `overload`). The server
//! must then close the connection, and unless the answer says so the client (the
//! edge's runtime) puts the connection back in its pool and sends the next request
//! on a socket that is going away: "network connection lost" for someone else's
//! request. So an answer to a request whose body was not read to its end says
//! `Connection: close`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{HeaderValue, CONNECTION};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// A request body that notes when it has been read to its end.
struct Watched {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub async fn close_if_unread(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, Body::new(Watched { inner: body, read: read.clone() }));
    let mut resp = next.run(req).await;
    if !read.load(Ordering::Relaxed) {
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route("/read", post(|body: Bytes| async move { body.len().to_string() }))
            .route("/unread", post(|| async { "no" }))
            .layer(axum::middleware::from_fn(close_if_unread))
    }

    async fn call(path: &str, body: &'static str) -> Response {
        let req = Request::post(path).header("content-length", body.len()).body(Body::from(body)).unwrap();
        app().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn only_an_answer_that_left_the_body_unread_closes_the_connection() {
        assert!(call("/read", "{\"a\":1}").await.headers().get(CONNECTION).is_none());
        assert_eq!(call("/unread", "{\"a\":1}").await.headers()[CONNECTION], "close");
        assert!(call("/unread", "").await.headers().get(CONNECTION).is_none(), "no body, nothing left unread");
    }
}

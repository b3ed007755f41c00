//! Serving a router on a listener: HTTP/1.1 (what the edge, the payment provider,
//! apps and probes speak) with hyper's header read timeout on, which `axum::serve`
//! leaves off (it sets no timer). A client gets `header_read_timeout` to send a
//! request's line and headers, counted from when the server waits for them: on a
//! new connection, and on a kept-alive one between requests; past it the
//! connection is closed. The body is the guard's to bound (`overload`), the
//! handler's time the handler's. A connection upgraded to a WebSocket leaves the
//! server's hands, timeout included.
//!
//! Graceful: once `shutdown` resolves, no connection is accepted; idle ones close at
//! once, a request in flight is answered first (each is bounded: headers by the
//! header timeout, bodies by the guard's), then this returns.

use std::convert::Infallible;
use std::future::Future;

use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let (stop, stopping) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !connection_error(&e) {
                        // Out of file descriptors, say: wait for some to close.
                        tracing::error!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            let conn = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(());
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one connection (the peer gave up before it was accepted), not of the listener.
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

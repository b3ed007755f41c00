//! Building and running the origin. `Application::build` binds its listener first
//! (port 0 in tests gives a free port), so callers learn the port before serving.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
use axum::Router;
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::{MAX_BODY_BYTES, REQUEST_ID_HEADER};
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::Settings;
use crate::edge::EdgeClient;
use crate::error::problem_response;
use crate::events::bus::{Consumer, Handler};
use crate::payments::PaymentProvider;
use crate::{
    creators, drops, events, fanout, followers, health, live, metrics, notifications, orders, payments, push, reconcile,
};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub redis: redis::Client,
    pub settings: Arc<Settings>,
    pub edge: EdgeClient,
    pub payments: Arc<dyn PaymentProvider>,
    pub push: Arc<dyn push::PushProvider>,
    /// The WebSockets this instance holds.
    pub live: Arc<live::Live>,
}

impl AppState {
    /// Connects to Postgres (applying pending migrations) and prepares the clients
    /// for Redis, the edge and the payment provider. Used by the server and by the
    /// one-off commands.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        metrics::handle();
        let db = connect_db(&settings).await?;
        MIGRATOR.run(&db).await?;
        Ok(AppState {
            db,
            redis: redis::Client::open(settings.redis_url.expose_secret())?,
            edge: EdgeClient::new(&settings)?,
            payments: payments::provider(&settings)?,
            push: push::provider(&settings)?,
            live: Arc::new(live::Live::default()),
            settings: Arc::new(settings),
        })
    }
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub async fn connect_db(settings: &Settings) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(settings.database_url.expose_secret())
        .await?)
}

impl Application {
    /// Connects, migrates (see [`AppState::connect`]) and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((settings.host.as_str(), settings.port)).await?;
        let state = AppState::connect(settings).await?;
        Ok(Self { listener, state })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and stops
    /// the background workers.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let workers = CancellationToken::new();
        let state = self.state.clone();
        let mut background = vec![
            tokio::spawn(drops::inventory_sync_loop(state.clone(), workers.clone())),
            tokio::spawn(events::relay::run(state.clone(), workers.clone())),
        ];
        let purger = drops::purge::purger(&state)?;
        background.extend([
            consumer(&state, orders::edge_sync::CONSUMER, &workers, |s, e| async move {
                orders::edge_sync::handle(&s, &e).await
            }),
            consumer(&state, drops::purge::CONSUMER, &workers, move |s, e| {
                let purger = purger.clone();
                async move { drops::purge::handle(&s, purger.as_ref(), &e).await }
            }),
            consumer(&state, followers::CONSUMER, &workers, |s, e| async move { followers::handle(&s, &e).await }),
            consumer(
                &state,
                notifications::CONSUMER,
                &workers,
                |s, e| async move { notifications::handle(&s, &e).await },
            ),
            consumer(&state, fanout::CONSUMER, &workers, |s, e| async move { fanout::handle(&s, &e).await }),
            tokio::spawn(drops::schedule::run(state.clone(), workers.clone())),
            tokio::spawn(push::run(state.clone(), workers.clone())),
            tokio::spawn(live::run_subscriber(state.clone(), workers.clone())),
        ]);
        for _ in 0..fanout::RUNNERS {
            background.push(tokio::spawn(fanout::run(state.clone(), workers.clone())));
        }
        if state.settings.reconcile_interval_secs > 0 {
            background.push(tokio::spawn(reconcile::run(state.clone(), workers.clone())));
        }
        let app = router(self.state);
        let served = axum::serve(self.listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await;
        workers.cancel();
        for task in background {
            let _ = task.await;
        }
        Ok(served?)
    }
}

/// Runs one member of consumer group `group` on the event stream, with `handle`.
fn consumer<F, Fut>(state: &AppState, group: &str, stop: &CancellationToken, handle: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(AppState, drops_shared::events::EventEnvelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let member =
        Consumer::new(events::stream_key(&state.settings.redis_prefix), group, state.settings.bus_claim_idle_ms);
    let for_handler = state.clone();
    let handler: Handler = Arc::new(move |event| Box::pin(handle(for_handler.clone(), event)));
    tokio::spawn(member.run(state.redis.clone(), state.db.clone(), handler, stop.clone()))
}

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    Router::new()
        .merge(health::router())
        .merge(creators::router())
        .merge(followers::router())
        .merge(notifications::router())
        .merge(push::router())
        .merge(crate::openapi::router())
        .merge(drops::router())
        .merge(orders::router())
        .merge(payments::router())
        .merge(metrics::router())
        .fallback(|| async { problem_response(&ErrorCode::NotFound.into()) })
        .method_not_allowed_fallback(|| async {
            problem_response(
                &Problem::new(ErrorCode::NotFound, Some("no such route for this method".into())).with_status(405),
            )
        })
        .layer(axum::middleware::from_fn(metrics::count_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| problem_response(&ErrorCode::Internal.into()).into_response()))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

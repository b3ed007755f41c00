//! Building and running the origin: the one place that sees every area. It builds
//! each area's state, plugs the areas' implementations into the traits lower areas
//! name, merges the areas' routers (behind the origin's own defences, `overload`),
//! and lists the background workers.
//! `Application::build` binds its listeners first (port 0 in tests gives a free
//! port), so callers learn the ports before serving: the public one, and the
//! operators' one (`/metrics`, `/healthz`, `/readyz`; `server.metrics_*`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
use axum::Router;
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::{MAX_BODY_BYTES, REQUEST_ID_HEADER};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::catalogue::purge::Purger;
use crate::catalogue::CatalogueState;
use crate::config::Settings;
use crate::events::bus::{Consumer, Member};
use crate::http::client_address::{self, TrustedProxies};
use crate::http::error::problem_response;
use crate::http::health::Readiness;
use crate::http::overload::{self, Guard};
use crate::http::{extract, health, keepalive, openapi, server};
use crate::metrics::GaugeSource;
use crate::notifications::NotificationsState;
use crate::orders::OrdersState;
use crate::payments::{Payments, PaymentsState};
use crate::state::Core;
use crate::tasks::{Next, Workers};
use crate::{
    analytics, audit, catalogue, dashboard, events, followers, media, metrics, notifications, orders, payments,
};

/// Every area's state, built once.
#[derive(Clone)]
pub struct App {
    pub core: Core,
    pub payments: Payments,
    pub notifications: NotificationsState,
    pub purger: Arc<dyn Purger>,
    /// Per-client limits and load shedding, shared by every request of this instance.
    pub guard: Arc<Guard>,
    /// What the last readiness check found (`/readyz`).
    pub readiness: Arc<Readiness>,
    /// The background work's pool: [`App::background`] runs on it.
    background_db: sqlx::PgPool,
}

impl App {
    /// Connects (see [`Core::connect`]) and builds every area's state.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        metrics::handle();
        let core = Core::connect(settings).await?;
        let background_db = crate::state::connect_background_db(&core.settings).await?;
        Ok(App {
            background_db,
            payments: Payments::new(&core.settings, Arc::new(orders::lifecycle::Settlement))?,
            notifications: NotificationsState::new(core.clone())?,
            purger: catalogue::purge::purger(&core)?,
            guard: Arc::new(Guard::new(&core.settings)),
            readiness: Arc::default(),
            core,
        })
    }

    /// The same state on the background work's pool: what the workers run on, so a
    /// flood of requests holding every request connection stalls no event, payment or
    /// push. Everything else (sockets, payment wake-ups, limits) is shared.
    pub fn background(&self) -> App {
        let core = self.core.on_pool(self.background_db.clone());
        App {
            notifications: NotificationsState { core: core.clone(), ..self.notifications.clone() },
            core,
            ..self.clone()
        }
    }

    pub fn orders(&self) -> OrdersState {
        OrdersState { core: self.core.clone(), payments: self.payments.clone() }
    }

    pub fn catalogue(&self) -> CatalogueState {
        CatalogueState { core: self.core.clone(), followers: Arc::new(followers::Counts) }
    }

    fn payments_state(&self) -> PaymentsState {
        PaymentsState { core: self.core.clone(), payments: self.payments.clone() }
    }

    /// One reconciliation pass over every drop the catalogue says is active.
    pub async fn reconcile(&self, grace: Duration) -> anyhow::Result<Vec<orders::reconcile::Repair>> {
        let drops = catalogue::reconcilable_drops(&self.core.db).await?;
        orders::reconcile::run_once(&self.orders(), &drops, grace).await
    }

    /// One reconciliation pass over the drops `ids` names.
    pub async fn reconcile_drops(
        &self,
        ids: &[uuid::Uuid],
        grace: Duration,
    ) -> anyhow::Result<Vec<orders::reconcile::Repair>> {
        let drops = catalogue::terms_of(&self.core.db, ids).await?;
        orders::reconcile::run_once(&self.orders(), &drops, grace).await
    }
}

/// Gauges read by the background task, from the areas that own the data.
const GAUGES: &[GaugeSource] = &[orders::gauges, events::gauges];

pub fn router(app: &App) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    Router::new()
        .merge(health::router(app.readiness.clone()))
        .merge(openapi::router())
        .merge(dashboard::router())
        .merge(metrics::router(app.core.clone()))
        .merge(audit::router(app.core.clone()))
        .merge(media::router(app.core.clone()))
        .merge(catalogue::router(app.catalogue()))
        .merge(analytics::router(app.core.clone()))
        .merge(followers::router(app.core.clone()))
        .merge(notifications::router(app.notifications.clone()))
        .merge(orders::router(app.orders()))
        .merge(payments::router(app.payments_state()))
        .fallback(|| async { problem_response(&ErrorCode::NotFound.into()) })
        .method_not_allowed_fallback(|| async {
            problem_response(&Problem::new(
                ErrorCode::MethodNotAllowed,
                Some("this route does not take this method (see Allow)".into()),
            ))
        })
        // Inside the request counter, so refusals are counted (by route and reason) too.
        .layer(axum::middleware::from_fn_with_state(app.guard.clone(), overload::guard))
        .layer(axum::middleware::from_fn_with_state(
            TrustedProxies::from(app.core.settings.server.trusted_proxies.clone()),
            client_address::resolve,
        ))
        .layer(axum::middleware::from_fn(metrics::count_requests))
        .layer(axum::middleware::from_fn(keepalive::close_if_unread))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| problem_response(&ErrorCode::Internal.into()).into_response()))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
            let own = req.extensions().get::<extract::ServerRequestId>().map_or("-", |s| s.0.as_str());
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id,
                                server_request_id = %own)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::from_fn(extract::mint_server_request_id))
}

/// The operators' listener: `/metrics`, and the health probes again. Not the
/// public port's layers: nothing here reads a body or the database.
pub fn operators_router(app: &App) -> Router {
    Router::new()
        .merge(metrics::scrape_router())
        .merge(health::router(app.readiness.clone()))
        .fallback(|| async { problem_response(&ErrorCode::NotFound.into()) })
        .layer(CatchPanicLayer::custom(|_| problem_response(&ErrorCode::Internal.into()).into_response()))
}

/// Every consumer group of the platform, each an area's reaction to the event
/// stream. All of them, whichever this instance runs, are the relay's to watch: it
/// publishes again what any of them had not finished when the stream lost entries.
fn consumers(app: &App) -> Vec<Arc<dyn Consumer>> {
    let core = &app.core;
    vec![
        Arc::new(audit::consumer::AuditTrail(core.clone())),
        Arc::new(orders::edge_sync::EdgeSync(app.orders())),
        Arc::new(catalogue::purge::CachePurge { core: core.clone(), purger: app.purger.clone() }),
        Arc::new(followers::FollowerSets(core.clone())),
        Arc::new(notifications::inbox::Notifier(core.clone())),
        Arc::new(followers::fanout::Fanout(core.clone())),
        Arc::new(analytics::Analytics(core.clone())),
    ]
}

/// Runs one member of each consumer group on the event stream, except the groups
/// this instance is set not to run (`events.groups`).
fn spawn_consumers(app: &App, workers: &Workers) {
    let settings = &app.core.settings;
    let stream = events::stream_key(&settings.redis.prefix);
    for consumer in consumers(app) {
        let group = consumer.group();
        if settings.events.groups.as_ref().is_some_and(|only| !only.iter().any(|g| g == group)) {
            continue;
        }
        let member = Member::new(stream.clone(), consumer, settings.events.bus_claim_idle_ms);
        member.spawn(workers, app.core.redis.clone(), app.core.db.clone());
    }
}

/// Every background worker of an origin instance.
pub fn spawn_workers(app: &App, workers: &Workers) {
    let core = app.core.clone();
    let settings = &core.settings;

    let guard = app.guard.clone();
    workers.every("rate limit sweep", Duration::from_secs(60), move || {
        guard.sweep();
        async { Ok(Next::Later) }
    });
    let c = core.clone();
    workers.every("metrics gauges", Duration::from_millis(settings.server.metrics_refresh_ms), move || {
        let c = c.clone();
        async move {
            metrics::refresh_gauges(&c, GAUGES).await;
            Ok(Next::Later)
        }
    });
    let (c, readiness) = (core.clone(), app.readiness.clone());
    workers.every("readiness check", health::CHECK_EVERY, move || {
        let (c, readiness) = (c.clone(), readiness.clone());
        async move {
            health::check(&c, &readiness).await;
            Ok(Next::Later)
        }
    });
    let c = core.clone();
    workers.every("inventory terms sync", Duration::from_secs(1), move || {
        let c = c.clone();
        async move { catalogue::terms::sync_round(&c).await }
    });
    let (c, relay) = (core.clone(), events::relay::Relay::new(consumers(app).iter().map(|c| c.group()).collect()));
    workers.every("outbox relay", Duration::from_millis(settings.events.relay_interval_ms.max(10)), move || {
        let (c, relay) = (c.clone(), relay.clone());
        async move { relay.round(&c).await }
    });
    let c = core.clone();
    workers.every("drop scheduler", catalogue::schedule::TICK, move || {
        let c = c.clone();
        async move { catalogue::schedule::announce(&c).await.map(|_| Next::Later) }
    });

    spawn_consumers(app, workers);

    for _ in 0..followers::fanout::RUNNERS {
        let c = core.clone();
        workers.every("fan-out runner", followers::fanout::IDLE, move || {
            let c = c.clone();
            async move { followers::fanout::round(&c).await }
        });
    }
    let p = app.payments_state();
    workers.every_or_woken(
        "payment preparer",
        payments::preparer::IDLE,
        {
            let payments = app.payments.clone();
            move || {
                let payments = payments.clone();
                async move { payments.woken().await }
            }
        },
        move || {
            let p = p.clone();
            async move { payments::preparer::round(&p).await }
        },
    );
    let (db, rounds) = (app.core.db.clone(), app.core.audit_sequencer.clone());
    workers.every_or_woken(
        "audit sequencer",
        audit::sequencer::INTERVAL,
        {
            let rounds = rounds.clone();
            move || {
                let rounds = rounds.clone();
                async move { rounds.woken().await }
            }
        },
        move || {
            let (db, rounds) = (db.clone(), rounds.clone());
            async move { audit::sequencer::round(&db, &rounds).await }
        },
    );
    let core = app.core.clone();
    workers.every("audit sealer", audit::seal::INTERVAL, move || {
        let core = core.clone();
        async move { audit::seal::round(&core.db, &core.settings.audit).await }
    });
    let p = app.payments_state();
    workers.every("payment reversals", payments::reversals::IDLE, move || {
        let p = p.clone();
        async move { payments::reversals::round(&p).await }
    });
    let (n, w, slots) = (app.notifications.clone(), workers.clone(), notifications::push::sender_slots());
    workers.every("push sender", notifications::push::IDLE, move || {
        let (n, w, slots) = (n.clone(), w.clone(), slots.clone());
        async move { notifications::push::round(&n, &w, &slots).await }
    });
    let n = app.notifications.clone();
    workers.every("live subscriber", Duration::from_secs(1), move || {
        let n = n.clone();
        async move { notifications::live::subscribe(&n).await.map(|_| Next::Later) }
    });
    let n = app.notifications.clone();
    workers.every("live heartbeat", notifications::live::HEARTBEAT, move || {
        let n = n.clone();
        async move { notifications::live::beat(&n).await.map(|_| Next::Later) }
    });
    if settings.orders.reconcile_interval_secs > 0 {
        let app = app.clone();
        let period = Duration::from_secs(settings.orders.reconcile_interval_secs);
        workers.every("reconciliation", period, move || {
            let app = app.clone();
            async move { app.reconcile(Duration::from_secs(30)).await.map(|_| Next::Later) }
        });
    }
}

pub struct Application {
    listener: TcpListener,
    operators: TcpListener,
    app: App,
}

impl Application {
    /// Connects, migrates (see [`Core::connect`]) and binds the listeners.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let server = &settings.server;
        let listener = TcpListener::bind((server.host.as_str(), server.port)).await?;
        let operators = TcpListener::bind((server.metrics_host.as_str(), server.metrics_port)).await.map_err(|e| {
            anyhow::anyhow!("the metrics listener ({}:{}): {e}", server.metrics_host, server.metrics_port)
        })?;
        let app = App::connect(settings).await?;
        // Checked once before serving, so `/readyz` is right from the first probe.
        health::check(&app.core, &app.readiness).await;
        Ok(Self { listener, operators, app })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// The operators' listener's port (`/metrics`).
    pub fn metrics_port(&self) -> u16 {
        self.operators.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and stops
    /// the background workers.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let workers = Workers::new();
        spawn_workers(&self.app.background(), &workers);
        let header_timeout = Duration::from_millis(self.app.core.settings.server.header_read_timeout_ms);
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let signal = tokio::spawn(async move {
            shutdown.await;
            stopped.cancel();
        });
        let served = tokio::join!(
            server::serve(self.listener, router(&self.app), header_timeout, stop.clone().cancelled_owned()),
            server::serve(self.operators, operators_router(&self.app), header_timeout, stop.clone().cancelled_owned()),
        );
        signal.abort();
        workers.shutdown().await;
        served.0?;
        Ok(served.1?)
    }
}

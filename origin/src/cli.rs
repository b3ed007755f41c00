//! The origin's command line (`drops-origin --help`): serving, and the one-off
//! commands an operator runs with the same settings (from the environment, see
//! README.md): migrations, demo data, demo tokens, reconciliation, outbox replay,
//! rebuilding derived stores (follower sets, analytics).

use chrono::{Duration, Utc};
use clap::{Parser, Subcommand};
use drops_shared::auth::{mint, Identity, Role};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::catalogue::demo;
use crate::config::Settings;
use crate::startup::{App, Application};
use crate::state::{connect_db, Core, MIGRATOR};
use crate::{analytics, events, followers};

#[derive(Debug, Parser)]
#[command(name = "drops-origin", version, about = "The drops origin: orders, payments, catalogue, events.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and run the background workers (the default).
    Serve,
    /// Apply pending database migrations.
    Migrate,
    /// Write the demo data (idempotent): an admin, a creator, a product, a live and an upcoming drop.
    Seed,
    /// Print a signed bearer token for development.
    Token {
        /// buyer, creator or admin.
        #[arg(long, default_value = "buyer", value_parser = parse_role)]
        role: Role,
        /// The user id (default: the demo user of that role).
        #[arg(long)]
        sub: Option<Uuid>,
        /// Days until it expires.
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
    /// Run one reconciliation pass over every active drop and print the repairs.
    Reconcile,
    /// Publish a range of the outbox to the event stream again.
    OutboxReplay {
        /// First outbox sequence number.
        #[arg(long, default_value_t = 1)]
        from: i64,
        /// Last outbox sequence number (default: the end).
        #[arg(long, default_value_t = i64::MAX)]
        to: i64,
    },
    /// Rebuild every creator's follower set in Redis from Postgres.
    FollowersRebuild,
    /// The analytics' derived figures.
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AnalyticsCommand {
    /// Empty the analytics tables and apply every drop and order event of the outbox
    /// again, in order, in one transaction (safe while origins run: they wait).
    Rebuild,
}

fn parse_role(raw: &str) -> Result<Role, String> {
    raw.parse().map_err(|_| format!("`{raw}` is not a role (buyer, creator or admin)"))
}

/// Runs the command `cli` names.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(settings).await?;
            tracing::info!(port = app.port(), "origin listening");
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => migrate(&settings).await,
        Command::Seed => seed(&settings).await,
        Command::Token { role, sub, days } => {
            println!("{}", token(&settings, role, sub, days));
            Ok(())
        }
        Command::Reconcile => reconcile(settings).await,
        Command::OutboxReplay { from, to } => outbox_replay(settings, from, to).await,
        Command::FollowersRebuild => followers_rebuild(settings).await,
        Command::Analytics { command: AnalyticsCommand::Rebuild } => analytics_rebuild(settings).await,
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutting down");
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let db = connect_db(settings).await?;
    MIGRATOR.run(&db).await?;
    println!("migrations applied");
    Ok(())
}

/// The demo data (see [`demo::seed`]).
pub async fn seed(settings: &Settings) -> anyhow::Result<()> {
    let db = connect_db(settings).await?;
    MIGRATOR.run(&db).await?;
    let mut tx = db.begin().await?;
    demo::seed(&mut tx, settings.orders.hold_seconds).await?;
    tx.commit().await?;
    println!("demo data seeded: live drop {}, upcoming drop {}", demo::LIVE_DROP, demo::UPCOMING_DROP);
    Ok(())
}

/// A signed development token for `role` (the demo user of that role unless `sub`).
pub fn token(settings: &Settings, role: Role, sub: Option<Uuid>, days: i64) -> String {
    let user_id = sub.unwrap_or(demo::user_of(role));
    mint(
        Identity { user_id, role },
        settings.auth.jwt_secret.expose_secret().as_bytes(),
        Utc::now() + Duration::days(days),
    )
}

/// Runs reconciliation once over every active drop and prints the repairs.
pub async fn reconcile(settings: Settings) -> anyhow::Result<()> {
    let app = App::connect(settings).await?;
    let repairs = app.reconcile(std::time::Duration::from_secs(30)).await?;
    for r in &repairs {
        println!("{} drop={} order={:?}: {}", r.repair, r.drop_id, r.order_id, r.reason);
    }
    println!("{} repair(s)", repairs.len());
    Ok(())
}

/// Publishes the outbox rows with `from <= seq <= to` again.
pub async fn outbox_replay(settings: Settings, from: i64, to: i64) -> anyhow::Result<()> {
    let core = Core::connect(settings).await?;
    let n = events::relay::replay(&core, from, to).await?;
    println!("republished {n} event(s) with seq in {from}..={to}");
    Ok(())
}

/// Rebuilds the analytics from the outbox (see [`analytics::ledger::rebuild`]).
pub async fn analytics_rebuild(settings: Settings) -> anyhow::Result<()> {
    let db = connect_db(&settings).await?;
    MIGRATOR.run(&db).await?;
    let n = analytics::ledger::rebuild(&db).await?;
    println!("analytics rebuilt from the outbox: {n} event(s) applied");
    Ok(())
}

/// Rebuilds every creator's follower set in Redis from the ledger in Postgres.
pub async fn followers_rebuild(settings: Settings) -> anyhow::Result<()> {
    let core = Core::connect(settings).await?;
    let n = followers::rebuild(&core).await?;
    println!("follower sets rebuilt: {n} follow(s)");
    Ok(())
}

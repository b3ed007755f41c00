//! The origin's command line (`drops-origin --help`): serving, and the one-off
//! commands an operator runs with the same settings (from the environment, see
//! README.md): migrations, demo data, demo tokens, reconciliation, outbox replay,
//! rebuilding derived stores.

use chrono::{Duration, Utc};
use clap::{Parser, Subcommand};
use drops_shared::auth::{mint, Identity, Role};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::config::Settings;
use crate::startup::{App, Application};
use crate::state::{connect_db, Core, MIGRATOR};
use crate::{events, followers, users};

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
    }
}

/// Fixed ids of the demo data, so that seeding twice changes nothing and the
/// README's curl lines keep working.
pub mod demo {
    use uuid::Uuid;
    pub const ADMIN: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000001);
    pub const CREATOR_USER: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000002);
    pub const BUYER: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000003);
    pub const CREATOR: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000101);
    pub const PRODUCT: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000201);
    pub const LIVE_DROP: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000301);
    pub const UPCOMING_DROP: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000302);
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

/// Demo data: an admin, a creator with a product, a live drop of 100 units and an
/// upcoming drop. Re-running it keeps what exists and asks for a fresh inventory sync.
pub async fn seed(settings: &Settings) -> anyhow::Result<()> {
    let db = connect_db(settings).await?;
    MIGRATOR.run(&db).await?;
    let mut tx = db.begin().await?;
    for (id, role) in [(demo::ADMIN, Role::Admin), (demo::CREATOR_USER, Role::Creator), (demo::BUYER, Role::Buyer)] {
        users::ensure(&mut *tx, id, role).await?;
    }
    sqlx::query("INSERT INTO creators (id, user_id, name) VALUES ($1, $2, 'Nova Studio') ON CONFLICT (id) DO NOTHING")
        .bind(demo::CREATOR)
        .bind(demo::CREATOR_USER)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO products (id, creator_id, title, description) VALUES ($1, $2, 'Aurora Hoodie',
         'Heavyweight hoodie, numbered run of 100.') ON CONFLICT (id) DO NOTHING",
    )
    .bind(demo::PRODUCT)
    .bind(demo::CREATOR)
    .execute(&mut *tx)
    .await?;
    let now = Utc::now();
    let drops = [
        (demo::LIVE_DROP, now - Duration::minutes(1), now + Duration::days(30), 100),
        (demo::UPCOMING_DROP, now + Duration::days(1), now + Duration::days(2), 50),
    ];
    for (id, starts_at, ends_at, stock) in drops {
        sqlx::query(
            "INSERT INTO drops (id, product_id, creator_id, price_amount, currency, stock, max_per_user,
                                starts_at, ends_at, hold_seconds)
             VALUES ($1, $2, $3, 4500, 'EUR', $4, 2, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET inventory_synced_at = NULL",
        )
        .bind(id)
        .bind(demo::PRODUCT)
        .bind(demo::CREATOR)
        .bind(stock)
        .bind(starts_at)
        .bind(ends_at)
        .bind(settings.orders.hold_seconds as i32)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    println!("demo data seeded: live drop {}, upcoming drop {}", demo::LIVE_DROP, demo::UPCOMING_DROP);
    Ok(())
}

/// A signed development token for `role` (the demo user of that role unless `sub`).
pub fn token(settings: &Settings, role: Role, sub: Option<Uuid>, days: i64) -> String {
    let user_id = sub.unwrap_or(match role {
        Role::Admin => demo::ADMIN,
        Role::Creator => demo::CREATOR_USER,
        Role::Buyer => demo::BUYER,
    });
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

/// Rebuilds every creator's follower set in Redis from the ledger in Postgres.
pub async fn followers_rebuild(settings: Settings) -> anyhow::Result<()> {
    let core = Core::connect(settings).await?;
    let n = followers::rebuild(&core).await?;
    println!("follower sets rebuilt: {n} follow(s)");
    Ok(())
}

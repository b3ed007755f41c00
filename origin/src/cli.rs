//! The origin's commands besides `serve`: migrations, demo data, demo tokens, and
//! the signal that stops a running server.

use chrono::{Duration, Utc};
use drops_shared::auth::{mint, Identity, Role};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::config::Settings;
use crate::startup::{connect_db, MIGRATOR};

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
    for (id, role) in [(demo::ADMIN, "admin"), (demo::CREATOR_USER, "creator"), (demo::BUYER, "buyer")] {
        sqlx::query("INSERT INTO users (id, role) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(id)
            .bind(role)
            .execute(&mut *tx)
            .await?;
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
        .bind(settings.hold_seconds as i32)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    println!("demo data seeded: live drop {}, upcoming drop {}", demo::LIVE_DROP, demo::UPCOMING_DROP);
    Ok(())
}

/// `token --role buyer|creator|admin [--sub UUID] [--days N]`: prints a signed token.
pub fn token(settings: &Settings, args: &[String]) -> anyhow::Result<()> {
    let mut role = Role::Buyer;
    let mut sub = None;
    let mut days = 30;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--role" => role = serde_json::from_value(serde_json::Value::String(value.clone()))?,
            "--sub" => sub = Some(Uuid::parse_str(value)?),
            "--days" => days = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let user_id = sub.unwrap_or_else(|| match role {
        Role::Admin => demo::ADMIN,
        Role::Creator => demo::CREATOR_USER,
        Role::Buyer => demo::BUYER,
    });
    let token = mint(
        Identity { user_id, role },
        settings.jwt_secret.expose_secret().as_bytes(),
        Utc::now() + Duration::days(days),
    );
    println!("{token}");
    Ok(())
}

/// Runs reconciliation once over every active drop and prints the repairs.
pub async fn reconcile(settings: Settings) -> anyhow::Result<()> {
    let state = crate::AppState::connect(settings).await?;
    let repairs = crate::reconcile::run_once(&state, std::time::Duration::from_secs(30)).await?;
    for r in &repairs {
        println!("{} drop={} order={:?}: {}", r.repair, r.drop_id, r.order_id, r.reason);
    }
    println!("{} repair(s)", repairs.len());
    Ok(())
}

/// `outbox-replay --from SEQ --to SEQ`: publishes that range of the outbox again.
pub async fn outbox_replay(settings: Settings, args: &[String]) -> anyhow::Result<()> {
    let (mut from, mut to) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value: i64 = it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?.parse()?;
        match flag.as_str() {
            "--from" => from = Some(value),
            "--to" => to = Some(value),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let (from, to) = (from.unwrap_or(1), to.unwrap_or(i64::MAX));
    let state = crate::AppState::connect(settings).await?;
    let n = crate::events::relay::replay(&state, from, to).await?;
    println!("republished {n} event(s) with seq in {from}..={to}");
    Ok(())
}

/// Rebuilds every creator's follower set in Redis from the ledger in Postgres.
pub async fn followers_rebuild(settings: Settings) -> anyhow::Result<()> {
    let state = crate::AppState::connect(settings).await?;
    let n = crate::followers::rebuild(&state).await?;
    println!("follower sets rebuilt: {n} follow(s)");
    Ok(())
}

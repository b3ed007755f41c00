//! What the origin's integration tests share: a database of their own (created on
//! the test server, `DROPS_TEST_POSTGRES`, and left for the machine's next reset), and
//! settings for an origin on it, with Redis keys of its own, that needs no edge.
#![allow(dead_code)]

use drops_origin::config::Settings;
use sqlx::Connection;
use uuid::Uuid;

/// A new, empty database named after `label`; its URL.
pub async fn fresh_database(label: &str) -> String {
    let admin_url =
        std::env::var("DROPS_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("drops_{label}_{}", Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin_url).await.expect("postgres");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    let (base, _) = admin_url.rsplit_once('/').expect("a database URL");
    format!("{base}/{name}")
}

/// A new database, migrated; a pool on it.
pub async fn fresh_pool(label: &str) -> sqlx::PgPool {
    let db = sqlx::PgPool::connect(&fresh_database(label).await).await.expect("the new database");
    drops_origin::state::MIGRATOR.run(&db).await.expect("migrations");
    db
}

/// Development settings on a new database, with Redis keys of their own; the edge's
/// URL is one nothing listens on, so nothing under test may need the edge.
pub async fn fresh_settings(label: &str) -> Settings {
    let mut settings = Settings::development();
    settings.database.url = fresh_database(label).await.into();
    settings.redis.prefix = format!("drops-{label}-{}", Uuid::new_v4().simple());
    settings.edge.url = "http://127.0.0.1:9".into();
    settings
}

//! Every command README.md documents, run as the built `drops-origin` binary against
//! a fresh Postgres database and its own Redis prefix, as an operator would.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use drops_origin::catalogue::demo;
use drops_shared::auth::{verify_bearer, Role};
use sqlx::Connection;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_drops-origin");

struct Env {
    database_url: String,
    prefix: String,
}

impl Env {
    async fn fresh() -> Env {
        Env {
            database_url: support::fresh_database("cli").await,
            prefix: format!("drops-cli-{}", Uuid::new_v4().simple()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("DROPS_DATABASE_URL", &self.database_url)
            .env("DROPS_REDIS_PREFIX", &self.prefix)
            // Nothing listens there: no command here may need the edge.
            .env("DROPS_EDGE_URL", "http://127.0.0.1:9")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("the binary runs");
        assert_success(args, &out);
        String::from_utf8(out.stdout).expect("utf-8")
    }

    async fn db(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.database_url).await.expect("test database")
    }
}

fn assert_success(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "drops-origin {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn redis() -> redis::aio::MultiplexedConnection {
    let url = std::env::var("DROPS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.expect("redis")
}

#[test]
fn every_command_has_help_and_an_unknown_one_is_refused() {
    let env = Env { database_url: "postgres://unused".into(), prefix: "unused".into() };
    let help = env.run(&["--help"]);
    for command in ["serve", "migrate", "seed", "token", "reconcile", "outbox-replay", "followers-rebuild", "analytics"]
    {
        assert!(help.contains(command), "--help lists {command}:\n{help}");
        let own = env.run(&[command, "--help"]);
        assert!(own.contains("Usage: drops-origin"), "{command} --help:\n{own}");
    }
    let unknown = env.command(&["frobnicate"]).output().unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("frobnicate"));
    let bad_role = env.command(&["token", "--role", "overlord"]).output().unwrap();
    assert!(!bad_role.status.success(), "an unknown role is refused");
}

#[tokio::test]
async fn migrate_seed_and_token_give_a_working_demo() {
    let env = Env::fresh().await;
    assert!(env.run(&["migrate"]).contains("migrations applied"));
    let seeded = env.run(&["seed"]);
    assert!(seeded.contains(&demo::LIVE_DROP.to_string()), "{seeded}");
    env.run(&["seed"]); // twice changes nothing
    let drops: i64 = sqlx::query_scalar("SELECT count(*) FROM drops").fetch_one(&mut env.db().await).await.unwrap();
    assert_eq!(drops, 2);
    // The demo product's picture: the asset's key, recorded once as public media the
    // demo admin uploaded (`scripts/run` uploads the same bytes through the edge).
    let key = demo::product_image();
    let image_url: Option<String> = sqlx::query_scalar("SELECT image_url FROM products WHERE id = $1")
        .bind(demo::PRODUCT)
        .fetch_one(&mut env.db().await)
        .await
        .unwrap();
    assert_eq!(image_url, Some(format!("/v1/media/{key}")));
    let media: Vec<(String, String, i64, Uuid)> =
        sqlx::query_as("SELECT visibility, content_type, size, uploaded_by FROM media WHERE key = $1")
            .bind(key.to_string())
            .fetch_all(&mut env.db().await)
            .await
            .unwrap();
    assert_eq!(
        media,
        vec![("public".to_owned(), "image/png".to_owned(), demo::PRODUCT_IMAGE.len() as i64, demo::ADMIN)]
    );
    let uploaders: Vec<Uuid> = sqlx::query_scalar("SELECT user_id FROM media_uploads WHERE key = $1")
        .bind(key.to_string())
        .fetch_all(&mut env.db().await)
        .await
        .unwrap();
    assert_eq!(uploaders, vec![demo::ADMIN]);
    // A database seeded before products had pictures gets this one.
    sqlx::query("UPDATE products SET image_url = NULL").execute(&mut env.db().await).await.unwrap();
    env.run(&["seed"]);
    let image_url: Option<String> = sqlx::query_scalar("SELECT image_url FROM products WHERE id = $1")
        .bind(demo::PRODUCT)
        .fetch_one(&mut env.db().await)
        .await
        .unwrap();
    assert_eq!(image_url, Some(key.public_path()));

    let token = env.run(&["token", "--role", "creator"]);
    let identity = verify_bearer(
        Some(&format!("Bearer {}", token.trim())),
        drops_origin::config::DEV_JWT_SECRET.as_bytes(),
        Utc::now(),
    )
    .expect("a token the development secret verifies");
    assert_eq!((identity.role, identity.user_id), (Role::Creator, demo::CREATOR_USER));
    let sub = Uuid::now_v7();
    let token = env.run(&["token", "--role", "buyer", "--sub", &sub.to_string(), "--days", "1"]);
    let identity = verify_bearer(
        Some(&format!("Bearer {}", token.trim())),
        drops_origin::config::DEV_JWT_SECRET.as_bytes(),
        Utc::now(),
    )
    .unwrap();
    assert_eq!((identity.role, identity.user_id), (Role::Buyer, sub));
}

#[tokio::test]
async fn reconcile_replay_and_rebuild_work_on_the_database() {
    let env = Env::fresh().await;
    env.run(&["seed"]);
    // Seeded drops are not at the edge yet: nothing to reconcile, and no edge needed.
    assert!(env.run(&["reconcile"]).contains("0 repair(s)"));

    // Two events in the outbox: replaying the range puts both on the stream.
    let mut db = env.db().await;
    for _ in 0..2 {
        let id = Uuid::now_v7();
        let payload = serde_json::json!({
            "id": id, "occurred_at": Utc::now(),
            "type": "DropEnded", "data": {"drop_id": demo::LIVE_DROP, "creator_id": demo::CREATOR},
        });
        sqlx::query("INSERT INTO outbox (id, event_type, aggregate_id, payload) VALUES ($1, 'DropEnded', $2, $3)")
            .bind(id)
            .bind(demo::LIVE_DROP)
            .bind(payload)
            .execute(&mut db)
            .await
            .unwrap();
    }
    let replayed = env.run(&["outbox-replay", "--from", "1", "--to", "1000"]);
    assert!(replayed.contains("republished 2 event(s)"), "{replayed}");
    let mut redis = redis().await;
    let on_stream: i64 =
        redis::cmd("XLEN").arg(format!("{}:events", env.prefix)).query_async(&mut redis).await.unwrap();
    assert_eq!(on_stream, 2);

    // A follow in the ledger that Redis never saw: the rebuild puts it in the set.
    let fan = Uuid::now_v7();
    sqlx::query("INSERT INTO users (id, role) VALUES ($1, 'buyer')").bind(fan).execute(&mut db).await.unwrap();
    sqlx::query("INSERT INTO follows (creator_id, user_id) VALUES ($1, $2)")
        .bind(demo::CREATOR)
        .bind(fan)
        .execute(&mut db)
        .await
        .unwrap();
    assert!(env.run(&["followers-rebuild"]).contains("rebuilt: 1 follow(s)"));
    let set = format!("{}:followers:{}", env.prefix, demo::CREATOR);
    let members: Vec<String> = redis::cmd("ZRANGE").arg(&set).arg(0).arg(-1).query_async(&mut redis).await.unwrap();
    assert_eq!(members, vec![fan.to_string()]);

    // The analytics, from the outbox: the drop's creation (the DropEnded events say
    // nothing the analytics count).
    let id = Uuid::now_v7();
    let payload = serde_json::json!({
        "id": id, "occurred_at": Utc::now(), "type": "DropCreated",
        "data": {"drop_id": demo::LIVE_DROP, "creator_id": demo::CREATOR, "starts_at": Utc::now(),
                 "ends_at": Utc::now(), "stock": 7},
    });
    sqlx::query("INSERT INTO outbox (id, event_type, aggregate_id, payload) VALUES ($1, 'DropCreated', $2, $3)")
        .bind(id)
        .bind(demo::LIVE_DROP)
        .bind(payload)
        .execute(&mut db)
        .await
        .unwrap();
    let rebuilt = env.run(&["analytics", "rebuild"]);
    assert!(rebuilt.contains("1 event(s) applied"), "{rebuilt}");
    let total: Option<i32> = sqlx::query_scalar("SELECT total FROM analytics_drops WHERE drop_id = $1")
        .bind(demo::LIVE_DROP)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(total, Some(7));
}

#[tokio::test]
async fn serve_answers_and_stops_on_sigterm() {
    let env = Env::fresh().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = env
        .command(&["serve"])
        .env("DROPS_PORT", port.to_string())
        // Any free port: not the default one another run may hold.
        .env("DROPS_METRICS_PORT", "0")
        .env("DROPS_RECONCILE_INTERVAL_SECS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = false;
    while Instant::now() < deadline && !ready {
        ready = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await.is_ok_and(|r| r.status() == 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "serve answers /readyz");
    // SIGTERM, as a process manager stops a server.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve stops within 30 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
}

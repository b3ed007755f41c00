//! The fan-out load tool: a creator with N followers (default 1,000,000, seeded in
//! bulk), 1% of them online, every offline one with a push subscription. A drop of
//! theirs goes live; prints the time from `DropStarted` to the last delivery queued,
//! deliveries per second, and the peak memory of this process (origin included).
//!
//! `cargo run --release -p drops-tests --bin fanout-bench -- [followers]`

use std::time::{Duration, Instant};

use chrono::Utc;
use drops_shared::auth::Role;
use drops_tests::client::token;
use drops_tests::Stack;
use serde_json::json;
use uuid::Uuid;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let followers: i64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    println!("starting the stack (origin in-process, edge under wrangler dev)...");
    let stack = Stack::get();
    let client = stack.client();
    let db = stack.db().await;

    let admin = token(Uuid::now_v7(), Role::Admin);
    let user = Uuid::now_v7();
    let c = client.post_json("/v1/creators", Some(&admin), json!({"name": "Megastar", "user_id": user})).await;
    let creator_id = Uuid::parse_str(c.json()["id"].as_str().unwrap()).unwrap();
    let creator_token = token(user, Role::Creator);
    let p =
        client.post_json("/v1/products", Some(&creator_token), json!({"title": "Tour tee", "description": ""})).await;
    let product = p.json()["id"].as_str().unwrap().to_owned();

    let seeding = Instant::now();
    sqlx::query(
        "WITH u AS (INSERT INTO users (id, role) SELECT gen_random_uuid(), 'buyer' FROM generate_series(1, $2) RETURNING id)
         INSERT INTO follows (creator_id, user_id, followed_at) SELECT $1, id, clock_timestamp() FROM u",
    )
    .bind(creator_id)
    .bind(followers)
    .execute(&db)
    .await
    .expect("seed follows");
    let online: Vec<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM follows WHERE creator_id = $1 ORDER BY random() LIMIT $2")
            .bind(creator_id)
            .bind(followers / 100)
            .fetch_all(&db)
            .await
            .expect("online sample");
    sqlx::query(
        "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth)
         SELECT user_id, 'http://127.0.0.1:1/push', 'k', 'a' FROM follows WHERE creator_id = $1 AND NOT (user_id = ANY($2))",
    )
    .bind(creator_id)
    .bind(&online)
    .execute(&db)
    .await
    .expect("seed subscriptions");
    let online_n = online.len();
    stack
        .with_origin(move |s| async move {
            let mut conn = s.core.redis.get_multiplexed_async_connection().await.unwrap();
            for chunk in online.chunks(5_000) {
                let mut pipe = redis::pipe();
                for u in chunk {
                    pipe.cmd("SET")
                        .arg(format!("{}:presence:{u}", s.core.settings.redis.prefix))
                        .arg(&s.notifications.live.instance)
                        .arg("EX")
                        .arg(600)
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await.unwrap();
            }
        })
        .await;
    println!(
        "seeded {followers} followers ({online_n} online, the rest with push subscriptions) in {:.1}s",
        seeding.elapsed().as_secs_f64()
    );

    let starts_at = Utc::now() + chrono::Duration::seconds(2);
    let body = json!({"product_id": product, "price": {"amount": 3000, "currency": "EUR"}, "stock": 100, "max_per_user": 1,
                      "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1)});
    let d = client.post_json("/v1/drops", Some(&creator_token), body).await;
    let drop_id = Uuid::parse_str(d.json()["id"].as_str().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let (delivered, queued, took): (i64, i64, f64) = loop {
        let row: Option<(i64, i64, Option<f64>)> = sqlx::query_as(
            "SELECT sum(j.delivered)::bigint, sum(j.queued_push)::bigint,
                    CASE WHEN bool_and(j.finished_at IS NOT NULL)
                         THEN EXTRACT(EPOCH FROM max(j.finished_at) - min(o.created_at))::float8 END
             FROM fanout_jobs j JOIN outbox o ON o.id = j.event_id WHERE j.drop_id = $1 HAVING count(*) > 0",
        )
        .bind(drop_id)
        .fetch_optional(&db)
        .await
        .expect("job");
        if let Some((delivered, queued, Some(took))) = row {
            break (delivered, queued, took);
        }
        assert!(Instant::now() < deadline, "fan-out did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "fan-out: {} followers, {delivered} over sockets, {queued} pushes queued, {:.2}s from DropStarted to the last queued = {:.0} deliveries/s",
        delivered + queued,
        took,
        (delivered + queued) as f64 / took
    );
    println!("peak memory of this process (origin in-process, plus the bench's client): {:.0} MiB", peak_rss_mib());
}

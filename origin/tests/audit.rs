//! The audit log against a fresh Postgres database of its own: appends from many
//! transactions at once form one contiguous chain, an event is recorded once however
//! often it arrives, the database refuses to change or remove an entry, and
//! verification finds the first entry edited behind the triggers' back. (Through
//! the edge, with real requests and events: `tests/tests/e2e/audit.rs`.)

mod support;

use drops_origin::audit::{self, chain, NewEntry};
use drops_origin::http::extract::RequestId;
use drops_origin::App;
use drops_shared::auth::{Identity, Role};
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

/// An origin's state on a database of its own (no background workers run). Its pool
/// waits long for a connection: these tests check the chain under concurrency, not
/// load shedding (a busy machine took longer than the default quarter second).
async fn fresh() -> App {
    let mut settings = support::fresh_settings("audit").await;
    settings.database.acquire_timeout_ms = 10_000;
    App::connect(settings).await.expect("the origin connects and migrates")
}

fn action(i: usize) -> NewEntry {
    let admin = Identity { user_id: Uuid::now_v7(), role: Role::Admin };
    NewEntry::system("creator.created", "creator", Uuid::now_v7(), json!({"n": i, "name": "Ünï \"quoted\""}))
        .by(admin, &RequestId { client: Some(format!("req-{i}")), server: Uuid::now_v7().to_string() })
}

async fn append_one(app: &App, entry: NewEntry) -> usize {
    let mut tx = app.core.db.begin().await.unwrap();
    let n = audit::append_chained(&mut tx, vec![entry]).await.unwrap();
    tx.commit().await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_form_one_contiguous_valid_chain() {
    let app = fresh().await;
    let empty = chain::verify(&app.core.db).await.unwrap();
    assert_eq!((empty.entries, empty.valid, empty.first_invalid_seq), (0, true, None));

    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                if i % 4 == 0 {
                    // A batch of three in one append.
                    let mut tx = app.core.db.begin().await.unwrap();
                    let n = audit::append_chained(&mut tx, vec![action(i), action(i + 100), action(i + 200)])
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    n
                } else {
                    append_one(&app, action(i)).await
                }
            })
        })
        .collect();
    let mut appended = 0;
    for t in tasks {
        appended += t.await.unwrap();
    }
    assert_eq!(appended, 30 + 10 * 3);
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM audit_log ORDER BY seq").fetch_all(&app.core.db).await.unwrap();
    assert_eq!(seqs, (1..=60).collect::<Vec<i64>>(), "contiguous from 1");
    let first_prev: String =
        sqlx::query_scalar("SELECT prev_hash FROM audit_log WHERE seq = 1").fetch_one(&app.core.db).await.unwrap();
    assert_eq!(first_prev, chain::GENESIS);
    let verified = chain::verify(&app.core.db).await.unwrap();
    assert_eq!((verified.entries, verified.valid, verified.first_invalid_seq), (60, true, None));

    // A rolled-back append leaves nothing behind, not even a gap.
    let mut tx = app.core.db.begin().await.unwrap();
    audit::append_chained(&mut tx, vec![action(999)]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(append_one(&app, action(1000)).await, 1);
    assert_eq!(chain::verify(&app.core.db).await.unwrap().entries, 61);
    assert!(chain::verify(&app.core.db).await.unwrap().valid);
}

#[tokio::test]
async fn an_event_is_recorded_once_however_often_it_arrives() {
    let app = fresh().await;
    let event_id = Uuid::now_v7();
    let observed = |n: i64| NewEntry {
        event_id: Some(event_id),
        ..NewEntry::system("order.confirmed", "order", Uuid::nil(), json!({"n": n}))
    };
    assert_eq!(append_one(&app, observed(1)).await, 1);
    assert_eq!(append_one(&app, observed(2)).await, 0, "a replay adds nothing");
    // Twice in one batch, next to something new: only the new one is appended.
    let mut tx = app.core.db.begin().await.unwrap();
    assert_eq!(audit::append_chained(&mut tx, vec![observed(3), action(1), observed(4)]).await.unwrap(), 1);
    tx.commit().await.unwrap();
    let other = Uuid::now_v7();
    let mut tx = app.core.db.begin().await.unwrap();
    let twice =
        |n| NewEntry { event_id: Some(other), ..NewEntry::system("drop.created", "drop", other, json!({"n": n})) };
    assert_eq!(audit::append_chained(&mut tx, vec![twice(1), twice(2)]).await.unwrap(), 1);
    tx.commit().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(&app.core.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert!(chain::verify(&app.core.db).await.unwrap().valid);

    // Data the chain could not read back as hashed is refused.
    let mut tx = app.core.db.begin().await.unwrap();
    let float = NewEntry::system("x.y", "x", "1", json!({"ratio": 0.5}));
    assert!(audit::append_chained(&mut tx, vec![float]).await.is_err());
}

#[tokio::test]
async fn the_database_refuses_changes_and_verify_finds_an_edit_behind_its_back() {
    let app = fresh().await;
    for i in 0..5 {
        append_one(&app, action(i)).await;
    }
    let db = &app.core.db;
    for refused in
        ["UPDATE audit_log SET data = '{}' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 5", "TRUNCATE audit_log"]
    {
        let err = sqlx::query(refused).execute(db).await.expect_err(refused);
        assert!(err.to_string().contains("append-only"), "{refused}: {err}");
    }
    assert_eq!(chain::verify(db).await.unwrap().first_invalid_seq, None);

    // A superuser gets past the triggers; the chain still tells.
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await.unwrap();
    sqlx::query("UPDATE audit_log SET data = jsonb_set(data, '{n}', '42') WHERE seq = 3")
        .execute(&mut *conn)
        .await
        .unwrap();
    let v = chain::verify(db).await.unwrap();
    assert_eq!((v.entries, v.valid, v.first_invalid_seq), (5, false, Some(3)));
    // Put back as it was: whole again.
    sqlx::query("UPDATE audit_log SET data = jsonb_set(data, '{n}', '2') WHERE seq = 3")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(chain::verify(db).await.unwrap().valid);
    // A removed entry is a gap: the one after it is the first that does not hold.
    sqlx::query("DELETE FROM audit_log WHERE seq = 4").execute(&mut *conn).await.unwrap();
    let v = chain::verify(db).await.unwrap();
    assert_eq!((v.entries, v.valid, v.first_invalid_seq), (4, false, Some(5)));
    sqlx::query("SET session_replication_role = origin").execute(&mut *conn).await.unwrap();
}

/// Rewrites entry `seq`'s data as a superuser would, then hashes it and every later
/// entry again by the chain's own (public, unkeyed) rules, so the chain alone holds.
async fn rewrite_and_rehash(conn: &mut sqlx::PgConnection, seq: i64, data: serde_json::Value) {
    use drops_shared::api::AuditEntry;
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await.unwrap();
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT seq, prev_hash FROM audit_log WHERE seq >= $1 ORDER BY seq")
        .bind(seq)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let mut prev: Option<String> = None;
    for (n, stored_prev) in rows {
        let page = sqlx::query_as::<_, (serde_json::Value,)>(
            "SELECT to_jsonb(e) FROM (SELECT seq, at, action, subject_kind, subject_id, request_id, server_request_id,
                    actor_user_id, actor_role, data FROM audit_log WHERE seq = $1) e",
        )
        .bind(n)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .0;
        let mut entry = AuditEntry {
            seq: n,
            at: serde_json::from_value(page["at"].clone()).unwrap(),
            action: page["action"].as_str().unwrap().to_owned(),
            actor: page["actor_user_id"].as_str().map(|id| drops_shared::api::AuditActor {
                user_id: id.parse().unwrap(),
                role: page["actor_role"].as_str().unwrap().to_owned(),
            }),
            subject: drops_shared::api::AuditSubject {
                kind: page["subject_kind"].as_str().unwrap().to_owned(),
                id: page["subject_id"].as_str().unwrap().to_owned(),
            },
            request_id: page["request_id"].as_str().map(str::to_owned),
            server_request_id: page["server_request_id"].as_str().map(str::to_owned),
            data: if n == seq { data.clone() } else { page["data"].clone() },
            hash: String::new(),
            prev_hash: prev.clone().unwrap_or(stored_prev),
        };
        entry.hash = chain::entry_hash(&entry);
        sqlx::query("UPDATE audit_log SET data = $2, prev_hash = $3, hash = $4 WHERE seq = $1")
            .bind(n)
            .bind(&entry.data)
            .bind(&entry.prev_hash)
            .bind(&entry.hash)
            .execute(&mut *conn)
            .await
            .unwrap();
        prev = Some(entry.hash);
    }
    sqlx::query("SET session_replication_role = origin").execute(&mut *conn).await.unwrap();
}

#[tokio::test]
async fn a_chain_hashed_again_after_an_edit_no_longer_matches_its_seals() {
    let app = fresh().await;
    let (db, keys) = (&app.core.db, &app.core.settings.audit);
    for i in 0..2 {
        append_one(&app, action(i)).await;
    }
    audit::seal::round(db, keys).await.unwrap();
    for i in 2..6 {
        append_one(&app, action(i)).await;
    }
    audit::seal::round(db, keys).await.unwrap();
    let whole = audit::verify(db, keys).await.unwrap();
    assert_eq!((whole.entries, whole.valid, whole.sealed_through_seq), (6, true, Some(6)));

    // Entry 3 rewritten and the chain hashed again from there: the links all hold...
    let mut conn = db.acquire().await.unwrap();
    rewrite_and_rehash(&mut conn, 3, json!({"n": 3, "name": "Forged"})).await;
    assert!(chain::verify(db).await.unwrap().valid, "the unkeyed chain alone is fooled");
    // ...but the seal over seq 6 no longer matches; the one over seq 2 still vouches for 1–2.
    let v = audit::verify(db, keys).await.unwrap();
    assert_eq!((v.valid, v.first_invalid_seq, v.sealed_through_seq), (false, Some(3), Some(2)));

    // A seal made without the key does not help, nor does one made with another key.
    let forged = drops_origin::config::AuditKey { id: keys.current().id.clone(), secret: "guessed".to_owned().into() };
    let head: String = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = 6").fetch_one(db).await.unwrap();
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await.unwrap();
    sqlx::query("DELETE FROM audit_seals WHERE seq = 6").execute(&mut *conn).await.unwrap();
    sqlx::query("INSERT INTO audit_seals (seq, hash, key_id, mac) VALUES (6, $1, $2, $3)")
        .bind(&head)
        .bind(&forged.id)
        .bind(audit::seal::seal(&forged, 6, &head))
        .execute(&mut *conn)
        .await
        .unwrap();
    let v = audit::verify(db, keys).await.unwrap();
    assert_eq!((v.valid, v.first_invalid_seq), (false, Some(3)));

    // Nor does removing the seals: entries no seal vouches for, once old, are a fault.
    sqlx::query("DELETE FROM audit_seals").execute(&mut *conn).await.unwrap();
    sqlx::query("SET session_replication_role = origin").execute(&mut *conn).await.unwrap();
    let young = audit::verify(db, keys).await.unwrap();
    assert!(young.valid && young.sealed_through_seq.is_none(), "entries this young may still be waiting for a seal");
    let backdated = (chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await.unwrap();
    sqlx::query("UPDATE audit_log SET at = $1::timestamptz").bind(&backdated).execute(&mut *conn).await.unwrap();
    sqlx::query("SET session_replication_role = origin").execute(&mut *conn).await.unwrap();
    rewrite_and_rehash(&mut conn, 1, json!({"n": 0, "name": "Ünï \"quoted\""})).await;
    assert!(chain::verify(db).await.unwrap().valid);
    let v = audit::verify(db, keys).await.unwrap();
    assert_eq!((v.valid, v.first_invalid_seq, v.sealed_through_seq), (false, Some(1), None));
}

#[tokio::test]
async fn seals_verify_across_a_key_rotation() {
    use drops_origin::config::AuditSettings;
    let app = fresh().await;
    let db = &app.core.db;
    let old = AuditSettings::parse(&"k1:first-audit-key-0123456789abcdef0123".to_owned().into()).unwrap();
    let rotated = AuditSettings::parse(
        &"k2:second-audit-key-0123456789abcdef012,k1:first-audit-key-0123456789abcdef0123".to_owned().into(),
    )
    .unwrap();
    append_one(&app, action(0)).await;
    audit::seal::round(db, &old).await.unwrap();
    append_one(&app, action(1)).await;
    audit::seal::round(db, &rotated).await.unwrap();
    let key_ids: Vec<String> =
        sqlx::query_scalar("SELECT key_id FROM audit_seals ORDER BY seq").fetch_all(db).await.unwrap();
    assert_eq!(key_ids, ["k1", "k2"], "the new key seals from the rotation on");
    let v = audit::verify(db, &rotated).await.unwrap();
    assert_eq!((v.valid, v.sealed_through_seq), (true, Some(2)));
    // The old key retired: its seal is not checked, the newer one vouches for everything.
    let retired = AuditSettings::parse(&"k2:second-audit-key-0123456789abcdef012".to_owned().into()).unwrap();
    let v = audit::verify(db, &retired).await.unwrap();
    assert_eq!((v.valid, v.sealed_through_seq), (true, Some(2)));
    // A key that never sealed anything vouches for nothing.
    assert_eq!(audit::seal::round(db, &retired).await.unwrap(), drops_origin::tasks::Next::Later);
}

#[tokio::test]
async fn staged_entries_join_the_chain_in_order_only_once_committed() {
    let app = fresh().await;
    let (db, rounds) = (&app.core.db, &app.core.audit_sequencer);
    let mut tx = db.begin().await.unwrap();
    assert_eq!(audit::append(&mut tx, vec![action(1), action(2), action(3)]).await.unwrap(), 3);
    // Not committed yet: a round chains nothing.
    audit::sequencer::round(db, rounds).await.unwrap();
    assert_eq!(chain::verify(db).await.unwrap().entries, 0);
    tx.commit().await.unwrap();
    let mut rolled_back = db.begin().await.unwrap();
    audit::append(&mut rolled_back, vec![action(99)]).await.unwrap();
    rolled_back.rollback().await.unwrap();
    // Entries chained directly meanwhile take their place in the same line.
    append_one(&app, action(4)).await;
    audit::sequencer::round(db, rounds).await.unwrap();
    let ns: Vec<i64> =
        sqlx::query_scalar("SELECT (data->>'n')::int8 FROM audit_log ORDER BY seq").fetch_all(db).await.unwrap();
    assert_eq!(ns, [4, 1, 2, 3], "staged entries in the order given, after what was chained before them");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_pending").fetch_one(db).await.unwrap();
    assert_eq!(pending, 0);
    let v = chain::verify(db).await.unwrap();
    assert_eq!((v.entries, v.valid), (4, true));
    // A float could not be read back as hashed: refused when staged, as when chained.
    let mut tx = db.begin().await.unwrap();
    assert!(audit::append(&mut tx, vec![NewEntry::system("x.y", "x", "1", json!({"r": 0.5}))]).await.is_err());
}

/// Admin writes at once on a pool of a few connections (issue 22), while the chain's
/// lock is held a while (as a long append holds it): when each write waited for the
/// lock holding its connection, five held the pool and the rest were answered 503
/// once their wait for a connection was out. Staged, every one is served at once,
/// its entry chained when the lock is free; and without the lock held, each is
/// chained by the time it is answered. The chain holds throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admin_writes_on_a_small_pool_are_all_served_and_chained() {
    use drops_origin::Application;

    let mut settings = support::fresh_settings("audit").await;
    settings.database.max_connections = 5;
    // Well past what 40 short writes on 5 connections take on a busy machine, and
    // shorter than the lock is held below.
    settings.database.acquire_timeout_ms = 2_000;
    settings.server.port = 0;
    settings.server.metrics_port = 0;
    settings.orders.reconcile_interval_secs = 0;
    let (database_url, secret) = (settings.database.url.clone(), settings.auth.jwt_secret.clone());
    let application = Application::build(settings).await.expect("the origin starts");
    let (url, db) = (format!("http://127.0.0.1:{}", application.port()), application.app().core.db.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let writes = AdminWrites::new(url, &secret);

    // The lock held on a connection of the test's own, longer than a request waits for
    // a pooled connection.
    use secrecy::ExposeSecret;
    let mut holder = sqlx::PgConnection::connect(database_url.expose_secret()).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    chain::lock(&mut held).await.unwrap();
    let crowd = tokio::spawn(async move { writes.send("held", 40).await });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    held.commit().await.unwrap();
    let (writes, statuses) = crowd.await.unwrap();
    let served = statuses.iter().filter(|s| **s == 201).count();
    println!("lock held: {served} of 40 admin writes served on a pool of 5; statuses {statuses:?}");
    assert_eq!(served, 40, "{statuses:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while chained(&db, "held").await < 40 {
        assert!(std::time::Instant::now() < deadline, "the staged entries were never chained");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Nothing holds the lock: each is answered once its entry is in the chain.
    let (_, statuses) = writes.send("free", 40).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(chained(&db, "free").await, 40, "every entry in the chain when its write was answered");

    let v = chain::verify(&db).await.unwrap();
    assert!(v.valid, "{v:?}");
    let (count, max): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), max(seq) FROM audit_log").fetch_one(&db).await.unwrap();
    assert_eq!(Some(count), max, "seqs contiguous from 1");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Admins creating creators, all at once.
struct AdminWrites {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl AdminWrites {
    fn new(url: String, secret: &secrecy::SecretString) -> Self {
        use secrecy::ExposeSecret;
        let admin = Identity { user_id: Uuid::now_v7(), role: Role::Admin };
        let expires = chrono::Utc::now() + chrono::Duration::hours(1);
        let token = drops_shared::auth::mint(admin, secret.expose_secret().as_bytes(), expires);
        Self { http: reqwest::Client::new(), url, token }
    }

    /// Sends `n` at once, with request ids `<tag>-<i>`; their statuses (0: no answer).
    async fn send(self, tag: &str, n: usize) -> (Self, Vec<u16>) {
        let writes = (0..n).map(|i| {
            let req = self
                .http
                .post(format!("{}/v1/creators", self.url))
                .bearer_auth(&self.token)
                .header("x-request-id", format!("{tag}-{i}"))
                .json(&json!({"name": format!("Creator {i}"), "user_id": Uuid::now_v7()}));
            async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        });
        let statuses = futures::future::join_all(writes).await;
        (self, statuses)
    }
}

/// Entries in the chain written by requests `<tag>-…`.
async fn chained(db: &sqlx::PgPool, tag: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE request_id LIKE $1 || '-%'")
        .bind(tag)
        .fetch_one(db)
        .await
        .unwrap()
}

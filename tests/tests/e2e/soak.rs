//! The soak in small (the bin `soak` runs it for minutes, see README "Soak"): twenty
//! seconds of its mixed traffic through the edge (browse, follow, buy, rush drops
//! that sell out, pay at the sandbox, cancel, holds left to expire, inboxes, media),
//! sampled every five seconds. No 500 anywhere, the platform quiet afterwards with
//! nothing for reconciliation to repair, and every sample taken. No timing or memory
//! assertion: what twenty seconds on a shared machine say of those is noise.

use std::time::Duration;

use drops_tests::soak::sample::Watched;
use drops_tests::soak::{self, report, Options, Target};
use drops_tests::Stack;

#[tokio::test]
async fn mixed_traffic_leaves_no_500_and_no_drift() {
    let stack = Stack::shared().await;
    let edge_port: u16 = stack.edge_url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the edge's port");
    let target = Target {
        client: stack.client(),
        ceiling_url: None,
        metrics_url: stack.metrics_url.clone(),
        database_url: stack.database_url.clone(),
        redis_url: std::env::var("DROPS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        redis_prefix: stack.settings.redis.prefix.clone(),
        watched: vec![
            // The origin runs inside the test process here.
            Watched::Pid { label: "test process".into(), pid: std::process::id() },
            Watched::Wrangler { label: "edge".into(), port: edge_port },
        ],
    };
    let options = Options {
        duration: Duration::from_secs(20),
        rate: Some(15.0),
        sample_every: Duration::from_secs(5),
        probe: Duration::ZERO,
        hold_seconds: 4,
        rush_every: Duration::from_secs(5),
        in_flight: 64,
    };
    let run = soak::run(&target, &options).await.expect("the soak runs");
    println!("{}", report::tables(&run.samples, &run.world.stats));

    let statuses = run.world.stats.our_statuses();
    assert!(!statuses.contains_key(&500), "no 500 in the mixed traffic: {:?}", run.world.stats.statuses());
    assert!(run.world.stats.requests() > 100, "the traffic ran: {statuses:?}");

    let drops = run.world.drop_ids();
    assert!(drops.len() > 1, "rush drops were made beside the long one");
    soak::settle(&stack.db().await, &target.redis_prefix, &drops, Duration::from_secs(90))
        .await
        .expect("quiet after the traffic");
    let repairs = stack
        .with_origin(move |s| async move { s.reconcile_drops(&drops, Duration::ZERO).await })
        .await
        .expect("reconciliation runs");
    assert!(
        repairs.is_empty(),
        "nothing to repair: {:?}",
        repairs.iter().map(|r| (r.repair, r.order_id, r.reason.clone())).collect::<Vec<_>>()
    );

    assert!(run.samples.len() >= 5, "a sample at the start, every 5 s and at the end: {}", run.samples.len());
    for s in &run.samples {
        assert!(s.proc("test process").is_some_and(|p| p.rss_mib > 0.0), "the test process's memory at {}", s.at_secs);
        assert!(
            s.procs.iter().any(|p| p.label.starts_with("edge workerd") && p.rss_mib > 0.0),
            "the edge's workerd found and measured at {}: {:?}",
            s.at_secs,
            s.procs
        );
        assert!(s.edge_wasm_mib.is_some_and(|m| m > 0.0), "the edge's wasm memory at {}", s.at_secs);
        assert!(s.pg_connections > 0 && s.redis_used_mib > 0.0, "the stores at {}", s.at_secs);
    }
    let windows: u64 = run.samples.iter().flat_map(|s| s.window.values()).map(|w| w.count).sum();
    assert!(windows > 0, "latencies were taken per window");
}

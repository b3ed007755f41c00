//! Whose `X-Forwarded-For` counts (issue 22): behind a load balancer every request
//! comes from the balancer, so the per-client limits must take the client from the
//! header, but only from the proxies the operator trusts (`DROPS_TRUSTED_PROXIES`);
//! from anyone else the header would let one client pass for many.

mod support;

use drops_origin::config::{parse_proxies, Rate};
use drops_origin::Application;
use uuid::Uuid;

/// A running origin on a database of its own, with per-client limits of 3 requests
/// at once and `trusted` proxies; its URL and what stops it.
async fn origin(trusted: &str) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut settings = support::fresh_settings("proxies").await;
    settings.orders.reconcile_interval_secs = 0;
    settings.server.port = 0;
    settings.server.metrics_port = 0;
    settings.limits.direct = Rate { per_minute: 1, burst: 3 };
    settings.server.trusted_proxies = parse_proxies(trusted).unwrap();
    let application = Application::build(settings).await.expect("the origin starts");
    let url = format!("http://127.0.0.1:{}", application.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        let _ = application
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await;
    });
    (url, stop, served)
}

/// Statuses of `GET` a public route (404 for an unknown creator) sent with each of
/// `forwarded_for`, one after another.
async fn statuses(url: &str, forwarded_for: &[String]) -> Vec<u16> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for address in forwarded_for {
        let req = http.get(format!("{url}/v1/creators/{}", Uuid::now_v7())).header("x-forwarded-for", address);
        out.push(req.send().await.expect("an answer").status().as_u16());
    }
    out
}

fn addresses(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("198.51.100.{}", i + 1)).collect()
}

fn limited(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 429).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_pass_for_many_clients_by_naming_them() {
    let (url, stop, served) = origin("").await;
    let varied = statuses(&url, &addresses(10)).await;
    println!("untrusted peer, 10 forwarded-for addresses: {varied:?}");
    assert_eq!(limited(&varied), 7, "one client, whatever it claims: its burst of 3 then 429s");
    // A proxy not on the list is no better.
    let _ = stop.send(());
    served.await.unwrap();
    let (url, stop, served) = origin("10.0.0.0/8").await;
    assert_eq!(limited(&statuses(&url, &addresses(10)).await), 7);
    let _ = stop.send(());
    served.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let (url, stop, served) = origin("127.0.0.1/32").await;
    let varied = statuses(&url, &addresses(10)).await;
    println!("trusted proxy, 10 forwarded-for addresses: {varied:?}");
    assert_eq!(limited(&varied), 0, "ten clients behind the proxy, one request each");
    // One of them past its burst is refused; the others are not held to its limit.
    let one = vec!["203.0.113.50".to_owned(); 5];
    let again = statuses(&url, &one).await;
    assert_eq!(limited(&again), 2, "{again:?}");
    // What the client wrote left of the proxy's entry is its own claim: ignored.
    let forged: Vec<String> = (0..3).map(|i| format!("192.0.2.{i}, 203.0.113.50")).collect();
    assert_eq!(limited(&statuses(&url, &forged).await), 3, "still the same client");
    assert_eq!(limited(&statuses(&url, &["203.0.113.51".to_owned()]).await), 0);
    let _ = stop.send(());
    served.await.unwrap();
}

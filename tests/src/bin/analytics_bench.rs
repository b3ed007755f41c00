//! The analytics lag tool: how long after an event the analytics endpoint (through
//! the edge) shows it. One sample at a time on one drop: a buy (its 201 is the
//! event; the figures show it when they count one more order), then a payment (the
//! sandbox checkout's answer is the event; the figures show it when
//! `orders.confirmed` grows). The endpoint is polled every `poll` ms as the drop's
//! creator. Prints p50/p99/max per kind of event; no assertions.
//!
//! `cargo run --release -p drops-tests --bin analytics-bench -- [samples] [poll_ms]`
//! (defaults 200 10: 100 buys and 100 payments).

use std::time::{Duration, Instant};

use drops_tests::client::Purchase;
use drops_tests::{Buyer, Client, DropSpec, Stack};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

/// Orders of the drop the figures count, in any state, and those confirmed.
fn counted(figures: &Value) -> (u64, u64) {
    let orders = &figures["orders"];
    let n = |state: &str| orders[state].as_u64().unwrap_or(0);
    (n("reserved") + n("confirmed") + n("failed") + n("cancelled") + n("expired"), n("confirmed"))
}

/// Polls the drop's figures until `shown` holds for them; returns when it did,
/// measured from `since`.
async fn seen(
    client: &Client,
    path: &str,
    owner: &str,
    shown: impl Fn((u64, u64)) -> bool,
    since: Instant,
    poll: Duration,
) -> Duration {
    loop {
        let answer = client.get(path, Some(owner)).await;
        let figures: Value = answer.json();
        if answer.status == StatusCode::OK && shown(counted(&figures)) {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(60), "the event never showed: {figures}");
        tokio::time::sleep(poll).await;
    }
}

fn report(name: &str, h: &Histogram<u64>) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{name:<22} n={:<4} p50={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        h.len(),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let samples = args.first().copied().unwrap_or(200).max(2);
    let poll = Duration::from_millis(args.get(1).copied().unwrap_or(10));
    println!("starting the stack (origin in-process, edge under wrangler dev)...");
    let stack = Stack::get();
    let client = stack.client();
    let (owner, product_id) = client.creator_with_product().await;
    let units = (samples / 2 + 1) as u32;
    let spec = DropSpec { hold_seconds: Some(600), ..DropSpec::live(units, 1) };
    let card = client.create_drop_as(&owner, product_id, spec).await;
    let drop_id: Uuid = card["id"].as_str().and_then(|s| s.parse().ok()).expect("drop id");
    let path = format!("/v1/drops/{drop_id}/analytics");

    let (mut reserved, mut confirmed) = (Histogram::<u64>::new(3).unwrap(), Histogram::<u64>::new(3).unwrap());
    for i in 0..samples / 2 {
        // A buy: the 201 is the event.
        let buyer = Buyer::new();
        let bought = client.buy(&buyer, drop_id, &format!("lag-{}", buyer.id), 1).await;
        let at = Instant::now();
        assert_eq!(bought.status, StatusCode::CREATED, "{:?}", bought.json());
        let lag = seen(&client, &path, &owner, |(orders, _)| orders > i, at, poll).await;
        reserved.record(lag.as_micros() as u64).unwrap();

        // Its payment: the checkout's answer is the event.
        let order_id: Uuid = bought.json()["order_id"].as_str().and_then(|s| s.parse().ok()).expect("order id");
        let order = client.wait_order(&buyer, order_id, 30, |v| v["payment"].is_object()).await;
        let purchase = Purchase {
            buyer,
            order_id,
            reference: order["payment"]["reference"].as_str().expect("reference").to_owned(),
            checkout_url: order["payment"]["checkout_url"].as_str().expect("checkout").to_owned(),
            amount: order["amount"]["amount"].as_i64().expect("amount"),
        };
        let paid = client.checkout(&purchase, "succeed").await;
        let at = Instant::now();
        assert!(paid.status.is_success(), "{:?}", paid.json());
        let lag = seen(&client, &path, &owner, |(_, confirmed)| confirmed > i, at, poll).await;
        confirmed.record(lag.as_micros() as u64).unwrap();
    }
    println!(
        "event → GET {path} through the edge, polled every {} ms (the poll adds up to that much):",
        poll.as_millis()
    );
    report("buy (201) → reserved", &reserved);
    report("payment → confirmed", &confirmed);
    let mut all = reserved.clone();
    all.add(&confirmed).unwrap();
    report("all events", &all);
}

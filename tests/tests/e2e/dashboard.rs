//! The dashboard in a real browser: Debian's chromium, driven through chromedriver
//! (WebDriver) from here. A creator signs in with a token, picks their drop, and
//! watches the counters and the chart move while buyers buy and pay through the edge.
//! The last look is saved as a screenshot under `target/test-output/`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use drops_shared::auth::Role;
use drops_tests::client::{token, Client};
use drops_tests::{free_port, repo_root, Stack};
use fantoccini::{ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// chromedriver for one test, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/setup installs Debian's chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reqwest::get(format!("{url}/status")).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver { child, url }
    }

    async fn browser(&self) -> fantoccini::Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1100", "--no-first-run", "--no-default-browser-check"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A creator of their own, their live drop, and the creator's token.
async fn creators_live_drop(client: &Client, stock: u32) -> (Uuid, String) {
    let admin = token(Uuid::now_v7(), Role::Admin);
    let user = Uuid::now_v7();
    let created = client.post_json("/v1/creators", Some(&admin), json!({"name": "Lumen Works", "user_id": user})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    let creator = token(user, Role::Creator);
    let product = client
        .post_json("/v1/products", Some(&creator), json!({"title": "Lumen Lamp", "description": "A lamp."}))
        .await;
    assert_eq!(product.status, StatusCode::CREATED, "{:?}", product.json());
    let starts_at = Utc::now() - chrono::Duration::seconds(30);
    let drop = client
        .post_json(
            "/v1/drops",
            Some(&creator),
            json!({"product_id": product.json()["id"], "price": {"amount": 4200, "currency": "EUR"}, "stock": stock,
                   "max_per_user": 2, "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1)}),
        )
        .await;
    assert_eq!(drop.status, StatusCode::CREATED, "{:?}", drop.json());
    let drop_id = drop.json()["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("drop id");
    assert_eq!(client.stock(drop_id).await["total"], stock, "the edge sells the drop");
    (drop_id, creator)
}

async fn text(browser: &fantoccini::Client, id: &str) -> String {
    match browser.find(Locator::Id(id)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the element `id` reads `want` (the page polls every second).
async fn wait_text(browser: &fantoccini::Client, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = text(browser, id).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "#{id} reads {got:?}, never {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn chart_units(browser: &fantoccini::Client) -> u64 {
    let element = browser.find(Locator::Id("rate-chart")).await.expect("the chart");
    element.attr("data-units").await.ok().flatten().and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_creator_watches_their_drop_sell_in_the_browser() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (drop_id, creator) = creators_live_drop(&client, 20).await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;

    browser.goto(&format!("{}/dashboard", stack.origin_url)).await.expect("the page");
    // A buyer's token is turned away by the page; the creator's is let in.
    browser.find(Locator::Id("token")).await.unwrap().send_keys(&token(Uuid::now_v7(), Role::Buyer)).await.unwrap();
    browser.find(Locator::Id("sign-in-button")).await.unwrap().click().await.unwrap();
    wait_text(&browser, "sign-in-error", "Only creators and admins have a dashboard.").await;
    browser.find(Locator::Id("token")).await.unwrap().send_keys(&creator).await.unwrap();
    browser.find(Locator::Id("sign-in-button")).await.unwrap().click().await.unwrap();
    let pick = browser.wait().for_element(Locator::Css("#pick:not([hidden])")).await.expect("signed in");
    assert!(pick.is_displayed().await.unwrap());
    browser.find(Locator::Id("drop-id")).await.unwrap().send_keys(&drop_id.to_string()).await.unwrap();
    browser.find(Locator::Id("watch")).await.unwrap().click().await.unwrap();

    wait_text(&browser, "drop-title", "Lumen Lamp · Lumen Works").await;
    wait_text(&browser, "total", "20").await;
    wait_text(&browser, "remaining", "20").await;
    wait_text(&browser, "confirmed", "0").await;
    assert_eq!(chart_units(&browser).await, 0, "nothing sold yet");

    // A rush in miniature: five buy and pay, two buy and fail to pay, one holds.
    let mut purchases = Vec::new();
    for _ in 0..8 {
        purchases.push(client.purchase(drop_id).await);
    }
    for (i, purchase) in purchases.iter().enumerate().take(7) {
        let outcome = if i < 5 { "succeed" } else { "fail" };
        let paid = client.checkout(purchase, outcome).await;
        assert!(paid.status.is_success(), "checkout: {:?}", paid.json());
    }
    wait_text(&browser, "confirmed", "5").await;
    wait_text(&browser, "reserved", "1").await;
    wait_text(&browser, "released", "2").await;
    wait_text(&browser, "remaining", "14").await;
    wait_text(&browser, "revenue", "€210.00").await;
    wait_text(&browser, "conversion", "62.5 %").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while chart_units(&browser).await < 8 {
        assert!(Instant::now() < deadline, "the chart never drew the 8 units reserved");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let canvases = browser.find_all(Locator::Css(".chart canvas")).await.unwrap();
    assert_eq!(canvases.len(), 2, "two charts drawn");

    let shot = browser.screenshot().await.expect("a screenshot");
    assert!(shot.starts_with(b"\x89PNG"), "a PNG");
    let dir = repo_root().join("target/test-output");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dashboard.png");
    std::fs::write(&path, &shot).unwrap();
    println!("dashboard screenshot: {}", path.display());

    // Signing out forgets the token: a reload asks for one again.
    browser.find(Locator::Id("sign-out")).await.unwrap().click().await.unwrap();
    browser.refresh().await.unwrap();
    browser.wait().for_element(Locator::Css("#sign-in:not([hidden])")).await.expect("asked to sign in again");
    browser.close().await.unwrap();
}

#[tokio::test]
async fn the_dashboard_is_served_whole_by_the_origin() {
    let stack = Stack::shared().await;
    let http = reqwest::Client::new();
    let page = http.get(format!("{}/dashboard", stack.origin_url)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    for asset in ["/dashboard/app.js", "/dashboard/app.css", "/dashboard/uPlot.iife.min.js", "/dashboard/uPlot.min.css"]
    {
        assert!(html.contains(asset), "{asset}");
        let got = http.get(format!("{}{asset}", stack.origin_url)).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{asset}");
        assert!(!got.bytes().await.unwrap().is_empty(), "{asset}");
    }
}

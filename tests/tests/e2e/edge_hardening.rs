//! What a security review of the edge found (issue 21), each held to its fix
//! through the real stack:
//!
//! - The payment webhook is the provider's call to the origin: the edge does not
//!   serve it (404), so nothing reaches the origin's webhook through the edge.
//! - Request bodies are refused on their declared length before any of them is
//!   read, and read with a running cap otherwise (public routes and `/internal/`);
//!   `/internal/` is rate limited per client address, as the public routes are.
//! - A `Range` request reads its range of the file, not the whole file.
//! - Outside development the edge refuses development secrets and short ones.
//!
//! Bodies and ranges are about memory: an isolate has 128 MB in production, and
//! `wrangler dev` enforces no limit, so those tests run on an edge of their own and
//! hold the growth of its `workerd` processes' peak resident memory, while the
//! requests are answered, under that limit. One at a time ([`MEASURED`]).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use drops_shared::auth::Role;
use drops_shared::media::{private_link, MediaKey, MAX_MEDIA_BYTES};
use drops_shared::MAX_BODY_BYTES;
use drops_tests::client::{token, webhook_body, Client};
use drops_tests::files::png_headed;
use drops_tests::{free_port, repo_root, wrangler_dev, wrangler_dev_until, DropSpec, Stack, WEBHOOK_SECRET};
use futures::future::join_all;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// What a Worker's isolate may hold in production.
const ISOLATE_MEMORY_KB: u64 = 128 * 1024;
/// The body the memory tests send: far over every limit, well under what the machine has.
const HUGE_BODY: usize = 200 * 1024 * 1024;
/// `INTERNAL_LIMITER`'s limit in this module's copy of `wrangler.toml` (per address,
/// per 10 s window), so that a burst the test can afford passes it.
const TEST_INTERNAL_LIMIT: u32 = 30;

// ---- The payment webhook.

#[tokio::test]
async fn the_edge_does_not_serve_the_payment_webhook() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(3, 1)).await;
    let purchase = client.purchase(drop_id).await;
    // A genuine event, signed as the provider signs it, sent to the edge.
    let event_id = format!("evt_edge_{}", Uuid::new_v4().simple());
    let body = webhook_body(&event_id, true, &purchase.reference, purchase.order_id, purchase.amount);
    let signature = drops_shared::signing::stripe_signature(WEBHOOK_SECRET.as_bytes(), Utc::now().timestamp(), &body);
    let url = format!("{}/v1/webhooks/payments", client.edge);
    let post = client
        .send(
            client
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header("stripe-signature", &signature)
                .body(body.clone()),
        )
        .await;
    assert_eq!(
        (post.status, post.code().as_str()),
        (StatusCode::NOT_FOUND, "not_found"),
        "the webhook through the edge: {}",
        String::from_utf8_lossy(&post.body)
    );
    assert_eq!(post.header("content-type"), Some("application/problem+json"));
    for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::OPTIONS] {
        let other = client.send(client.http.request(method.clone(), &url)).await;
        assert_eq!((other.status, other.code().as_str()), (StatusCode::NOT_FOUND, "not_found"), "{method}");
    }
    assert_eq!(client.order(&purchase.buyer, purchase.order_id).await.json()["status"], "reserved");
    // The provider's own way in, the origin, takes the same event.
    let direct = client.webhook(&body, WEBHOOK_SECRET, Utc::now().timestamp()).await;
    assert_eq!(direct.status, StatusCode::OK, "{:?}", direct.json());
    client.wait_status(&purchase.buyer, purchase.order_id, "confirmed").await;
}

// ---- An edge of this module's own, and its memory.

/// The edge the memory and limit tests use: the stack's Worker and origin, run from
/// a copy of `wrangler.toml` (`INTERNAL_LIMITER` lowered to [`TEST_INTERNAL_LIMIT`])
/// in production, with the stack's secrets.
struct OwnEdge {
    url: String,
    port: u16,
}

static OWN_EDGE: tokio::sync::OnceCell<OwnEdge> = tokio::sync::OnceCell::const_new();
/// Held by a test measuring the own edge's memory: one at a time.
static MEASURED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A copy of the repository's `wrangler.toml` in a directory of its own (so no
/// `.dev.vars` is read): the Worker by its absolute path, no build step (the
/// stack built it), and `overrides` as `(binding name, replacement of its
/// `simple = ...` line)`.
fn config_copy(overrides: &[(&str, String)]) -> PathBuf {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("wrangler.toml")).expect("wrangler.toml");
    let (mut out, mut in_build, mut named) = (Vec::new(), false, None::<&str>);
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_build = trimmed == "[build]";
            named = None;
        }
        if in_build {
            continue;
        }
        if let Some(main) = trimmed.strip_prefix("main = ") {
            out.push(format!("main = \"{}\"", root.join(main.trim_matches('"')).display()));
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("name = ") {
            named = overrides.iter().map(|(n, _)| *n).find(|n| name.trim_matches('"') == *n);
        }
        match named {
            Some(binding) if trimmed.starts_with("simple") => {
                let (_, line) = overrides.iter().find(|(n, _)| *n == binding).expect("an override");
                out.push(line.clone());
            }
            _ => out.push(line.to_owned()),
        }
    }
    let dir = std::env::temp_dir().join(format!("drops-edge-hardening-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a config directory");
    let path = dir.join("wrangler.toml");
    std::fs::write(&path, out.join("\n") + "\n").expect("the config copy");
    path
}

/// The stack's `--var`s with `set` replacing (or adding) some.
fn vars_with(stack: &Stack, set: &[(&str, &str)]) -> Vec<String> {
    let mut vars: Vec<String> = stack
        .edge_vars(&[])
        .into_iter()
        .filter(|v| !set.iter().any(|(name, _)| v.split(':').next() == Some(*name)))
        .collect();
    vars.extend(set.iter().map(|(name, value)| format!("{name}:{value}")));
    vars
}

async fn own_edge(stack: &Stack) -> &'static OwnEdge {
    OWN_EDGE
        .get_or_init(|| async {
            let limit = format!("simple = {{ limit = {TEST_INTERNAL_LIMIT}, period = 10 }}");
            let config = config_copy(&[("INTERNAL_LIMITER", limit)]);
            let port = free_port();
            let vars = vars_with(stack, &[("ENVIRONMENT", "production")]);
            wrangler_dev(config.to_str().expect("a path"), port, &vars, "/healthz")
                .await
                .expect("an edge of this module's own");
            OwnEdge { url: format!("http://127.0.0.1:{port}"), port }
        })
        .await
}

/// A process: its id, its parent's, and its command line.
struct Process {
    pid: u32,
    ppid: u32,
    args: Vec<String>,
}

fn processes() -> Vec<Process> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let (Ok(stat), Ok(cmdline)) =
            (std::fs::read_to_string(entry.path().join("stat")), std::fs::read(entry.path().join("cmdline")))
        else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        else {
            continue;
        };
        let args = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        found.push(Process { pid, ppid, args });
    }
    found
}

/// The `workerd` processes of the `wrangler dev` serving `port`: the one listening
/// there (its proxy) and its siblings (the runtime the Worker and its R2 and cache
/// simulations run in).
fn workerd_processes(port: u16) -> Vec<u32> {
    let all = processes();
    let entry = format!("--socket-addr=entry=127.0.0.1:{port}");
    let proxy = all.iter().find(|p| p.args.contains(&entry)).expect("the workerd serving the port");
    let found: Vec<u32> = all
        .iter()
        .filter(|p| p.ppid == proxy.ppid && p.args.first().is_some_and(|a| a.ends_with("workerd")))
        .map(|p| p.pid)
        .collect();
    assert!(found.len() >= 2, "the proxy's and the Worker's workerd: {found:?}");
    found
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("a process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} of {pid}"))
}

/// How much the peak resident memory of the edge on `port` grew (kB, summed over its
/// `workerd` processes) while `work` ran, and what `work` gave.
async fn peak_growth<T>(port: u16, work: impl Future<Output = T>) -> (u64, T) {
    let pids = workerd_processes(port);
    let mut base = Vec::new();
    for pid in &pids {
        // Resets the peak (VmHWM) to the present (VmRSS).
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("the peak memory of the edge can be reset");
        base.push(status_kb(*pid, "VmRSS"));
    }
    let out = work.await;
    let grown = pids.iter().zip(&base).map(|(pid, base)| status_kb(*pid, "VmHWM").saturating_sub(*base)).sum();
    (grown, out)
}

// ---- Raw requests, to frame a body as the test needs and send more than it holds.

enum Framing {
    /// `Content-Length: n`.
    Declared(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// `POST path` on `edge` with `headers`, a body of `size` bytes framed as `framing`
/// (made a MiB at a time), reading the answer meanwhile. The answer's status and,
/// when it arrived whole, its body, within `within`; or `None`.
///
/// An edge that refuses a chunked body before its end is heard at once under
/// `wrangler dev`, which then resets the connection: the client may see the head of
/// the answer and not its body. (A declared length is answered once it has all
/// arrived: `wrangler dev` holds the answer until then.)
async fn raw_post(
    edge: &str,
    path: &str,
    headers: &[(&str, String)],
    framing: &Framing,
    size: usize,
    within: Duration,
) -> Option<(u16, Option<String>)> {
    let host = edge.strip_prefix("http://").expect("an http edge");
    let socket = tokio::net::TcpStream::connect(host).await.expect("connect to the edge");
    let (mut reader, mut writer) = socket.into_split();
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let chunked = matches!(framing, Framing::Chunked);
    match framing {
        Framing::Declared(n) => head.push_str(&format!("content-length: {n}\r\n\r\n")),
        Framing::Chunked => head.push_str("transfer-encoding: chunked\r\n\r\n"),
    }
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let piece = vec![b'{'; 1024 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(piece.len());
            if chunked {
                writer.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            writer.write_all(&piece[..n]).await?;
            if chunked {
                writer.write_all(b"\r\n").await?;
            }
            left -= n;
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n").await?;
        }
        writer.flush().await?;
        // Held open until the answer has been read (the task is aborted then).
        tokio::time::sleep(Duration::from_secs(600)).await;
        std::io::Result::Ok(writer)
    });
    let read = tokio::time::timeout(within, async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        // Read as it comes: an edge that answers before taking the whole body may
        // close the connection, and a reset then loses what was not read yet.
        loop {
            if let Some((status, body)) = complete_answer(&got) {
                return Some((status, Some(body)));
            }
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let end = got.windows(4).position(|w| w == b"\r\n\r\n")?;
                    let status = String::from_utf8_lossy(&got[..end]).split_whitespace().nth(1)?.parse().ok()?;
                    return Some((status, None));
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    sending.abort();
    read.ok().flatten()
}

/// The status and body of a complete answer (its length declared) in `got`, if there is one.
fn complete_answer(got: &[u8]) -> Option<(u16, String)> {
    let end = got.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())?;
    let body = got.get(end + 4..end + 4 + length)?;
    Some((status, String::from_utf8_lossy(body).into_owned()))
}

fn problem_code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Sends requests until a round of them is answered by the Worker: after it answers
/// without reading a body, `wrangler dev`'s proxy may fail the next request on each
/// connection to the Worker it kept alive (a plain-text 503, "Your worker restarted
/// mid-request"; Cloudflare does not do this), or leave it hanging (see `media.rs`).
/// `OPTIONS`, which the proxy does not retry by itself, uses such connections up.
async fn settle_dev_proxy(edge: &str) {
    let http = reqwest::Client::new();
    for _ in 0..10 {
        let probes = join_all((0..8).map(|_| {
            http.request(reqwest::Method::OPTIONS, format!("{edge}/v1/drops")).timeout(Duration::from_secs(10)).send()
        }))
        .await;
        if probes.iter().all(|p| p.as_ref().is_ok_and(|r| r.status() == StatusCode::NO_CONTENT)) {
            return;
        }
    }
    panic!("wrangler dev's proxy keeps failing requests");
}

// ---- Bodies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_far_over_the_limit_are_refused_without_being_held() {
    let stack = Stack::shared().await;
    let edge = own_edge(&stack).await;
    let _measuring = MEASURED.lock().await;
    let creator = token(Uuid::now_v7(), Role::Creator);
    let buyer = token(Uuid::now_v7(), Role::Buyer);
    let drop_path = format!("/v1/drops/{}/orders", Uuid::now_v7());
    let address = || ("cf-connecting-ip", drops_tests::client::client_address(Uuid::new_v4()));
    let json = ("content-type", "application/json".to_owned());
    /// What is sent, where, with which headers, framed how.
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, Framing);
    let cases: Vec<Case> = vec![
        (
            "a public write the origin owns, chunked",
            "/v1/products",
            vec![address(), json.clone(), ("authorization", format!("Bearer {creator}"))],
            Framing::Chunked,
        ),
        (
            "a buy, chunked",
            &drop_path,
            vec![
                address(),
                json.clone(),
                ("authorization", format!("Bearer {buyer}")),
                ("idempotency-key", format!("huge-{}", Uuid::new_v4())),
            ],
            Framing::Chunked,
        ),
        ("an internal route, chunked", "/internal/v1/purge", vec![address(), json.clone()], Framing::Chunked),
        (
            "an internal route, its length declared",
            "/internal/v1/purge",
            vec![address(), json.clone()],
            Framing::Declared(HUGE_BODY),
        ),
    ];
    let mut held = Vec::new();
    for (what, path, headers, framing) in cases {
        let send = async {
            let mut answer = None;
            // Up to 20 times: the proxy answers an early-refused chunked body with its
            // own 503 about half the time, whatever the Worker said.
            for _ in 0..20 {
                answer = raw_post(&edge.url, path, &headers, &framing, HUGE_BODY, Duration::from_secs(120)).await;
                // A plain-text 503 is `wrangler dev`'s proxy's (see `settle_dev_proxy`): sent again.
                match &answer {
                    Some((503, body)) if body.as_deref().is_none_or(|b| problem_code(b).is_empty()) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        settle_dev_proxy(&edge.url).await
                    }
                    _ => break,
                }
            }
            answer
        };
        let (grown, answer) = peak_growth(edge.port, send).await;
        let (status, body) = answer.unwrap_or_else(|| panic!("no answer to {what}"));
        assert_eq!(status, 413, "{what}: {body:?}");
        if let Some(body) = body {
            assert_eq!(problem_code(&body), "payload_too_large", "{what}: {body}");
        }
        held.push((what, grown));
        settle_dev_proxy(&edge.url).await;
    }
    println!("the edge's peak memory grew by (kB), while refusing 200 MiB: {held:?}");
    let over: Vec<_> = held.iter().filter(|(_, kb)| *kb >= ISOLATE_MEMORY_KB).collect();
    assert!(over.is_empty(), "a 200 MiB body was held past the isolate's 128 MiB (kB): {over:?}");

    // At the limit, chunked, a body is read (and judged: not JSON).
    let at_limit = raw_post(
        &edge.url,
        "/v1/products",
        &[address(), json.clone(), ("authorization", format!("Bearer {creator}"))],
        &Framing::Chunked,
        MAX_BODY_BYTES,
        Duration::from_secs(60),
    )
    .await
    .expect("an answer at the limit");
    let body = at_limit.1.expect("the answer's body");
    assert_eq!((at_limit.0, problem_code(&body).as_str()), (400, "invalid_request"), "{body}");
    let past = raw_post(
        &edge.url,
        "/v1/products",
        &[address(), json, ("authorization", format!("Bearer {creator}"))],
        &Framing::Chunked,
        MAX_BODY_BYTES + 1,
        Duration::from_secs(60),
    )
    .await
    .expect("an answer one byte past the limit");
    assert_eq!(past.0, 413, "{:?}", past.1);
    assert!(past.1.is_none_or(|body| problem_code(&body) == "payload_too_large"));
    settle_dev_proxy(&edge.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_are_rate_limited_per_address() {
    let stack = Stack::shared().await;
    let edge = own_edge(&stack).await;
    let http = reqwest::Client::new();
    let flooder = drops_tests::client::client_address(Uuid::new_v4());
    let other = drops_tests::client::client_address(Uuid::new_v4());
    let call = |address: &str| {
        http.post(format!("{}/internal/v1/purge", edge.url))
            .header("cf-connecting-ip", address)
            .header("content-type", "application/json")
            .body(r#"{"paths":["/v1/drops"]}"#)
            .send()
    };
    // Past two windows' worth, wherever the burst falls across a window's edge.
    let burst = 3 * TEST_INTERNAL_LIMIT as usize;
    let mut answers = Vec::new();
    for _ in 0..burst.div_ceil(10) {
        answers.extend(join_all((0..10).map(|_| call(&flooder))).await);
    }
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    let mut limited = 0;
    for answer in answers {
        let answer = answer.expect("an answer");
        *seen.entry(answer.status().as_u16()).or_default() += 1;
        if answer.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            let retry_after = answer.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
            assert!(retry_after.is_some_and(|s| s > 0), "Retry-After");
            assert_eq!(answer.headers()["content-type"], "application/problem+json");
            let body: serde_json::Value = answer.json().await.expect("a problem");
            assert_eq!(body["code"], "rate_limited");
        } else {
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "an unsigned internal call");
        }
    }
    assert!(limited > 0, "{burst} unsigned internal calls from one address, none limited: {seen:?}");
    // Another address meanwhile is not.
    let elsewhere = call(&other).await.expect("an answer");
    assert_eq!(elsewhere.status(), StatusCode::UNAUTHORIZED);
}

/// The development-only surface is not there in production: a call to
/// `/internal/dev/` signed with the right secret is a 404, and `/healthz` says
/// nothing of the Worker's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_serves_no_development_route() {
    use drops_shared::signing::{sign_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
    let stack = Stack::shared().await;
    let edge = own_edge(&stack).await;
    let http = reqwest::Client::new();
    let path = format!("/internal/dev/drops/{}/inventory/v1-fixture", Uuid::now_v7());
    let body = br#"{"holds":[]}"#;
    let now = Utc::now().timestamp();
    let signature = sign_internal(drops_tests::ORIGIN_TO_EDGE_SECRET.as_bytes(), "POST", &path, now, body);
    let answer = http
        .post(format!("{}{path}", edge.url))
        .header("cf-connecting-ip", drops_tests::client::client_address(Uuid::new_v4()))
        .header(TIMESTAMP_HEADER, now.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_vec())
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert_eq!(problem_code(&answer.text().await.expect("a body")), "not_found");
    let health = http.get(format!("{}/healthz", edge.url)).send().await.expect("an answer");
    assert_eq!(health.status(), StatusCode::OK);
    assert!(health.headers().get("x-dev-wasm-memory-bytes").is_none(), "production tells nothing of its memory");
}

// ---- Ranges.

/// `n` concurrent `GET path` with `range`, each from an address of its own: each must
/// be a 206 of `bytes[first..=last]` with its `Content-Range`.
async fn ranges(edge: &str, path: &str, range: &str, n: usize, bytes: &[u8], (first, last): (usize, usize)) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("a client");
    let answers = join_all((0..n).map(|_| {
        http.get(format!("{edge}{path}"))
            .header("range", range)
            .header("cf-connecting-ip", drops_tests::client::client_address(Uuid::new_v4()))
            .send()
    }))
    .await;
    for answer in answers {
        let answer = answer.expect("an answer to a range");
        assert_eq!(answer.status(), StatusCode::PARTIAL_CONTENT, "{range} of {path}");
        let content_range = answer.headers()["content-range"].to_str().unwrap().to_owned();
        assert_eq!(content_range, format!("bytes {first}-{last}/{}", bytes.len()));
        assert_eq!(answer.bytes().await.unwrap().as_ref(), &bytes[first..=last], "{range} of {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_read_only_their_range() {
    let stack = Stack::shared().await;
    let edge = own_edge(&stack).await;
    let _measuring = MEASURED.lock().await;
    let client = Client { edge: edge.url.clone(), ..stack.client() };
    let who = token(Uuid::now_v7(), Role::Creator);
    let public = png_headed(MAX_MEDIA_BYTES);
    let up = client.upload(Some(&who), "", "image/png", &public).await;
    assert_eq!(up.status, StatusCode::CREATED, "{:?}", up.json());
    let public_path = MediaKey::of(&public).expect("a png").public_path();
    let private = png_headed(MAX_MEDIA_BYTES);
    let up = client.upload(Some(&who), "?visibility=private", "image/png", &private).await;
    assert_eq!(up.status, StatusCode::CREATED, "{:?}", up.json());
    let link = up.json()["url"].as_str().expect("a link").to_owned();
    let size = MAX_MEDIA_BYTES;
    const AT_ONCE: usize = 64;

    let within_isolate = |what: &str, grown: u64| {
        println!("the edge's peak memory grew by {grown} kB serving {AT_ONCE} ranges of {what} at once");
        assert!(grown < ISOLATE_MEMORY_KB, "{AT_ONCE} ranges of {what} held {grown} kB, past the isolate's 128 MiB");
    };
    let (grown, ()) =
        peak_growth(edge.port, ranges(&edge.url, &public_path, "bytes=0-0", AT_ONCE, &public, (0, 0))).await;
    within_isolate("a public file, from storage", grown);
    // Once the whole file has been read, it is in the cache.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.get(&public_path, None).await.header("x-cache") != Some("HIT") {
        assert!(std::time::Instant::now() < deadline, "never cached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (grown, ()) =
        peak_growth(edge.port, ranges(&edge.url, &public_path, "bytes=-2", AT_ONCE, &public, (size - 2, size - 1)))
            .await;
    within_isolate("a public file, from the cache", grown);
    let (grown, ()) =
        peak_growth(edge.port, ranges(&edge.url, &link, "bytes=4096-4099", AT_ONCE, &private, (4096, 4099))).await;
    within_isolate("a private file", grown);
}

// ---- Secrets.

/// Ready once the Worker itself answers (it stamps `x-request-id` on everything),
/// whatever it answers.
fn worker_answers(resp: &reqwest::Response) -> bool {
    resp.headers().contains_key("x-request-id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_development_the_edge_refuses_development_and_short_secrets() {
    const DEV_MEDIA_LINK_SECRET: &str = "dev-media-link-secret";
    const SHORT_JWT_SECRET: &str = "only-31-bytes-long-0123456789ab";
    assert_eq!(SHORT_JWT_SECRET.len(), 31);
    let stack = Stack::shared().await;
    let config = config_copy(&[]);
    let config = config.to_str().expect("a path");
    let (dev_port, short_port) = (free_port(), free_port());
    let dev_vars = vars_with(&stack, &[("ENVIRONMENT", "production"), ("MEDIA_LINK_SECRET", DEV_MEDIA_LINK_SECRET)]);
    let short_vars = vars_with(&stack, &[("ENVIRONMENT", "production"), ("JWT_SECRET", SHORT_JWT_SECRET)]);
    let (dev, short) = futures::join!(
        wrangler_dev_until(config, dev_port, &dev_vars, "/healthz", worker_answers),
        wrangler_dev_until(config, short_port, &short_vars, "/healthz", worker_answers),
    );
    dev.expect("the edge with a development secret runs");
    short.expect("the edge with a short secret runs");

    let http = reqwest::Client::new();
    let key = MediaKey::of(&png_headed(100)).expect("a png");
    // A link to a private file, forged with the development secret.
    let forged = private_link(DEV_MEDIA_LINK_SECRET.as_bytes(), &key, Utc::now().timestamp() + 600);
    let buyer = token(Uuid::now_v7(), Role::Buyer);
    for (port, name, secret) in
        [(dev_port, "MEDIA_LINK_SECRET", DEV_MEDIA_LINK_SECRET), (short_port, "JWT_SECRET", SHORT_JWT_SECRET)]
    {
        let edge = format!("http://127.0.0.1:{port}");
        for (what, req) in [
            ("/healthz", http.get(format!("{edge}/healthz"))),
            ("a forged private link", http.get(format!("{edge}{forged}"))),
            ("stock", http.get(format!("{edge}/v1/drops/{}/stock", Uuid::now_v7()))),
            ("a buyer's orders", http.get(format!("{edge}/v1/orders")).bearer_auth(&buyer)),
            ("an internal call", http.post(format!("{edge}/internal/v1/purge")).body(r#"{"paths":[]}"#)),
        ] {
            let answer = req.header("cf-connecting-ip", "198.51.100.7").send().await.expect("an answer");
            let status = answer.status();
            let content_type = answer.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            let body = answer.text().await.unwrap();
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what} on an edge with {name} refused: {body}");
            assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{what}");
            assert_eq!(problem_code(&body), "internal_error", "{what}: {body}");
            assert!(!body.contains(secret), "{what}: the answer shows the secret");
        }
        // The log says why, naming the setting and not its value (once it is written out).
        let log_path = std::env::temp_dir().join(format!("drops-wrangler-{port}.log"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let said = loop {
            let log = std::fs::read_to_string(&log_path).expect("the edge's log");
            let said: Vec<String> = log.lines().filter(|l| l.contains(name)).map(str::to_owned).collect();
            if !said.is_empty() {
                break said;
            }
            assert!(std::time::Instant::now() < deadline, "the log does not name {name}:\n{log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(said.iter().all(|l| !l.contains(secret)), "the log shows the secret: {said:?}");
    }

    // Production with proper secrets serves.
    let own = own_edge(&stack).await;
    let health = http.get(format!("{}/healthz", own.url)).send().await.expect("an answer");
    assert_eq!(health.status(), StatusCode::OK);
}

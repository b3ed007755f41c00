//! The public API fuzzed from its own OpenAPI document: schemathesis (from the
//! project's `.venv-fuzz`, which `scripts/setup` installs) runs every operation
//! through the edge as buyers, creators and admins (three runs at once, each from
//! its own address, its accounts taking turns), with every check on
//! (`schemathesis.toml` at the root), a fixed seed and a bounded number of cases;
//! `tests/fuzz/hooks.py`, which the config file loads (so a run by hand with it
//! tests what this one does), keeps valid cases to the rules no schema can state.
//! Any failure fails the suite; each run's counts are printed.

use std::process::{Command, Stdio};

use drops_shared::auth::Role;
use drops_tests::client::token;
use drops_tests::{repo_root, Stack};
use uuid::Uuid;

/// Reproducible runs: the same cases every time. `FUZZ_SEED=<n>` explores others
/// (and `FUZZ_MAX_EXAMPLES=<n>` sets the cases per operation).
const SEED: &str = "20261126";
/// Cases per operation in the fuzzing phase, per role.
const MAX_EXAMPLES: &str = "12";

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// Accounts each role's run takes turns with (a user's writes are rate limited).
const ACCOUNTS: usize = 10;
/// Requests a second, per run: under the edge's per-address limit. One worker per
/// run: schemathesis 4.32's case generation is not safe across its worker threads
/// (a KeyError inside its coverage phase, seen once in a few runs with two).
const RATE: &str = "50/s";

#[derive(Debug)]
struct Run {
    role: &'static str,
    passed: bool,
    summary: String,
}

/// Starts schemathesis from `address`, its accounts (`tokens`) taking turns.
fn fuzz_as(edge: &str, address: &str, tokens: &[String]) -> std::process::Child {
    let root = repo_root();
    let bin = root.join(".venv-fuzz/bin/schemathesis");
    assert!(bin.exists(), "{} is missing: run scripts/setup", bin.display());
    Command::new(&bin)
        .current_dir(&root)
        .args(["--config-file", "schemathesis.toml", "--no-color", "run"])
        .arg(format!("{edge}/v1/openapi.json"))
        .args(["--url", edge, "--checks", "all"])
        .args(["--seed", &setting("FUZZ_SEED", SEED), "--max-examples", &setting("FUZZ_MAX_EXAMPLES", MAX_EXAMPLES)])
        .args(["--phases", "examples,coverage,fuzzing", "--workers", "1", "--rate-limit", RATE])
        .args(["--request-timeout", "10", "--output-truncate", "true", "--generation-database", "none"])
        .args(["-H", &format!("CF-Connecting-IP: {address}")])
        .env("FUZZ_TOKENS", tokens.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("schemathesis runs")
}

fn outcome(role: &'static str, output: std::process::Output) -> Run {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let passed = output.status.success();
    // The errors, failures and summary, or everything when schemathesis did not get that far.
    let report = stdout
        .lines()
        .skip_while(|l| !["ERRORS", "FAILURES", "SUMMARY"].iter().any(|section| l.contains(section)))
        .collect::<Vec<_>>();
    let summary = if report.is_empty() || !passed && !stdout.contains("SUMMARY") {
        format!("{stdout}\n{stderr}")
    } else {
        report.join("\n")
    };
    Run { role, passed, summary }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_holds_to_its_openapi_document_under_fuzzing() {
    // Alone: thousands of requests, hundreds of drops created, and others' tests
    // would see them arrive mid-test (their lists, their load).
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let mut creators = Vec::new();
    for _ in 0..ACCOUNTS {
        creators.push(client.creator_with_product().await.0);
    }
    let accounts = |role: Role| (0..ACCOUNTS).map(|_| token(Uuid::now_v7(), role)).collect::<Vec<_>>();
    let roles = [
        ("buyer", "198.51.100.1", accounts(Role::Buyer)),
        ("creator", "198.51.100.2", creators),
        ("admin", "198.51.100.3", accounts(Role::Admin)),
    ];
    let edge = stack.edge_url.clone();
    // The three runs at once, each from its own address.
    let runs = tokio::task::spawn_blocking(move || {
        let children: Vec<_> =
            roles.iter().map(|(role, address, tokens)| (*role, fuzz_as(&edge, address, tokens))).collect();
        children
            .into_iter()
            .map(|(role, child)| outcome(role, child.wait_with_output().expect("schemathesis finishes")))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for run in &runs {
        let verdict = if run.passed { "passed" } else { "FAILED" };
        println!("== schemathesis as {} (seed {}): {verdict}\n{}", run.role, setting("FUZZ_SEED", SEED), run.summary);
    }
    let failed: Vec<&str> = runs.iter().filter(|r| !r.passed).map(|r| r.role).collect();
    assert!(failed.is_empty(), "schemathesis found failures as {failed:?} (their reports are printed above)");
}

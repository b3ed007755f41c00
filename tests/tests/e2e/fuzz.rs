//! The public API fuzzed from its own OpenAPI document: schemathesis (from the
//! project's `.venv-fuzz`, which `scripts/setup` installs) runs every operation
//! through the edge as a buyer, a creator and an admin, with every check on
//! (`schemathesis.toml` at the root), a fixed seed and a bounded number of cases;
//! `tests/fuzz/hooks.py` keeps valid drop bodies to the rules that cross fields.
//! Any failure fails the suite; each run's counts are printed.

use std::process::Command;

use drops_shared::auth::Role;
use drops_tests::client::token;
use drops_tests::{repo_root, Stack};
use uuid::Uuid;

/// Reproducible runs: the same cases every time (change it to explore).
const SEED: &str = "20261126";
/// Cases per operation in the fuzzing phase, per role.
const MAX_EXAMPLES: &str = "12";

#[derive(Debug)]
struct Run {
    role: &'static str,
    passed: bool,
    summary: String,
}

fn fuzz_as(edge: &str, role: &'static str, bearer: &str) -> Run {
    let root = repo_root();
    let bin = root.join(".venv-fuzz/bin/schemathesis");
    assert!(bin.exists(), "{} is missing: run scripts/setup", bin.display());
    let output = Command::new(&bin)
        .current_dir(&root)
        .args(["--config-file", "schemathesis.toml", "--no-color", "run"])
        .arg(format!("{edge}/v1/openapi.json"))
        .args(["--url", edge, "--checks", "all", "--seed", SEED, "--max-examples", MAX_EXAMPLES])
        .args(["--phases", "examples,coverage,fuzzing", "--workers", "2"])
        .args(["--request-timeout", "10", "--output-truncate", "true", "--generation-database", "none"])
        .env("SCHEMATHESIS_HOOKS", "tests.fuzz.hooks")
        .args(["-H", &format!("Authorization: Bearer {bearer}")])
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let passed = output.status.success();
    // The failures and the summary, or everything when schemathesis did not get that far.
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
    let (creator, _) = client.creator_with_product().await;
    let roles = [
        ("buyer", token(Uuid::now_v7(), Role::Buyer)),
        ("creator", creator),
        ("admin", token(Uuid::now_v7(), Role::Admin)),
    ];
    let edge = stack.edge_url.clone();
    let runs = tokio::task::spawn_blocking(move || {
        roles.iter().map(|(role, bearer)| fuzz_as(&edge, role, bearer)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for run in &runs {
        println!("== schemathesis as {}: {}\n{}", run.role, if run.passed { "passed" } else { "FAILED" }, run.summary);
    }
    let failed: Vec<&str> = runs.iter().filter(|r| !r.passed).map(|r| r.role).collect();
    assert!(failed.is_empty(), "schemathesis found failures as {failed:?} (their reports are printed above)");
}

//! Kill tests (issue 22): a rush on a private stack while one component is
//! SIGKILLed, then the checks of DESIGN.md's "Faults", printed as a table per scenario.
//!
//! `cargo run -p drops-tests --bin kill -- --scenario postgres|redis|origin|workerd|all
//!  [--buyers 2000] [--units 500] [--down-secs 10] [--fans 200] [--kill-at-secs 1] [--arrival-secs 16]`
//!
//! `kill origin <serve|migrate|reconcile|followers-rebuild>` is the origin's own
//! command line: the harness starts its origin instances that way.

use std::time::Duration;

use drops_tests::kill::{self, Component, KillStack, Spec};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| anyhow::anyhow!("{name} needs a value")),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("origin") {
        return kill::origin_main(args.get(1).map_or("serve", String::as_str)).await;
    }
    let scenario: String = arg(&args, "--scenario", "all".to_owned())?;
    let components: Vec<Component> = if scenario == "all" { Component::ALL.to_vec() } else { vec![scenario.parse()?] };
    let down = Duration::from_secs_f64(arg(&args, "--down-secs", 10.0)?);
    let kill_at = Duration::from_secs_f64(arg(&args, "--kill-at-secs", 1.0)?);
    let spec = Spec {
        buyers: arg(&args, "--buyers", 2_000)?,
        units: arg(&args, "--units", 500)?,
        // By default buyers keep coming through the outage and a few seconds past it.
        arrival: Duration::from_secs_f64(arg(&args, "--arrival-secs", (kill_at + down).as_secs_f64() + 5.0)?),
        fans: arg(&args, "--fans", 200)?,
        kill_at,
        down,
        client_timeout: Duration::from_secs(10),
        quiet_within: Duration::from_secs(180),
    };

    println!("starting the private stack (Postgres, Redis, two origins, wrangler dev)...");
    let exe = std::env::current_exe()?;
    let mut stack = KillStack::start(&exe).await?;
    println!("stack up under {}", stack.root().display());
    let mut failed = Vec::new();
    for component in components {
        let outcome = kill::scenario::run(&mut stack, component, &spec).await?;
        println!("{}", kill::render(&outcome));
        if !outcome.passed() || outcome.bad_answers() > 0 {
            failed.push(component.name());
        }
    }
    drop(stack);
    anyhow::ensure!(failed.is_empty(), "scenarios with findings: {failed:?}");
    Ok(())
}

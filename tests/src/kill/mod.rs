//! The kill harness (issue 22; DESIGN.md, "Faults"): a private stack — its own
//! Postgres and Redis, two origin processes behind a balancer, `wrangler dev` with
//! persisted state, the Stripe double as the payment provider — and scenarios that
//! SIGKILL one component in the middle of a rush, then check that nothing answered
//! was lost and that the platform came back by itself.
//!
//! - [`procs`]: the processes, started, killed and started again;
//! - [`balancer`]: the TCP round-robin balancer in front of the origins;
//! - [`stack`]: the whole private stack;
//! - [`rush`]: buyers, payments, fans, and every answer they got;
//! - [`check`]: what must hold afterwards;
//! - [`scenario`]: one kill, from the drop's creation to the table it prints.
//!
//! The origin runs as the origin's own command line, in a separate process (one
//! instance must die alone): [`origin_main`], called by the `kill` bin as
//! `kill origin <command>`. Running it from the harness's own binary, rather than
//! `target/debug/drops-origin`, means the origin under test is always the one the
//! harness was built with, never a stale build.

pub mod balancer;
pub mod check;
pub mod procs;
pub mod rush;
pub mod scenario;
pub mod stack;

pub use scenario::{render, Component, Outcome, Spec};
pub use stack::KillStack;

/// The origin's `main` for `command` (`serve`, `migrate`, `reconcile`,
/// `followers-rebuild`), with its settings from the environment.
pub async fn origin_main(command: &str) -> anyhow::Result<()> {
    use drops_origin::cli::{run, Cli, Command};
    let command = match command {
        "serve" => Command::Serve,
        "migrate" => Command::Migrate,
        "reconcile" => Command::Reconcile,
        "followers-rebuild" => Command::FollowersRebuild,
        other => anyhow::bail!("`origin {other}`: serve, migrate, reconcile or followers-rebuild"),
    };
    let settings = drops_origin::config::Settings::load()?;
    drops_origin::telemetry::init(&settings);
    run(Cli { command: Some(command) }, settings).await
}

/// Keeps the rest of the end-to-end suite from running while a kill test does (the
/// suite's other tests take the same gate shared): a rush on a second stack next
/// to theirs would slow both on a small machine. Unlike `Stack::exclusive`, it does
/// not start the suite's own stack, which a kill test does not use.
pub async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    crate::GATE.write().await
}

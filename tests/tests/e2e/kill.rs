//! Kill tests (issue 22, DESIGN.md "Faults"), small: on one private stack of its own
//! (Postgres, Redis, two origin processes, `wrangler dev`; see `drops_tests::kill`),
//! one rush per component while that component is SIGKILLed — the Postgres
//! postmaster, Redis, one origin instance (for good), `wrangler dev` with its workerd
//! — and then every promise checked: each 201 is one order and nothing else is, lost
//! answers are told the truth with the same key, invariant 1 against Postgres, one
//! payment per order applied once, the outbox drained, the audit chain valid, the
//! analytics equal to a recount, the follower sets whole, and a reconciliation with
//! nothing to repair. While a component is down, no client is answered a 500.
//!
//! Hangs (no answer within the client's 30 s) are printed, not asserted: on a busy
//! machine `wrangler dev` itself stops answering under this rush with nothing
//! killed at all (workerd's connections to wrangler's own loopback server back up;
//! see README.md, "Kill tests"), so asserting them would test the local runtime and
//! the machine's load, not the platform. The `kill` bin counts them, and runs the
//! same at full size and the baseline (`--scenario none`).

use std::time::Duration;

use drops_tests::kill::{self, rush::Class, Component, KillStack, Spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_answered_is_lost_when_any_component_is_killed_mid_rush() {
    let _alone = kill::alone().await;
    let mut stack =
        KillStack::start(std::path::Path::new(env!("CARGO_BIN_EXE_kill"))).await.expect("the private stack");
    let spec = Spec {
        buyers: 300,
        units: 100,
        arrival: Duration::from_secs(7),
        fans: 30,
        kill_at: Duration::from_secs(1),
        down: Duration::from_secs(3),
        // Generous: a client that waits this long was left hanging.
        client_timeout: Duration::from_secs(30),
        quiet_within: Duration::from_secs(90),
    };
    let mut findings = Vec::new();
    for component in Component::ALL {
        let outcome = kill::scenario::run(&mut stack, component, &spec).await.expect("the scenario runs");
        println!("{}", kill::render(&outcome));
        for c in outcome.checks.iter().filter(|c| !c.ok) {
            findings.push(format!("{}: {}: {}", component.name(), c.name, c.detail));
        }
        for (family, counts) in &outcome.while_down {
            if let Some(n) = counts.get(&Class::ServerError) {
                findings.push(format!("{}: {n} {family} answer(s) 5xx other than 503", component.name()));
            }
        }
    }
    assert!(findings.is_empty(), "findings:\n{}", findings.join("\n"));
}

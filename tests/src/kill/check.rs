//! What must hold after a kill, once the platform is quiet (DESIGN.md, "Faults"):
//! each check reads the truth from Postgres, the drop's inventory object, Redis, the
//! provider double and the public API, and says what it found.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use drops_origin::startup::App;
use drops_shared::internal::{HoldState, InventorySnapshot};
use uuid::Uuid;

use super::rush::{BuyerRun, Http, Paid, Told};
use super::stack::{KillStack, REDIS_PREFIX};
use crate::Buyer;

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, problems: Vec<String>, fine: String) -> Check {
    let ok = problems.is_empty();
    let detail = if ok {
        fine
    } else {
        let n = problems.len();
        let mut shown: Vec<String> = problems.into_iter().take(5).collect();
        if n > 5 {
            shown.push(format!("… {} more", n - 5));
        }
        shown.join("; ")
    };
    Check { name, ok, detail }
}

/// The drop under test.
pub struct DropUnderTest {
    pub drop_id: Uuid,
    pub creator_id: Uuid,
    pub creator_token: String,
    pub total: u32,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    user_id: Uuid,
    quantity: i32,
    status: String,
    amount: i64,
    payment: Option<String>,
    reference: Option<String>,
    confirmations: i64,
    confirmed_notices: i64,
    confirmed_audits: i64,
}

async fn orders(db: &sqlx::PgPool, drop_id: Uuid) -> anyhow::Result<Vec<OrderRow>> {
    Ok(sqlx::query_as(
        "SELECT o.id, o.user_id, o.quantity, o.status, o.amount, p.status AS payment, p.reference,
                (SELECT count(*) FROM outbox e WHERE e.aggregate_id = o.id AND e.event_type = 'OrderConfirmed')
                  AS confirmations,
                (SELECT count(*) FROM notifications n
                  WHERE n.user_id = o.user_id AND n.kind = 'order_confirmed' AND n.payload->>'order_id' = o.id::text)
                  AS confirmed_notices,
                (SELECT count(*) FROM audit_log a JOIN outbox e ON e.id = a.event_id
                  WHERE e.aggregate_id = o.id AND e.event_type = 'OrderConfirmed') AS confirmed_audits
         FROM orders o LEFT JOIN payments p ON p.order_id = o.id WHERE o.drop_id = $1",
    )
    .bind(drop_id)
    .fetch_all(db)
    .await?)
}

/// Every check that can be repeated while waiting for quiet (all but the
/// reconciliation, which repairs what it finds, and so runs once, last).
pub async fn repeatable(
    stack: &KillStack,
    app: &App,
    db: &sqlx::PgPool,
    http: &Http,
    drop: &DropUnderTest,
    runs: &[BuyerRun],
    fans: &[Buyer],
) -> anyhow::Result<Vec<Check>> {
    let rows = orders(db, drop.drop_id).await?;
    let by_id: HashMap<Uuid, &OrderRow> = rows.iter().map(|r| (r.id, r)).collect();
    let snapshot = app.core.edge.snapshot(drop.drop_id).await?.ok_or_else(|| anyhow::anyhow!("no inventory"))?;
    let mut checks = Vec::new();

    // Every 201 is exactly one order, with its id and quantity; nothing else is.
    let mut problems = Vec::new();
    let mut told_ids = HashSet::new();
    let mut per_user: HashMap<Uuid, usize> = HashMap::new();
    for r in &rows {
        *per_user.entry(r.user_id).or_default() += 1;
    }
    for run in runs {
        if let Told::Created { order_id, quantity, .. } = run.told {
            told_ids.insert(order_id);
            match by_id.get(&order_id) {
                None => problems.push(format!("201 order {order_id} is not in Postgres")),
                Some(o) if o.user_id != run.buyer.id || o.quantity as u32 != quantity || quantity != run.quantity => {
                    problems.push(format!("order {order_id}: user/quantity differ from the 201"))
                }
                Some(_) => {}
            }
            if per_user.get(&run.buyer.id).copied().unwrap_or_default() != 1 {
                problems.push(format!("buyer {} has {:?} orders", run.buyer.id, per_user.get(&run.buyer.id)));
            }
        }
    }
    for r in rows.iter().filter(|r| !told_ids.contains(&r.id)) {
        problems.push(format!("order {} ({}) was never told to its buyer", r.id, r.status));
    }
    checks.push(check("every 201 is one order", problems, format!("{} orders, each told", told_ids.len())));

    // A definite refusal left nothing behind.
    let holders: HashSet<Uuid> = snapshot.holds.iter().map(|h| h.user_id).collect();
    let mut problems = Vec::new();
    let mut refused = 0;
    for run in runs {
        match &run.told {
            Told::Refused(code) => {
                refused += 1;
                if per_user.contains_key(&run.buyer.id) || holders.contains(&run.buyer.id) {
                    problems.push(format!("buyer {} was refused ({code}) but has an order or hold", run.buyer.id));
                }
            }
            Told::Unknown(class) => {
                problems.push(format!("buyer {} never learned the truth ({})", run.buyer.id, class.label()))
            }
            Told::Created { .. } => {}
        }
    }
    checks.push(check("refusals left nothing", problems, format!("{refused} refused, none with an order")));

    checks.push(inventory(drop, &snapshot, &rows));
    checks.push(payments(stack, runs, &by_id, &rows));
    checks.push(drained(stack, db).await?);
    checks.push(consumers(&rows));
    checks.push(analytics(http, drop, &rows, &snapshot).await);
    checks.push(followers(stack, db, drop, fans).await?);
    let audit = drops_origin::audit::verify(db, &stack.settings.audit).await?;
    let problems = if audit.valid { vec![] } else { vec![format!("invalid from seq {:?}", audit.first_invalid_seq)] };
    checks.push(check("audit chain verifies", problems, format!("{} entries valid", audit.entries)));
    Ok(checks)
}

/// Invariant 1, and the object's holds against Postgres's orders one by one.
fn inventory(drop: &DropUnderTest, s: &InventorySnapshot, rows: &[OrderRow]) -> Check {
    let mut problems = Vec::new();
    if s.sold + s.held + s.remaining != drop.total {
        problems.push(format!("sold {} + held {} + remaining {} != {}", s.sold, s.held, s.remaining, drop.total));
    }
    let units = |state: &str| rows.iter().filter(|r| r.status == state).map(|r| r.quantity as u32).sum::<u32>();
    if (units("confirmed"), units("reserved")) != (s.sold, s.held) {
        problems.push(format!(
            "Postgres confirmed/reserved units {}/{} vs the object's sold/held {}/{}",
            units("confirmed"),
            units("reserved"),
            s.sold,
            s.held
        ));
    }
    let holds: HashMap<Uuid, HoldState> = s.holds.iter().map(|h| (h.reservation_id, h.state)).collect();
    for r in rows {
        let want = match r.status.as_str() {
            "reserved" => HoldState::Held,
            "confirmed" => HoldState::Sold,
            _ => HoldState::Released,
        };
        if holds.get(&r.id) != Some(&want) {
            problems.push(format!("order {} is {} but its hold is {:?}", r.id, r.status, holds.get(&r.id)));
        }
    }
    if holds.len() != rows.len() {
        problems.push(format!("{} holds for {} orders", holds.len(), rows.len()));
    }
    if !s.unforwarded.is_empty() || !s.unreported_expiries.is_empty() {
        problems.push(format!("{} unforwarded, {} unreported", s.unforwarded.len(), s.unreported_expiries.len()));
    }
    let fine = format!("sold {} + held {} + remaining {} = {}", s.sold, s.held, s.remaining, drop.total);
    check("invariant 1 (object = Postgres)", problems, fine)
}

/// At most one provider payment per order; every payment's order ends as it did.
fn payments(stack: &KillStack, runs: &[BuyerRun], by_id: &HashMap<Uuid, &OrderRow>, rows: &[OrderRow]) -> Check {
    let mut problems = Vec::new();
    for (order, n) in stack.double.intents_per_order() {
        if n > 1 {
            problems.push(format!("order {order} has {n} PaymentIntents"));
        }
    }
    let (mut succeeded, mut failed) = (0, 0);
    for run in runs {
        let Told::Created { order_id, .. } = run.told else { continue };
        let Some(o) = by_id.get(&order_id) else { continue };
        let (want_order, want_payment, reference) = match &run.paid {
            Some(Paid::Succeeded(r)) => {
                succeeded += 1;
                ("confirmed", "succeeded", r)
            }
            Some(Paid::Failed(r)) => {
                failed += 1;
                ("failed", "failed", r)
            }
            _ => continue,
        };
        if o.status != want_order
            || o.payment.as_deref() != Some(want_payment)
            || o.reference.as_ref() != Some(reference)
        {
            problems.push(format!("order {order_id} is {} / payment {:?}, want {want_order}", o.status, o.payment));
        }
    }
    for r in rows {
        let want = i64::from(r.status == "confirmed");
        if r.confirmations != want {
            problems.push(format!("order {} ({}) confirmed {} times", r.id, r.status, r.confirmations));
        }
    }
    let fine = format!("{succeeded} paid → confirmed once, {failed} failed → failed, one intent per order");
    check("payments applied once", problems, fine)
}

/// The outbox is published and every consumer group has finished it.
async fn drained(stack: &KillStack, db: &sqlx::PgPool) -> anyhow::Result<Check> {
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(db).await?;
    let flow = drops_origin::events::flow(db, REDIS_PREFIX).await?;
    let mut conn = stack.redis_conn().await?;
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(drops_origin::events::stream_key(REDIS_PREFIX))
        .query_async(&mut conn)
        .await?;
    let pending: usize = groups.groups.iter().map(|g| g.pending).sum();
    let mut problems = Vec::new();
    if unpublished > 0 || flow.unfinished > 0 || pending > 0 {
        problems.push(format!("{unpublished} unpublished, {} unfinished, {pending} pending", flow.unfinished));
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(db).await?;
    Ok(check("outbox drained", problems, format!("{total} events, {} groups caught up", groups.groups.len())))
}

/// What the consumers made of the confirmations: one inbox entry and one audit
/// entry each.
fn consumers(rows: &[OrderRow]) -> Check {
    let mut problems = Vec::new();
    let confirmed: Vec<&OrderRow> = rows.iter().filter(|r| r.status == "confirmed").collect();
    for r in &confirmed {
        if r.confirmed_notices != 1 || r.confirmed_audits != 1 {
            problems
                .push(format!("order {}: {} notices, {} audit entries", r.id, r.confirmed_notices, r.confirmed_audits));
        }
    }
    check("each confirmation in inbox and audit once", problems, format!("{} confirmations", confirmed.len()))
}

/// The drop's analytics equal a recount of its orders.
async fn analytics(http: &Http, drop: &DropUnderTest, rows: &[OrderRow], s: &InventorySnapshot) -> Check {
    let path = format!("/v1/drops/{}/analytics", drop.drop_id);
    let figures = match http.call("check", http.get(&path, &drop.creator_token)).await {
        Ok(a) if a.status.is_success() => a.json(),
        other => {
            return check("analytics = recount", vec![format!("{path}: {:?}", other.map(|a| a.status))], String::new())
        }
    };
    let mut problems = Vec::new();
    for state in ["reserved", "confirmed", "failed", "cancelled", "expired"] {
        let n = rows.iter().filter(|r| r.status == state).count() as i64;
        if figures["orders"][state].as_i64() != Some(n) {
            problems.push(format!("{state}: {} vs {n}", figures["orders"][state]));
        }
    }
    let revenue: i64 = rows.iter().filter(|r| r.status == "confirmed").map(|r| r.amount).sum();
    if figures["revenue"]["amount"].as_i64() != Some(revenue) {
        problems.push(format!("revenue {} vs {revenue}", figures["revenue"]["amount"]));
    }
    if figures["stock"]["remaining"].as_u64() != Some(u64::from(s.remaining)) {
        problems.push(format!("remaining {} vs the object's {}", figures["stock"]["remaining"], s.remaining));
    }
    check("analytics = recount", problems, format!("orders {}, revenue {revenue}", figures["orders"]))
}

/// Every fan ended following: Postgres's ledger, and Redis's set (what it lost
/// must have come back).
async fn followers(
    stack: &KillStack,
    db: &sqlx::PgPool,
    drop: &DropUnderTest,
    fans: &[Buyer],
) -> anyhow::Result<Check> {
    let ledger: HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>("SELECT user_id FROM follows WHERE creator_id = $1")
        .bind(drop.creator_id)
        .fetch_all(db)
        .await?
        .into_iter()
        .collect();
    let set = drops_origin::followers::set_key(REDIS_PREFIX, drop.creator_id);
    let mut conn = stack.redis_conn().await?;
    let members: Vec<String> = redis::cmd("ZRANGE").arg(&set).arg(0).arg(-1).query_async(&mut conn).await?;
    let members: HashSet<Uuid> = members.iter().filter_map(|m| m.parse().ok()).collect();
    let fans: HashSet<Uuid> = fans.iter().map(|f| f.id).collect();
    let mut problems = Vec::new();
    if ledger != fans {
        problems.push(format!("Postgres has {} follows of {} fans", ledger.len(), fans.len()));
    }
    if members != ledger {
        let missing = ledger.difference(&members).count();
        let extra = members.difference(&ledger).count();
        problems.push(format!("Redis's set: {missing} missing, {extra} extra"));
    }
    Ok(check("followers (Postgres = Redis)", problems, format!("{} follows", ledger.len())))
}

/// One reconciliation pass over the drop: it must find nothing to repair.
pub async fn reconciliation(app: &App, drop: &DropUnderTest) -> Check {
    match app.reconcile_drops(&[drop.drop_id], Duration::ZERO).await {
        Ok(repairs) => check(
            "reconciliation finds nothing",
            repairs.iter().map(|r| format!("{} {:?}: {}", r.repair, r.order_id, r.reason)).collect(),
            "0 repairs".to_owned(),
        ),
        Err(e) => check("reconciliation finds nothing", vec![format!("it failed: {e:#}")], String::new()),
    }
}

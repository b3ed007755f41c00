//! The buy path at the edge. Checks run in the order API.md fixes (token, role,
//! `Idempotency-Key`, body), all before the inventory object is woken, so bad
//! requests cost the drop nothing; then the drop's object decides.

use drops_shared::api::{validate_idempotency_key, CreateOrderRequest};
use drops_shared::auth::{verify_bearer, Role};
use drops_shared::json;
use drops_shared::problem::{ErrorCode, Problem};
use uuid::Uuid;
use worker::{Env, Request};

use crate::config::EdgeConfig;
use crate::http::{header, now_utc, read_body, EdgeResult};
use crate::inventory_object::{self, Command, ReserveCommand};
use crate::limits;

pub async fn create(mut req: Request, env: &Env, drop_id: Uuid) -> EdgeResult {
    let cfg = EdgeConfig::get(env)?;
    let identity = verify_bearer(header(&req, "authorization").as_deref(), cfg.jwt_secret.as_bytes(), now_utc())?;
    identity.require(&[Role::Buyer])?;
    limits::buyer(env, identity.user_id).await?;
    let key = header(&req, "idempotency-key").ok_or(ErrorCode::IdempotencyKeyMissing)?;
    validate_idempotency_key(&key)?;
    let body = read_body(&mut req).await?;
    let order: CreateOrderRequest = json::from_slice(&body)?;
    order.validate()?;
    if sold_out::known(drop_id, identity.user_id) {
        return Err(Problem::sold_out(0).into());
    }
    let command = ReserveCommand { user_id: identity.user_id, idempotency_key: key, quantity: order.quantity };
    let mut answer = inventory_object::call_for_client(env, drop_id, &Command::Reserve(command)).await?;
    if answer.status_code() != 409 {
        return Ok(answer);
    }
    let body = answer.bytes().await?;
    let problem: Option<Problem> = serde_json::from_slice(&body).ok();
    // Only "nothing remains" is worth remembering: a buyer asking for fewer units
    // than one who was refused may still get them.
    if problem.as_ref().is_some_and(|p| p.code == ErrorCode::SoldOut && p.remaining == Some(0)) {
        sold_out::learn(env, drop_id).await;
    }
    Ok(problem_bytes(409, body)?)
}

/// How many drops this isolate holds a sold-out memo for, for [`crate::census`].
pub fn sold_out_memos_held() -> usize {
    sold_out::held()
}

fn problem_bytes(status: u16, body: Vec<u8>) -> worker::Result<worker::Response> {
    let headers = worker::Headers::new();
    headers.set("content-type", drops_shared::problem::PROBLEM_CONTENT_TYPE)?;
    Ok(worker::Response::from_bytes(body)?.with_status(status).with_headers(headers))
}

/// "Sold out" answered by the Worker, without waking the inventory object: once the
/// object said nothing remains of a drop, this isolate answers so itself for a
/// short while (`SOLD_OUT_MEMO_MS`, so units coming back from a release are seen
/// soon), except to buyers who may be replaying a purchase (the object names them
/// in a compact set, a Bloom filter: a "maybe" is sent to the object, which alone
/// can replay an answer).
mod sold_out {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use drops_shared::bloom::UserFilter;
    use uuid::Uuid;
    use worker::Env;

    use crate::config::EdgeConfig;
    use crate::http::now_ms;
    use crate::inventory_object::{self, Command, SoldOutMemo};

    struct Memo {
        until_ms: i64,
        replayers: UserFilter,
    }

    /// The memos of one isolate. An isolate lives for as long as it keeps serving,
    /// and sees drop after drop sell out: a memo (with its filter, up to ~120 KB for
    /// 100,000 buyers) must not outlive its usefulness, or the wasm heap, which never
    /// shrinks, grows with every drop ever sold out.
    #[derive(Default)]
    struct Memos(HashMap<Uuid, Memo>);

    impl Memos {
        fn known(&mut self, drop_id: Uuid, user_id: Uuid, now_ms: i64) -> bool {
            match self.0.get(&drop_id) {
                Some(memo) if now_ms < memo.until_ms => !memo.replayers.may_hold(&user_id),
                Some(_) => {
                    self.0.remove(&drop_id);
                    false
                }
                None => false,
            }
        }

        fn learn(&mut self, drop_id: Uuid, memo: Memo, now_ms: i64) {
            self.0.retain(|_, m| now_ms < m.until_ms);
            self.0.insert(drop_id, memo);
        }
    }

    thread_local! {
        static MEMOS: RefCell<Memos> = RefCell::new(Memos::default());
    }

    /// How many drops this isolate holds a memo for (expired ones included until pruned).
    pub fn held() -> usize {
        MEMOS.with(|m| m.borrow().0.len())
    }

    pub fn known(drop_id: Uuid, user_id: Uuid) -> bool {
        MEMOS.with(|m| m.borrow_mut().known(drop_id, user_id, now_ms()))
    }

    pub async fn learn(env: &Env, drop_id: Uuid) {
        let Ok(cfg) = EdgeConfig::get(env) else { return };
        let memo = async {
            let mut resp = inventory_object::call(env, drop_id, &Command::SoldOutMemo).await?;
            resp.json::<SoldOutMemo>().await
        };
        match memo.await {
            Ok(SoldOutMemo { remaining: 0, replayers }) => {
                let Some(replayers) = replayers.ready() else { return };
                let now = now_ms();
                let memo = Memo { until_ms: now + cfg.sold_out_memo_ms, replayers };
                MEMOS.with(|m| m.borrow_mut().learn(drop_id, memo, now));
            }
            Ok(_) => {} // units came back meanwhile
            Err(e) => worker::console_warn!("no sold-out memo for {drop_id}: {e}"),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn memo(until_ms: i64, replayers: &[Uuid]) -> Memo {
            Memo { until_ms, replayers: UserFilter::of(replayers) }
        }

        #[test]
        fn a_memo_answers_until_it_expires_except_to_replayers() {
            let (drop_id, buyer, replayer) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
            let mut memos = Memos::default();
            memos.learn(drop_id, memo(1_000, &[replayer]), 0);
            assert!(memos.known(drop_id, buyer, 999));
            assert!(!memos.known(drop_id, replayer, 999));
            assert!(!memos.known(drop_id, buyer, 1_000));
        }

        #[test]
        fn expired_memos_are_dropped_not_kept() {
            let mut memos = Memos::default();
            for i in 0..100 {
                memos.learn(Uuid::now_v7(), memo(i * 10 + 1_000, &[Uuid::now_v7()]), i * 10);
            }
            // Learned at 990, the last one alone may still answer at 1,985.
            memos.learn(Uuid::now_v7(), memo(3_000, &[]), 1_985);
            assert_eq!(memos.0.len(), 2, "memos past their time are gone once another is learned");

            let drop_id = Uuid::now_v7();
            let mut memos = Memos::default();
            memos.learn(drop_id, memo(1_000, &[]), 0);
            assert!(!memos.known(drop_id, Uuid::now_v7(), 1_000));
            assert!(memos.0.is_empty(), "an expired memo that was asked about is gone");
        }
    }
}

pub async fn stock(env: &Env, drop_id: Uuid) -> EdgeResult {
    inventory_object::call_for_client(env, drop_id, &Command::Stock).await
}

//! What the Worker asks of a drop's inventory object: one typed command per
//! request, sent as the JSON body of a `POST` to the object, and the type each
//! is answered with (a refusal is a `Problem`, whichever the command).

use drops_shared::bloom::UserFilter;
use drops_shared::internal::{HoldAction, InventoryTerms};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// The buy path, after auth and validation: decide, and answer 201
    /// (`drops_shared::api::OrderCreated`) or a problem.
    Reserve(ReserveCommand),
    /// Remaining stock and status, uncached (`drops_shared::api::StockResponse`).
    Stock,
    /// The origin creates or changes the drop's terms; answers the snapshot
    /// (`drops_shared::internal::InventorySnapshot`).
    PutTerms { terms: InventoryTerms },
    /// Everything, for reconciliation, with the first page of holds
    /// (`drops_shared::internal::InventorySnapshot`).
    Snapshot,
    /// The next page of holds, after a reservation id (`drops_shared::internal::HoldsPage`).
    Holds { after: Uuid, limit: u32 },
    /// What the Worker needs to answer "sold out" by itself ([`SoldOutMemo`]).
    SoldOutMemo,
    /// Sell, release or reinstate a hold, on the origin's word
    /// (`drops_shared::internal::HoldOutcome`).
    MoveHold { reservation_id: Uuid, action: HoldAction },
    /// Development only: rebuild the database as schema version 1 kept it, then
    /// open it as a fresh instance would (see `fixture`).
    RebuildAsV1 { fixture: super::fixture::V1Fixture },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveCommand {
    pub user_id: Uuid,
    pub idempotency_key: String,
    pub quantity: u32,
}

/// The answer to [`Command::SoldOutMemo`]: how many units remain, and who may
/// replay a purchase (and so must still be asked about).
#[derive(Serialize, Deserialize)]
pub struct SoldOutMemo {
    pub remaining: u32,
    pub replayers: UserFilter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_travel_as_tagged_json_and_come_back_the_same() {
        let reserve = Command::Reserve(ReserveCommand {
            user_id: Uuid::from_u128(1),
            idempotency_key: "k".repeat(8),
            quantity: 2,
        });
        let wire = serde_json::to_value(&reserve).unwrap();
        assert_eq!(wire["op"], "reserve");
        assert_eq!(wire["quantity"], 2);
        let move_hold = Command::MoveHold { reservation_id: Uuid::from_u128(2), action: HoldAction::Reinstate };
        assert_eq!(serde_json::to_value(&move_hold).unwrap()["action"], "reinstate");
        for command in [reserve, move_hold, Command::Stock, Command::Snapshot, Command::SoldOutMemo] {
            let back: Command = serde_json::from_slice(&serde_json::to_vec(&command).unwrap()).unwrap();
            assert_eq!(back, command);
        }
        assert!(serde_json::from_str::<Command>(r#"{"op":"steal"}"#).is_err());
    }
}

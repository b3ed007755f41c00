//! The demo data `drops-origin seed` writes: fixed ids, so that seeding twice
//! changes nothing and the README's curl lines keep working.

use chrono::{Duration, Utc};
use drops_shared::auth::Role;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::users;

pub const ADMIN: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000001);
pub const CREATOR_USER: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000002);
pub const BUYER: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000003);
pub const CREATOR: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000101);
pub const PRODUCT: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000201);
pub const LIVE_DROP: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000301);
pub const UPCOMING_DROP: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000302);

/// The demo user of each role.
pub fn user_of(role: Role) -> Uuid {
    match role {
        Role::Admin => ADMIN,
        Role::Creator => CREATOR_USER,
        Role::Buyer => BUYER,
    }
}

/// An admin, a buyer, a creator ("Nova Studio") with a product, a live drop of 100
/// units and an upcoming drop of 50. Re-running it keeps what exists and asks for a
/// fresh inventory sync.
pub async fn seed(conn: &mut PgConnection, hold_seconds: u32) -> sqlx::Result<()> {
    for role in [Role::Admin, Role::Creator, Role::Buyer] {
        users::ensure(&mut *conn, user_of(role), role).await?;
    }
    sqlx::query!(
        "INSERT INTO creators (id, user_id, name) VALUES ($1, $2, 'Nova Studio') ON CONFLICT (id) DO NOTHING",
        CREATOR,
        CREATOR_USER
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO products (id, creator_id, title, description) VALUES ($1, $2, 'Aurora Hoodie',
         'Heavyweight hoodie, numbered run of 100.') ON CONFLICT (id) DO NOTHING",
        PRODUCT,
        CREATOR
    )
    .execute(&mut *conn)
    .await?;
    let now = Utc::now();
    let drops = [
        (LIVE_DROP, now - Duration::minutes(1), now + Duration::days(30), 100),
        (UPCOMING_DROP, now + Duration::days(1), now + Duration::days(2), 50),
    ];
    for (id, starts_at, ends_at, stock) in drops {
        sqlx::query!(
            "INSERT INTO drops (id, product_id, creator_id, price_amount, currency, stock, max_per_user,
                                starts_at, ends_at, hold_seconds)
             VALUES ($1, $2, $3, 4500, 'EUR', $4, 2, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET inventory_synced_at = NULL",
            id,
            PRODUCT,
            CREATOR,
            stock,
            starts_at,
            ends_at,
            hold_seconds as i32
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

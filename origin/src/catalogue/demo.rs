//! The demo data `drops-origin seed` writes: fixed ids, so that seeding twice
//! changes nothing and the README's curl lines keep working.

use chrono::{Duration, Utc};
use drops_shared::auth::Role;
use drops_shared::internal::MediaUpload;
use drops_shared::media::{MediaKey, Visibility};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{media, users};

pub const ADMIN: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000001);
pub const CREATOR_USER: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000002);
pub const BUYER: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000003);
pub const CREATOR: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000101);
pub const PRODUCT: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000201);
pub const LIVE_DROP: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000301);
pub const UPCOMING_DROP: Uuid = Uuid::from_u128(0x0196a000_0000_7000_8000_000000000302);

/// The demo product's picture: a small PNG, recorded as public media the demo admin
/// uploaded. `scripts/run` uploads the same bytes through the edge (same bytes, same
/// key), so the card's `image_url` serves.
pub const PRODUCT_IMAGE: &[u8] = include_bytes!("../../assets/demo-drop.png");

/// The key of [`PRODUCT_IMAGE`]; the demo product's `image_url` is its public path.
pub fn product_image() -> MediaKey {
    MediaKey::of(PRODUCT_IMAGE).expect("the demo image is a PNG")
}

/// The demo user of each role.
pub fn user_of(role: Role) -> Uuid {
    match role {
        Role::Admin => ADMIN,
        Role::Creator => CREATOR_USER,
        Role::Buyer => BUYER,
    }
}

/// An admin, a buyer, a creator ("Nova Studio") with a product (its picture recorded
/// as public media), a live drop of 100 units and an upcoming drop of 50. Re-running
/// it keeps what exists (but gives the product this picture) and asks for a fresh
/// inventory sync.
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
    let image = product_image();
    media::record(
        &mut *conn,
        &MediaUpload {
            key: image,
            visibility: Visibility::Public,
            content_type: image.kind().content_type().to_owned(),
            size: PRODUCT_IMAGE.len() as u64,
            uploaded_by: ADMIN,
            uploaded_by_role: drops_shared::auth::Role::Admin,
            uploaded_at: Utc::now(),
        },
        None,
    )
    .await?;
    sqlx::query!(
        "INSERT INTO products (id, creator_id, title, description, image_url) VALUES ($1, $2, 'Aurora Hoodie',
         'Heavyweight hoodie, numbered run of 100.', $3)
         ON CONFLICT (id) DO UPDATE SET image_url = EXCLUDED.image_url
         WHERE products.image_url IS DISTINCT FROM EXCLUDED.image_url",
        PRODUCT,
        CREATOR,
        image.public_path()
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

#[cfg(test)]
mod tests {
    use drops_shared::media::MediaType;

    use super::*;

    #[test]
    fn the_demo_picture_is_a_small_png_served_at_its_hash() {
        assert!(PRODUCT_IMAGE.len() < 8 * 1024, "a few KB at most: {}", PRODUCT_IMAGE.len());
        let key = product_image();
        assert_eq!(key.kind(), MediaType::Png);
        assert_eq!(MediaKey::from_public_url(&key.public_path()), Some(key));
    }
}

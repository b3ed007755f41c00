//! Bearer tokens: JWTs signed with HS256 and nothing else. The algorithm is fixed by
//! the verifier, never taken from the token, so `alg: none` and algorithm-confusion
//! tokens fail like any forgery. Claims: `sub` (user id, a UUID), `role`, `exp`.

use chrono::{DateTime, Duration, Utc};
use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, Header, TimeOptions, UntrustedToken};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::problem::{ErrorCode, Problem};

/// Stored as text in `users.role` (the `sqlx` feature maps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(type_name = "text", rename_all = "snake_case"))]
pub enum Role {
    Buyer,
    Creator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Who is calling, once the token checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Uuid,
    pub role: Role,
}

impl Identity {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Problem> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Problem::new(ErrorCode::Forbidden, Some(format!("role `{}` may not do this", self.role.as_str()))))
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CustomClaims {
    sub: Uuid,
    role: Role,
}

/// Verifies the value of an `Authorization` header at time `now`.
pub fn verify_bearer(authorization: Option<&str>, secret: &[u8], now: DateTime<Utc>) -> Result<Identity, Problem> {
    let unauthorized = |why: &str| Problem::new(ErrorCode::Unauthorized, Some(why.to_owned()));
    let header = authorization.ok_or_else(|| unauthorized("missing bearer token"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| unauthorized("expected `Authorization: Bearer <token>`"))?
        .trim();
    if secret.is_empty() {
        return Err(unauthorized("token verification is not configured"));
    }
    let untrusted = UntrustedToken::new(token).map_err(|_| unauthorized("malformed token"))?;
    let key = Hs256Key::new(secret);
    let verified =
        Hs256.validator::<CustomClaims>(&key).validate(&untrusted).map_err(|_| unauthorized("invalid token"))?;
    let claims = verified.claims();
    let options = TimeOptions::new(Duration::seconds(30), move || now);
    claims.validate_expiration(&options).map_err(|_| unauthorized("token expired or without `exp`"))?;
    Ok(Identity { user_id: claims.custom.sub, role: claims.custom.role })
}

/// Mints a token; used by the demo seeding, the tests and the load tool.
pub fn mint(identity: Identity, secret: &[u8], expires_at: DateTime<Utc>) -> String {
    let mut claims = Claims::new(CustomClaims { sub: identity.user_id, role: identity.role });
    claims.expiration = Some(expires_at);
    // `Hs256` signing cannot fail for serializable claims.
    Hs256.token(&Header::empty(), &claims, &Hs256Key::new(secret)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64_engine::encode;

    mod base64_engine {
        // Tiny URL-safe base64 for crafting hostile tokens in tests only.
        pub fn encode(bytes: &[u8]) -> String {
            const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
                for i in 0..=chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }

    const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn buyer() -> Identity {
        Identity { user_id: Uuid::from_u128(7), role: Role::Buyer }
    }

    #[test]
    fn round_trip() {
        let token = mint(buyer(), SECRET, now() + Duration::hours(1));
        let got = verify_bearer(Some(&format!("Bearer {token}")), SECRET, now()).unwrap();
        assert_eq!(got, buyer());
    }

    #[test]
    fn rejects_wrong_secret_expired_and_missing() {
        let token = mint(buyer(), SECRET, now() + Duration::hours(1));
        assert!(verify_bearer(Some(&format!("Bearer {token}")), b"other-secret", now()).is_err());
        let old = mint(buyer(), SECRET, now() - Duration::hours(1));
        assert!(verify_bearer(Some(&format!("Bearer {old}")), SECRET, now()).is_err());
        assert!(verify_bearer(None, SECRET, now()).is_err());
        assert!(verify_bearer(Some(&format!("Basic {token}")), SECRET, now()).is_err());
    }

    #[test]
    fn rejects_alg_none() {
        let header = encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = encode(format!(r#"{{"sub":"{}","role":"admin","exp":1900000000}}"#, Uuid::from_u128(7)).as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            let err = verify_bearer(Some(&format!("Bearer {token}")), SECRET, now()).unwrap_err();
            assert_eq!(err.status, 401);
        }
    }

    #[test]
    fn role_check() {
        assert_eq!(buyer().require(&[Role::Creator, Role::Admin]).unwrap_err().status, 403);
        assert!(buyer().require(&[Role::Buyer]).is_ok());
    }
}

//! Seals: the chain's hashes are plain SHA-256, so whoever gets past the database's
//! append-only triggers could edit an entry and hash every later one again, and the
//! chain alone would still hold. A seal is HMAC-SHA256, under a key the database
//! never sees (`DROPS_AUDIT_KEYS`), over the chain's head at one moment (its seq and
//! hash). Each hash covers every entry before it, so one valid seal vouches for the
//! whole chain up to its seq: a rewritten chain no longer matches the seals, and
//! without the key no new seal can be made.
//!
//! Each origin instance seals the head once a second when it has moved ([`round`];
//! instances racing for one head write one seal), and writes the sealed head to its
//! log at most once a minute, so a copy of it also lives outside the database.
//! [`check`] verifies the seals with every configured key (rotation: the new key
//! first, the old one kept until the new one has sealed) and calls the chain invalid
//! from the first entry no valid seal vouches for, once that entry is older than
//! [`UNSEALED_GRACE`] (an entry not sealed by then means seals were removed, or no
//! origin is running to seal).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;
use sqlx::PgPool;

use crate::config::{AuditKey, AuditSettings};
use crate::tasks::Next;

/// How often an instance seals the head.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How old an entry may be and still be unsealed without making the chain invalid.
pub const UNSEALED_GRACE: Duration = Duration::from_secs(120);
/// How often the sealed head is written to the log.
const LOG_EVERY_SECS: i64 = 60;

fn keyed(key: &AuditKey, seq: i64, hash: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.secret.expose_secret().as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{seq}:{hash}").as_bytes());
    mac
}

/// The seal of the head `(seq, hash)` under `key`, in hex.
pub fn seal(key: &AuditKey, seq: i64, hash: &str) -> String {
    hex::encode(keyed(key, seq, hash).finalize().into_bytes())
}

/// Whether `mac` is the seal of `(seq, hash)` under `key` (compared in constant time).
fn holds(key: &AuditKey, seq: i64, hash: &str, mac: &str) -> bool {
    hex::decode(mac).is_ok_and(|bytes| keyed(key, seq, hash).verify_slice(&bytes).is_ok())
}

/// Seals the head if it moved since the last seal.
pub async fn round(db: &PgPool, keys: &AuditSettings) -> anyhow::Result<Next> {
    static LOGGED_AT: AtomicI64 = AtomicI64::new(0);
    let head = sqlx::query!(
        "SELECT seq, hash FROM audit_log WHERE seq > (SELECT coalesce(max(seq), 0) FROM audit_seals)
         ORDER BY seq DESC LIMIT 1"
    )
    .fetch_optional(db)
    .await?;
    let Some(head) = head else { return Ok(Next::Later) };
    let key = keys.current();
    let mac = seal(key, head.seq, &head.hash);
    let sealed = sqlx::query!(
        "INSERT INTO audit_seals (seq, hash, key_id, mac) VALUES ($1, $2, $3, $4) ON CONFLICT (seq) DO NOTHING",
        head.seq,
        head.hash,
        key.id,
        mac
    )
    .execute(db)
    .await?;
    let now = chrono::Utc::now().timestamp();
    let logged_at = LOGGED_AT.load(Ordering::Relaxed);
    if sealed.rows_affected() == 1
        && now - logged_at >= LOG_EVERY_SECS
        && LOGGED_AT.compare_exchange(logged_at, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        tracing::info!(seq = head.seq, hash = %head.hash, key_id = %key.id, mac = %mac, "audit chain head sealed");
    }
    Ok(Next::Later)
}

/// What the seals say of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealCheck {
    /// The newest entry a valid seal vouches for.
    pub sealed_through: Option<i64>,
    /// The first entry no valid seal vouches for, when that is a fault: a seal does
    /// not match its entry or its key, or the entry is older than [`UNSEALED_GRACE`].
    pub first_unvouched: Option<i64>,
}

/// Checks every seal, oldest first, against its entry and its key.
pub async fn check(db: &PgPool, keys: &AuditSettings) -> anyhow::Result<SealCheck> {
    let seals = sqlx::query!(
        r#"SELECT s.seq, s.hash, s.key_id, s.mac, a.hash AS "entry_hash?"
           FROM audit_seals s LEFT JOIN audit_log a USING (seq) ORDER BY s.seq"#
    )
    .fetch_all(db)
    .await?;
    let mut sealed_through = None;
    for s in seals {
        // A seal by a retired key cannot be checked; a newer one vouches for what it did.
        let Some(key) = keys.keys.iter().find(|k| k.id == s.key_id) else { continue };
        if !holds(key, s.seq, &s.hash, &s.mac) || s.entry_hash.as_deref() != Some(s.hash.as_str()) {
            let first = sealed_through.map_or(1, |n: i64| n + 1);
            return Ok(SealCheck { sealed_through, first_unvouched: Some(first) });
        }
        sealed_through = Some(s.seq);
    }
    let grace = UNSEALED_GRACE.as_secs_f64();
    let stale = sqlx::query_scalar!(
        "SELECT min(seq) FROM audit_log WHERE seq > $1 AND at < now() - make_interval(secs => $2)",
        sealed_through.unwrap_or(0),
        grace
    )
    .fetch_one(db)
    .await?;
    Ok(SealCheck { sealed_through, first_unvouched: stale })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str) -> AuditKey {
        AuditKey { id: id.into(), secret: secret.to_owned().into() }
    }

    #[test]
    fn a_seal_holds_only_for_its_head_and_its_key() {
        let k = key("k1", "a-long-audit-key-0123456789abcdef0123");
        let hash = "ab".repeat(32);
        let mac = seal(&k, 7, &hash);
        assert_eq!(mac.len(), 64);
        assert!(holds(&k, 7, &hash, &mac));
        assert!(!holds(&k, 8, &hash, &mac), "another seq");
        assert!(!holds(&k, 7, &"cd".repeat(32), &mac), "another hash");
        assert!(!holds(&key("k1", "another-key-0123456789abcdef0123456"), 7, &hash, &mac), "another key");
        assert!(!holds(&k, 7, &hash, "not hex"));
        assert!(!holds(&k, 7, &hash, &mac[..62]));
    }
}

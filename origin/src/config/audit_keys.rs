//! The keys that seal the audit chain, as `DROPS_AUDIT_KEYS` names them.

use secrecy::{ExposeSecret, SecretString};

/// The development audit seal key, as `DROPS_AUDIT_KEYS` names keys: `<id>:<secret>`.
pub const DEV_AUDIT_KEYS: &str = "dev:dev-audit-seal-key-change-me";

/// The keys that seal the audit chain (see `audit::seal`): kept out of the database,
/// so whoever can write to it cannot make a seal.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The first seals new entries; every one verifies (a rotation lists the new key
    /// first and keeps the old one until a seal by the new key exists).
    pub keys: Vec<AuditKey>,
}

#[derive(Debug, Clone)]
pub struct AuditKey {
    /// Recorded with each seal, so a seal says which key made it.
    pub id: String,
    pub secret: SecretString,
}

impl AuditSettings {
    /// Reads `<id>:<secret>[,<id>:<secret>…]`.
    pub fn parse(keys: &SecretString) -> anyhow::Result<Self> {
        let keys = keys
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| match k.split_once(':') {
                Some((id, secret)) if !id.is_empty() && id.len() <= 64 && !secret.is_empty() => {
                    Ok(AuditKey { id: id.to_owned(), secret: SecretString::from(secret.to_owned()) })
                }
                _ => anyhow::bail!("DROPS_AUDIT_KEYS: each key is <id>:<secret>, the id at most 64 bytes"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!keys.is_empty(), "DROPS_AUDIT_KEYS: at least one key is needed");
        let mut ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        ids.sort_unstable();
        anyhow::ensure!(ids.windows(2).all(|w| w[0] != w[1]), "DROPS_AUDIT_KEYS: each key id once");
        Ok(Self { keys })
    }

    /// The key that seals now.
    pub fn current(&self) -> &AuditKey {
        &self.keys[0]
    }
}

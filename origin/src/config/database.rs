//! Postgres: where it is, and the two pools the origin keeps, one for requests and
//! one for its background work.

use secrecy::SecretString;

use super::EnvSettings;

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    /// The requests' pool.
    pub max_connections: u32,
    /// How long a request may wait for a pooled connection before it is answered 503
    /// `overloaded` (a full pool means the database is the bottleneck: waiting longer
    /// only deepens the queue).
    pub acquire_timeout_ms: u64,
    /// The background work's pool (outbox relay, consumer groups, payment preparer,
    /// push sender, scheduler, reconciliation, audit sequencer): a pool of its own, so
    /// a flood of requests that takes every request connection cannot stall the event
    /// flow, and a backlog of background work cannot starve requests.
    pub background_max_connections: u32,
    /// Background work is not answering anyone: it may wait longer for a connection
    /// than a request, rather than fail a round and start it again.
    pub background_acquire_timeout_ms: u64,
}

impl EnvSettings {
    pub(super) fn database(&self) -> anyhow::Result<DatabaseSettings> {
        anyhow::ensure!(self.database_max_connections >= 1, "DROPS_DATABASE_MAX_CONNECTIONS: at least 1");
        anyhow::ensure!(self.database_acquire_timeout_ms >= 1, "DROPS_DATABASE_ACQUIRE_TIMEOUT_MS: at least 1");
        anyhow::ensure!(
            self.background_database_max_connections >= 1,
            "DROPS_BACKGROUND_DATABASE_MAX_CONNECTIONS: at least 1"
        );
        anyhow::ensure!(
            self.background_database_acquire_timeout_ms >= 1,
            "DROPS_BACKGROUND_DATABASE_ACQUIRE_TIMEOUT_MS: at least 1"
        );
        Ok(DatabaseSettings {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
            acquire_timeout_ms: self.database_acquire_timeout_ms,
            background_max_connections: self.background_database_max_connections,
            background_acquire_timeout_ms: self.background_database_acquire_timeout_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn background_work_has_a_pool_of_its_own_and_each_pool_at_least_one_connection() {
        let dev = Settings::development().database;
        assert_eq!((dev.max_connections, dev.acquire_timeout_ms), (20, 250));
        assert_eq!((dev.background_max_connections, dev.background_acquire_timeout_ms), (10, 10_000));
        for (bad, name) in [
            (EnvSettings { database_max_connections: 0, ..EnvSettings::default() }, "DROPS_DATABASE_MAX_CONNECTIONS"),
            (
                EnvSettings { background_database_max_connections: 0, ..EnvSettings::default() },
                "DROPS_BACKGROUND_DATABASE_MAX_CONNECTIONS",
            ),
            (
                EnvSettings { background_database_acquire_timeout_ms: 0, ..EnvSettings::default() },
                "DROPS_BACKGROUND_DATABASE_ACQUIRE_TIMEOUT_MS",
            ),
        ] {
            assert!(bad.into_settings().unwrap_err().to_string().contains(name), "{name}");
        }
    }
}

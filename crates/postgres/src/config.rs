//! Configuration of the PostgreSQL outbox store.

use std::time::Duration;

use eventyard_core::outbox::OutboxError;

/// Schema used when none is configured.
pub const DEFAULT_SCHEMA: &str = "eventyard";

/// How [`PgOutbox`](crate::PgOutbox) connects and where its tables live.
#[derive(Debug, Clone, PartialEq)]
pub struct PgOutboxConfig {
    /// Schema holding the outbox table and its functions (default `eventyard`). Lower-case
    /// letters, digits and `_`, starting with a letter or `_`, at most 40 characters: it also
    /// names the NOTIFY channel (`<schema>_outbox`) and a transaction-local setting.
    pub schema: String,
    /// Connections the store keeps for `claim`/`mark_dispatched`/... (default 4). Calls are
    /// single statements and are pipelined over these connections. The LISTEN connection is
    /// extra.
    pub pool_size: usize,
    /// Connection attempts made by [`PgOutbox::connect`](crate::PgOutbox::connect) before it
    /// gives up with [`OutboxError::Unavailable`] (default 5).
    pub connect_attempts: u32,
    /// Delay after the first failed attempt; doubled after each one, capped at 2 s
    /// (default 200 ms).
    pub connect_backoff: Duration,
    /// Timeout of one connection attempt (default 5 s).
    pub connect_timeout: Duration,
    /// Runs [`PgOutbox::migrate`](crate::PgOutbox::migrate) on connect (default true).
    pub migrate: bool,
    /// Opens the dedicated LISTEN connection so that `wait` wakes up on commit (default true).
    /// Without it, `wait` only sleeps for its timeout (pure polling).
    pub listen: bool,
    /// `application_name` reported to the server (default `eventyard-outbox`).
    pub application_name: String,
    /// Whether the store's own writes (claims, marks, releases, parks, cleanup) wait for the
    /// WAL flush (`synchronous_commit`; default **false**). Losing the last few of them in a
    /// server crash loses no event: a forgotten claim or mark makes the record claimable again
    /// and it is published once more (at least once). Recording (`add`) runs in the
    /// application's transaction and keeps the application's durability.
    pub synchronous_commit: bool,
}

impl Default for PgOutboxConfig {
    fn default() -> Self {
        PgOutboxConfig {
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 4,
            connect_attempts: 5,
            connect_backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(5),
            migrate: true,
            listen: true,
            application_name: "eventyard-outbox".to_owned(),
            synchronous_commit: false,
        }
    }
}

impl PgOutboxConfig {
    /// The defaults with another schema.
    pub fn with_schema(schema: impl Into<String>) -> Self {
        PgOutboxConfig {
            schema: schema.into(),
            ..Self::default()
        }
    }

    /// Checks the schema name and the numbers.
    pub fn validate(&self) -> Result<(), OutboxError> {
        check_schema(&self.schema)?;
        if self.pool_size == 0 {
            return Err(OutboxError::Store(
                "invalid configuration: pool_size must be at least 1".into(),
            ));
        }
        if self.connect_attempts == 0 {
            return Err(OutboxError::Store(
                "invalid configuration: connect_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Checks a schema name: `[a-z_][a-z0-9_]{0,39}`. The name is spliced into SQL text, the
/// NOTIFY channel and a setting name, so nothing else is accepted.
pub fn check_schema(schema: &str) -> Result<(), OutboxError> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 40
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(OutboxError::Store(format!(
            "invalid configuration: schema name `{schema}` must match [a-z_][a-z0-9_]{{0,39}}"
        )))
    }
}

/// Parses a `postgres://` URL (or a key=value connection string) and applies the store's
/// connection settings: connect timeout, TCP keepalives, application name,
/// `default_transaction_isolation=read committed` (the claim relies on per-statement snapshots)
/// and `synchronous_commit` (see [`PgOutboxConfig::synchronous_commit`]).
pub(crate) fn pg_config(
    url: &str,
    config: &PgOutboxConfig,
) -> Result<tokio_postgres::Config, OutboxError> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| OutboxError::Store(format!("invalid PostgreSQL URL: {e}")))?;
    pg.connect_timeout(config.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(15))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    if pg.get_application_name().is_none() {
        pg.application_name(config.application_name.clone());
    }
    let sync = if config.synchronous_commit {
        "on"
    } else {
        "off"
    };
    let isolation =
        format!("-c default_transaction_isolation=read\\ committed -c synchronous_commit={sync}");
    let options = match pg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {isolation}"),
        _ => isolation,
    };
    pg.options(options);
    Ok(pg)
}

/// `host:port/dbname` of a configuration, for messages (never the password).
pub(crate) fn describe_target(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let db = pg.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(check_schema("eventyard").is_ok());
        assert!(check_schema("_t1_x").is_ok());
        assert!(check_schema("").is_err());
        assert!(check_schema("1abc").is_err());
        assert!(check_schema("Abc").is_err());
        assert!(check_schema("a;drop").is_err());
        assert!(check_schema(&"a".repeat(41)).is_err());
    }

    #[test]
    fn url_gets_our_settings_and_keeps_theirs() {
        let pg = pg_config(
            "postgres://u:secret@db.example:6543/app?options=-c%20search_path%3Dx",
            &PgOutboxConfig::default(),
        )
        .unwrap();
        let o = pg.get_options().unwrap();
        assert!(
            o.contains("search_path=x") && o.contains("read\\ committed"),
            "{o}"
        );
        assert_eq!(describe_target(&pg), "db.example:6543/app");
        assert!(pg_config("http://[bad", &PgOutboxConfig::default()).is_err());
    }
}

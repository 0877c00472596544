//! [`PgOutbox`]: the relay's side of the PostgreSQL outbox ([`OutboxStore`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use eventyard_core::Properties;
use eventyard_core::outbox::{OutboxError, OutboxRecord, OutboxStatus, OutboxStore, PendingEvent};
use eventyard_core::transport::Message;
use tokio_postgres::types::Json;
use tokio_postgres::{Row, Transaction};

use crate::config::{PgOutboxConfig, describe_target, pg_config};
use crate::error;
use crate::listen::{Listener, Signal};
use crate::outbox::OutboxWriter;
use crate::pool::{self, Pool};
use crate::schema;
use crate::sql::Sql;

/// The PostgreSQL outbox store. Cheap to clone (shared state); hand it to the relay as
/// `Arc<dyn OutboxStore>`.
///
/// - `claim` runs `<schema>.outbox_claim`: an advisory lock serialises claims, then one
///   statement scans pending records in id order (a bounded window) and leases the first `max`
///   whose key has no earlier leased, retrying, parked or held record, by inserting narrow rows
///   into `outbox_claims`.
/// - `mark_dispatched` deletes the outbox and claim rows and appends to the dispatched log;
///   `cleanup` deletes old log rows in bounded batches, one elected cleaner at a time.
/// - `wait` wakes on the one NOTIFY per committing transaction, via a dedicated LISTEN
///   connection that reconnects by itself.
/// - Connection failures are [`OutboxError::Unavailable`]; the store reconnects on the next call.
#[derive(Clone)]
pub struct PgOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: PgOutboxConfig,
    pg: tokio_postgres::Config,
    pool: Pool,
    writer: OutboxWriter,
    signal: Arc<Signal>,
    _listener: Option<Listener>,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox")
            .field("target", &describe_target(&self.inner.pg))
            .field("schema", &self.inner.config.schema)
            .finish()
    }
}

/// A parked record, for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedRecord {
    /// Store sequence.
    pub id: i64,
    /// Topic.
    pub topic: String,
    /// Partition key (later records of this key wait until this one is requeued or discarded).
    pub partition_key: String,
    /// Why the transport refused it.
    pub reason: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
    /// Failed attempts, the parking included.
    pub attempts: u32,
}

impl PgOutbox {
    /// Connects to `url` (`postgres://user@host:port/db`), retrying up to
    /// `config.connect_attempts` times with backoff, then creates the schema if
    /// `config.migrate`, and starts the LISTEN connection if `config.listen`.
    ///
    /// Fails with [`OutboxError::Unavailable`] (naming host, port and database, never the
    /// password) when the server cannot be reached, and with [`OutboxError::Store`] for an
    /// invalid URL or configuration.
    pub async fn connect(url: &str, config: PgOutboxConfig) -> Result<Self, OutboxError> {
        config.validate()?;
        let pg = pg_config(url, &config)?;
        let mut client = connect_with_retry(&pg, &config).await?;
        if config.migrate {
            schema::migrate(&mut client, &config.schema).await?;
        }
        drop(client);
        let signal = Arc::new(Signal::default());
        let listener = config.listen.then(|| {
            Listener::start(
                pg.clone(),
                schema::channel(&config.schema),
                Arc::clone(&signal),
            )
        });
        let store = PgOutbox {
            inner: Arc::new(Inner {
                pool: Pool::new(pg.clone(), Sql::new(&config.schema), config.pool_size),
                writer: OutboxWriter::new(&config.schema)?,
                pg,
                config,
                signal,
                _listener: listener,
            }),
        };
        // Warm one connection so that a misconfiguration surfaces here, not in the relay.
        store.inner.pool.get().await?;
        // Return once LISTEN is active, so that a commit right after `connect` wakes `wait`.
        if store.inner._listener.is_some() {
            let deadline = tokio::time::Instant::now() + store.inner.config.connect_timeout;
            while !store.is_listening() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(store)
    }

    /// Creates (or upgrades) the schema, tables, indexes, trigger and functions; idempotent and
    /// safe to run from several processes at once.
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        let mut client = pool::connect(&self.inner.pg).await?;
        schema::migrate(&mut client, &self.inner.config.schema).await
    }

    /// Drops the schema and everything in it (tests, benchmarks).
    pub async fn drop_schema(&self) -> Result<(), OutboxError> {
        let conn = self.inner.pool.get().await?;
        schema::drop_schema(&conn.client, &self.inner.config.schema).await
    }

    /// The connection settings (for the benchmark's own connection).
    pub(crate) fn pg_config(&self) -> &tokio_postgres::Config {
        &self.inner.pg
    }

    /// The configured schema.
    pub fn schema(&self) -> &str {
        &self.inner.config.schema
    }

    /// The writer for this store's schema (to record events in application transactions).
    pub fn writer(&self) -> &OutboxWriter {
        &self.inner.writer
    }

    /// Records `event` inside the application's transaction `tx` (this store's schema).
    pub async fn add(
        &self,
        tx: &Transaction<'_>,
        event: &PendingEvent,
    ) -> Result<i64, OutboxError> {
        self.inner.writer.add(tx, event).await
    }

    /// Records `events` inside `tx` in one statement (this store's schema).
    pub async fn add_batch(
        &self,
        tx: &Transaction<'_>,
        events: &[PendingEvent],
    ) -> Result<Vec<i64>, OutboxError> {
        self.inner.writer.add_batch(tx, events).await
    }

    /// The advisory lock key of the cleaner election in this schema: whoever holds it (as a
    /// session or transaction advisory lock) is the cleaner; holding it from `psql` pauses
    /// cleanup.
    pub fn cleaner_lock_key(&self) -> i64 {
        schema::cleanup_lock(self.schema())
    }

    /// True while the LISTEN connection is established (`wait` then wakes on commit).
    pub fn is_listening(&self) -> bool {
        self.inner.signal.is_connected()
    }

    /// Parked records, oldest first, at most `limit`.
    pub async fn parked(&self, limit: u32) -> Result<Vec<ParkedRecord>, OutboxError> {
        let conn = self.inner.pool.get().await?;
        let s = self.schema();
        let rows = conn
            .client
            .query(
                &format!(
                    "SELECT id, topic, partition_key, coalesce(park_reason, ''), parked_at, \
                     attempts FROM {s}.outbox WHERE state = 2 ORDER BY id LIMIT $1"
                ),
                &[&i64::from(limit)],
            )
            .await
            .map_err(|e| error::map("parked", e))?;
        Ok(rows
            .iter()
            .map(|r| ParkedRecord {
                id: r.get(0),
                topic: r.get(1),
                partition_key: r.get(2),
                reason: r.get(3),
                parked_at: r.get::<_, Option<DateTime<Utc>>>(4).unwrap_or_default(),
                attempts: r.get::<_, i32>(5).max(0) as u32,
            })
            .collect())
    }

    /// Makes a parked record pending again (after the cause was fixed); it is claimed before
    /// the later records of its key. Returns whether it was parked.
    pub async fn requeue(&self, id: i64) -> Result<bool, OutboxError> {
        self.admin(
            "requeue",
            "WITH p AS (UPDATE {s}.outbox SET state = 0, visible_at = NULL \
             WHERE id = $1 AND state = 2 RETURNING partition_key) \
             , h AS (UPDATE {s}.outbox o SET state = 0 FROM p \
             WHERE o.partition_key = p.partition_key AND o.state = 3) \
             SELECT count(*) FROM p",
            id,
        )
        .await
    }

    /// Deletes a parked record for good, unblocking the later records of its key. Returns
    /// whether it was parked.
    pub async fn discard(&self, id: i64) -> Result<bool, OutboxError> {
        self.admin(
            "discard",
            "WITH p AS (DELETE FROM {s}.outbox WHERE id = $1 AND state = 2 \
             RETURNING id, partition_key) \
             , c AS (DELETE FROM {s}.outbox_claims l USING p WHERE l.id = p.id) \
             , h AS (UPDATE {s}.outbox o SET state = 0 FROM p \
             WHERE o.partition_key = p.partition_key AND o.state = 3 \
             AND NOT EXISTS (SELECT 1 FROM {s}.outbox q WHERE q.partition_key = o.partition_key \
             AND q.state = 2 AND q.id < o.id AND q.id <> p.id)) \
             SELECT count(*) FROM p",
            id,
        )
        .await
    }

    async fn admin(&self, what: &str, sql: &str, id: i64) -> Result<bool, OutboxError> {
        let conn = self.inner.pool.get().await?;
        let sql = sql.replace("{s}", self.schema());
        let n: i64 = conn
            .client
            .query_one(&sql, &[&id])
            .await
            .map_err(|e| error::map(what, e))?
            .get(0);
        if n > 0 {
            self.inner.signal.wake();
        }
        Ok(n > 0)
    }
}

async fn connect_with_retry(
    pg: &tokio_postgres::Config,
    config: &PgOutboxConfig,
) -> Result<tokio_postgres::Client, OutboxError> {
    let mut delay = config.connect_backoff;
    let mut attempt = 1;
    loop {
        match pool::connect(pg).await {
            Ok(c) => return Ok(c),
            Err(e) if attempt >= config.connect_attempts => {
                return Err(OutboxError::Unavailable(format!(
                    "{} (gave up after {attempt} attempts)",
                    e.to_string()
                        .trim_start_matches("outbox store unavailable: ")
                )));
            }
            Err(e) => {
                tracing::debug!(attempt, error = %e, "outbox connect failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
        }
    }
}

/// A claim scans at most `max × CLAIM_WINDOW_FACTOR` (at least [`CLAIM_WINDOW_MIN`]) pending
/// records: when the oldest records all belong to blocked keys (in flight elsewhere, waiting
/// for a retry), the claim returns what it found in that window instead of scanning the whole
/// backlog; the window moves on as the blocking records are dispatched.
const CLAIM_WINDOW_FACTOR: i32 = 20;
/// Smallest claim scan window.
const CLAIM_WINDOW_MIN: i32 = 5_000;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn record(row: &Row) -> Result<OutboxRecord, OutboxError> {
    let props: Json<Properties> = row
        .try_get(4)
        .map_err(|e| OutboxError::Store(format!("postgres: bad properties: {e}")))?;
    let body: &[u8] = row.get(3);
    Ok(OutboxRecord {
        id: row.get(0),
        topic: row.get(1),
        partition_key: row.get(2),
        message: Message {
            body: Bytes::copy_from_slice(body),
            properties: props.0,
        },
        deliver_at: row.get(5),
        created_at: row.get(6),
        attempts: row.get::<_, i32>(7).max(0) as u32,
    })
}

#[async_trait]
impl OutboxStore for PgOutbox {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn claim(
        &self,
        relay: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxRecord>, OutboxError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = i32::try_from(max).unwrap_or(i32::MAX);
        let window = max
            .saturating_mul(CLAIM_WINDOW_FACTOR)
            .max(CLAIM_WINDOW_MIN);
        let conn = self.inner.pool.get_for(relay).await?;
        let rows = conn
            .client
            .query(&conn.claim, &[&relay, &max, &secs(lease), &window])
            .await
            .map_err(|e| error::map("claim", e))?;
        let mut records = rows.iter().map(record).collect::<Result<Vec<_>, _>>()?;
        records.sort_unstable_by_key(|r| r.id);
        Ok(records)
    }

    async fn mark_dispatched(&self, relay: &str, ids: &[i64]) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Sorted: concurrent updates lock rows in the same order.
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        let conn = self.inner.pool.get_for(relay).await?;
        conn.client
            .execute(&conn.mark, &[&ids, &relay])
            .await
            .map_err(|e| error::map("mark_dispatched", e))?;
        Ok(())
    }

    async fn release(
        &self,
        relay: &str,
        ids: &[i64],
        retry_after: Duration,
    ) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        let conn = self.inner.pool.get_for(relay).await?;
        conn.client
            .execute(&conn.release, &[&ids, &relay, &secs(retry_after)])
            .await
            .map_err(|e| error::map("release", e))?;
        if retry_after.is_zero() {
            self.inner.signal.wake();
        }
        Ok(())
    }

    async fn park(&self, relay: &str, id: i64, reason: &str) -> Result<(), OutboxError> {
        let conn = self.inner.pool.get_for(relay).await?;
        conn.client
            .execute(&conn.park, &[&id, &relay, &reason])
            .await
            .map_err(|e| error::map("park", e))?;
        Ok(())
    }

    async fn cleanup(&self, older_than: Duration, batch: u32) -> Result<u64, OutboxError> {
        if batch == 0 {
            return Ok(0);
        }
        let batch = i32::try_from(batch).unwrap_or(i32::MAX);
        let conn = self.inner.pool.get().await?;
        let row = conn
            .client
            .query_one(&conn.cleanup, &[&secs(older_than), &batch])
            .await
            .map_err(|e| error::map("cleanup", e))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn wait(&self, timeout: Duration) {
        if self.inner._listener.is_some() {
            self.inner.signal.wait(timeout).await;
        } else {
            tokio::time::sleep(timeout).await;
        }
    }

    async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        let conn = self.inner.pool.get().await?;
        let (counts, lag) = futures::try_join!(
            conn.client.query_one(&conn.status, &[]),
            conn.client.query_opt(&conn.lag, &[]),
        )
        .map_err(|e| error::map("status", e))?;
        let n = |i: usize| counts.get::<_, i64>(i).max(0) as u64;
        Ok(OutboxStatus {
            pending: n(0),
            in_flight: n(1),
            parked: n(2),
            dispatched: n(3),
            oldest_pending_age_secs: counts.get(4),
            last_relay_lag_secs: lag.and_then(|r| r.get(0)),
        })
    }
}

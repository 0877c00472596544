//! Saga instances on PostgreSQL: [`PgSagaStore`], the [`SagaStore`] of one schema (the rules are
//! those of [`eventyard_core::saga`]).
//!
//! # Storage
//! Created idempotently by [`PgSagaStore::migrate`] (run on connect by default) beside the
//! outbox tables of the same schema, which it migrates too (commits write outbox records):
//! - `<schema>.saga_instances` (saga, key) → tenant, state, data (`jsonb`), version, times,
//!   completed; index on `updated_at` for `list`.
//! - `<schema>.saga_history` (saga, key, event_id) primary key → version, event type, states,
//!   time. The key doubles as the processed-event record: a duplicate event fails its insert and
//!   the whole commit rolls back as [`SagaError::Duplicate`].
//! - `<schema>.saga_timeouts` id → (saga, key, name) unique, `due_at`, the envelope to feed
//!   (JSON text) and `leased_until` (NULL when not leased); index on `(due_at, id)`.
//!
//! The saga DDL's version is kept in `<schema>.outbox_meta` under `saga_version`.
//!
//! # A commit
//! One transaction on a connection checked out of the store's pool:
//! 1. `BEGIN`;
//! 2. pipelined (sent together, one round trip): the version-checked write of the instance and
//!    its history row in **one** statement (`WITH u AS (UPDATE … WHERE version = expected …
//!    RETURNING 1) INSERT INTO saga_history … SELECT … FROM u`, or `INSERT … ON CONFLICT DO
//!    NOTHING` for version 0), the timeout deletions (fired, cancelled, or all on completion),
//!    the timeout upserts (`ON CONFLICT (saga, key, name) DO UPDATE`), and the outbox records
//!    through [`OutboxWriter::add_batch`] — the relay's table and NOTIFY trigger, exactly as an
//!    application's own transaction records them;
//! 3. `COMMIT` — or `ROLLBACK` when the first statement wrote no row (a stale version, an
//!    existing instance, a completed one) or failed on the history key (a duplicate). Only
//!    then does the store read the stored row to tell a conflict from a duplicate.
//!
//! Concurrent writers of one instance serialise on its row lock; under READ COMMITTED the loser's
//! `UPDATE` re-checks `version = expected` on the winner's row and matches nothing.
//!
//! Saga commits are the application's state: sessions use `synchronous_commit = on` unless
//! [`PgSagaConfig::synchronous_commit`] says otherwise (unlike the outbox store's bookkeeping).
//!
//! # Timeouts
//! [`SagaStore::claim_due`] is one statement: `UPDATE … SET leased_until = now + lease WHERE id
//! IN (SELECT … WHERE due_at <= now AND (leased_until IS NULL OR leased_until <= now) ORDER BY
//! due_at, id LIMIT n FOR UPDATE SKIP LOCKED) RETURNING …`. Concurrent claimers skip each
//! other's locked rows, and a row leased by a claimer that committed meanwhile is re-checked
//! (READ COMMITTED follows the update) and left out, so a timeout is handed out once per lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventyard_core::Envelope;
use eventyard_core::outbox::OutboxError;
use eventyard_core::saga::{
    SagaCommit, SagaDetails, SagaError, SagaFilter, SagaHistoryEntry, SagaInstance, SagaStore,
    ScheduledTimeout,
};
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, IsolationLevel, Row, Statement};

use crate::config::{DEFAULT_SCHEMA, PgOutboxConfig, check_schema, describe_target, pg_config};
use crate::outbox::OutboxWriter;
use crate::{error, pool, schema};

/// Version of the saga DDL below; bump it when the DDL changes.
const SAGA_VERSION: &str = "1";

/// How [`PgSagaStore`] connects and where its tables live.
#[derive(Debug, Clone, PartialEq)]
pub struct PgSagaConfig {
    /// Schema holding the saga tables and the outbox they write to (default `eventyard`; the
    /// names [`PgOutboxConfig::schema`] allows).
    pub schema: String,
    /// Most connections the store opens (default 8). A commit holds one for its transaction.
    pub pool_size: usize,
    /// Connection attempts made by [`PgSagaStore::connect`] (default 5).
    pub connect_attempts: u32,
    /// Delay after the first failed attempt; doubled after each one, capped at 2 s
    /// (default 200 ms).
    pub connect_backoff: Duration,
    /// Timeout of one connection attempt (default 5 s).
    pub connect_timeout: Duration,
    /// Runs [`PgSagaStore::migrate`] on connect (default true). Tools that only read (`yard
    /// saga`) turn it off so that they create nothing.
    pub migrate: bool,
    /// `application_name` reported to the server (default `eventyard-saga`).
    pub application_name: String,
    /// Whether commits wait for the WAL flush (default **true**: a saga transition is the
    /// application's state).
    pub synchronous_commit: bool,
}

impl Default for PgSagaConfig {
    fn default() -> Self {
        PgSagaConfig {
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 8,
            connect_attempts: 5,
            connect_backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(5),
            migrate: true,
            application_name: "eventyard-saga".to_owned(),
            synchronous_commit: true,
        }
    }
}

impl PgSagaConfig {
    /// The defaults with another schema.
    pub fn with_schema(schema: impl Into<String>) -> Self {
        PgSagaConfig {
            schema: schema.into(),
            ..Self::default()
        }
    }

    /// The outbox store's configuration carrying the shared settings (URL parsing, validation).
    fn outbox(&self) -> PgOutboxConfig {
        PgOutboxConfig {
            schema: self.schema.clone(),
            pool_size: self.pool_size,
            connect_attempts: self.connect_attempts,
            connect_backoff: self.connect_backoff,
            connect_timeout: self.connect_timeout,
            migrate: self.migrate,
            listen: false,
            application_name: self.application_name.clone(),
            synchronous_commit: self.synchronous_commit,
        }
    }
}

/// The saga DDL of schema `s`, idempotent (the outbox DDL runs first).
fn ddl(s: &str) -> String {
    format!(
        r#"
CREATE TABLE IF NOT EXISTS {s}.saga_instances (
    saga       text        COLLATE "C" NOT NULL,
    key        text        COLLATE "C" NOT NULL,
    tenant     text        NOT NULL,
    state      text        NOT NULL,
    data       jsonb       NOT NULL,
    version    bigint      NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    completed  boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (saga, key)
);
CREATE INDEX IF NOT EXISTS saga_instances_updated ON {s}.saga_instances (updated_at);
CREATE TABLE IF NOT EXISTS {s}.saga_history (
    saga       text        COLLATE "C" NOT NULL,
    key        text        COLLATE "C" NOT NULL,
    event_id   text        COLLATE "C" NOT NULL,
    version    bigint      NOT NULL,
    event_type text        NOT NULL,
    from_state text,
    to_state   text        NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (saga, key, event_id)
);
CREATE TABLE IF NOT EXISTS {s}.saga_timeouts (
    id           text        COLLATE "C" PRIMARY KEY,
    saga         text        COLLATE "C" NOT NULL,
    key          text        COLLATE "C" NOT NULL,
    name         text        COLLATE "C" NOT NULL,
    due_at       timestamptz NOT NULL,
    envelope     text        NOT NULL,
    leased_until timestamptz,
    UNIQUE (saga, key, name)
);
CREATE INDEX IF NOT EXISTS saga_timeouts_due ON {s}.saga_timeouts (due_at, id);
INSERT INTO {s}.outbox_meta (key, value) VALUES ('saga_version', '{SAGA_VERSION}')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
"#
    )
}

const INSTANCE_COLUMNS: &str =
    "saga, key, tenant, state, data, version, created_at, updated_at, completed";
const TIMEOUT_COLUMNS: &str = "id, saga, key, name, due_at, envelope";

/// The statement texts of one schema.
struct Sql {
    load: String,
    insert: String,
    update: String,
    drop_timeouts: String,
    put_timeouts: String,
    processed: String,
    list: String,
    history: String,
    timeouts: String,
    claim: String,
    mark_fired: String,
    next_due: String,
}

impl Sql {
    fn new(s: &str) -> Self {
        // Both write the instance ($1 saga .. $9 completed, the version being the new one) and,
        // when that wrote a row, its history entry ($10 event id, $11 type, $12 from, $13 to):
        // a duplicate event fails the history key and the whole statement.
        let history = |from: &str| {
            format!(
                "INSERT INTO {s}.saga_history \
                 (saga, key, version, event_id, event_type, from_state, to_state, at) \
                 SELECT $1, $2, $6, $10, $11, $12, $13, clock_timestamp() FROM {from}"
            )
        };
        Sql {
            load: format!(
                "SELECT {INSTANCE_COLUMNS} FROM {s}.saga_instances WHERE saga = $1 AND key = $2"
            ),
            insert: format!(
                "WITH w AS (INSERT INTO {s}.saga_instances ({INSTANCE_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (saga, key) DO NOTHING RETURNING 1) {}",
                history("w")
            ),
            // Tenant ($3) and creation time ($7) stay; a completed instance only accepts a
            // commit that keeps it completed.
            update: format!(
                "WITH w AS (UPDATE {s}.saga_instances \
                 SET state = $4, data = $5, version = $6, updated_at = $8, completed = $9 \
                 WHERE saga = $1 AND key = $2 AND version = $6 - 1 \
                 AND (NOT completed OR $9) RETURNING 1) {}",
                history("w")
            ),
            // $1 saga, $2 key, $3 fired id, $4 cancelled names, $5 all (completion).
            drop_timeouts: format!(
                "DELETE FROM {s}.saga_timeouts WHERE id = $3::text \
                 OR (saga = $1 AND key = $2 AND ($5::boolean OR name = ANY($4::text[])))"
            ),
            // $1 saga, $2 key, then arrays: $3 ids, $4 names, $5 due times, $6 envelopes.
            put_timeouts: format!(
                "INSERT INTO {s}.saga_timeouts (id, saga, key, name, due_at, envelope) \
                 SELECT t.id, $1, $2, t.name, t.due_at, t.envelope \
                 FROM unnest($3::text[], $4::text[], $5::timestamptz[], $6::text[]) \
                   AS t(id, name, due_at, envelope) \
                 ON CONFLICT (saga, key, name) DO UPDATE SET id = EXCLUDED.id, \
                 due_at = EXCLUDED.due_at, envelope = EXCLUDED.envelope, leased_until = NULL"
            ),
            processed: format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.saga_history \
                 WHERE saga = $1 AND key = $2 AND event_id = $3)"
            ),
            list: format!(
                "SELECT {INSTANCE_COLUMNS} FROM {s}.saga_instances \
                 WHERE ($1::text IS NULL OR saga = $1::text) \
                   AND ($2::text IS NULL OR state = $2::text) \
                   AND ($3::boolean IS NULL OR completed = $3::boolean) \
                   AND ($4::text IS NULL OR tenant = $4::text) \
                 ORDER BY updated_at DESC, saga, key LIMIT $5::bigint"
            ),
            history: format!(
                "SELECT version, event_id, event_type, from_state, to_state, at \
                 FROM {s}.saga_history WHERE saga = $1 AND key = $2 ORDER BY version"
            ),
            timeouts: format!(
                "SELECT {TIMEOUT_COLUMNS} FROM {s}.saga_timeouts \
                 WHERE saga = $1 AND key = $2 ORDER BY due_at, id"
            ),
            // $1 now, $2 lease end, $3 max.
            claim: format!(
                "UPDATE {s}.saga_timeouts SET leased_until = $2::timestamptz \
                 WHERE id IN (SELECT id FROM {s}.saga_timeouts \
                   WHERE due_at <= $1::timestamptz \
                     AND (leased_until IS NULL OR leased_until <= $1::timestamptz) \
                   ORDER BY due_at, id LIMIT $3::bigint FOR UPDATE SKIP LOCKED) \
                 RETURNING {TIMEOUT_COLUMNS}"
            ),
            mark_fired: format!("DELETE FROM {s}.saga_timeouts WHERE id = $1"),
            next_due: format!("SELECT min(due_at) FROM {s}.saga_timeouts"),
        }
    }
}

/// Parameter types of the instance writes (`insert` and `update` take the same parameters; the
/// update leaves two unused, so they are typed explicitly).
const WRITE_TYPES: [Type; 13] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::BOOL,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
];

/// One connection and the saga statements prepared on it.
struct Conn {
    client: Client,
    load: Statement,
    insert: Statement,
    update: Statement,
    drop_timeouts: Statement,
    put_timeouts: Statement,
    processed: Statement,
    list: Statement,
    history: Statement,
    timeouts: Statement,
    claim: Statement,
    mark_fired: Statement,
    next_due: Statement,
}

/// Connections checked out one caller at a time (a commit needs its connection's transaction
/// to itself); at most `size`, opened lazily, reopened when closed.
struct Pool {
    pg: tokio_postgres::Config,
    sql: Sql,
    idle: StdMutex<Vec<Conn>>,
    permits: Semaphore,
}

/// A checked-out connection; back to the pool when dropped (unless closed).
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // A transaction dropped unfinished has queued its ROLLBACK on the connection already.
        if let Some(c) = self.conn.take()
            && !c.client.is_closed()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push(c);
        }
    }
}

impl Pool {
    async fn get(&self) -> Result<Lease<'_>, SagaError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SagaError::Unavailable("saga store closed".into()))?;
        let reuse = {
            let mut idle = self.idle.lock().map_err(|_| poisoned())?;
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.client.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let conn = match reuse {
            Some(c) => c,
            None => self.open().await?,
        };
        Ok(Lease {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    async fn open(&self) -> Result<Conn, SagaError> {
        let client = pool::connect(&self.pg).await.map_err(from_outbox)?;
        let s = &self.sql;
        let prep_typed = |q: &str, types: &'static [Type]| {
            let q = q.to_owned();
            let c = &client;
            async move { c.prepare_typed(&q, types).await }
        };
        let prep = |q: &str| prep_typed(q, &[]);
        let prepared = futures::future::try_join_all([
            prep(&s.load),
            prep_typed(&s.insert, &WRITE_TYPES),
            prep_typed(&s.update, &WRITE_TYPES),
            prep(&s.drop_timeouts),
            prep(&s.put_timeouts),
            prep(&s.processed),
            prep(&s.list),
            prep(&s.history),
            prep(&s.timeouts),
            prep(&s.claim),
            prep(&s.mark_fired),
            prep(&s.next_due),
        ])
        .await
        .map_err(|e| db_error("prepare", e))?;
        let mut st = prepared.into_iter();
        let mut next = || st.next().expect("one statement per text");
        Ok(Conn {
            load: next(),
            insert: next(),
            update: next(),
            drop_timeouts: next(),
            put_timeouts: next(),
            processed: next(),
            list: next(),
            history: next(),
            timeouts: next(),
            claim: next(),
            mark_fired: next(),
            next_due: next(),
            client,
        })
    }
}

fn poisoned() -> SagaError {
    SagaError::Storage("saga store: connection pool lock poisoned".into())
}

/// An error of the shared outbox pieces (connect, migrate, map) as a saga error.
fn from_outbox(e: OutboxError) -> SagaError {
    match e {
        OutboxError::Unavailable(m) => SagaError::Unavailable(m),
        OutboxError::Invalid(m) => SagaError::Invalid(m),
        OutboxError::Store(m) => SagaError::Storage(m),
        other => SagaError::Storage(other.to_string()),
    }
}

/// Maps an error of a saga operation (`what` says which): [`error::map`]'s classification, with
/// the saga tables named when they are missing.
fn db_error(what: &str, e: tokio_postgres::Error) -> SagaError {
    if let Some(c) = e.code()
        && (*c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME)
    {
        return SagaError::Storage(format!(
            "postgres: {what}: {} (saga tables missing: run PgSagaStore::migrate)",
            error::describe(&e)
        ));
    }
    from_outbox(error::map(what, e))
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn sql_version(v: u64) -> Result<i64, SagaError> {
    i64::try_from(v).map_err(|_| SagaError::Invalid(format!("version {v} is out of range")))
}

fn version_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The checks every store makes before writing (see the SQLite store): names present, timeouts
/// of this instance, events the outbox accepts.
fn check_commit(c: &SagaCommit) -> Result<(), SagaError> {
    let i = &c.instance;
    for (what, value) in [
        ("saga name", &i.saga),
        ("instance key", &i.key),
        ("tenant", &i.tenant),
        ("state", &i.state),
        ("event id", &c.history.event_id),
    ] {
        if value.is_empty() {
            return Err(SagaError::Invalid(format!("the {what} is empty")));
        }
    }
    if let Some(t) = c
        .schedule
        .iter()
        .find(|t| t.saga != i.saga || t.key != i.key)
    {
        return Err(SagaError::Invalid(format!(
            "timeout {} belongs to {}/{}, not {}/{}",
            t.id, t.saga, t.key, i.saga, i.key
        )));
    }
    if c.events.iter().any(|e| e.partition_key.is_empty()) {
        return Err(OutboxError::Invalid("the partition key is empty".into()).into());
    }
    Ok(())
}

fn instance(r: &Row) -> SagaInstance {
    SagaInstance {
        saga: r.get(0),
        key: r.get(1),
        tenant: r.get(2),
        state: r.get(3),
        data: r.get(4),
        version: version_of(r.get(5)),
        created_at: r.get(6),
        updated_at: r.get(7),
        completed: r.get(8),
    }
}

fn timeout(r: &Row) -> Result<ScheduledTimeout, SagaError> {
    let id: String = r.get(0);
    let text: &str = r.get(5);
    let envelope = Envelope::from_json(text.as_bytes())
        .map_err(|e| SagaError::Serialization(format!("envelope of timeout {id}: {e}")))?;
    Ok(ScheduledTimeout {
        id,
        saga: r.get(1),
        key: r.get(2),
        name: r.get(3),
        due_at: r.get(4),
        envelope,
    })
}

/// The timeouts a commit schedules, as the upsert's arrays; the last of one name wins (as
/// replacing one after the other would).
struct Schedule {
    ids: Vec<String>,
    names: Vec<String>,
    due: Vec<DateTime<Utc>>,
    envelopes: Vec<String>,
}

impl Schedule {
    fn of(timeouts: &[ScheduledTimeout]) -> Result<Self, SagaError> {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (n, t) in timeouts.iter().enumerate() {
            last.insert(&t.name, n);
        }
        let mut s = Schedule {
            ids: Vec::new(),
            names: Vec::new(),
            due: Vec::new(),
            envelopes: Vec::new(),
        };
        for (n, t) in timeouts.iter().enumerate() {
            if last.get(t.name.as_str()) != Some(&n) {
                continue;
            }
            let envelope = String::from_utf8(t.envelope.to_json())
                .map_err(|e| SagaError::Serialization(format!("timeout envelope: {e}")))?;
            s.ids.push(t.id.clone());
            s.names.push(t.name.clone());
            s.due.push(t.due_at);
            s.envelopes.push(envelope);
        }
        Ok(s)
    }
}

/// The saga store of one PostgreSQL schema. Cheap to clone; hand it to the engine as
/// `Arc<dyn SagaStore>`. Connection failures are [`SagaError::Unavailable`]; the store
/// reconnects on the next call.
#[derive(Clone)]
pub struct PgSagaStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: PgSagaConfig,
    pg: tokio_postgres::Config,
    pool: Pool,
    writer: OutboxWriter,
}

impl std::fmt::Debug for PgSagaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSagaStore")
            .field("target", &describe_target(&self.inner.pg))
            .field("schema", &self.inner.config.schema)
            .finish()
    }
}

impl PgSagaStore {
    /// Connects to `url` (`postgres://user@host:port/db`), retrying up to
    /// `config.connect_attempts` times with backoff, then creates the outbox and saga tables if
    /// `config.migrate`. [`SagaError::Unavailable`] when the server cannot be reached (naming
    /// host, port and database, never the password); [`SagaError::Storage`] for an invalid URL
    /// or configuration, or (without `migrate`) a schema that has no saga tables.
    pub async fn connect(url: &str, config: PgSagaConfig) -> Result<Self, SagaError> {
        let outbox = config.outbox();
        outbox.validate().map_err(from_outbox)?;
        let pg = pg_config(url, &outbox).map_err(from_outbox)?;
        let mut client = connect_with_retry(&pg, &config).await?;
        if config.migrate {
            migrate(&mut client, &config.schema).await?;
        } else {
            check_tables(&client, &config.schema).await?;
        }
        let store = PgSagaStore {
            inner: Arc::new(Inner {
                pool: Pool {
                    sql: Sql::new(&config.schema),
                    pg: pg.clone(),
                    idle: StdMutex::new(Vec::new()),
                    permits: Semaphore::new(config.pool_size.max(1)),
                },
                writer: OutboxWriter::new(&config.schema).map_err(from_outbox)?,
                pg,
                config,
            }),
        };
        // Warm one connection (statements prepared) so that a problem surfaces here.
        drop(store.inner.pool.get().await?);
        Ok(store)
    }

    /// Creates (or upgrades) the outbox and saga tables; idempotent and safe to run from several
    /// processes at once.
    pub async fn migrate(&self) -> Result<(), SagaError> {
        let mut client = pool::connect(&self.inner.pg).await.map_err(from_outbox)?;
        migrate(&mut client, &self.inner.config.schema).await
    }

    /// Drops the schema and everything in it, outbox included (tests, benchmarks).
    pub async fn drop_schema(&self) -> Result<(), SagaError> {
        let conn = self.inner.pool.get().await?;
        schema::drop_schema(&conn.client, &self.inner.config.schema)
            .await
            .map_err(from_outbox)
    }

    /// The configured schema.
    pub fn schema(&self) -> &str {
        &self.inner.config.schema
    }

    /// The outbox writer of this schema (the relay's [`PgOutbox`](crate::PgOutbox) on the same
    /// schema publishes what commits record).
    pub fn writer(&self) -> &OutboxWriter {
        &self.inner.writer
    }

    /// The names of the sagas having an instance `key` (`yard saga show KEY`), sorted.
    pub async fn sagas_with_key(&self, key: &str) -> Result<Vec<String>, SagaError> {
        let conn = self.inner.pool.get().await?;
        let rows = conn
            .client
            .query(
                &format!(
                    "SELECT saga FROM {}.saga_instances WHERE key = $1 ORDER BY saga",
                    self.schema()
                ),
                &[&key],
            )
            .await
            .map_err(|e| db_error("sagas_with_key", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn commit_tx(&self, c: &SagaCommit) -> Result<u64, SagaError> {
        check_commit(c)?;
        let version = c
            .expected_version
            .checked_add(1)
            .ok_or_else(|| SagaError::Invalid("version overflow".into()))?;
        let new_version = sql_version(version)?;
        let schedule = if c.instance.completed {
            None
        } else {
            Some(Schedule::of(&c.schedule)?).filter(|s| !s.ids.is_empty())
        };
        let mut conn = self.inner.pool.get().await?;
        let Conn {
            client,
            insert,
            update,
            drop_timeouts,
            put_timeouts,
            ..
        } = &mut *conn;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("commit", e))?;
        let (i, h) = (&c.instance, &c.history);
        let write: [&(dyn ToSql + Sync); 13] = [
            &i.saga,
            &i.key,
            &i.tenant,
            &i.state,
            &i.data,
            &new_version,
            &i.created_at,
            &i.updated_at,
            &i.completed,
            &h.event_id,
            &h.event_type,
            &h.from_state,
            &h.to_state,
        ];
        // Sent together; results checked in order (after a failed statement the others fail
        // as "transaction aborted", and the first error is the one that counts).
        let mut steps: Vec<BoxFuture<'_, Result<u64, SagaError>>> = Vec::with_capacity(4);
        let first = async {
            let statement = if c.expected_version == 0 {
                &*insert
            } else {
                &*update
            };
            let r = tx.execute(statement, &write).await;
            match r {
                Ok(n) => Ok(n),
                Err(e) if is_unique_violation(&e) => Err(duplicate(c)),
                Err(e) => Err(db_error("commit", e)),
            }
        };
        steps.push(Box::pin(first));
        if c.fired.is_some() || i.completed || !c.cancel.is_empty() {
            steps.push(Box::pin(async {
                tx.execute(
                    &*drop_timeouts,
                    &[&i.saga, &i.key, &c.fired, &c.cancel, &i.completed],
                )
                .await
                .map_err(|e| db_error("commit (timeouts)", e))
            }));
        }
        if let Some(s) = &schedule {
            steps.push(Box::pin(async {
                tx.execute(
                    &*put_timeouts,
                    &[&i.saga, &i.key, &s.ids, &s.names, &s.due, &s.envelopes],
                )
                .await
                .map_err(|e| db_error("commit (timeouts)", e))
            }));
        }
        if !c.events.is_empty() {
            let writer = &self.inner.writer;
            steps.push(Box::pin(async {
                writer
                    .add_batch(&tx, &c.events)
                    .await
                    .map(|ids| ids.len() as u64)
                    .map_err(SagaError::from)
            }));
        }
        let results = futures::future::join_all(steps).await;
        let mut results = results.into_iter();
        let written = results.next().expect("the instance write is always sent")?;
        if written == 0 {
            tx.rollback().await.map_err(|e| db_error("commit", e))?;
            return Err(explain_miss(client, &self.inner.config.schema, c).await?);
        }
        for r in results {
            r?;
        }
        tx.commit().await.map_err(|e| db_error("commit", e))?;
        Ok(version)
    }
}

fn duplicate(c: &SagaCommit) -> SagaError {
    SagaError::Duplicate {
        saga: c.instance.saga.clone(),
        key: c.instance.key.clone(),
        event_id: c.history.event_id.clone(),
    }
}

/// Why a version-checked write matched no row: a duplicate, a completed instance, or a conflict.
async fn explain_miss(
    client: &Client,
    schema: &str,
    c: &SagaCommit,
) -> Result<SagaError, SagaError> {
    let i = &c.instance;
    let row = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {schema}.saga_history \
                   WHERE saga = $1 AND key = $2 AND event_id = $3), \
                 (SELECT version FROM {schema}.saga_instances WHERE saga = $1 AND key = $2), \
                 (SELECT completed FROM {schema}.saga_instances WHERE saga = $1 AND key = $2)"
            ),
            &[&i.saga, &i.key, &c.history.event_id],
        )
        .await
        .map_err(|e| db_error("commit", e))?;
    if row.get::<_, bool>(0) {
        return Ok(duplicate(c));
    }
    let found = row.get::<_, Option<i64>>(1).map_or(0, version_of);
    Ok(match row.get::<_, Option<bool>>(2) {
        Some(true) if found == c.expected_version => SagaError::Invalid(format!(
            "saga {}/{} is completed and cannot be reopened",
            i.saga, i.key
        )),
        _ => SagaError::Conflict {
            saga: i.saga.clone(),
            key: i.key.clone(),
            expected: c.expected_version,
            found,
        },
    })
}

async fn connect_with_retry(
    pg: &tokio_postgres::Config,
    config: &PgSagaConfig,
) -> Result<Client, SagaError> {
    let mut delay = config.connect_backoff;
    for attempt in 1.. {
        match pool::connect(pg).await {
            Ok(c) => return Ok(c),
            Err(e) if attempt >= config.connect_attempts => {
                return Err(SagaError::Unavailable(format!(
                    "{} (gave up after {attempt} attempts)",
                    from_outbox(e)
                        .to_string()
                        .trim_start_matches("saga store unavailable: ")
                )));
            }
            Err(e) => {
                tracing::debug!(attempt, error = %e, "saga store connect failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    unreachable!("the attempts loop returns")
}

/// Migrates the outbox tables, then the saga tables (serialised between processes by an
/// advisory lock, in one transaction, skipped when current).
async fn migrate(client: &mut Client, s: &str) -> Result<(), SagaError> {
    schema::migrate(client, s).await.map_err(from_outbox)?;
    let current = format!("SELECT value FROM {s}.outbox_meta WHERE key = 'saga_version'");
    let is_current = |row: Option<Row>| row.is_some_and(|r| r.get::<_, String>(0) == SAGA_VERSION);
    let e = |e: tokio_postgres::Error| db_error("migrate", e);
    if is_current(client.query_opt(&current, &[]).await.map_err(e)?) {
        return Ok(());
    }
    let tx = client.transaction().await.map_err(e)?;
    let lock = schema::lock_key(&format!("eventyard.saga.migrate:{s}"));
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await
        .map_err(e)?;
    if !is_current(tx.query_opt(&current, &[]).await.map_err(e)?) {
        tx.batch_execute(&ddl(s)).await.map_err(e)?;
    }
    tx.commit().await.map_err(e)
}

/// Without migration: the schema must have the saga tables.
async fn check_tables(client: &Client, s: &str) -> Result<(), SagaError> {
    check_schema(s).map_err(from_outbox)?;
    let present: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{s}.saga_instances")],
        )
        .await
        .map_err(|e| db_error("connect", e))?
        .get(0);
    if present {
        Ok(())
    } else {
        Err(SagaError::Storage(format!(
            "schema `{s}` has no saga tables (no saga store was created there)"
        )))
    }
}

#[async_trait]
impl SagaStore for PgSagaStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn load(&self, saga: &str, key: &str) -> Result<Option<SagaInstance>, SagaError> {
        let conn = self.inner.pool.get().await?;
        let row = conn
            .client
            .query_opt(&conn.load, &[&saga, &key])
            .await
            .map_err(|e| db_error("load", e))?;
        Ok(row.as_ref().map(instance))
    }

    async fn commit(&self, commit: SagaCommit) -> Result<u64, SagaError> {
        self.commit_tx(&commit).await
    }

    async fn is_processed(&self, saga: &str, key: &str, event_id: &str) -> Result<bool, SagaError> {
        let conn = self.inner.pool.get().await?;
        let row = conn
            .client
            .query_one(&conn.processed, &[&saga, &key, &event_id])
            .await
            .map_err(|e| db_error("is_processed", e))?;
        Ok(row.get(0))
    }

    async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaInstance>, SagaError> {
        let limit = (filter.limit > 0).then_some(i64::from(filter.limit));
        let conn = self.inner.pool.get().await?;
        let rows = conn
            .client
            .query(
                &conn.list,
                &[
                    &filter.saga,
                    &filter.state,
                    &filter.completed,
                    &filter.tenant,
                    &limit,
                ],
            )
            .await
            .map_err(|e| db_error("list", e))?;
        Ok(rows.iter().map(instance).collect())
    }

    async fn details(&self, saga: &str, key: &str) -> Result<Option<SagaDetails>, SagaError> {
        let mut conn = self.inner.pool.get().await?;
        let Conn {
            client,
            load,
            history,
            timeouts,
            ..
        } = &mut *conn;
        let e = |e: tokio_postgres::Error| db_error("details", e);
        // One snapshot for the three reads.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(e)?;
        let params: [&(dyn ToSql + Sync); 2] = [&saga, &key];
        let (inst, hist, times) = futures::join!(
            tx.query_opt(&*load, &params),
            tx.query(&*history, &params),
            tx.query(&*timeouts, &params),
        );
        let (inst, hist, times) = (inst.map_err(e)?, hist.map_err(e)?, times.map_err(e)?);
        tx.commit().await.map_err(e)?;
        let Some(inst) = inst else {
            return Ok(None);
        };
        Ok(Some(SagaDetails {
            instance: instance(&inst),
            history: hist
                .iter()
                .map(|r| SagaHistoryEntry {
                    version: version_of(r.get(0)),
                    event_id: r.get(1),
                    event_type: r.get(2),
                    from_state: r.get(3),
                    to_state: r.get(4),
                    at: r.get(5),
                })
                .collect(),
            timeouts: times.iter().map(timeout).collect::<Result<_, _>>()?,
        }))
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ScheduledTimeout>, SagaError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let lease = chrono::Duration::from_std(lease)
            .unwrap_or(chrono::Duration::MAX)
            .max(chrono::Duration::microseconds(1));
        let until = now
            .checked_add_signed(lease)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let conn = self.inner.pool.get().await?;
        let rows = conn
            .client
            .query(&conn.claim, &[&now, &until, &max])
            .await
            .map_err(|e| db_error("claim_due", e))?;
        let mut out = rows.iter().map(timeout).collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.due_at.cmp(&b.due_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn mark_fired(&self, id: &str) -> Result<(), SagaError> {
        let conn = self.inner.pool.get().await?;
        conn.client
            .execute(&conn.mark_fired, &[&id])
            .await
            .map_err(|e| db_error("mark_fired", e))?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, SagaError> {
        let conn = self.inner.pool.get().await?;
        let row = conn
            .client
            .query_one(&conn.next_due, &[])
            .await
            .map_err(|e| db_error("next_due", e))?;
        Ok(row.get(0))
    }
}

/// What [`bench_raw_steps`] runs: the baseline of `yard bench saga --store postgres`.
#[derive(Debug, Clone)]
pub struct RawStepBench {
    /// The saga name written.
    pub saga: String,
    /// Steps in all (each one transaction).
    pub steps: u64,
    /// Instances stepped (keys `bench-<n>`), created first at version 1.
    pub instances: u64,
    /// Connections (and tasks) stepping in parallel, each on its own instances.
    pub connections: usize,
    /// Outbox topic of the event each step records.
    pub topic: String,
    /// The event each step records (as the engine would store it).
    pub message: eventyard_core::transport::Message,
}

/// The raw-transaction baseline for saga steps on PostgreSQL, on `store`'s schema (which must be
/// fresh): `connections` tasks, each on a plain connection of its own with the store's session
/// settings, run one transaction per step — `BEGIN`, `SELECT` the instance, `UPDATE … WHERE
/// version = v`, `INSERT` the history row, `INSERT` the outbox record, `COMMIT` — the rows a saga
/// commit writes, one hand-written statement after the other. Returns steps per second (setup
/// excluded).
pub async fn bench_raw_steps(store: &PgSagaStore, b: &RawStepBench) -> Result<f64, SagaError> {
    if b.instances == 0 || b.connections == 0 {
        return Err(SagaError::Invalid(
            "bench: instances and connections must be at least 1".into(),
        ));
    }
    let s = store.schema();
    let e = |e: tokio_postgres::Error| db_error("bench", e);
    let mut setup = pool::connect(&store.inner.pg).await.map_err(from_outbox)?;
    let tx = setup.transaction().await.map_err(e)?;
    let now = Utc::now();
    let keys: Vec<String> = (0..b.instances).map(|i| format!("bench-{i}")).collect();
    tx.execute(
        &format!(
            "INSERT INTO {s}.saga_instances ({INSTANCE_COLUMNS}) \
             SELECT $1, k, 'bench', 'Running', '{{\"count\":0}}', 1, $2, $2, false \
             FROM unnest($3::text[]) AS k"
        ),
        &[&b.saga, &now, &keys],
    )
    .await
    .map_err(e)?;
    tx.commit().await.map_err(e)?;
    drop(setup);

    let workers = b
        .connections
        .min(usize::try_from(b.instances).unwrap_or(usize::MAX));
    let mut clients = Vec::with_capacity(workers);
    for _ in 0..workers {
        clients.push(pool::connect(&store.inner.pg).await.map_err(from_outbox)?);
    }
    let sql = Arc::new([
        format!("SELECT state, data, version FROM {s}.saga_instances WHERE saga = $1 AND key = $2"),
        format!(
            "UPDATE {s}.saga_instances SET state = 'Running', data = $3, version = $4, \
             updated_at = $5, completed = false WHERE saga = $1 AND key = $2 AND version = $6"
        ),
        format!(
            "INSERT INTO {s}.saga_history \
             (saga, key, event_id, version, event_type, from_state, to_state, at) \
             VALUES ($1, $2, $3, $4, 'BenchSagaStepped', 'Running', 'Running', $5)"
        ),
        format!(
            "INSERT INTO {s}.outbox (topic, partition_key, body, properties) \
             VALUES ($1, $2, $3, $4)"
        ),
    ]);
    let started = std::time::Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for (w, mut client) in clients.into_iter().enumerate() {
        // Worker w steps instances w, w + workers, … round-robin; steps split evenly.
        let mine: Vec<String> = keys.iter().skip(w).step_by(workers).cloned().collect();
        let steps = b.steps / workers as u64 + u64::from((w as u64) < b.steps % workers as u64);
        let (sql, b) = (Arc::clone(&sql), b.clone());
        tasks.push(tokio::spawn(async move {
            let st = futures::future::try_join_all(sql.iter().map(|q| client.prepare(q)))
                .await
                .map_err(e)?;
            let props = tokio_postgres::types::Json(&b.message.properties);
            let body: &[u8] = &b.message.body;
            let mut versions = vec![1i64; mine.len()];
            for n in 0..steps {
                let i = usize::try_from(n % mine.len() as u64).unwrap_or(0);
                let key = &mine[i];
                let tx = client.transaction().await.map_err(e)?;
                let row = tx.query_one(&st[0], &[&b.saga, key]).await.map_err(e)?;
                let stored: i64 = row.get(2);
                if stored != versions[i] {
                    return Err(SagaError::Storage("bench: version moved".into()));
                }
                let next = versions[i] + 1;
                let data = serde_json::json!({ "count": next - 1 });
                let at = Utc::now();
                let changed = tx
                    .execute(&st[1], &[&b.saga, key, &data, &next, &at, &versions[i]])
                    .await
                    .map_err(e)?;
                if changed != 1 {
                    return Err(SagaError::Storage("bench: conflict".into()));
                }
                let event_id = format!("evt-bench-{w}-{n}");
                tx.execute(&st[2], &[&b.saga, key, &event_id, &next, &at])
                    .await
                    .map_err(e)?;
                tx.execute(&st[3], &[&b.topic, key, &body, &props])
                    .await
                    .map_err(e)?;
                tx.commit().await.map_err(e)?;
                versions[i] = next;
            }
            Ok::<_, SagaError>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|j| SagaError::Storage(format!("bench task: {j}")))??;
    }
    Ok(b.steps as f64 / started.elapsed().as_secs_f64())
}

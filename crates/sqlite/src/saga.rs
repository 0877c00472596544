//! Saga instances on the embedded store: the [`SagaStore`] of a data file (the rules are those
//! of [`eventyard_core::saga`]).
//!
//! Every operation runs on the broker's writer thread inside its group-commit transaction
//! ([`SqliteBroker::transaction`]'s machinery), so a transition's instance row, history entry,
//! outbox records (written with [`crate::outbox::add`]) and timeouts commit together — and share
//! one fsync with whatever else the broker commits at the same time.
//!
//! # Storage
//! Created idempotently by [`SqliteSagaStore::open`]:
//! - `saga_instances` (saga, key) → tenant, state, data (JSON), version, times, completed.
//! - `saga_history` (saga, key, version) → the event handled and the transition made. A unique
//!   index on (saga, key, event_id) doubles as the processed-event record: a duplicate event
//!   fails its insert, and the whole commit rolls back as [`SagaError::Duplicate`].
//! - `saga_timeouts` id → (saga, key, name) unique, due time (µs), the envelope to feed, and
//!   `leased_until` (µs; 0 when not leased).
//!
//! Optionally ([`SqliteSagaStore::batch_commits`]), concurrent commits are gathered into one
//! writer command.
//!
//! A commit's hot path is two statements plus the outbox rows of each emitted event: the history
//! `INSERT`, the version-checked `UPDATE` (or `INSERT` for a new instance), the outbox rows. A
//! refused commit writes nothing: a duplicate event (or a version another commit took) fails the
//! history insert, and an update that matches no row deletes the history entry again; only then
//! does the store read the row to tell a conflict from a duplicate. The instance data and the
//! outbox properties are encoded on the caller's task, not on the writer thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventyard_core::saga::{
    SagaCommit, SagaDetails, SagaError, SagaFilter, SagaHistoryEntry, SagaInstance, SagaStore,
    ScheduledTimeout,
};
use eventyard_core::{Envelope, TransportError};
use rusqlite::{ErrorCode, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use crate::broker::SqliteBroker;
use crate::ops::now_us;

/// The saga tables (see the module doc); every statement is idempotent.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS saga_instances (
    saga TEXT NOT NULL,
    key TEXT NOT NULL,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (saga, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS saga_instances_updated ON saga_instances (updated_at);
CREATE TABLE IF NOT EXISTS saga_history (
    saga TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (saga, key, version)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS saga_history_event ON saga_history (saga, key, event_id);
CREATE TABLE IF NOT EXISTS saga_timeouts (
    id TEXT PRIMARY KEY,
    saga TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    leased_until INTEGER NOT NULL DEFAULT 0,
    UNIQUE (saga, key, name)
);
CREATE INDEX IF NOT EXISTS saga_timeouts_due ON saga_timeouts (due_at);
";

/// The saga store of a data file. Cheap to clone (clones share one commit batcher); obtained
/// with [`SqliteSagaStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteSagaStore {
    broker: SqliteBroker,
    batcher: Arc<Batcher>,
    batching: bool,
}

/// A commit checked and encoded (instance data, outbox properties) on the caller's task, so
/// that the writer thread, which every commit of the data file goes through, only runs its
/// statements.
struct Prepared {
    commit: SagaCommit,
    /// The instance data, JSON.
    data: String,
    /// The emitted events' properties, JSON (see [`crate::outbox::encode`]), in order.
    props: Vec<String>,
    /// The scheduled timeouts' envelopes, JSON, in order.
    envelopes: Vec<String>,
}

impl Prepared {
    fn new(commit: SagaCommit) -> Result<Self, SagaError> {
        check_commit(&commit)?;
        let data = serde_json::to_string(&commit.instance.data)
            .map_err(|e| SagaError::Serialization(format!("saga data: {e}")))?;
        let props = commit
            .events
            .iter()
            .map(crate::outbox::encode)
            .collect::<Result<_, _>>()
            .map_err(SagaError::from)?;
        let envelopes = commit
            .schedule
            .iter()
            .map(|t| {
                String::from_utf8(t.envelope.to_json())
                    .map_err(|e| SagaError::Serialization(format!("timeout envelope: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Prepared {
            commit,
            data,
            props,
            envelopes,
        })
    }
}

/// A commit waiting for the batcher, with where its result goes.
struct Queued {
    commit: Prepared,
    reply: oneshot::Sender<Result<u64, SagaError>>,
}

/// Gathers concurrent commits into one writer command (see [`SqliteSagaStore::commit`]).
#[derive(Default)]
struct Batcher {
    queue: Mutex<Vec<Queued>>,
    /// A flusher task is running.
    running: AtomicBool,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish()
    }
}

impl SqliteSagaStore {
    /// The saga store of `broker`'s data file; creates its tables if absent.
    pub async fn open(broker: SqliteBroker) -> Result<Self, SagaError> {
        let store = SqliteSagaStore {
            broker,
            batcher: Arc::default(),
            batching: false,
        };
        store
            .run(|tx| tx.execute_batch(SCHEMA).map_err(db_error))
            .await?;
        Ok(store)
    }

    /// Whether concurrent commits are gathered into one writer command by the store (default:
    /// no: each commit is a writer command of its own, folded into the writer's group commit).
    /// Measured on a loaded 2-core machine (`yard bench saga`, 64 in flight), gathering was
    /// slower (ratio ≈ 0.3–0.4 against ≈ 0.5–0.6 without): the one savepoint around the
    /// gathered commits keeps the original of every page they change in SQLite's statement
    /// journal, which outgrows its in-memory size and goes to a temporary file (created,
    /// written and deleted each transaction, ≈ 25 % of the writer thread). Kept for comparison.
    pub fn batch_commits(mut self, on: bool) -> Self {
        self.batching = on;
        self
    }

    /// The broker whose data file holds the sagas.
    pub fn broker(&self) -> &SqliteBroker {
        &self.broker
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        self.batcher.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The batcher's task: while commits are queued, lets the tasks that are about to commit
    /// queue theirs (one yield: no timer), then sends them all as one writer command (one
    /// savepoint): a refused commit (conflict, duplicate) writes nothing (see [`commit_tx`])
    /// and the others still commit; a database error fails them all. One command at a time:
    /// commits queued during its fsync go together in the next one.
    async fn flush(self) {
        loop {
            tokio::task::yield_now().await;
            let batch = std::mem::take(&mut *self.queue());
            if batch.is_empty() {
                self.batcher.running.store(false, Ordering::Release);
                // A commit queued after the take saw `running` and spawned no flusher.
                if self.queue().is_empty() || self.batcher.running.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            let (commits, replies): (Vec<Prepared>, Vec<_>) =
                batch.into_iter().map(|q| (q.commit, q.reply)).unzip();
            let results = self
                .run(move |tx| {
                    commits
                        .iter()
                        .map(|c| match commit_tx(tx, c) {
                            Err(e) if !is_refusal(&e) => Err(e),
                            r => Ok(r),
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .await;
            match results {
                Ok(results) => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    let transient = e.is_transient();
                    let message = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(if transient {
                            SagaError::Unavailable(message.clone())
                        } else {
                            SagaError::Storage(message.clone())
                        }));
                    }
                }
            }
        }
    }

    async fn run<T, F>(&self, work: F) -> Result<T, SagaError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, SagaError> + Send + 'static,
        T: Send + 'static,
    {
        self.broker.exec(false, work).await.map_err(broker_error)?
    }
}

/// Describes an engine error as a saga error.
fn db_error(e: rusqlite::Error) -> SagaError {
    if crate::error::is_transient(&e) {
        SagaError::Unavailable(e.to_string())
    } else {
        SagaError::Storage(e.to_string())
    }
}

/// A store failure reported by the broker.
fn broker_error(e: TransportError) -> SagaError {
    match e {
        TransportError::InvalidDataFile { .. } => SagaError::Storage(e.to_string()),
        other => SagaError::Unavailable(other.to_string()),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
    )
}

fn to_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn version_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn sql_version(v: u64) -> Result<i64, SagaError> {
    i64::try_from(v).map_err(|_| SagaError::Invalid(format!("version {v} is out of range")))
}

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
    for t in &c.schedule {
        if t.saga != i.saga || t.key != i.key {
            return Err(SagaError::Invalid(format!(
                "timeout {} belongs to {}/{}, not {}/{}",
                t.id, t.saga, t.key, i.saga, i.key
            )));
        }
    }
    Ok(())
}

/// Why a version-checked write matched no row: conflict, duplicate, or a completed instance.
fn explain_miss(tx: &Transaction<'_>, c: &SagaCommit) -> Result<SagaError, SagaError> {
    let i = &c.instance;
    if processed(tx, &i.saga, &i.key, &c.history.event_id)? {
        return Ok(duplicate(c));
    }
    let row: Option<(i64, bool)> = tx
        .prepare_cached(
            "SELECT version, completed FROM saga_instances WHERE saga = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![i.saga, i.key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db_error)?;
    Ok(match row {
        Some((v, true)) if version_of(v) == c.expected_version => SagaError::Invalid(format!(
            "saga {}/{} is completed and cannot be reopened",
            i.saga, i.key
        )),
        found => SagaError::Conflict {
            saga: i.saga.clone(),
            key: i.key.clone(),
            expected: c.expected_version,
            found: found.map_or(0, |(v, _)| version_of(v)),
        },
    })
}

fn duplicate(c: &SagaCommit) -> SagaError {
    SagaError::Duplicate {
        saga: c.instance.saga.clone(),
        key: c.instance.key.clone(),
        event_id: c.history.event_id.clone(),
    }
}

fn processed(
    tx: &Transaction<'_>,
    saga: &str,
    key: &str,
    event_id: &str,
) -> Result<bool, SagaError> {
    tx.prepare_cached("SELECT 1 FROM saga_history WHERE saga = ?1 AND key = ?2 AND event_id = ?3")
        .and_then(|mut s| s.exists(params![saga, key, event_id]))
        .map_err(db_error)
}

/// The commit, inside the writer's transaction (see the module doc).
///
/// A refusal — [`SagaError::Conflict`], [`SagaError::Duplicate`], [`SagaError::Invalid`] —
/// leaves nothing written, so that several commits can share one savepoint (see `flush`):
/// the history entry goes first (its unique indexes refuse a duplicate event, or a version
/// another commit took, without writing), then the version-checked instance write, whose miss
/// deletes that entry again. Any other error is the database's: the enclosing savepoint must
/// be rolled back.
fn commit_tx(tx: &Transaction<'_>, p: &Prepared) -> Result<u64, SagaError> {
    let (c, data) = (&p.commit, &p.data);
    let i = &c.instance;
    let version = c
        .expected_version
        .checked_add(1)
        .ok_or_else(|| SagaError::Invalid("version overflow".into()))?;
    let new_version = sql_version(version)?;
    let now = now_us();
    let updated = i.updated_at.timestamp_micros();
    let h = &c.history;
    match tx
        .prepare_cached(
            "INSERT INTO saga_history
               (saga, key, version, event_id, event_type, from_state, to_state, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                i.saga,
                i.key,
                new_version,
                h.event_id,
                h.event_type,
                h.from_state,
                h.to_state,
                now
            ])
        }) {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(explain_miss(tx, c)?),
        Err(e) => return Err(db_error(e)),
    }
    let written = if c.expected_version == 0 {
        match tx
            .prepare_cached(
                "INSERT INTO saga_instances
                   (saga, key, tenant, state, data, version, created_at, updated_at, completed)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    i.saga,
                    i.key,
                    i.tenant,
                    i.state,
                    data,
                    i.created_at.timestamp_micros(),
                    updated,
                    i.completed
                ])
            }) {
            Ok(n) => n,
            Err(e) if is_unique_violation(&e) => 0,
            Err(e) => return Err(db_error(e)),
        }
    } else {
        tx.prepare_cached(
            "UPDATE saga_instances
             SET state = ?3, data = ?4, version = ?5, updated_at = ?6, completed = ?7
             WHERE saga = ?1 AND key = ?2 AND version = ?8 AND (completed = 0 OR ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                i.saga,
                i.key,
                i.state,
                data,
                new_version,
                updated,
                i.completed,
                new_version - 1
            ])
        })
        .map_err(db_error)?
    };
    if written == 0 {
        tx.prepare_cached("DELETE FROM saga_history WHERE saga = ?1 AND key = ?2 AND version = ?3")
            .and_then(|mut s| s.execute(params![i.saga, i.key, new_version]))
            .map_err(db_error)?;
        return Err(explain_miss(tx, c)?);
    }
    for (event, props) in c.events.iter().zip(&p.props) {
        crate::outbox::add_encoded(tx, event, props).map_err(SagaError::from)?;
    }
    timeouts_tx(tx, p)?;
    Ok(version)
}

/// True for the errors after which [`commit_tx`] wrote nothing (the commit's own refusals).
fn is_refusal(e: &SagaError) -> bool {
    matches!(
        e,
        SagaError::Conflict { .. } | SagaError::Duplicate { .. } | SagaError::Invalid(_)
    )
}

/// The commit's timeout changes: the fired one, cancellations, completion, new schedules.
fn timeouts_tx(tx: &Transaction<'_>, p: &Prepared) -> Result<(), SagaError> {
    let c = &p.commit;
    let i = &c.instance;
    if let Some(id) = &c.fired {
        tx.prepare_cached("DELETE FROM saga_timeouts WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id]))
            .map_err(db_error)?;
    }
    if i.completed {
        tx.prepare_cached("DELETE FROM saga_timeouts WHERE saga = ?1 AND key = ?2")
            .and_then(|mut s| s.execute(params![i.saga, i.key]))
            .map_err(db_error)?;
        return Ok(());
    }
    for name in &c.cancel {
        tx.prepare_cached("DELETE FROM saga_timeouts WHERE saga = ?1 AND key = ?2 AND name = ?3")
            .and_then(|mut s| s.execute(params![i.saga, i.key, name]))
            .map_err(db_error)?;
    }
    for (t, envelope) in c.schedule.iter().zip(&p.envelopes) {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO saga_timeouts
               (id, saga, key, name, due_at, envelope, leased_until)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
        )
        .and_then(|mut s| {
            s.execute(params![
                t.id,
                t.saga,
                t.key,
                t.name,
                t.due_at.timestamp_micros(),
                envelope
            ])
        })
        .map_err(db_error)?;
    }
    Ok(())
}

const INSTANCE_COLUMNS: &str =
    "saga, key, tenant, state, data, version, created_at, updated_at, completed";

fn instance(r: &rusqlite::Row<'_>) -> rusqlite::Result<(SagaInstance, String)> {
    Ok((
        SagaInstance {
            saga: r.get(0)?,
            key: r.get(1)?,
            tenant: r.get(2)?,
            state: r.get(3)?,
            data: serde_json::Value::Null,
            version: version_of(r.get(5)?),
            created_at: to_time(r.get(6)?),
            updated_at: to_time(r.get(7)?),
            completed: r.get(8)?,
        },
        r.get(4)?,
    ))
}

/// Parses the data column read beside an instance.
fn with_data((mut inst, data): (SagaInstance, String)) -> Result<SagaInstance, SagaError> {
    inst.data = serde_json::from_str(&data).map_err(|e| {
        SagaError::Serialization(format!("data of saga {}/{}: {e}", inst.saga, inst.key))
    })?;
    Ok(inst)
}

/// A timeout row as read on the writer thread; its envelope is parsed by the caller.
struct RawTimeout {
    id: String,
    saga: String,
    key: String,
    name: String,
    due_at: i64,
    envelope: String,
}

fn timeout(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawTimeout> {
    Ok(RawTimeout {
        id: r.get(0)?,
        saga: r.get(1)?,
        key: r.get(2)?,
        name: r.get(3)?,
        due_at: r.get(4)?,
        envelope: r.get(5)?,
    })
}

impl RawTimeout {
    /// Parses the envelope.
    fn parse(self) -> Result<ScheduledTimeout, SagaError> {
        let envelope = Envelope::from_json(self.envelope.as_bytes()).map_err(|e| {
            SagaError::Serialization(format!("envelope of timeout {}: {e}", self.id))
        })?;
        Ok(ScheduledTimeout {
            id: self.id,
            saga: self.saga,
            key: self.key,
            name: self.name,
            due_at: to_time(self.due_at),
            envelope,
        })
    }
}

const TIMEOUT_COLUMNS: &str = "id, saga, key, name, due_at, envelope";

#[async_trait]
impl SagaStore for SqliteSagaStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn load(&self, saga: &str, key: &str) -> Result<Option<SagaInstance>, SagaError> {
        let (saga, key) = (saga.to_owned(), key.to_owned());
        let raw = self
            .run(move |tx| {
                tx.prepare_cached(&format!(
                    "SELECT {INSTANCE_COLUMNS} FROM saga_instances WHERE saga = ?1 AND key = ?2"
                ))
                .and_then(|mut s| s.query_row(params![saga, key], instance).optional())
                .map_err(db_error)
            })
            .await?;
        raw.map(with_data).transpose()
    }

    /// With [`SqliteSagaStore::batch_commits`], concurrent commits are gathered into one writer
    /// command (one savepoint each, see `flush`).
    async fn commit(&self, commit: SagaCommit) -> Result<u64, SagaError> {
        let commit = Prepared::new(commit)?;
        if !self.batching {
            // Without a savepoint: commit_tx's refusals write nothing; any other failure
            // aborts the group transaction.
            return self
                .broker
                .exec_unguarded(false, move |tx| match commit_tx(tx, &commit) {
                    Ok(v) => Ok(Ok(v)),
                    Err(e) if is_refusal(&e) => Ok(Err(e)),
                    Err(e) => Err(e.to_string()),
                })
                .await
                .map_err(broker_error)?;
        }
        let (reply, result) = oneshot::channel();
        self.queue().push(Queued { commit, reply });
        if !self.batcher.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().flush());
        }
        result
            .await
            .map_err(|_| SagaError::Unavailable("the saga commit batcher stopped".into()))?
    }

    async fn is_processed(&self, saga: &str, key: &str, event_id: &str) -> Result<bool, SagaError> {
        let (saga, key, event_id) = (saga.to_owned(), key.to_owned(), event_id.to_owned());
        self.run(move |tx| processed(tx, &saga, &key, &event_id))
            .await
    }

    async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaInstance>, SagaError> {
        let f = filter.clone();
        let raw = self
            .run(move |tx| {
                let limit = if f.limit == 0 { -1 } else { i64::from(f.limit) };
                let mut s = tx
                    .prepare_cached(&format!(
                        "SELECT {INSTANCE_COLUMNS} FROM saga_instances
                         WHERE (?1 IS NULL OR saga = ?1) AND (?2 IS NULL OR state = ?2)
                           AND (?3 IS NULL OR completed = ?3) AND (?4 IS NULL OR tenant = ?4)
                         ORDER BY updated_at DESC, saga, key LIMIT ?5"
                    ))
                    .map_err(db_error)?;
                let rows = s
                    .query_map(
                        params![f.saga, f.state, f.completed, f.tenant, limit],
                        instance,
                    )
                    .map_err(db_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
            })
            .await?;
        raw.into_iter().map(with_data).collect()
    }

    async fn details(&self, saga: &str, key: &str) -> Result<Option<SagaDetails>, SagaError> {
        let (saga, key) = (saga.to_owned(), key.to_owned());
        type Raw = (
            (SagaInstance, String),
            Vec<SagaHistoryEntry>,
            Vec<RawTimeout>,
        );
        let raw: Option<Raw> = self
            .run(move |tx| {
                let inst = tx
                    .prepare_cached(&format!(
                        "SELECT {INSTANCE_COLUMNS} FROM saga_instances WHERE saga = ?1 AND key = ?2"
                    ))
                    .and_then(|mut s| s.query_row(params![saga, key], instance).optional())
                    .map_err(db_error)?;
                let Some(inst) = inst else {
                    return Ok(None);
                };
                let history = tx
                    .prepare_cached(
                        "SELECT version, event_id, event_type, from_state, to_state, at
                         FROM saga_history WHERE saga = ?1 AND key = ?2 ORDER BY version",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![saga, key], |r| {
                            Ok(SagaHistoryEntry {
                                version: version_of(r.get(0)?),
                                event_id: r.get(1)?,
                                event_type: r.get(2)?,
                                from_state: r.get(3)?,
                                to_state: r.get(4)?,
                                at: to_time(r.get(5)?),
                            })
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(db_error)?;
                let timeouts = tx
                    .prepare_cached(&format!(
                        "SELECT {TIMEOUT_COLUMNS} FROM saga_timeouts
                         WHERE saga = ?1 AND key = ?2 ORDER BY due_at, id"
                    ))
                    .and_then(|mut s| {
                        s.query_map(params![saga, key], timeout)?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(db_error)?;
                Ok(Some((inst, history, timeouts)))
            })
            .await?;
        let Some((inst, history, timeouts)) = raw else {
            return Ok(None);
        };
        Ok(Some(SagaDetails {
            instance: with_data(inst)?,
            history,
            timeouts: timeouts
                .into_iter()
                .map(RawTimeout::parse)
                .collect::<Result<_, _>>()?,
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
        let now = now.timestamp_micros();
        let until = now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let raw = self
            .run(move |tx| {
                tx.prepare_cached(&format!(
                    "UPDATE saga_timeouts SET leased_until = ?2
                     WHERE id IN (SELECT id FROM saga_timeouts
                                  WHERE due_at <= ?1 AND leased_until <= ?1
                                  ORDER BY due_at, id LIMIT ?3)
                     RETURNING {TIMEOUT_COLUMNS}"
                ))
                .and_then(|mut s| {
                    s.query_map(params![now, until.max(now + 1), max], timeout)?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)
            })
            .await?;
        let mut out: Vec<ScheduledTimeout> = raw
            .into_iter()
            .map(RawTimeout::parse)
            .collect::<Result<_, _>>()?;
        out.sort_by(|a, b| a.due_at.cmp(&b.due_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn mark_fired(&self, id: &str) -> Result<(), SagaError> {
        let id = id.to_owned();
        self.run(move |tx| {
            tx.prepare_cached("DELETE FROM saga_timeouts WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map(|_| ())
                .map_err(db_error)
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, SagaError> {
        let at: Option<i64> = self
            .run(|tx| {
                tx.prepare_cached("SELECT min(due_at) FROM saga_timeouts")
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(db_error)
            })
            .await?;
        Ok(at.map(to_time))
    }
}

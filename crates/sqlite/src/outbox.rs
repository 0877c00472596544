//! The transactional outbox on the embedded store (SPEC §3; the rules are those of
//! [`eventyard_core::outbox`]).
//!
//! The application records its events with [`add`] inside its own transaction — the closure of
//! [`SqliteBroker::transaction`] — so they commit with its state changes or not at all:
//!
//! ```no_run
//! # async fn demo(broker: eventyard_sqlite::SqliteBroker, envelope: eventyard_core::Envelope)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use eventyard_core::outbox::{OutboxError, PendingEvent};
//! use eventyard_sqlite::outbox;
//!
//! let event = PendingEvent::new("OrderPlaced", &envelope)?.partition_key("order-42");
//! broker
//!     .transaction(move |tx| -> Result<i64, OutboxError> {
//!         tx.execute("INSERT INTO orders (id) VALUES ('order-42')", [])
//!             .map_err(|e| OutboxError::Store(e.to_string()))?;
//!         outbox::add(tx, &event)
//!     })
//!     .await??;
//! # Ok(()) }
//! ```
//!
//! A relay (`eventyard_runtime::Relay`) then drives [`SqliteOutbox`], the
//! [`OutboxStore`] of the data file.
//!
//! # Storage
//! `outbox` holds each record's payload (topic, key, body, properties, times), written once by
//! [`add`] and deleted by cleanup. The relay's frequent writes touch only small rows elsewhere:
//! - `outbox_queue`: one row per record in line. `visible_at` (µs) is 0 for a record never
//!   claimed, the end of the lease while a relay holds it, the retry time after a release. A
//!   queued record is *claimable* when `visible_at <= now`; it *holds* its partition key while
//!   `visible_at > now` (leased or waiting for a retry).
//! - `outbox_parked`: parked records, with their reason, and the later records of their keys
//!   waiting behind them (moved there when the record is parked, or added there directly while
//!   their key is parked), so that claims never walk over them. An operator requeues or
//!   discards a parked record ([`SqliteOutbox::requeue`], [`SqliteOutbox::discard`]); the
//!   records behind it go back in line.
//! - `outbox_done` (`dispatched_at`, id): dispatched records, drained oldest first by cleanup.
//!
//! A claim, in one transaction (so two relays — in this process or others — never get the same
//! record): collects the held keys with the id of their first held record (a small partial
//! index), walks the queue in id order skipping records with an earlier held one of their key,
//! and leases up to `max`. A relay therefore never receives a record while an earlier one of its
//! key is in any relay's hands, waiting for a retry, or parked: per-key order holds with any
//! number of relays. The walk skips at most [`CLAIM_SCAN`] rows (records behind held keys are
//! skipped one by one), so that a relay claiming while another holds the few keys of a long
//! backlog costs little; records beyond come with later claims, once the held keys move on
//! (their leases end, their retry times come). Parked records and those behind them are out of
//! the queue, so they never hold anything up.
//!
//! Claims, marks and releases run through the broker's writer thread like its own commands, so
//! they share its group commits (one fsync for a relay's mark and its next claim and
//! publish). A commit that added records bumps a signal on which [`OutboxStore::wait`] sleeps;
//! commits of other processes are noticed through `PRAGMA data_version` (every
//! [`SqliteConfig::cross_process_poll`](crate::SqliteConfig::cross_process_poll) while a relay
//! waits).
//!
//! # Direct dispatch
//! When the relay's transport is the broker of this very data file (the embedded default:
//! [`OutboxStore::dispatches_into`] recognises it), the relay does not claim, publish and mark:
//! each [`OutboxStore::dispatch`] is one writer command that picks records like a claim, inserts
//! them into the subscriptions' queues (filters applied, scheduled times kept) and marks them
//! dispatched, in one transaction. No lease is written, nothing crosses threads but the
//! answer, and a record reaches its queues exactly once whatever crashes. A record the broker
//! refuses (too large, invalid topic) is parked with the reason in the same transaction; the
//! later records of its key go behind it. Relays using leases (other processes, or
//! `RelayConfig::direct` off) can run beside it: the pick skips what they hold.
//!
//! Cleanup elects one cleaner at a time through a lease row in `outbox_leases` (renewed by its
//! holder on each call, taken over by another cleaner once it expires), then deletes at most
//! `batch` dispatched records per call.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use eventyard_core::outbox::{
    DirectBatch, OutboxError, OutboxRecord, OutboxStatus, OutboxStore, PendingEvent,
};
use eventyard_core::transport::check_name;
use eventyard_core::{Message, OutgoingMessage, Transport, TransportError};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::broker::SqliteBroker;
use crate::config::SqliteConfig;
use crate::ops::{Cmd, OpError, Woken, now_us};
use crate::topology::Topology;

thread_local! {
    /// Set by [`add`] on the writer thread; read (and cleared) after the commit to wake relays.
    static ADDED: Cell<bool> = const { Cell::new(false) };
}

/// True if [`add`] ran on this thread since the last call (the writer calls it after a commit).
pub(crate) fn take_added() -> bool {
    ADDED.with(|a| a.replace(false))
}

/// Records `event` in the outbox inside `tx`, the application's transaction (the closure of
/// [`SqliteBroker::transaction`]); returns its id. Nothing is recorded if `tx` rolls back.
///
/// Fails with [`OutboxError::Transport`] for an invalid topic name, [`OutboxError::Invalid`]
/// for an empty partition key, [`OutboxError::Unavailable`] when the data file is locked or
/// cannot be written, and [`OutboxError::Store`] otherwise (for instance a file without the
/// outbox table: open it with [`SqliteBroker::open`] first).
pub fn add(tx: &Transaction<'_>, event: &PendingEvent) -> Result<i64, OutboxError> {
    add_encoded(tx, event, &encode(event)?)
}

/// [`add`] for several events, in order; returns their ids.
pub fn add_all(tx: &Transaction<'_>, events: &[PendingEvent]) -> Result<Vec<i64>, OutboxError> {
    events.iter().map(|e| add(tx, e)).collect()
}

/// Checks `event` (topic name, partition key) and encodes its properties for
/// [`add_encoded`]. Callers that hand their work to the writer thread (the saga store) run it
/// before, so that the thread every commit of the data file goes through only runs statements.
pub(crate) fn encode(event: &PendingEvent) -> Result<String, OutboxError> {
    check_name("topic", &event.topic)?;
    if event.partition_key.is_empty() {
        return Err(OutboxError::Invalid("the partition key is empty".into()));
    }
    serde_json::to_string(&event.message.properties)
        .map_err(|e| OutboxError::Invalid(format!("properties cannot be stored: {e}")))
}

/// [`add`] of an event checked and encoded (`props`) by [`encode`].
pub(crate) fn add_encoded(
    tx: &Transaction<'_>,
    event: &PendingEvent,
    props: &str,
) -> Result<i64, OutboxError> {
    let id = tx
        .prepare_cached(
            "INSERT INTO outbox (topic, partition_key, body, props, deliver_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut s| {
            s.insert(params![
                event.topic,
                event.partition_key,
                &event.message.body[..],
                props,
                event.deliver_at.map(|t| t.timestamp_micros()),
                now_us()
            ])
        })
        .map_err(db_error)?;
    // In line, or behind the parked record of its key. `CAST(?1 AS TEXT)`, not a bare `?1`:
    // SQLite marks this statement's plan as depending on the bound key and prepares it again
    // on every execution when the parameter stands alone (measured: 10 re-prepares in 10
    // runs, ≈ 10 % of the writer thread during `yard bench saga`); the plan is the same index
    // search either way.
    let parked: Option<i64> = tx
        .prepare_cached("SELECT min(id) FROM outbox_parked WHERE partition_key = CAST(?1 AS TEXT)")
        .and_then(|mut s| s.query_row(params![event.partition_key], |r| r.get(0)))
        .map_err(db_error)?;
    match parked {
        None => tx
            .prepare_cached("INSERT INTO outbox_queue (id, partition_key) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![id, event.partition_key])),
        Some(head) => tx
            .prepare_cached(
                "INSERT INTO outbox_parked (id, partition_key, parked_at, behind)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![id, event.partition_key, now_us(), head])),
    }
    .map_err(db_error)?;
    ADDED.with(|a| a.set(true));
    Ok(id)
}

/// Describes an engine error as an outbox error.
fn db_error(e: rusqlite::Error) -> OutboxError {
    if crate::error::is_transient(&e) {
        OutboxError::Unavailable(e.to_string())
    } else {
        OutboxError::Store(e.to_string())
    }
}

/// A store failure reported by the broker (its writer thread or its transaction).
fn broker_error(e: TransportError) -> OutboxError {
    match e {
        TransportError::InvalidDataFile { .. } => OutboxError::Store(e.to_string()),
        other => OutboxError::Unavailable(other.to_string()),
    }
}

fn to_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn secs(us: i64) -> f64 {
    us.max(0) as f64 / 1e6
}

/// A parked record, as listed by [`SqliteOutbox::parked`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedRecord {
    /// The record.
    pub record: OutboxRecord,
    /// Why the transport refused it.
    pub reason: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// The outbox of a data file, as seen by relays and operators: the [`OutboxStore`] of the
/// embedded store (see the module doc). Obtained with [`SqliteBroker::outbox`].
///
/// Each value is one candidate of the cleaner election (as another process would be).
pub struct SqliteOutbox {
    broker: SqliteBroker,
    candidate: String,
    cleaner_lease: Duration,
    /// Generation of the outbox signal seen at the start of the last claim.
    seen: AtomicU64,
    /// Earliest `visible_at` (µs) of a held record after the last empty claim; 0: none.
    next_due: AtomicI64,
    /// Registered as a waiter with the writer (so that it watches other processes).
    idle: AtomicBool,
}

impl std::fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("broker", &self.broker)
            .field("candidate", &self.candidate)
            .finish()
    }
}

impl SqliteBroker {
    /// The transactional outbox stored in this broker's data file.
    pub fn outbox(&self) -> SqliteOutbox {
        SqliteOutbox::new(self.clone())
    }
}

impl SqliteOutbox {
    /// The outbox of `broker`'s data file. The cleaner lease defaults to 60 s.
    pub fn new(broker: SqliteBroker) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let candidate = format!(
            "{}-{}-{}",
            std::process::id(),
            now_us(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        SqliteOutbox {
            broker,
            candidate,
            cleaner_lease: Duration::from_secs(60),
            seen: AtomicU64::new(0),
            next_due: AtomicI64::new(0),
            idle: AtomicBool::new(false),
        }
    }

    /// How long an elected cleaner stays elected without calling [`OutboxStore::cleanup`]
    /// again; another cleaner takes over after that. Keep it above the cleaning interval.
    /// Default 60 s.
    pub fn cleaner_lease(mut self, lease: Duration) -> Self {
        self.cleaner_lease = lease;
        self
    }

    /// The broker whose data file holds this outbox.
    pub fn broker(&self) -> &SqliteBroker {
        &self.broker
    }

    async fn run<T, F>(&self, work: F) -> Result<T, OutboxError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, rusqlite::Error> + Send + 'static,
        T: Send + 'static,
    {
        // Unguarded (no savepoint): the work fails only with engine errors, and an engine error
        // after writes must abort the whole group transaction anyway.
        let r: Result<T, std::convert::Infallible> = self
            .broker
            .exec_unguarded(false, move |tx| work(tx).map(Ok).map_err(|e| e.to_string()))
            .await
            .map_err(broker_error)?;
        Ok(r.unwrap_or_else(|never| match never {}))
    }

    /// Registers as a waiter with the writer, which then watches other processes' commits
    /// (`PRAGMA data_version`) after each of its transactions and every `cross_process_poll`.
    /// Done *before* a claim is sent, so that the writer sees it when it finishes that claim.
    fn register(&self) {
        if !self.idle.swap(true, Ordering::AcqRel) {
            self.broker.shared().waiters.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Before a claim or a dispatch: marks the current generation of the outbox signal as seen
    /// (so that a commit landing between the pick and the next wait is not missed) and
    /// registers as a waiter.
    fn before_pick(&self) {
        let generation = *self.broker.shared().outbox.borrow();
        self.seen.store(generation, Ordering::Release);
        self.register();
    }

    /// After a claim or a dispatch that `found` records or not: the earliest retry time of a
    /// held record (`next`, for [`OutboxStore::wait`]); a relay that found records is no longer
    /// waiting.
    fn after_pick(&self, found: bool, next: Option<i64>) {
        self.next_due.store(next.unwrap_or(0), Ordering::Release);
        if found {
            self.unregister();
        }
    }

    fn unregister(&self) {
        if self.idle.swap(false, Ordering::AcqRel) {
            self.broker.shared().waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Parked records (refused by the transport), oldest first, at most `limit`.
    pub async fn parked(&self, limit: u32) -> Result<Vec<ParkedRecord>, OutboxError> {
        self.run(move |tx| {
            let mut s = tx.prepare_cached(
                "SELECT o.id, o.topic, o.partition_key, o.body, o.props, o.deliver_at,
                        o.created_at, p.attempts, p.reason, p.parked_at
                 FROM outbox_parked p JOIN outbox o ON o.id = p.id
                 WHERE p.reason IS NOT NULL ORDER BY p.id LIMIT ?1",
            )?;
            let rows = s.query_map(params![limit], |r| {
                Ok(ParkedRecord {
                    record: record(r)?,
                    reason: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                    parked_at: to_time(r.get(9)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Puts a parked record back in line (attempts reset), e.g. after the transport's limit
    /// was raised, with the records waiting behind it. Returns false if `id` is not parked.
    pub async fn requeue(&self, id: i64) -> Result<bool, OutboxError> {
        self.run(move |tx| unpark(tx, id, true)).await
    }

    /// Deletes a parked record for good and puts the records waiting behind it back in line.
    /// Returns false if `id` is not parked.
    pub async fn discard(&self, id: i64) -> Result<bool, OutboxError> {
        self.run(move |tx| unpark(tx, id, false)).await
    }
}

/// Requeues (`keep`) or deletes a parked record, and requeues the records behind it.
fn unpark(tx: &Transaction<'_>, id: i64, keep: bool) -> rusqlite::Result<bool> {
    let key: Option<String> = tx
        .prepare_cached(
            "SELECT partition_key FROM outbox_parked WHERE id = ?1 AND reason IS NOT NULL",
        )?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    let Some(key) = key else {
        return Ok(false);
    };
    if !keep {
        tx.prepare_cached("DELETE FROM outbox_parked WHERE id = ?1")?
            .execute(params![id])?;
        tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
            .execute(params![id])?;
    }
    tx.prepare_cached(
        "INSERT INTO outbox_queue (id, partition_key, attempts)
         SELECT id, partition_key, CASE WHEN id = ?2 THEN 0 ELSE attempts END
         FROM outbox_parked WHERE partition_key = ?1",
    )?
    .execute(params![key, id])?;
    tx.prepare_cached("DELETE FROM outbox_parked WHERE partition_key = ?1")?
        .execute(params![key])?;
    Ok(true)
}

impl Drop for SqliteOutbox {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// A record as read on the writer thread; its properties are parsed by the caller, off that
/// thread.
struct RawRecord {
    id: i64,
    topic: String,
    partition_key: String,
    body: Vec<u8>,
    props: String,
    deliver_at: Option<i64>,
    created_at: i64,
    attempts: i64,
}

impl RawRecord {
    /// Reads columns 0..=7 (id, topic, partition_key, body, props, deliver_at, created_at,
    /// attempts).
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawRecord {
            id: r.get(0)?,
            topic: r.get(1)?,
            partition_key: r.get(2)?,
            body: r.get(3)?,
            props: r.get(4)?,
            deliver_at: r.get(5)?,
            created_at: r.get(6)?,
            attempts: r.get(7)?,
        })
    }

    fn into_record(self) -> OutboxRecord {
        OutboxRecord {
            id: self.id,
            topic: self.topic,
            partition_key: self.partition_key,
            message: Message {
                body: Bytes::from(self.body),
                properties: crate::ops::parse_props(&self.props),
            },
            deliver_at: self.deliver_at.map(to_time),
            created_at: to_time(self.created_at),
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
        }
    }
}

/// Reads columns 0..=7 (see [`RawRecord::read`]) into a record.
fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRecord> {
    RawRecord::read(r).map(RawRecord::into_record)
}

/// `[1,2,3]`: ids for `json_each`, so that set operations run as one statement.
fn json_ids(ids: impl IntoIterator<Item = i64>) -> String {
    let mut s = String::from("[");
    for (i, id) in ids.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}

/// Rows a claim skips at most (held, or behind a held record of their key) before it returns
/// what it found (see the module doc); raised to four times the claim's `max` when larger.
pub const CLAIM_SCAN: usize = 16_384;

/// Records picked for a claim: (id, attempts so far), in id order.
type Picked = Vec<(i64, u32)>;

/// The records a claim may take now (at most `max`), or when none: the earliest time a held
/// record becomes claimable again (µs). See the module doc.
fn pick(tx: &Transaction<'_>, max: usize, now: i64) -> rusqlite::Result<(Picked, Option<i64>)> {
    // First held record (leased or waiting for a retry) of every held key.
    let mut held: HashMap<String, i64> = HashMap::new();
    {
        let mut s = tx.prepare_cached(
            "SELECT partition_key, id FROM outbox_queue WHERE visible_at > 0 AND visible_at > ?1",
        )?;
        let mut rows = s.query(params![now])?;
        while let Some(r) = rows.next()? {
            let (key, id): (String, i64) = (r.get(0)?, r.get(1)?);
            held.entry(key)
                .and_modify(|first| *first = (*first).min(id))
                .or_insert(id);
        }
    }
    let mut picked: Picked = Vec::with_capacity(max.min(4096));
    if max > 0 {
        let mut budget = CLAIM_SCAN.max(max.saturating_mul(4));
        let mut queue = tx.prepare_cached(
            "SELECT id, visible_at, attempts, partition_key FROM outbox_queue ORDER BY id",
        )?;
        let mut rows = queue.query([])?;
        while let Some(r) = rows.next()? {
            let (id, visible_at): (i64, i64) = (r.get(0)?, r.get(1)?);
            let skip = visible_at > now
                || (!held.is_empty() && {
                    let key = r.get_ref(3)?.as_str().unwrap_or_default();
                    held.get(key).is_some_and(|first| *first < id)
                });
            if skip {
                budget -= 1;
                if budget == 0 {
                    break;
                }
                continue;
            }
            picked.push((id, u32::try_from(r.get::<_, i64>(2)?).unwrap_or(u32::MAX)));
            if picked.len() >= max {
                break;
            }
        }
    }
    if !picked.is_empty() {
        return Ok((picked, None));
    }
    let next: Option<i64> = tx
        .prepare_cached(
            "SELECT min(visible_at) FROM outbox_queue WHERE visible_at > 0 AND visible_at > ?1",
        )?
        .query_row(params![now], |r| r.get(0))?;
    Ok((picked, next))
}

/// The records `picked` (ids as `ids`, a [`json_ids`] list), in id order, with their attempts.
fn read_picked(
    tx: &Transaction<'_>,
    picked: &[(i64, u32)],
    ids: &str,
) -> rusqlite::Result<Vec<RawRecord>> {
    let mut out = Vec::with_capacity(picked.len());
    let mut read = tx.prepare_cached(
        "SELECT id, topic, partition_key, body, props, deliver_at, created_at, 0
         FROM outbox WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id",
    )?;
    let mut rows = read.query(params![ids])?;
    let mut attempts = picked.iter();
    while let Some(r) = rows.next()? {
        let mut rec = RawRecord::read(r)?;
        // Both in id order; a payload row is never missing for a queued record.
        if let Some((_, a)) = attempts.find(|(id, _)| *id == rec.id) {
            rec.attempts = i64::from(*a);
        }
        out.push(rec);
    }
    Ok(out)
}

/// The claim, inside the writer's transaction: see the module doc.
fn claim_tx(
    tx: &Transaction<'_>,
    relay: &str,
    max: usize,
    lease: Duration,
) -> rusqlite::Result<(Vec<RawRecord>, Option<i64>)> {
    let now = now_us();
    let (picked, next) = pick(tx, max, now)?;
    if picked.is_empty() {
        return Ok((Vec::new(), next));
    }
    let until = now.saturating_add(crate::ops::dur_us(lease).max(1));
    let ids = json_ids(picked.iter().map(|(id, _)| *id));
    tx.prepare_cached(
        "UPDATE outbox_queue SET visible_at = ?1, lease_owner = ?2
         WHERE id IN (SELECT value FROM json_each(?3))",
    )?
    .execute(params![until, relay, ids])?;
    Ok((read_picked(tx, &picked, &ids)?, None))
}

/// Marks the queued records `ids` (a [`json_ids`] list) dispatched at `now`: out of the queue,
/// into `outbox_done` (for the cleaner), and the relay lag of the last one recorded.
fn mark_tx(tx: &Transaction<'_>, now: i64, ids: &str) -> rusqlite::Result<()> {
    let last: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT o.id, o.created_at FROM outbox o WHERE o.id = (
                SELECT max(id) FROM outbox_queue
                WHERE id IN (SELECT value FROM json_each(?1)))",
        )?
        .query_row(params![ids], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO outbox_done (dispatched_at, id)
         SELECT ?1, id FROM outbox_queue WHERE id IN (SELECT value FROM json_each(?2))",
    )?
    .execute(params![now, ids])?;
    tx.prepare_cached("DELETE FROM outbox_queue WHERE id IN (SELECT value FROM json_each(?1))")?
        .execute(params![ids])?;
    if let Some((_, created)) = last {
        tx.prepare_cached(
            "INSERT INTO outbox_state (key, value) VALUES ('last_lag_us', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![now - created])?;
    }
    Ok(())
}

/// Parks the queued record `id` with `reason`, the later records of its key behind it.
fn park_tx(tx: &Transaction<'_>, now: i64, id: i64, reason: &str) -> rusqlite::Result<()> {
    let key: Option<String> = tx
        .prepare_cached("SELECT partition_key FROM outbox_queue WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    let Some(key) = key else {
        return Ok(()); // dispatched, or parked already
    };
    tx.prepare_cached(
        "INSERT INTO outbox_parked (id, partition_key, attempts, parked_at, reason)
         SELECT id, partition_key, attempts + 1, ?2, ?3 FROM outbox_queue WHERE id = ?1",
    )?
    .execute(params![id, now, reason])?;
    // The later records of its key wait behind it, out of the claims' way.
    tx.prepare_cached(
        "INSERT INTO outbox_parked (id, partition_key, attempts, parked_at, behind)
         SELECT id, partition_key, attempts, ?3, ?2 FROM outbox_queue
         WHERE partition_key = ?1 AND id > ?2",
    )?
    .execute(params![key, id, now])?;
    tx.prepare_cached(
        "DELETE FROM outbox_queue WHERE id = ?2 OR (partition_key = ?1 AND id > ?2)",
    )?
    .execute(params![key, id])?;
    Ok(())
}

/// Direct dispatch, inside the writer's transaction (see the module doc): picks like a claim,
/// publishes the records into the queues of this data file in id order, parks those the broker
/// refuses (too large, invalid topic) with the reason, and marks the others dispatched.
pub(crate) fn dispatch_tx(
    tx: &Transaction<'_>,
    topology: &Topology,
    cfg: &SqliteConfig,
    now: i64,
    max: usize,
    woke: &mut Woken,
) -> Result<(DirectBatch, Option<i64>), OpError> {
    let (picked, next) = pick(tx, max, now)?;
    if picked.is_empty() {
        return Ok((DirectBatch::default(), next));
    }
    let records = read_picked(tx, &picked, &json_ids(picked.iter().map(|(id, _)| *id)))?;
    let mut batch = DirectBatch::default();
    let mut parked_keys: Vec<String> = Vec::new();
    let mut dispatched: Vec<i64> = Vec::with_capacity(records.len());
    for rec in records {
        if parked_keys.contains(&rec.partition_key) {
            continue; // parked behind its key's refused record, with it
        }
        // The properties are stored as they are; decoded only for filters that look at them.
        let filtered = topology
            .of_topic(&rec.topic)
            .any(|s| !matches!(*s.filter, eventyard_core::Filter::All));
        let message = OutgoingMessage {
            message: Message {
                body: Bytes::from(rec.body),
                properties: if filtered {
                    crate::ops::parse_props(&rec.props)
                } else {
                    Default::default()
                },
            },
            deliver_at: rec.deliver_at.map(to_time),
        };
        let props = [rec.props];
        let published = crate::ops::publish(
            tx,
            topology,
            cfg,
            now,
            &rec.topic,
            std::slice::from_ref(&message),
            Some(&props),
            woke,
        );
        match published {
            Ok(()) => {
                dispatched.push(rec.id);
                batch.dispatched += 1;
                batch.last_created_us = Some(rec.created_at);
            }
            // Checked before anything is written: nothing of this record reached a queue.
            Err(OpError::Transport(e)) if e.is_refusal() => {
                let reason = e.to_string();
                park_tx(tx, now, rec.id, &reason)?;
                parked_keys.push(rec.partition_key);
                batch.parked.push((rec.id, reason));
            }
            Err(e) => return Err(e),
        }
    }
    if !dispatched.is_empty() {
        mark_tx(tx, now, &json_ids(dispatched))?;
    }
    Ok((batch, None))
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn dispatches_into(&self, transport: &dyn Transport) -> bool {
        let any: &dyn std::any::Any = transport;
        any.downcast_ref::<SqliteBroker>()
            .is_some_and(|b| b.same_store(&self.broker))
    }

    async fn dispatch(&self, _relay: &str, max: usize) -> Result<DirectBatch, OutboxError> {
        self.before_pick();
        let (batch, next) = self
            .broker
            .call(|reply| Cmd::Dispatch { max, reply })
            .await
            .map_err(broker_error)
            .inspect_err(|_| self.unregister())?;
        self.after_pick(batch.moved() > 0, next);
        Ok(batch)
    }

    async fn claim(
        &self,
        relay: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxRecord>, OutboxError> {
        self.before_pick();
        let relay = relay.to_owned();
        let (raw, next) = self
            .run(move |tx| claim_tx(tx, &relay, max, lease))
            .await
            .inspect_err(|_| self.unregister())?;
        let records: Vec<OutboxRecord> = raw.into_iter().map(RawRecord::into_record).collect();
        self.after_pick(!records.is_empty(), next);
        Ok(records)
    }

    async fn mark_dispatched(&self, _relay: &str, ids: &[i64]) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = json_ids(ids.iter().copied());
        self.run(move |tx| mark_tx(tx, now_us(), &ids)).await
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
        let (ids, relay) = (ids.to_vec(), relay.to_owned());
        self.run(move |tx| {
            let at = now_us()
                .saturating_add(crate::ops::dur_us(retry_after))
                .max(1);
            let mut release = tx.prepare_cached(
                "UPDATE outbox_queue SET visible_at = ?1, lease_owner = NULL,
                        attempts = attempts + 1
                 WHERE id = ?2 AND lease_owner = ?3",
            )?;
            for id in ids {
                release.execute(params![at, id, relay])?;
            }
            Ok(())
        })
        .await
    }

    async fn park(&self, _relay: &str, id: i64, reason: &str) -> Result<(), OutboxError> {
        let reason = reason.to_owned();
        self.run(move |tx| park_tx(tx, now_us(), id, &reason)).await
    }

    async fn cleanup(&self, older_than: Duration, batch: u32) -> Result<u64, OutboxError> {
        let candidate = self.candidate.clone();
        let lease = crate::ops::dur_us(self.cleaner_lease).max(1);
        self.run(move |tx| {
            let now = now_us();
            let elected = tx
                .prepare_cached(
                    "INSERT INTO outbox_leases (name, holder, expires_at) VALUES ('cleaner', ?1, ?2)
                     ON CONFLICT (name) DO UPDATE
                     SET holder = excluded.holder, expires_at = excluded.expires_at
                     WHERE outbox_leases.holder = excluded.holder
                        OR outbox_leases.expires_at <= ?3",
                )?
                .execute(params![candidate, now.saturating_add(lease), now])?;
            if elected == 0 || batch == 0 {
                return Ok(0);
            }
            let cutoff = now.saturating_sub(crate::ops::dur_us(older_than));
            let old: Vec<(i64, i64)> = tx
                .prepare_cached(
                    "SELECT dispatched_at, id FROM outbox_done WHERE dispatched_at < ?1
                     ORDER BY dispatched_at LIMIT ?2",
                )?
                .query_map(params![cutoff, batch], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut payload = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
            let mut done =
                tx.prepare_cached("DELETE FROM outbox_done WHERE dispatched_at = ?1 AND id = ?2")?;
            for (at, id) in &old {
                payload.execute(params![id])?;
                done.execute(params![at, id])?;
            }
            let n = old.len();
            Ok(n as u64)
        })
        .await
    }

    async fn wait(&self, timeout: Duration) {
        let shared = self.broker.shared();
        let mut rx = shared.outbox.subscribe();
        if *rx.borrow_and_update() != self.seen.load(Ordering::Acquire) {
            return; // records were committed since the last claim
        }
        // Stays registered until a claim finds records.
        self.register();
        let now = tokio::time::Instant::now();
        let mut until = now + timeout;
        let due = self.next_due.load(Ordering::Acquire);
        if due > 0 {
            let delta = u64::try_from(due - now_us()).unwrap_or(0);
            until = until.min(now + Duration::from_micros(delta));
        }
        if let Ok(Err(_)) = tokio::time::timeout_at(until, rx.changed()).await {
            // The broker is gone: no signal will come; keep the caller's pace.
            tokio::time::sleep_until(until).await;
        }
    }

    async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        self.run(|tx| {
            let now = now_us();
            let count = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<u64> {
                tx.prepare_cached(sql)?
                    .query_row(p, |r| r.get::<_, i64>(0))
                    .map(|n| u64::try_from(n).unwrap_or(0))
            };
            let pending = count(
                "SELECT (SELECT count(*) FROM outbox_queue)
                      + (SELECT count(*) FROM outbox_parked WHERE reason IS NULL)",
                &[],
            )?;
            let in_flight = count(
                "SELECT count(*) FROM outbox_queue WHERE visible_at > 0 AND visible_at > ?1
                 AND lease_owner IS NOT NULL",
                &[&now],
            )?;
            let parked = count(
                "SELECT count(*) FROM outbox_parked WHERE reason IS NOT NULL",
                &[],
            )?;
            let dispatched = count("SELECT count(*) FROM outbox_done", &[])?;
            let oldest: Option<i64> = tx
                .prepare_cached(
                    "SELECT created_at FROM outbox WHERE id = (SELECT min(id) FROM (
                        SELECT min(id) AS id FROM outbox_queue
                        UNION ALL SELECT min(id) FROM outbox_parked WHERE reason IS NULL))",
                )?
                .query_row([], |r| r.get(0))
                .optional()?;
            let lag: Option<i64> = tx
                .prepare_cached("SELECT value FROM outbox_state WHERE key = 'last_lag_us'")?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(OutboxStatus {
                pending,
                in_flight,
                parked,
                dispatched,
                oldest_pending_age_secs: oldest.map(|c| secs(now - c)),
                last_relay_lag_secs: lag.map(secs),
            })
        })
        .await
    }
}

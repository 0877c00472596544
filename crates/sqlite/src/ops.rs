//! The commands the writer executes, each as SQL inside the writer's transaction.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use eventyard_core::outbox::DirectBatch;
use eventyard_core::properties::names;
use eventyard_core::transport::MAX_DELIVERY_EXCEEDED;
use eventyard_core::{
    DeadLetterInfo, OutgoingMessage, Properties, Settlement, SubscriptionSpec, TransportError,
};
use rusqlite::{OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use crate::config::SqliteConfig;
use crate::topology::Topology;

type Tx<T> = oneshot::Sender<Result<T, TransportError>>;

/// A message claimed from a queue.
#[derive(Debug)]
pub struct ClaimedRow {
    /// Sequence number.
    pub seq: i64,
    /// Delivery count after this claim.
    pub delivery_count: u32,
    /// Enqueue time, µs.
    pub enqueued_at: i64,
    /// Body.
    pub body: Bytes,
    /// Properties, as stored (JSON text): decoded by the receiver with [`parse_props`], off the
    /// writer thread.
    pub props: String,
}

/// Result of a claim.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The claimed messages, in sequence order.
    pub rows: Vec<ClaimedRow>,
    /// Earliest `visible_at` of the queue's remaining messages (µs), when nothing was claimed.
    pub next_visible: Option<i64>,
}

/// Counts of one subscription.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionStats {
    /// Topic.
    pub topic: String,
    /// Subscription.
    pub subscription: String,
    /// `in-platform` / `cross-platform`.
    pub scope: String,
    /// Filter, as text.
    pub filter: String,
    /// Messages available now.
    pub available: u64,
    /// Messages locked by a consumer or scheduled for later.
    pub pending: u64,
    /// Messages in the dead-letter sub-queue.
    pub dead_lettered: u64,
}

/// A command for the writer thread.
pub enum Cmd {
    /// Publish a batch to a topic.
    Publish {
        /// Topic.
        topic: String,
        /// Messages.
        messages: Vec<OutgoingMessage>,
        /// Each message's properties as stored (JSON text), encoded by the caller so that the
        /// writer thread does not; `None`: encoded on the writer thread.
        props: Option<Vec<String>>,
        /// Reply.
        reply: Tx<()>,
    },
    /// Claim up to `max` available messages of a queue.
    Claim {
        /// Queue id (negative: dead-letter sub-queue).
        queue: i64,
        /// Most messages.
        max: usize,
        /// Reply.
        reply: Tx<Claimed>,
    },
    /// Settle one delivery.
    Settle {
        /// Queue id.
        queue: i64,
        /// Sequence.
        seq: i64,
        /// Delivery count when claimed (the lock token).
        count: u32,
        /// How.
        settlement: Settlement,
        /// With an abandon: properties merged into the message's for its next deliveries.
        modify: Option<Properties>,
        /// Reply (None: fire and forget, for release on drop).
        reply: Option<Tx<()>>,
    },
    /// Declare a subscription.
    Ensure {
        /// Spec.
        spec: Box<SubscriptionSpec>,
        /// Reply.
        reply: Tx<()>,
    },
    /// Delete a subscription.
    Delete {
        /// Topic.
        topic: String,
        /// Name.
        name: String,
        /// Reply.
        reply: Tx<()>,
    },
    /// Resolve a subscription to its queue id.
    Lookup {
        /// Topic.
        topic: String,
        /// Name.
        name: String,
        /// Reply.
        reply: Tx<i64>,
    },
    /// Counts per subscription.
    Stats {
        /// Reply.
        reply: Tx<Vec<SubscriptionStats>>,
    },
    /// Run a closure inside the writer's transaction, in its own savepoint unless unguarded.
    Exec {
        /// The work; taken on execution.
        work: std::sync::Mutex<Option<ExecFn>>,
        /// In a savepoint, so that its own error rolls back what it wrote. Unguarded work runs
        /// without one (SQLite's statement journal copies every page a savepoint changes): its
        /// errors must write nothing, and it reports a failure after writes as [`Abort`], which
        /// aborts the whole transaction (the writer then retries the other commands alone).
        guarded: bool,
        /// Wake every receiver after the commit (application work may have made messages
        /// available); false for the store's own bookkeeping (outbox claims and marks).
        wake_all: bool,
        /// Reply: the closure's result (Ok or its own error, which rolled its savepoint back).
        reply: Tx<ExecResult>,
    },
    /// Move up to `max` records of the data file's outbox into its queues, marking them
    /// dispatched (see [`crate::outbox`]'s direct dispatch).
    Dispatch {
        /// Most records.
        max: usize,
        /// Reply: what was moved, and the earliest retry time of a held record (µs) when
        /// nothing was.
        reply: Tx<(DirectBatch, Option<i64>)>,
    },
    /// From the syncer: it flushed the log for this many submitted transactions. Not a
    /// command of the store; the writer counts it and never executes it.
    Flushed {
        /// Transactions (batches of answers) the flush covered.
        batches: usize,
    },
    /// Stop the writer after the commands before this one.
    Shutdown {
        /// Reply.
        reply: oneshot::Sender<()>,
    },
}

/// A closure's result: Ok, or its own error after its savepoint was rolled back.
pub type ExecResult = Result<Box<dyn std::any::Any + Send>, Box<dyn std::any::Any + Send>>;

/// Work run on the writer thread inside the current transaction.
pub type ExecFn = Box<dyn FnOnce(&Transaction<'_>) -> ExecResult + Send>;

/// A command's result, held until the transaction commits.
pub enum Reply {
    /// A closure's result.
    Exec(ExecResult),
    /// Unit.
    Unit,
    /// Claim.
    Claimed(Claimed),
    /// Queue id.
    Id(i64),
    /// Stats.
    Stats(Vec<SubscriptionStats>),
    /// Direct dispatch.
    Dispatched(DirectBatch, Option<i64>),
    /// The command's own refusal.
    Err(TransportError),
}

fn send<T>(tx: Tx<T>, r: Result<T, TransportError>) {
    let _ = tx.send(r);
}

impl Cmd {
    /// Delivers the committed result.
    pub fn answer(self, reply: Reply) {
        match (self, reply) {
            (cmd, Reply::Err(e)) => cmd.fail(e),
            (Cmd::Publish { reply, .. }, _)
            | (Cmd::Ensure { reply, .. }, _)
            | (Cmd::Delete { reply, .. }, _) => send(reply, Ok(())),
            (Cmd::Settle { reply, .. }, _) => {
                if let Some(r) = reply {
                    send(r, Ok(()))
                }
            }
            (Cmd::Claim { reply, .. }, Reply::Claimed(c)) => send(reply, Ok(c)),
            (Cmd::Lookup { reply, .. }, Reply::Id(id)) => send(reply, Ok(id)),
            (Cmd::Stats { reply, .. }, Reply::Stats(s)) => send(reply, Ok(s)),
            (Cmd::Exec { reply, .. }, Reply::Exec(r)) => send(reply, Ok(r)),
            (Cmd::Dispatch { reply, .. }, Reply::Dispatched(b, next)) => send(reply, Ok((b, next))),
            (cmd, _) => cmd.fail(TransportError::Backend {
                backend: "sqlite",
                message: "internal: reply of the wrong kind".into(),
            }),
        }
    }

    /// Answers with an error.
    pub fn fail(self, e: TransportError) {
        match self {
            Cmd::Publish { reply, .. } | Cmd::Ensure { reply, .. } | Cmd::Delete { reply, .. } => {
                send(reply, Err(e))
            }
            Cmd::Settle { reply, .. } => {
                if let Some(r) = reply {
                    send(r, Err(e))
                }
            }
            Cmd::Claim { reply, .. } => send(reply, Err(e)),
            Cmd::Lookup { reply, .. } => send(reply, Err(e)),
            Cmd::Stats { reply } => send(reply, Err(e)),
            Cmd::Exec { reply, .. } => send(reply, Err(e)),
            Cmd::Dispatch { reply, .. } => send(reply, Err(e)),
            Cmd::Shutdown { reply } => {
                let _ = reply.send(());
            }
            Cmd::Flushed { .. } => {}
        }
    }
}

/// Why an op failed: the database (aborts the transaction) or the command itself.
pub enum OpError {
    /// Engine error.
    Db(rusqlite::Error),
    /// The command's own refusal.
    Transport(TransportError),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Db(e)
    }
}

impl From<TransportError> for OpError {
    fn from(e: TransportError) -> Self {
        OpError::Transport(e)
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A duration in whole microseconds (saturating).
pub(crate) fn dur_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Properties as stored: JSON text.
pub fn props_json(p: &Properties) -> String {
    serde_json::to_string(p).unwrap_or_else(|_| "{}".into())
}

/// Decodes stored properties (JSON text); malformed text gives no properties.
///
/// Stored properties (JSON text); an unreadable value decodes as no properties.
pub fn parse_props(s: &str) -> Properties {
    serde_json::from_str(s).unwrap_or_default()
}

/// Which receivers a transaction must wake once committed.
#[derive(Debug, Default)]
pub struct Woken {
    /// Wake every receiver (the change is not tied to known queues).
    pub all: bool,
    /// Queues that got messages, available now or at a later time (waiting receivers then
    /// recompute how long to sleep).
    pub queues: Vec<i64>,
}

impl Woken {
    fn queue(&mut self, id: i64) {
        if !self.queues.contains(&id) {
            self.queues.push(id);
        }
    }
}

/// Executes one command, noting in `woke` which queues got available messages.
pub fn apply(
    tx: &Transaction<'_>,
    topology: &mut Topology,
    cfg: &SqliteConfig,
    now: i64,
    cmd: &Cmd,
    woke: &mut Woken,
) -> Result<Reply, OpError> {
    match cmd {
        Cmd::Publish {
            topic,
            messages,
            props,
            ..
        } => {
            publish(
                tx,
                topology,
                cfg,
                now,
                topic,
                messages,
                props.as_deref(),
                woke,
            )?;
            Ok(Reply::Unit)
        }
        Cmd::Claim { queue, max, .. } => {
            Ok(Reply::Claimed(claim(tx, topology, now, *queue, *max)?))
        }
        Cmd::Settle {
            queue,
            seq,
            count,
            settlement,
            modify,
            ..
        } => {
            settle(tx, topology, now, *queue, *seq, *count, settlement, woke)?;
            if let (Some(props), Settlement::Abandon { .. }) = (modify, settlement) {
                merge_props(tx, *seq, props)?;
            }
            Ok(Reply::Unit)
        }
        Cmd::Ensure { spec, .. } => {
            ensure(tx, topology, now, spec)?;
            Ok(Reply::Unit)
        }
        Cmd::Delete { topic, name, .. } => {
            delete(tx, topology, topic, name)?;
            Ok(Reply::Unit)
        }
        Cmd::Lookup { topic, name, .. } => match topology.find(topic, name) {
            Some(s) => Ok(Reply::Id(s.id)),
            None => Err(OpError::Transport(TransportError::UnknownSubscription {
                topic: topic.clone(),
                subscription: name.clone(),
            })),
        },
        Cmd::Stats { .. } => Ok(Reply::Stats(stats(tx, topology, now)?)),
        Cmd::Exec {
            work,
            wake_all,
            guarded,
            ..
        } => {
            // The work may have made messages available (e.g. a replay).
            woke.all |= *wake_all;
            if *guarded {
                exec(tx, work)
            } else {
                exec_unguarded(tx, work)
            }
        }
        Cmd::Dispatch { max, .. } => {
            let (batch, next) = crate::outbox::dispatch_tx(tx, topology, cfg, now, *max, woke)?;
            Ok(Reply::Dispatched(batch, next))
        }
        Cmd::Shutdown { .. } | Cmd::Flushed { .. } => Ok(Reply::Unit),
    }
}

/// Inserts `messages` into the queues of `topic`'s subscriptions whose filters match (checking
/// the topic name and each message's size first).
#[allow(clippy::too_many_arguments)]
pub(crate) fn publish(
    tx: &Transaction<'_>,
    topology: &Topology,
    cfg: &SqliteConfig,
    now: i64,
    topic: &str,
    messages: &[OutgoingMessage],
    encoded: Option<&[String]>,
    woke: &mut Woken,
) -> Result<(), OpError> {
    eventyard_core::transport::check_name("topic", topic)?;
    for m in messages {
        if m.message.body.len() > cfg.max_message_size {
            return Err(TransportError::MessageTooLarge {
                size: m.message.body.len(),
                max: cfg.max_message_size,
            }
            .into());
        }
    }
    let subs: Vec<_> = topology.of_topic(topic).collect();
    if subs.is_empty() {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages (queue, visible_at, enqueued_at) VALUES (?1, ?2, ?3)",
    )?;
    let mut insert_body =
        tx.prepare_cached("INSERT INTO message_bodies (seq, body, props) VALUES (?1, ?2, ?3)")?;
    for (i, m) in messages.iter().enumerate() {
        let visible_at = m.deliver_at.map(|t| t.timestamp_micros()).unwrap_or(now);
        let given = encoded.and_then(|e| e.get(i));
        let mut local: Option<String> = None;
        for s in &subs {
            if s.filter.matches(&m.message.properties) {
                let p: &str = match given {
                    Some(p) => p,
                    None => local.get_or_insert_with(|| props_json(&m.message.properties)),
                };
                let seq = insert.insert(params![s.id, visible_at, now])?;
                insert_body.execute(params![seq, &m.message.body[..], p])?;
                // A scheduled message wakes waiting receivers too: they recompute their sleep
                // from the earliest visible time instead of sleeping out `MAX_IDLE_SLEEP`.
                woke.queue(s.id);
            }
        }
    }
    Ok(())
}

fn unknown_queue(queue: i64) -> OpError {
    OpError::Transport(TransportError::UnknownSubscription {
        topic: "?".into(),
        subscription: format!("queue #{queue} (deleted)"),
    })
}

fn claim(
    tx: &Transaction<'_>,
    topology: &Topology,
    now: i64,
    queue: i64,
    max: usize,
) -> Result<Claimed, OpError> {
    let sub = topology
        .get(queue.abs())
        .ok_or_else(|| unknown_queue(queue))?;
    let lock_until = now.saturating_add(sub.lock_us);
    // `+?n`, not bare parameters: with ORDER BY/LIMIT (or min()) SQLite marks the plan as
    // depending on the bound values and re-prepares the statement on every execution
    // (sqlite3_stmt_status REPREPARE = 10 of 10 runs); the plan is the same index search.
    let mut stmt = tx.prepare_cached(
        "UPDATE messages SET delivery_count = delivery_count + 1, visible_at = ?1
         WHERE seq IN (SELECT seq FROM messages WHERE queue = +?2 AND visible_at <= +?3
                       ORDER BY visible_at, seq LIMIT +?4)
         RETURNING seq, delivery_count, enqueued_at",
    )?;
    let max = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
    let mut rows = stmt
        .query_map(params![lock_until, queue, now, max], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_unstable_by_key(|r| r.0);
    let mut bytes = tx.prepare_cached("SELECT body, props FROM message_bodies WHERE seq = ?1")?;
    let mut out = Claimed::default();
    for (seq, count, enqueued_at) in rows {
        let (body, props) = bytes
            .query_row(params![seq], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?
            .unwrap_or_default();
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        if queue > 0 && count > sub.max_delivery {
            let info = DeadLetterInfo::new(
                MAX_DELIVERY_EXCEEDED,
                format!(
                    "delivered {} times without being settled (max_delivery_count = {})",
                    count - 1,
                    sub.max_delivery
                ),
            );
            dead_letter(tx, now, queue, seq, parse_props(&props), &sub.name, &info)?;
            continue;
        }
        out.rows.push(ClaimedRow {
            seq,
            delivery_count: count,
            enqueued_at,
            body: Bytes::from(body),
            props,
        });
    }
    if out.rows.is_empty() {
        out.next_visible = tx
            .prepare_cached("SELECT min(visible_at) FROM messages WHERE queue = +?1")?
            .query_row(params![queue], |r| r.get::<_, Option<i64>>(0))?;
    }
    Ok(out)
}

fn dead_letter(
    tx: &Transaction<'_>,
    now: i64,
    queue: i64,
    seq: i64,
    mut props: Properties,
    source: &str,
    info: &DeadLetterInfo,
) -> Result<(), OpError> {
    props.insert(names::DEAD_LETTER_REASON, info.reason.as_str());
    props.insert(names::DEAD_LETTER_DESCRIPTION, info.description.as_str());
    props.insert(names::DEAD_LETTER_SOURCE, source);
    let context = if info.context.is_null() {
        None
    } else {
        Some(info.context.to_string())
    };
    tx.prepare_cached(
        "UPDATE messages SET queue = ?1, visible_at = ?2, delivery_count = 0, dl_at = ?2
         WHERE seq = ?3",
    )?
    .execute(params![-queue, now, seq])?;
    tx.prepare_cached("UPDATE message_bodies SET props = ?1, dl_context = ?2 WHERE seq = ?3")?
        .execute(params![props_json(&props), context, seq])?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn settle(
    tx: &Transaction<'_>,
    topology: &Topology,
    now: i64,
    queue: i64,
    seq: i64,
    count: u32,
    settlement: &Settlement,
    woke: &mut Woken,
) -> Result<(), OpError> {
    let sub = topology
        .get(queue.abs())
        .ok_or_else(|| unknown_queue(queue))?;
    let lock_lost = || {
        OpError::Transport(TransportError::LockLost {
            subscription: sub.name.clone(),
            sequence: u64::try_from(seq).unwrap_or(0),
        })
    };
    let changed = match settlement {
        Settlement::Ack => tx
            .prepare_cached(
                "DELETE FROM messages WHERE seq = ?1 AND queue = ?2 AND delivery_count = ?3",
            )?
            .execute(params![seq, queue, count])?,
        Settlement::Abandon { after } => {
            let at = now.saturating_add(dur_us(*after));
            // Even when delayed: a receiver already waiting must learn the new visible time.
            woke.queue(queue);
            tx.prepare_cached(
                "UPDATE messages SET visible_at = ?1
                 WHERE seq = ?2 AND queue = ?3 AND delivery_count = ?4",
            )?
            .execute(params![at, seq, queue, count])?
        }
        Settlement::DeadLetter(info) => {
            if queue < 0 {
                return Err(TransportError::Config(
                    "a message of a dead-letter sub-queue cannot be dead-lettered again".into(),
                )
                .into());
            }
            let props: Option<String> = tx
                .prepare_cached(
                    "SELECT b.props FROM messages m JOIN message_bodies b ON b.seq = m.seq
                     WHERE m.seq = ?1 AND m.queue = ?2 AND m.delivery_count = ?3",
                )?
                .query_row(params![seq, queue, count], |r| r.get(0))
                .optional()?;
            let Some(props) = props else {
                return Err(lock_lost());
            };
            dead_letter(tx, now, queue, seq, parse_props(&props), &sub.name, info)?;
            1
        }
    };
    if changed == 0 {
        return Err(lock_lost());
    }
    Ok(())
}

fn ensure(
    tx: &Transaction<'_>,
    topology: &mut Topology,
    now: i64,
    spec: &SubscriptionSpec,
) -> Result<(), OpError> {
    spec.validate()?;
    let filter = serde_json::to_string(&spec.filter)
        .map_err(|e| TransportError::Config(format!("filter cannot be stored: {e}")))?;
    let lock_us = dur_us(spec.lock_duration);
    let existing = topology.find(&spec.topic, &spec.name).map(|s| {
        (
            serde_json::to_string(&*s.filter).unwrap_or_default(),
            s.scope,
            s.max_delivery,
            s.lock_us,
        )
    });
    if existing == Some((filter.clone(), spec.scope, spec.max_delivery_count, lock_us)) {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO subscriptions (topic, name, filter, scope, max_delivery, lock_us, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (topic, name) DO UPDATE SET filter = excluded.filter, scope = excluded.scope,
             max_delivery = excluded.max_delivery, lock_us = excluded.lock_us",
    )?
    .execute(params![
        spec.topic,
        spec.name,
        filter,
        spec.scope.as_str(),
        spec.max_delivery_count,
        lock_us,
        now
    ])?;
    bump_topology(tx, topology)
}

fn bump_topology(tx: &Transaction<'_>, topology: &mut Topology) -> Result<(), OpError> {
    tx.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'topology_version'")?
        .execute([])?;
    topology.invalidate();
    topology.refresh(tx)?;
    Ok(())
}

fn delete(
    tx: &Transaction<'_>,
    topology: &mut Topology,
    topic: &str,
    name: &str,
) -> Result<(), OpError> {
    let Some(id) = topology.find(topic, name).map(|s| s.id) else {
        return Err(TransportError::UnknownSubscription {
            topic: topic.to_owned(),
            subscription: name.to_owned(),
        }
        .into());
    };
    tx.prepare_cached("DELETE FROM messages WHERE queue IN (?1, -?1)")?
        .execute(params![id])?;
    tx.prepare_cached("DELETE FROM subscriptions WHERE id = ?1")?
        .execute(params![id])?;
    bump_topology(tx, topology)
}

fn stats(
    tx: &Transaction<'_>,
    topology: &Topology,
    now: i64,
) -> Result<Vec<SubscriptionStats>, OpError> {
    let mut stmt = tx.prepare_cached(
        "SELECT count(*) FILTER (WHERE visible_at <= ?2), count(*) FILTER (WHERE visible_at > ?2)
         FROM messages WHERE queue = ?1",
    )?;
    let mut out = Vec::new();
    for s in topology.all() {
        let (available, pending): (i64, i64) =
            stmt.query_row(params![s.id, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (dl_a, dl_p): (i64, i64) =
            stmt.query_row(params![-s.id, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
        out.push(SubscriptionStats {
            topic: s.topic.clone(),
            subscription: s.name.clone(),
            scope: s.scope.as_str().to_owned(),
            filter: s.filter.to_string(),
            available: u64::try_from(available).unwrap_or(0),
            pending: u64::try_from(pending).unwrap_or(0),
            dead_lettered: u64::try_from(dl_a + dl_p).unwrap_or(0),
        });
    }
    out.sort_by(|a, b| (&a.topic, &a.subscription).cmp(&(&b.topic, &b.subscription)));
    Ok(out)
}

fn exec(tx: &Transaction<'_>, work: &std::sync::Mutex<Option<ExecFn>>) -> Result<Reply, OpError> {
    let f = take_work(work)?;
    let sql = |s: &str| {
        tx.prepare_cached(s)
            .and_then(|mut st| st.execute([]).map(|_| ()))
    };
    sql("SAVEPOINT exec")?;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx))) {
        Ok(Ok(v)) => {
            sql("RELEASE exec")?;
            Ok(Reply::Exec(Ok(v)))
        }
        Ok(Err(e)) => {
            tx.execute_batch("ROLLBACK TO exec; RELEASE exec")?;
            Ok(Reply::Exec(Err(e)))
        }
        Err(panic) => {
            tx.execute_batch("ROLLBACK TO exec; RELEASE exec")?;
            Err(OpError::Transport(TransportError::Backend {
                backend: "sqlite",
                message: format!("transaction work panicked: {}", panic_text(&*panic)),
            }))
        }
    }
}

/// The error an unguarded [`Cmd::Exec`] returns when it failed after writing: the whole
/// transaction is aborted (nothing of it commits).
pub struct Abort(pub String);

fn take_work(work: &std::sync::Mutex<Option<ExecFn>>) -> Result<ExecFn, OpError> {
    work.lock().ok().and_then(|mut g| g.take()).ok_or_else(|| {
        OpError::Transport(TransportError::Backend {
            backend: "sqlite",
            message: "the transaction this work ran in was aborted; run it again".into(),
        })
    })
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// An unguarded [`Cmd::Exec`]: no savepoint; an [`Abort`] or a panic aborts the transaction.
fn exec_unguarded(
    tx: &Transaction<'_>,
    work: &std::sync::Mutex<Option<ExecFn>>,
) -> Result<Reply, OpError> {
    let f = take_work(work)?;
    let abort = |message: String| {
        Err(OpError::Transport(TransportError::Backend {
            backend: "sqlite",
            message,
        }))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx))) {
        Ok(Ok(v)) => Ok(Reply::Exec(Ok(v))),
        Ok(Err(e)) => match e.downcast::<Abort>() {
            Ok(a) => abort(a.0),
            Err(e) => Ok(Reply::Exec(Err(e))),
        },
        Err(panic) => abort(format!(
            "transaction work panicked: {}",
            panic_text(&*panic)
        )),
    }
}

fn merge_props(tx: &Transaction<'_>, seq: i64, extra: &Properties) -> Result<(), OpError> {
    let current: Option<String> = tx
        .prepare_cached("SELECT props FROM message_bodies WHERE seq = ?1")?
        .query_row(params![seq], |r| r.get(0))
        .optional()?;
    let mut props = current.as_deref().map(parse_props).unwrap_or_default();
    for (k, v) in extra.iter() {
        props.insert(k, v.clone());
    }
    tx.prepare_cached("UPDATE message_bodies SET props = ?1 WHERE seq = ?2")?
        .execute(params![props_json(&props), seq])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_decode_each_scalar_as_what_it_is() {
        use eventyard_core::PropertyValue as V;
        let p = parse_props(
            r#"{"a":true,"b":-3,"c":2.5,"d":"x\"y","e":18446744073709551615,"f":9223372036854775807}"#,
        );
        assert_eq!(p.get("a"), Some(&V::Bool(true)));
        assert_eq!(p.get("b"), Some(&V::Int(-3)));
        assert_eq!(p.get("c"), Some(&V::Float(2.5)));
        assert_eq!(p.get("d"), Some(&V::String("x\"y".into())));
        assert_eq!(p.get("e"), Some(&V::Float(18446744073709551615.0)));
        assert_eq!(p.get("f"), Some(&V::Int(i64::MAX)));
        for bad in [r#"{"bad":null}"#, r#"{"bad":[1]}"#, "not json"] {
            assert_eq!(parse_props(bad), Properties::default(), "{bad}");
        }
        let mut p = Properties::new();
        p.insert("s", "v");
        p.insert("i", 7i64);
        p.insert("b", true);
        assert_eq!(parse_props(&props_json(&p)), p);
    }
}

//! The writer: one dedicated thread per broker owns the SQLite connection and executes commands
//! sent over a channel. It drains every command waiting in the channel into one transaction
//! (group commit: one fsync for many publishes, claims and settlements) and flushes at once when
//! the channel is empty — there is no timer delay on an idle path. Replies are sent only after
//! the transaction commits, so a publish is acknowledged only once it is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use eventyard_core::TransportError;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{oneshot, watch};

use crate::config::{SqliteConfig, Synchronous};
use crate::error::map_error;
use crate::ops::{self, Cmd, Reply};
use crate::syncer::{self, SyncFn, SyncState, Syncer};
use crate::topology::Topology;

/// Shared state between the async handles and the writer thread.
pub struct Shared {
    /// Bumped when any queue may have changed (another process committed, application work
    /// ran); every receiver waits on it.
    pub wake: watch::Sender<u64>,
    /// Per queue, bumped after a commit that made messages of that queue available; only that
    /// queue's receivers wait on it (no thundering herd across subscriptions).
    pub queues: std::sync::Mutex<std::collections::HashMap<i64, watch::Sender<u64>>>,
    /// Receivers currently waiting; while non-zero the writer also watches other processes.
    pub waiters: AtomicUsize,
    /// Bumped after a commit that added outbox records (`outbox::add`), and when another process
    /// committed; outbox relays wait on it.
    pub outbox: watch::Sender<u64>,
    /// Work counters of the writer thread.
    pub counters: Counters,
    /// The log-flushing thread's state (flush count, failed flush).
    pub sync: Arc<SyncState>,
}

/// Counters of the writer thread's work, for benchmarks and diagnostics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Commands executed in committed transactions.
    pub commands: AtomicU64,
}

/// A snapshot of the writer thread's [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterStats {
    /// Transactions committed since the broker opened.
    pub transactions: u64,
    /// Commands (publish batches, claims, settlements, …) those transactions executed.
    pub commands: u64,
    /// Flushes of the write-ahead log by the syncer thread (one covers every transaction
    /// committed before it began; 0 when SQLite flushes itself, as with `synchronous=NORMAL`).
    pub wal_syncs: u64,
}

impl Shared {
    /// Current values of the writer's counters.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            commands: self.counters.commands.load(Ordering::Relaxed),
            wal_syncs: self.sync.syncs.load(Ordering::Relaxed),
        }
    }
}

/// Where the writer hands a committed transaction's commands and replies, to be answered (and
/// their payloads freed) on an async worker instead of the writer thread.
pub type Dispatch = tokio::sync::mpsc::UnboundedSender<Vec<(Cmd, Reply)>>;

/// Starts the task that answers committed commands, when the caller runs on a multi-thread tokio
/// runtime (its workers run whether or not anyone blocks on it). `None` otherwise: the writer
/// then answers on its own thread.
///
/// Why: answering wakes each waiting task from a foreign thread (an injection and often a
/// futex wake per task) and frees each command's payload (a publish's messages) on the one
/// thread every command waits on. One wake per transaction moves that work to the workers.
pub fn dispatcher() -> Option<Dispatch> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(Cmd, Reply)>>();
    handle.spawn(async move {
        while let Some(answers) = rx.recv().await {
            for (cmd, reply) in answers {
                cmd.answer(reply);
            }
        }
    });
    Some(tx)
}

/// With `synchronous=FULL`, moves the flush of the log off the writer thread (see
/// [`crate::syncer`]): the connection switches to `synchronous=NORMAL` and the syncer flushes
/// before answering. `None` (SQLite keeps flushing at each commit) for the other settings, or
/// when the `-wal` file cannot be opened.
fn start_syncer(
    cfg: &SqliteConfig,
    conn: &Connection,
    shared: &Shared,
    dispatch: &Option<Dispatch>,
    sync: SyncFn,
    writer: mpsc::Sender<Cmd>,
) -> Option<Syncer> {
    if cfg.synchronous != Synchronous::Full {
        return None;
    }
    let started = Syncer::start(
        &cfg.path,
        shared.sync.clone(),
        dispatch.clone(),
        sync,
        writer,
    );
    let syncer = match started {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %cfg.path.display(), error = %e,
                "cannot open the write-ahead log for pipelined flushes; SQLite flushes each commit");
            return None;
        }
    };
    match conn.pragma_update(None, "synchronous", Synchronous::Normal.as_str()) {
        Ok(()) => Some(syncer),
        Err(e) => {
            tracing::warn!(path = %cfg.path.display(), error = %e,
                "cannot hand flushes to the syncer; SQLite flushes each commit");
            None
        }
    }
}

/// Runs the writer loop until the channel closes or a `Shutdown` command arrives. `sync` is how
/// the syncer flushes the log ([`syncer::fdatasync`] but in tests); `tx` is the sending side of
/// `rx`, for the syncer's [`Cmd::Flushed`].
pub fn run(
    cfg: SqliteConfig,
    conn: Connection,
    (tx, rx): (mpsc::Sender<Cmd>, mpsc::Receiver<Cmd>),
    shared: Arc<Shared>,
    dispatch: Option<Dispatch>,
    sync: SyncFn,
) {
    let syncer = start_syncer(&cfg, &conn, &shared, &dispatch, sync, tx);
    let mut w = Writer {
        dispatch,
        syncer,
        unflushed: 0,
        stashed: Vec::new(),
        path: cfg.path.display().to_string(),
        busy_ms: u64::try_from(cfg.busy_timeout.as_millis()).unwrap_or(u64::MAX),
        cfg,
        conn,
        topology: Topology::default(),
        shared,
        data_version: 0,
    };
    w.data_version = w.read_data_version();
    let mut batch: Vec<Cmd> = Vec::with_capacity(w.cfg.max_batch);
    loop {
        let first = if w.shared.waiters.load(Ordering::Acquire) > 0 {
            match rx.recv_timeout(w.cfg.cross_process_poll) {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Timeout) => {
                    w.check_other_processes();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(cmd) => cmd,
                Err(_) => return,
            }
        };
        if count_flushed(&mut w.unflushed, &first) {
            continue;
        }
        batch.push(first);
        while batch.len() < w.cfg.max_batch {
            match rx.try_recv() {
                Ok(cmd) if count_flushed(&mut w.unflushed, &cmd) => {}
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let shutdown = batch.iter().position(|c| matches!(c, Cmd::Shutdown { .. }));
        let tail = shutdown.map(|i| batch.split_off(i));
        if !batch.is_empty() {
            // With no Shutdown in sight, the transaction may stay open for more commands.
            w.execute(&mut batch, tail.is_none().then_some(&rx));
        }
        let tail = tail.or_else(|| (!w.stashed.is_empty()).then(|| std::mem::take(&mut w.stashed)));
        if let Some(mut tail) = tail {
            // Commands after Shutdown are answered `Closed`; Shutdown itself is answered last.
            let mut done = None;
            for cmd in tail.drain(..) {
                match cmd {
                    Cmd::Shutdown { reply } => done = done.or(Some(reply)),
                    other => other.fail(TransportError::Closed),
                }
            }
            drop(rx);
            // Everything committed is flushed and answered before Shutdown is.
            if let Some(s) = w.syncer.as_mut() {
                s.finish();
            }
            if let Some(reply) = done {
                let _ = reply.send(());
            }
            return;
        }
        if w.shared.waiters.load(Ordering::Acquire) > 0 {
            w.check_other_processes();
        }
    }
}

/// Counts a [`Cmd::Flushed`] off `unflushed`; false for every other command.
fn count_flushed(unflushed: &mut usize, cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Flushed { batches } => {
            *unflushed = unflushed.saturating_sub(*batches);
            true
        }
        _ => false,
    }
}

struct Writer {
    dispatch: Option<Dispatch>,
    /// Flushes the log and answers committed commands, when SQLite does not flush itself.
    syncer: Option<Syncer>,
    /// Transactions handed to the syncer and not yet flushed.
    unflushed: usize,
    /// A Shutdown (and what came after it) received while a transaction was open.
    stashed: Vec<Cmd>,
    cfg: SqliteConfig,
    path: String,
    busy_ms: u64,
    conn: Connection,
    topology: Topology,
    shared: Arc<Shared>,
    data_version: i64,
}

impl Writer {
    fn read_data_version(&self) -> i64 {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap_or(0)
    }

    /// Wakes receivers if another process committed since we last looked.
    fn check_other_processes(&mut self) {
        let v = self.read_data_version();
        if v != self.data_version {
            self.data_version = v;
            self.topology.invalidate();
            self.shared.wake.send_modify(|n| *n = n.wrapping_add(1));
            self.shared.outbox.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Executes a batch in one transaction; on a database error, retries each command alone so
    /// that one failing command cannot fail the others. With `more`, the transaction stays open
    /// while the syncer is flushing an earlier one, taking the commands that arrive meanwhile
    /// (they could not be answered before the next flush anyway): commits follow flushes, so
    /// the writer works while the disk flushes and a transaction holds all that came meanwhile.
    fn execute(&mut self, batch: &mut Vec<Cmd>, more: Option<&mpsc::Receiver<Cmd>>) {
        if self.shared.sync.poisoned.load(Ordering::Acquire) {
            for cmd in batch.drain(..) {
                cmd.fail(SyncState::poisoned_error(&self.path));
            }
            return;
        }
        match self.transaction(batch, more) {
            Ok((replies, woke)) => {
                // Our own commits leave data_version unchanged: a change means another process
                // committed meanwhile, whose receivers and relays must not be left asleep.
                let v = self.read_data_version();
                if v != self.data_version {
                    self.data_version = v;
                    self.shared.wake.send_modify(|n| *n = n.wrapping_add(1));
                    self.shared.outbox.send_modify(|n| *n = n.wrapping_add(1));
                }
                self.wake(&woke);
                let answers: Vec<(Cmd, Reply)> = batch.drain(..).zip(replies).collect();
                let unsynced = match &self.syncer {
                    Some(s) => {
                        let r = s.submit(answers).err();
                        self.unflushed += usize::from(r.is_none());
                        r
                    }
                    None => Some(answers),
                };
                if let Some(answers) = unsynced {
                    if self.syncer.take().is_some() {
                        // The syncer thread is gone (only a panic ends it early): nothing
                        // flushes the log any more, so treat it as a failed flush.
                        self.shared.sync.poisoned.store(true, Ordering::Release);
                        syncer::fail(answers, &syncer::poisoned_message(&self.path));
                    } else {
                        syncer::deliver(&mut self.dispatch, answers);
                    }
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(cmd) = batch.pop() {
                    cmd.fail(e);
                }
            }
            Err(_) => {
                let cmds: Vec<Cmd> = std::mem::take(batch);
                for cmd in cmds {
                    let mut one = vec![cmd];
                    self.execute(&mut one, None);
                }
            }
        }
    }

    fn wake(&self, woke: &ops::Woken) {
        if crate::outbox::take_added() {
            self.shared.outbox.send_modify(|n| *n = n.wrapping_add(1));
        }
        if woke.all {
            self.shared.wake.send_modify(|n| *n = n.wrapping_add(1));
        } else if !woke.queues.is_empty() {
            let map = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            for q in &woke.queues {
                if let Some(tx) = map.get(q) {
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }

    fn transaction(
        &mut self,
        batch: &mut Vec<Cmd>,
        more: Option<&mpsc::Receiver<Cmd>>,
    ) -> Result<(Vec<Reply>, ops::Woken), TransportError> {
        let (path, busy_ms) = (self.path.clone(), self.busy_ms);
        let map = |e| map_error(&path, e, busy_ms);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map)?;
        self.topology.refresh(&tx)?;
        let now = ops::now_us();
        let mut replies = Vec::with_capacity(batch.len());
        let mut woke = ops::Woken::default();
        let mut apply = |cmd: &Cmd, replies: &mut Vec<Reply>| {
            let reply = ops::apply(&tx, &mut self.topology, &self.cfg, now, cmd, &mut woke)
                .map_err(|e| match e {
                    ops::OpError::Db(e) => map(e),
                    ops::OpError::Transport(t) => t,
                });
            match reply {
                Ok(r) => replies.push(r),
                // A command-level error (no write was made) is that command's answer alone.
                Err(e) if !e.is_db() => replies.push(Reply::Err(e)),
                Err(e) => return Err(e),
            }
            Ok(())
        };
        for cmd in batch.iter() {
            apply(cmd, &mut replies)?;
        }
        if let Some(rx) = more {
            while self.unflushed > 0 && batch.len() < self.cfg.max_batch {
                let cmd = match rx.recv_timeout(MAX_IDLE_SLEEP) {
                    Ok(cmd) => cmd,
                    Err(RecvTimeoutError::Timeout) => {
                        if self.syncer.as_ref().is_none_or(Syncer::is_gone) {
                            self.unflushed = 0;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                if count_flushed(&mut self.unflushed, &cmd) {
                    continue;
                }
                match cmd {
                    Cmd::Shutdown { .. } => {
                        self.stashed.push(cmd);
                        break;
                    }
                    cmd => {
                        let r = apply(&cmd, &mut replies);
                        batch.push(cmd);
                        r?;
                    }
                }
            }
        }
        tx.commit().map_err(map)?;
        let c = &self.shared.counters;
        c.transactions.fetch_add(1, Ordering::Relaxed);
        c.commands.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok((replies, woke))
    }
}

/// Error kinds that abort the whole transaction (as opposed to a command's own refusal).
trait IsDb {
    fn is_db(&self) -> bool;
}

impl IsDb for TransportError {
    fn is_db(&self) -> bool {
        matches!(
            self,
            TransportError::Backend { .. }
                | TransportError::Locked { .. }
                | TransportError::InvalidDataFile { .. }
        )
    }
}

/// Sends a command and awaits its reply.
pub async fn call<T>(
    tx: &mpsc::Sender<Cmd>,
    make: impl FnOnce(oneshot::Sender<Result<T, TransportError>>) -> Cmd,
) -> Result<T, TransportError> {
    let (reply_tx, reply_rx) = oneshot::channel();
    tx.send(make(reply_tx))
        .map_err(|_| TransportError::Closed)?;
    reply_rx.await.map_err(|_| TransportError::Closed)?
}

/// How long receivers sleep at most between claims when nothing wakes them (a safety net).
pub const MAX_IDLE_SLEEP: Duration = Duration::from_millis(250);

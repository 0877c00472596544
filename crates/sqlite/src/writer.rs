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

use crate::config::SqliteConfig;
use crate::error::map_error;
use crate::ops::{self, Cmd, Reply};
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
}

impl Counters {
    /// Current values.
    pub fn snapshot(&self) -> WriterStats {
        WriterStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
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

/// Runs the writer loop until the channel closes or a `Shutdown` command arrives.
pub fn run(
    cfg: SqliteConfig,
    conn: Connection,
    rx: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    dispatch: Option<Dispatch>,
) {
    let mut w = Writer {
        dispatch,
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
        batch.push(first);
        while batch.len() < w.cfg.max_batch {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let shutdown = batch.iter().position(|c| matches!(c, Cmd::Shutdown { .. }));
        let tail = shutdown.map(|i| batch.split_off(i));
        if !batch.is_empty() {
            w.execute(&mut batch);
        }
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

struct Writer {
    dispatch: Option<Dispatch>,
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
    /// that one failing command cannot fail the others.
    fn execute(&mut self, batch: &mut Vec<Cmd>) {
        match self.transaction(batch) {
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
                let undelivered = match &self.dispatch {
                    Some(d) => d.send(answers).err().map(|e| e.0),
                    None => Some(answers),
                };
                if let Some(answers) = undelivered {
                    // No dispatcher, or its runtime is gone: answer here.
                    self.dispatch = None;
                    for (cmd, reply) in answers {
                        cmd.answer(reply);
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
                    self.execute(&mut one);
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

    fn transaction(&mut self, batch: &[Cmd]) -> Result<(Vec<Reply>, ops::Woken), TransportError> {
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
        for cmd in batch {
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

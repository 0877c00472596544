//! The writer: one dedicated thread per broker owns the SQLite connection and executes commands
//! sent over a channel. It drains every command waiting in the channel into one transaction
//! (group commit: one fsync for many publishes, claims and settlements) and flushes at once when
//! the channel is empty — there is no timer delay on an idle path. Replies are sent only after
//! the transaction commits, so a publish is acknowledged only once it is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

/// Runs the writer loop until the channel closes or a `Shutdown` command arrives.
pub fn run(cfg: SqliteConfig, conn: Connection, rx: mpsc::Receiver<Cmd>, shared: Arc<Shared>) {
    let mut w = Writer {
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
                for (cmd, reply) in batch.drain(..).zip(replies) {
                    cmd.answer(reply);
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

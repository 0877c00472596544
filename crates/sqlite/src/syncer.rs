//! Pipelined durability: the write-ahead log is synced on a thread of its own, so the writer
//! thread goes on with the next transaction while the disk flushes the last ones.
//!
//! With `synchronous=FULL` in WAL mode SQLite's commit is "append the transaction's frames to the
//! `-wal` file, then fsync that file", all on the committing thread: the writer sat idle for every
//! flush. Here the writer's connection runs `synchronous=NORMAL` (the commit appends the frames
//! and returns; checkpoints still sync the log before copying it and sync the database after)
//! and hands the committed transaction's answers to the syncer. The syncer takes every answer
//! waiting, calls `fdatasync` on the `-wal` file once — which makes all frames written before it
//! durable, so one flush covers every transaction queued so far — and only then answers. A
//! command is therefore acknowledged exactly when `synchronous=FULL` would have acknowledged it
//! (its frames are on disk); what changes is that flushes overlap the next transactions' work
//! and one flush serves several commits.
//!
//! One difference remains: *another process* reading the file may see a transaction in the
//! moment between its commit and the flush. If the machine loses power in that moment, that
//! process may have seen a message whose publish was never acknowledged (the publisher, not
//! told it succeeded, publishes again): at-least-once delivery holds. Within this process nothing
//! is visible before it is durable, since every answer waits for the flush.
//!
//! A failed flush leaves the outcome of the waiting commands unknown (the kernel may have dropped
//! the dirty pages): they fail with a typed error, and the broker refuses all later work, as
//! PostgreSQL does, rather than acknowledge on top of a log it cannot trust.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use eventyard_core::TransportError;

use crate::ops::{Cmd, Reply};
use crate::writer::Dispatch;

/// A committed transaction's commands with their replies, waiting to be answered.
pub type Answers = Vec<(Cmd, Reply)>;

/// What the syncer flushes. Tests replace it to hold or fail a flush.
pub type SyncFn = Box<dyn FnMut(&File) -> std::io::Result<()> + Send>;

/// State the syncer shares with the writer.
#[derive(Debug, Default)]
pub struct SyncState {
    /// Set after a failed flush: every later command fails.
    pub poisoned: AtomicBool,
    /// Flushes of the log done (each covering one or more transactions).
    pub syncs: AtomicU64,
}

impl SyncState {
    /// The error every command gets once a flush has failed.
    pub fn poisoned_error(path: &str) -> TransportError {
        TransportError::Backend {
            backend: "sqlite",
            message: poisoned_message(path),
        }
    }
}

/// The text of [`SyncState::poisoned_error`].
pub fn poisoned_message(path: &str) -> String {
    format!(
        "an earlier flush of {path}-wal to disk failed, so the broker accepts no more work: \
         reopen it (outcomes of the commands waiting on that flush are unknown)"
    )
}

/// The handle the writer keeps: where to send committed answers.
pub struct Syncer {
    tx: Option<mpsc::Sender<Answers>>,
    thread: Option<JoinHandle<()>>,
}

/// The `-wal` file beside the data file at `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

impl Syncer {
    /// Opens the data file's `-wal` file and starts the syncer thread. Fails when the file
    /// cannot be opened (the writer then keeps SQLite's own `synchronous=FULL`).
    /// After each flush it sends [`Cmd::Flushed`] to the writer over `writer`.
    pub fn start(
        db: &Path,
        state: Arc<SyncState>,
        dispatch: Option<Dispatch>,
        sync: SyncFn,
        writer: mpsc::Sender<Cmd>,
    ) -> std::io::Result<Syncer> {
        let file = File::open(wal_path(db))?;
        let (tx, rx) = mpsc::channel::<Answers>();
        let path = db.display().to_string();
        let thread = std::thread::Builder::new()
            .name("eventyard-walsync".into())
            .spawn(move || run(file, rx, state, dispatch, sync, path, writer))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a committed transaction's answers; they are sent once the log is flushed.
    /// Gives them back if the syncer thread is gone.
    pub fn submit(&self, answers: Answers) -> Result<(), Answers> {
        match &self.tx {
            Some(tx) => tx.send(answers).map_err(|e| e.0),
            None => Err(answers),
        }
    }

    /// True when the syncer thread has ended (it ends only when told to, or on a panic).
    pub fn is_gone(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Flushes and answers everything queued, then stops the thread.
    pub fn finish(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The default flush: `fdatasync` of the `-wal` file.
pub fn fdatasync() -> SyncFn {
    Box::new(|f: &File| f.sync_data())
}

fn run(
    file: File,
    rx: mpsc::Receiver<Answers>,
    state: Arc<SyncState>,
    mut dispatch: Option<Dispatch>,
    mut sync: SyncFn,
    path: String,
    writer: mpsc::Sender<Cmd>,
) {
    let mut pending: Vec<Answers> = Vec::new();
    while let Ok(first) = rx.recv() {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        // Every transaction queued so far had committed (its frames were written) before it was
        // queued, so this one flush makes all of them durable.
        let outcome: Result<(), String> = if state.poisoned.load(Ordering::Acquire) {
            Err(poisoned_message(&path))
        } else {
            match sync(&file) {
                Ok(()) => {
                    state.syncs.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => {
                    state.poisoned.store(true, Ordering::Release);
                    tracing::error!(path = %path, error = %e, "flushing the write-ahead log failed");
                    Err(format!(
                        "committed, but flushing {path}-wal to disk failed ({e}): the outcome is \
                         unknown"
                    ))
                }
            }
        };
        // The writer keeps its next transaction open while a flush runs: let it commit now.
        let _ = writer.send(Cmd::Flushed {
            batches: pending.len(),
        });
        for answers in pending.drain(..) {
            match &outcome {
                Ok(()) => deliver(&mut dispatch, answers),
                Err(message) => fail(answers, message),
            }
        }
    }
}

/// Fails every command of committed `answers` whose flush did not happen: their outcome is
/// unknown.
pub fn fail(answers: Answers, message: &str) {
    for (cmd, _) in answers {
        cmd.fail(TransportError::Backend {
            backend: "sqlite",
            message: message.to_owned(),
        });
    }
}

/// Answers on the async dispatcher when there is one (see [`crate::writer::dispatcher`]),
/// otherwise on this thread.
pub fn deliver(dispatch: &mut Option<Dispatch>, answers: Answers) {
    let undelivered = match dispatch {
        Some(d) => d.send(answers).err().map(|e| e.0),
        None => Some(answers),
    };
    if let Some(answers) = undelivered {
        // No dispatcher, or its runtime is gone: answer here.
        *dispatch = None;
        for (cmd, reply) in answers {
            cmd.answer(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use eventyard_core::{Envelope, EventType, Message, TenantId, Transport};

    use super::*;
    use crate::{SqliteBroker, SqliteConfig, Synchronous};

    fn msg() -> eventyard_core::OutgoingMessage {
        let env = Envelope::new(
            EventType::event("ProjectCreated").unwrap(),
            TenantId::parse("acme").unwrap(),
            serde_json::json!({"n": 1}),
        );
        Message::from_envelope(&env).into()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_is_acknowledged_only_after_the_log_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate_rx = std::sync::Mutex::new(gate_rx);
        let sync: SyncFn = Box::new(move |f: &File| {
            gate_rx.lock().unwrap().recv().ok();
            f.sync_data()
        });
        let b =
            SqliteBroker::open_with_sync(SqliteConfig::new(dir.path().join("s.db")), sync).unwrap();
        let publish = tokio::spawn({
            let b = b.clone();
            async move { b.publish("ProjectCreated", vec![msg()]).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!publish.is_finished(), "acknowledged before the flush");
        assert_eq!(
            b.writer_stats().transactions,
            1,
            "the commit itself did not wait"
        );
        gate_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), publish)
            .await
            .expect("answered after the flush")
            .unwrap()
            .unwrap();
        assert_eq!(b.writer_stats().wal_syncs, 1);
        drop(gate_tx);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_fails_its_commands_and_refuses_later_work() {
        let dir = tempfile::tempdir().unwrap();
        let sync: SyncFn = Box::new(|_: &File| Err(std::io::Error::other("injected EIO")));
        let b =
            SqliteBroker::open_with_sync(SqliteConfig::new(dir.path().join("f.db")), sync).unwrap();
        let e = b.publish("ProjectCreated", vec![msg()]).await.unwrap_err();
        assert!(e.to_string().contains("outcome is unknown"), "{e}");
        assert!(e.to_string().contains("injected EIO"), "{e}");
        let e = b.publish("ProjectCreated", vec![msg()]).await.unwrap_err();
        assert!(e.to_string().contains("accepts no more work"), "{e}");
        assert_eq!(b.writer_stats().wal_syncs, 0);
    }

    #[tokio::test]
    async fn other_sync_settings_leave_flushing_to_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SqliteConfig::new(dir.path().join("n.db"));
        cfg.synchronous = Synchronous::Normal;
        let sync: SyncFn = Box::new(|_: &File| panic!("the syncer must not run"));
        let b = SqliteBroker::open_with_sync(cfg, sync).unwrap();
        b.publish("ProjectCreated", vec![msg()]).await.unwrap();
        assert_eq!(b.writer_stats().wal_syncs, 0);
        assert_eq!(b.writer_stats().transactions, 1);
    }

    #[tokio::test]
    async fn with_full_the_connection_itself_runs_normal_and_answers_after_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBroker::open(SqliteConfig::new(dir.path().join("p.db"))).unwrap();
        for _ in 0..5 {
            b.publish("ProjectCreated", vec![msg(), msg()])
                .await
                .unwrap();
        }
        let s = b.writer_stats();
        assert_eq!(s.transactions, 5);
        assert!(s.wal_syncs >= 1 && s.wal_syncs <= 5, "{s:?}");
        let mode: i64 = b
            .transaction(|tx| tx.query_row("PRAGMA synchronous", [], |r| r.get(0)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(mode, 1, "NORMAL on the writer's connection");
    }
}

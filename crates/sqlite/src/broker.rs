//! [`SqliteBroker`]: the embedded broker, a [`Transport`] on one SQLite file.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventyard_core::{
    Capabilities, Delivery, Message, OutgoingMessage, Properties, Receiver, Settle, Settlement,
    SubQueue, SubscriptionSpec, Transport, TransportError,
};
use tokio::sync::{oneshot, watch};

use crate::config::SqliteConfig;
use crate::ops::{Claimed, Cmd, SubscriptionStats, now_us};
use crate::schema;
use crate::writer::{self, MAX_IDLE_SLEEP, Shared};

struct Inner {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    closed: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    cfg: SqliteConfig,
}

/// The embedded broker: topics, subscriptions, peek-lock delivery and dead-letter sub-queues in
/// one SQLite file (WAL). Several brokers — in this process or in others — can open the same
/// file at once: writes are serialized by SQLite's lock, and receivers are woken by commits of
/// this process at once and by commits of other processes within `cross_process_poll`.
///
/// Cheap to clone; the connection lives on a dedicated writer thread (see the `writer` module).
#[derive(Clone)]
pub struct SqliteBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("path", &self.inner.cfg.path)
            .finish()
    }
}

impl SqliteBroker {
    /// Opens (creating if absent) the data file and starts the writer thread.
    pub fn open(cfg: SqliteConfig) -> Result<Self, TransportError> {
        Self::open_with_sync(cfg, crate::syncer::fdatasync())
    }

    /// [`SqliteBroker::open`] with the syncer's flush replaced (tests hold or fail it).
    pub(crate) fn open_with_sync(
        cfg: SqliteConfig,
        sync: crate::syncer::SyncFn,
    ) -> Result<Self, TransportError> {
        let conn = schema::open(&cfg)?;
        let (tx, rx) = mpsc::channel();
        let (wake, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            wake,
            queues: Mutex::new(std::collections::HashMap::new()),
            waiters: AtomicUsize::new(0),
            outbox: watch::channel(0u64).0,
            counters: writer::Counters::default(),
            sync: Default::default(),
        });
        let thread_cfg = cfg.clone();
        let thread_tx = tx.clone();
        let thread_shared = shared.clone();
        let dispatch = writer::dispatcher();
        let thread = std::thread::Builder::new()
            .name("eventyard-sqlite".into())
            .spawn(move || {
                writer::run(
                    thread_cfg,
                    conn,
                    (thread_tx, rx),
                    thread_shared,
                    dispatch,
                    sync,
                )
            })
            .map_err(|e| TransportError::Backend {
                backend: "sqlite",
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(SqliteBroker {
            inner: Arc::new(Inner {
                tx,
                shared,
                closed: AtomicBool::new(false),
                thread: Mutex::new(Some(thread)),
                cfg,
            }),
        })
    }

    /// Opens `sqlite://PATH[?synchronous=…]`.
    pub fn open_url(url: &str) -> Result<Self, TransportError> {
        Self::open(SqliteConfig::from_url(url)?)
    }

    /// The configuration in use.
    pub fn config(&self) -> &SqliteConfig {
        &self.inner.cfg
    }

    fn sender(&self) -> Result<&mpsc::Sender<Cmd>, TransportError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(TransportError::Closed)
        } else {
            Ok(&self.inner.tx)
        }
    }

    /// Runs `work` on the store's thread inside its transaction (in a savepoint of its own), so
    /// that the application's state changes commit atomically with the broker's own writes of the
    /// same group commit. Returns `Ok(Err(e))` when `work` failed (its changes are rolled back)
    /// and `Err` when the store itself failed (nothing was committed).
    ///
    /// `work` runs on the writer thread: keep it short (a few statements); it delays every other
    /// command of this broker while it runs. A panic in `work` is caught and reported.
    pub async fn transaction<T, E, F>(&self, work: F) -> Result<Result<T, E>, TransportError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.exec(true, work).await
    }

    /// [`SqliteBroker::transaction`]; `wake_all: false` for the store's own bookkeeping, which
    /// makes no message available and must not wake every receiver.
    pub(crate) async fn exec<T, E, F>(
        &self,
        wake_all: bool,
        work: F,
    ) -> Result<Result<T, E>, TransportError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let f: crate::ops::ExecFn = Box::new(move |tx| match work(tx) {
            Ok(v) => Ok(Box::new(v) as Box<dyn std::any::Any + Send>),
            Err(e) => Err(Box::new(e) as Box<dyn std::any::Any + Send>),
        });
        self.call_exec(wake_all, true, f).await
    }

    /// Like [`SqliteBroker::exec`] without the savepoint: `work` must write nothing when it
    /// returns `Ok(Err(_))`, and returns `Err(message)` for a failure after writes, which aborts
    /// the whole group transaction (the caller gets `Err(TransportError::Backend)`). For the
    /// store's hot paths whose refusals are decided before they write (saga commits).
    pub(crate) async fn exec_unguarded<T, E, F>(
        &self,
        wake_all: bool,
        work: F,
    ) -> Result<Result<T, E>, TransportError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<Result<T, E>, String> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let f: crate::ops::ExecFn = Box::new(move |tx| match work(tx) {
            Ok(Ok(v)) => Ok(Box::new(v) as Box<dyn std::any::Any + Send>),
            Ok(Err(e)) => Err(Box::new(e) as Box<dyn std::any::Any + Send>),
            Err(message) => {
                Err(Box::new(crate::ops::Abort(message)) as Box<dyn std::any::Any + Send>)
            }
        });
        self.call_exec(wake_all, false, f).await
    }

    async fn call_exec<T, E>(
        &self,
        wake_all: bool,
        guarded: bool,
        f: crate::ops::ExecFn,
    ) -> Result<Result<T, E>, TransportError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let work = std::sync::Mutex::new(Some(f));
        let r = self
            .call(|reply| Cmd::Exec {
                work,
                wake_all,
                guarded,
                reply,
            })
            .await?;
        let wrong = || TransportError::Backend {
            backend: "sqlite",
            message: "internal: result of the wrong type".into(),
        };
        Ok(match r {
            Ok(v) => Ok(*v.downcast::<T>().map_err(|_| wrong())?),
            Err(e) => Err(*e.downcast::<E>().map_err(|_| wrong())?),
        })
    }

    /// Sends a command to the writer thread and waits for its committed answer.
    pub(crate) async fn call<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, TransportError>>) -> Cmd,
    ) -> Result<T, TransportError> {
        writer::call(self.sender()?, make).await
    }

    /// True when `other` is a handle of this very broker (same writer, same data file).
    pub(crate) fn same_store(&self, other: &SqliteBroker) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The state shared with the writer thread (wake-up signals).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// What the writer thread has done since the broker opened (transactions, commands).
    pub fn writer_stats(&self) -> writer::WriterStats {
        self.inner.shared.stats()
    }

    /// Message counts of every subscription (available, pending, dead-lettered).
    pub async fn stats(&self) -> Result<Vec<SubscriptionStats>, TransportError> {
        self.call(|reply| Cmd::Stats { reply }).await
    }
}

#[async_trait]
impl Transport for SqliteBroker {
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::new("sqlite");
        c.persistent = true;
        c.atomic_batch = true;
        c.release_on_drop = true;
        c.max_message_size = self.inner.cfg.max_message_size;
        c.modify_on_abandon = true;
        c
    }

    async fn ensure_subscription(&self, spec: &SubscriptionSpec) -> Result<(), TransportError> {
        spec.validate()?;
        let spec = Box::new(spec.clone());
        self.call(|reply| Cmd::Ensure { spec, reply }).await
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), TransportError> {
        let (topic, name) = (topic.to_owned(), name.to_owned());
        self.call(|reply| Cmd::Delete { topic, name, reply }).await
    }

    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), TransportError> {
        eventyard_core::transport::check_name("topic", topic)?;
        if messages.is_empty() {
            return Ok(());
        }
        let topic = topic.to_owned();
        // Encoded here, on the caller's thread, not on the writer thread every command waits on.
        let props = Some(
            messages
                .iter()
                .map(|m| crate::ops::props_json(&m.message.properties))
                .collect(),
        );
        self.call(|reply| Cmd::Publish {
            topic,
            messages,
            props,
            reply,
        })
        .await
    }

    async fn receiver(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Box<dyn Receiver>, TransportError> {
        eventyard_core::transport::check_name("topic", topic)?;
        eventyard_core::transport::check_name("subscription", subscription)?;
        let (t, n) = (topic.to_owned(), subscription.to_owned());
        let id = self
            .call(|reply| Cmd::Lookup {
                topic: t,
                name: n,
                reply,
            })
            .await?;
        let queue = if queue == SubQueue::DeadLetter {
            -id
        } else {
            id
        };
        let queue_wake = {
            let mut map = self
                .inner
                .shared
                .queues
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.entry(queue)
                .or_insert_with(|| watch::channel(0u64).0)
                .subscribe()
        };
        Ok(Box::new(SqliteReceiver {
            broker: self.clone(),
            queue,
            subscription: subscription.to_owned(),
            wake: self.inner.shared.wake.subscribe(),
            queue_wake,
        }))
    }

    async fn close(&self) -> Result<(), TransportError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        if self.inner.tx.send(Cmd::Shutdown { reply }).is_ok() {
            let _ = done.await;
        }
        let handle = self.inner.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last handle gone: stop the writer after it drains what was already sent.
        let (reply, _done) = oneshot::channel();
        let _ = self.tx.send(Cmd::Shutdown { reply });
    }
}

struct SqliteReceiver {
    broker: SqliteBroker,
    queue: i64,
    subscription: String,
    wake: watch::Receiver<u64>,
    queue_wake: watch::Receiver<u64>,
}

/// Decrements the waiter count when a wait ends (also on cancellation).
struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn to_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

#[async_trait]
impl Receiver for SqliteReceiver {
    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Mark the current wake generation as seen before claiming, so a commit that lands
            // between the claim and the wait is not missed.
            self.wake.borrow_and_update();
            self.queue_wake.borrow_and_update();
            let queue = self.queue;
            let claimed: Claimed = self
                .broker
                .call(|reply| Cmd::Claim { queue, max, reply })
                .await?;
            if !claimed.rows.is_empty() {
                return Ok(claimed
                    .rows
                    .into_iter()
                    .map(|r| {
                        Delivery::new(
                            Message {
                                body: r.body,
                                properties: crate::ops::parse_props(&r.props),
                            },
                            r.delivery_count,
                            to_time(r.enqueued_at),
                            u64::try_from(r.seq).unwrap_or(0),
                            self.subscription.clone(),
                            Box::new(SqliteSettle {
                                tx: self.broker.inner.tx.clone(),
                                queue,
                                seq: r.seq,
                                count: r.delivery_count,
                                settled: false,
                            }),
                        )
                    })
                    .collect());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline.min(now + MAX_IDLE_SLEEP);
            if let Some(next) = claimed.next_visible {
                let delta = u64::try_from(next - now_us()).unwrap_or(0);
                until = until.min(now + Duration::from_micros(delta));
            }
            let shared = &self.broker.inner.shared;
            shared.waiters.fetch_add(1, Ordering::AcqRel);
            let _guard = WaiterGuard(&shared.waiters);
            let _ = tokio::time::timeout_at(until, async {
                tokio::select! {
                    _ = self.wake.changed() => {}
                    _ = self.queue_wake.changed() => {}
                }
            })
            .await;
        }
    }
}

struct SqliteSettle {
    tx: mpsc::Sender<Cmd>,
    queue: i64,
    seq: i64,
    count: u32,
    settled: bool,
}

impl SqliteSettle {
    async fn send(
        mut self: Box<Self>,
        settlement: Settlement,
        modify: Option<Properties>,
    ) -> Result<(), TransportError> {
        self.settled = true;
        let (queue, seq, count) = (self.queue, self.seq, self.count);
        writer::call(&self.tx, |reply| Cmd::Settle {
            queue,
            seq,
            count,
            settlement,
            modify,
            reply: Some(reply),
        })
        .await
    }
}

#[async_trait]
impl Settle for SqliteSettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), TransportError> {
        self.send(settlement, None).await
    }

    async fn abandon_with(
        self: Box<Self>,
        after: Duration,
        properties: Properties,
    ) -> Result<(), TransportError> {
        self.send(Settlement::Abandon { after }, Some(properties))
            .await
    }
}

impl Drop for SqliteSettle {
    fn drop(&mut self) {
        if !self.settled {
            // Released at once rather than at lock expiry.
            let _ = self.tx.send(Cmd::Settle {
                queue: self.queue,
                seq: self.seq,
                count: self.count,
                settlement: Settlement::Abandon {
                    after: Duration::ZERO,
                },
                modify: None,
                reply: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rows(b: &SqliteBroker) -> i64 {
        b.exec(false, |tx| {
            tx.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        })
        .await
        .unwrap()
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unguarded_work_commits_refuses_or_aborts_the_whole_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBroker::open(SqliteConfig::new(dir.path().join("b.db"))).unwrap();
        b.exec(false, |tx| tx.execute_batch("CREATE TABLE t (x INTEGER)"))
            .await
            .unwrap()
            .unwrap();
        let ok: Result<u8, ()> = b
            .exec_unguarded(false, |tx| {
                tx.execute("INSERT INTO t VALUES (1)", [])
                    .map_err(|e| e.to_string())?;
                Ok(Ok(7))
            })
            .await
            .unwrap();
        assert_eq!(ok, Ok(7));
        let refused: Result<u8, &str> = b.exec_unguarded(false, |_tx| Ok(Err("no"))).await.unwrap();
        assert_eq!(refused, Err("no"));
        // A failure after a write aborts: the write does not commit.
        let aborted = b
            .exec_unguarded::<u8, (), _>(false, |tx| {
                tx.execute("INSERT INTO t VALUES (2)", [])
                    .map_err(|e| e.to_string())?;
                Err("disk on fire".into())
            })
            .await;
        assert!(
            matches!(&aborted, Err(TransportError::Backend { message, .. }) if message.contains("disk on fire")),
            "{aborted:?}"
        );
        assert_eq!(rows(&b).await, 1);
        b.close().await.unwrap();
    }
}

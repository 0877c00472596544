//! The dedicated LISTEN connection behind `OutboxStore::wait`.
//!
//! A task keeps one connection listening on `<schema>_outbox` and turns each notification into
//! a wake-up of the waiting relays. When the connection drops it wakes them (records may have
//! been committed meanwhile, unseen), reconnects with backoff (100 ms doubling to 5 s), LISTENs
//! again and wakes them once more. TCP keepalives (see `config::pg_config`) detect a silently
//! dead peer.
//!
//! A wake-up that finds nobody waiting is kept (one permit): the next `wait` returns at once, so
//! a commit landing between a relay's empty claim and its `wait` is not missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::error;

/// Wake-ups shared by the listener task and the waiters.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    notify: Notify,
    connected: AtomicBool,
}

impl Signal {
    /// Wakes every current waiter and leaves one permit for the next.
    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Waits for a wake-up or the timeout.
    pub(crate) async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }

    /// True while the LISTEN connection is established.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// The listener task; aborted when dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Starts listening on `channel`.
    pub(crate) fn start(pg: tokio_postgres::Config, channel: String, signal: Arc<Signal>) -> Self {
        Listener {
            task: tokio::spawn(run(pg, channel, signal)),
        }
    }
}

async fn run(pg: tokio_postgres::Config, channel: String, signal: Arc<Signal>) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        match listen_once(&pg, &channel, &signal, first).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::debug!(error = %e, "outbox LISTEN connection failed"),
        }
        signal.connected.store(false, Ordering::Relaxed);
        first = false;
        signal.wake();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: connect, LISTEN, relay notifications until it ends. `Ok` when it was
/// established (and later ended), `Err` when it could not be established. After a reconnect
/// (`first` false) the waiters are woken: notifications sent meanwhile were lost.
async fn listen_once(
    pg: &tokio_postgres::Config,
    channel: &str,
    signal: &Signal,
    first: bool,
) -> Result<(), String> {
    let (client, mut connection) = pg.connect(NoTls).await.map_err(|e| error::describe(&e))?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let command = format!("LISTEN {channel}");
    {
        let listen = client.batch_execute(&command);
        tokio::pin!(listen);
        // Drive the connection while the LISTEN command runs.
        loop {
            tokio::select! {
            r = &mut listen => {
                r.map_err(|e| error::describe(&e))?;
                break;
            }
            m = messages.next() => match m {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(error::describe(&e)),
                None => return Err("connection closed during LISTEN".into()),
            },
            }
        }
    }
    signal.connected.store(true, Ordering::Relaxed);
    if !first {
        signal.wake();
    }
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(_)) => signal.wake(),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %error::describe(&e), "outbox LISTEN connection lost");
                break;
            }
        }
    }
    drop(client);
    Ok(())
}

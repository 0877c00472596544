//! The connection: opened with a bounded retry, re-opened with backoff when it drops.
//!
//! Everything durable (exchanges, queues, bindings, persistent messages) lives on the broker, so
//! reconnecting needs no topology replay: a new [`Live`] connection starts with empty caches and
//! redeclares on first use. lapin's own auto-recovery is not used.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventyard_core::TransportError;
use lapin::options::ConfirmSelectOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{AmqpConfig, redact};

/// Engine name in errors.
pub(crate) const BACKEND: &str = "amqp";

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Locks a std mutex, ignoring poisoning (the data stays consistent: no panics while held).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// True for a channel-level "not found" (unknown queue or exchange).
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(a)
        if matches!(a.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// True when the error means the connection itself is gone (as opposed to one channel).
pub(crate) fn is_connection_error(e: &lapin::Error) -> bool {
    match e.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::RuntimeShutdownError(_)
        | ErrorKind::ParsingError(_)
        | ErrorKind::SerialisationError(_) => true,
        ErrorKind::ProtocolError(a) => matches!(a.kind(), AMQPErrorKind::Hard(_)),
        _ => false,
    }
}

/// A lapin error as a transport error.
pub(crate) fn map_err(e: &lapin::Error) -> TransportError {
    if is_connection_error(e) {
        TransportError::Unavailable {
            backend: BACKEND,
            message: e.to_string(),
        }
    } else {
        TransportError::Backend {
            backend: BACKEND,
            message: e.to_string(),
        }
    }
}

/// One open connection and what was declared on it.
pub(crate) struct Live {
    /// The connection.
    pub conn: Connection,
    /// Increases with every reconnect.
    pub generation: u64,
    publishers: Vec<Mutex<Option<Channel>>>,
    next_publisher: AtomicUsize,
    /// Topic exchanges declared (and bound to the route exchange) on this connection.
    pub topics: Mutex<HashSet<String>>,
    /// Delay queues declared on this connection, with when.
    pub delays: Mutex<HashMap<u64, Instant>>,
    /// The shared route and delay exchanges were declared.
    pub globals: AtomicBool,
}

impl Live {
    /// True while the connection is open.
    pub fn alive(&self) -> bool {
        self.conn.status().connected()
    }

    /// A new channel (for declarations, receivers).
    pub async fn channel(&self) -> Result<Channel, lapin::Error> {
        self.conn.create_channel().await
    }

    /// One of the publisher channels (confirm mode), re-opened if it was closed.
    pub async fn publisher(&self) -> Result<Channel, lapin::Error> {
        let i = self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        if let Some(ch) = lock(&self.publishers[i]).as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let ch = self.conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        *lock(&self.publishers[i]) = Some(ch.clone());
        Ok(ch)
    }
}

/// Owns the current connection; hands it out, replaces it when it dropped.
pub(crate) struct Manager {
    /// The configuration.
    pub config: AmqpConfig,
    /// The confirm window: one permit per published message awaiting its confirm, shared by
    /// every publish of the transport (`config.confirm_window` permits).
    pub window: Arc<tokio::sync::Semaphore>,
    current: Mutex<Option<Arc<Live>>>,
    reconnecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    closed: AtomicBool,
    close_tx: watch::Sender<bool>,
}

impl Manager {
    /// Connects, retrying for up to `config.connect_timeout`.
    pub async fn connect(config: AmqpConfig) -> Result<Arc<Manager>, TransportError> {
        config.validate()?;
        let (close_tx, _) = watch::channel(false);
        let manager = Arc::new(Manager {
            window: Arc::new(tokio::sync::Semaphore::new(config.confirm_window.max(1))),
            config,
            current: Mutex::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            close_tx,
        });
        let timeout = manager.config.connect_timeout;
        manager.reconnect(timeout).await?;
        Ok(manager)
    }

    /// True once [`Manager::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Fails with `Closed` once closed.
    pub fn check_open(&self) -> Result<(), TransportError> {
        if self.is_closed() {
            Err(TransportError::Closed)
        } else {
            Ok(())
        }
    }

    /// Changes to `true` when the transport closes.
    pub fn closed_signal(&self) -> watch::Receiver<bool> {
        self.close_tx.subscribe()
    }

    /// The open connection, reconnecting (for up to `reconnect_timeout`) if it dropped.
    pub async fn live(&self) -> Result<Arc<Live>, TransportError> {
        self.check_open()?;
        if let Some(live) = lock(&self.current).as_ref()
            && live.alive()
        {
            return Ok(live.clone());
        }
        self.reconnect(self.config.reconnect_timeout).await
    }

    /// As [`Manager::live`], but once closed (while `close` lets background work finish) the
    /// current connection, if still open, instead of `Closed`.
    pub async fn live_internal(&self) -> Result<Arc<Live>, TransportError> {
        if !self.is_closed() {
            return self.live().await;
        }
        match lock(&self.current).as_ref() {
            Some(live) if live.alive() => Ok(live.clone()),
            _ => Err(TransportError::Closed),
        }
    }

    /// Forgets connection `generation` (after an error showed it is gone).
    pub fn invalidate(&self, generation: u64) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|l| l.generation == generation) {
            *current = None;
        }
    }

    async fn reconnect(&self, timeout: Duration) -> Result<Arc<Live>, TransportError> {
        let _single = self.reconnecting.lock().await;
        if let Some(live) = lock(&self.current).as_ref()
            && live.alive()
        {
            return Ok(live.clone());
        }
        let deadline = Instant::now() + timeout;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            self.check_open()?;
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = tokio::time::timeout(remaining.max(FIRST_BACKOFF), self.open());
            let error = match attempt.await {
                Ok(Ok(live)) => {
                    let live = Arc::new(live);
                    if attempts > 1 || live.generation > 1 {
                        tracing::info!(
                            generation = live.generation,
                            attempts,
                            "connected to RabbitMQ"
                        );
                    }
                    *lock(&self.current) = Some(live.clone());
                    return Ok(live);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connection attempt timed out".to_owned(),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(TransportError::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "cannot connect to {} ({attempts} attempts in {timeout:?}): {error}",
                        redact(&self.config.uri)
                    ),
                });
            }
            tracing::debug!(%error, ?backoff, "RabbitMQ connection attempt failed; retrying");
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn open(&self) -> Result<Live, lapin::Error> {
        let props = ConnectionProperties::default().with_connection_name("eventyard".into());
        let conn = Connection::connect(&self.config.uri, props).await?;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        Ok(Live {
            conn,
            generation,
            publishers: (0..self.config.publisher_channels)
                .map(|_| Mutex::new(None))
                .collect(),
            next_publisher: AtomicUsize::new(0),
            topics: Mutex::new(HashSet::new()),
            delays: Mutex::new(HashMap::new()),
            globals: AtomicBool::new(false),
        })
    }

    /// Refuses new operations and wakes waiting receivers (the connection stays open).
    pub fn mark_closed(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.close_tx.send_replace(true);
        }
    }

    /// Marks the transport closed and closes the connection.
    pub async fn close(&self) {
        self.mark_closed();
        let live = lock(&self.current).take();
        if let Some(live) = live
            && live.alive()
        {
            let closing = live.conn.close(200, "eventyard transport closed".into());
            let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
        }
    }
}

/// Runs `op` on the live connection; when it fails because the connection dropped, reconnects
/// and runs it again (within `reconnect_timeout`). Other errors are returned as they are.
pub(crate) async fn with_retry<T, F, Fut>(manager: &Manager, mut op: F) -> Result<T, TransportError>
where
    F: FnMut(Arc<Live>) -> Fut,
    Fut: std::future::Future<Output = Result<T, OpError>>,
{
    let deadline = Instant::now() + manager.config.reconnect_timeout;
    loop {
        let live = manager.live().await?;
        let generation = live.generation;
        let alive = {
            let live = live.clone();
            move || live.alive()
        };
        match op(live).await {
            Ok(v) => return Ok(v),
            Err(OpError::Transport(e)) => return Err(e),
            Err(OpError::Amqp(e)) => {
                if (is_connection_error(&e) || !alive()) && Instant::now() < deadline {
                    manager.check_open()?;
                    manager.invalidate(generation);
                    continue;
                }
                return Err(if manager.is_closed() {
                    TransportError::Closed
                } else {
                    map_err(&e)
                });
            }
        }
    }
}

/// Error of one attempt of an operation: a broker error (maybe retried) or a final answer.
#[derive(Debug)]
pub(crate) enum OpError {
    /// A lapin error: retried when it means the connection dropped.
    Amqp(lapin::Error),
    /// Returned as is.
    Transport(TransportError),
}

impl From<lapin::Error> for OpError {
    fn from(e: lapin::Error) -> Self {
        OpError::Amqp(e)
    }
}

impl From<TransportError> for OpError {
    fn from(e: TransportError) -> Self {
        OpError::Transport(e)
    }
}

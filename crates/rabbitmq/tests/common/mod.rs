//! Shared by the RabbitMQ integration tests: a [`TransportFactory`] on a real broker.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventyard_core::Transport;
use eventyard_rabbitmq::{AmqpConfig, AmqpTransport, QueueType};
use eventyard_testkit::conformance::TransportFactory;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

/// Messages ready in a queue (not counting unacknowledged ones), through a raw lapin connection.
pub async fn depth(url: &str, queue: &str) -> u32 {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("raw connection");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    let _ = conn.close(200, "bye".into()).await;
    q.message_count()
}

/// Prefix of everything the tests declare, so that leftovers are recognizable.
pub const TEST_PREFIX: &str = "eventyard-test";

/// A run id: names of this run never collide with leftovers of earlier runs on the broker.
pub fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos % (1 << 40))
}

/// The test configuration for `url`: the test prefix, and subscription queues that expire when
/// unused for 10 minutes (tests leave their queues behind).
pub fn test_config(url: &str) -> AmqpConfig {
    let mut cfg = AmqpConfig::from_url(url).expect("valid AMQP URL");
    cfg.prefix = TEST_PREFIX.to_owned();
    cfg.queue_expires = Some(Duration::from_secs(600));
    cfg
}

/// Connects each handle to the same broker; names are unique per run. Dropping it deletes the
/// topic exchanges of the names it made (queues expire by themselves, see [`test_config`]).
pub struct AmqpFactory {
    url: String,
    queue_type: QueueType,
    run: String,
    counter: AtomicU64,
    made: Mutex<Vec<String>>,
}

impl AmqpFactory {
    /// A factory for the broker at `url`.
    pub fn new(url: String) -> Self {
        AmqpFactory {
            url,
            queue_type: QueueType::Classic,
            run: run_id(),
            counter: AtomicU64::new(0),
            made: Mutex::new(Vec::new()),
        }
    }

    /// The same, with subscription queues of type `queue_type`.
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// A transport with the test configuration, adjusted by `configure`.
    pub async fn connect_with(&self, configure: impl FnOnce(&mut AmqpConfig)) -> AmqpTransport {
        let mut cfg = test_config(&self.url);
        cfg.queue_type = self.queue_type;
        configure(&mut cfg);
        AmqpTransport::connect(cfg)
            .await
            .unwrap_or_else(|e| panic!("connect to RabbitMQ: {e}"))
    }
}

#[async_trait::async_trait]
impl TransportFactory for AmqpFactory {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(self.connect_with(|_| {}).await)
    }

    fn unique(&self, base: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{base}-{}-{n}", self.run);
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        name
    }
}

impl Drop for AmqpFactory {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.made.lock().unwrap_or_else(|e| e.into_inner()));
        if names.is_empty() {
            return;
        }
        let url = self.url.clone();
        // On its own thread and runtime: this may run inside (or after) the test's runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let props = lapin::ConnectionProperties::default();
                let Ok(conn) = lapin::Connection::connect(&url, props).await else {
                    return;
                };
                let mut channel = None;
                for name in names {
                    if channel.is_none() {
                        channel = conn.create_channel().await.ok();
                    }
                    let Some(ch) = &channel else { return };
                    let exchange = format!("{TEST_PREFIX}.{name}");
                    let options = lapin::options::ExchangeDeleteOptions::default();
                    if ch
                        .exchange_delete(exchange.as_str().into(), options)
                        .await
                        .is_err()
                    {
                        channel = None;
                    }
                }
                let _ = conn.close(200, "cleanup".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

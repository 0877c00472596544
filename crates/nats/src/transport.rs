//! [`NatsTransport`]: the [`Transport`] implementation and the state its handles share.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, ContextBuilder};
use async_nats::{Client, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use eventyard_core::transport::check_name;
use eventyard_core::{
    Capabilities, OutgoingMessage, Receiver, SubQueue, SubscriptionSpec, Transport, TransportError,
};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::api::Api;
use crate::config::NatsConfig;
use crate::error::{request_error, unavailable};
use crate::receive::NatsReceiver;
use crate::schedule::Pump;
use crate::subjects::Names;
use crate::{connect, publish, topology, trim};

/// Bytes of the server's `max_payload` kept for headers when the body limit is derived from it.
pub(crate) const HEADER_ALLOWANCE: usize = 32 * 1024;
/// Of that allowance, what must stay free at publish for the headers a dead-lettering adds.
pub(crate) const DEAD_LETTER_RESERVE: usize = 16 * 1024;

/// State shared by a transport's handles, receivers, deliveries and scheduler pumps.
pub(crate) struct Shared {
    pub client: Client,
    pub js: jetstream::Context,
    pub api: Api,
    pub cfg: NatsConfig,
    pub names: Names,
    /// Largest body accepted.
    pub max_message_size: usize,
    /// Largest headers + body accepted at publish (leaves room for dead-letter headers).
    pub max_wire_size: usize,
    /// The publish window: one permit per message awaiting its acknowledgement, shared by
    /// every `publish` call of the transport (`cfg.publish_window` permits).
    pub window: Arc<Semaphore>,
    closed: AtomicBool,
    close_tx: watch::Sender<bool>,
    topics: Mutex<HashSet<String>>,
    pumps: Mutex<HashMap<String, Weak<Pump>>>,
    last_trim: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// `Closed` once the transport was closed.
    pub(crate) fn check_open(&self) -> Result<(), TransportError> {
        if self.closed.load(Ordering::Acquire) {
            Err(TransportError::Closed)
        } else {
            Ok(())
        }
    }

    /// True once the transport was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Changes to `true` when the transport closes.
    pub(crate) fn closed_signal(&self) -> watch::Receiver<bool> {
        self.close_tx.subscribe()
    }

    pub(crate) fn topic_known(&self, topic: &str) -> bool {
        lock(&self.topics).contains(topic)
    }

    pub(crate) fn remember_topic(&self, topic: &str) {
        lock(&self.topics).insert(topic.to_owned());
    }

    pub(crate) fn forget_topic(&self, topic: &str) {
        lock(&self.topics).remove(topic);
    }

    /// Tells the subscription's receivers (in every process) to reload its settings.
    pub(crate) async fn notify_change(&self, topic: &str, subscription: &str) {
        let subject = self.names.control_subject(topic, subscription);
        if let Err(e) = self.client.publish(subject, Bytes::new()).await {
            tracing::debug!("nats: change notice for {topic}/{subscription} not sent: {e}");
        }
        let _ = self.client.flush().await;
    }

    /// The scheduler pump of `topic`, started if this transport does not run one yet.
    pub(crate) fn pump(self: &Arc<Self>, topic: &str) -> Arc<Pump> {
        let mut pumps = lock(&self.pumps);
        if let Some(pump) = pumps.get(topic).and_then(Weak::upgrade) {
            return pump;
        }
        pumps.retain(|_, p| p.strong_count() > 0);
        let pump = Arc::new(Pump::start(Arc::clone(self), topic.to_owned()));
        pumps.insert(topic.to_owned(), Arc::downgrade(&pump));
        pump
    }

    /// Trims the topic's streams in the background, unless this transport did within
    /// [`trim::TRIM_INTERVAL`].
    pub(crate) fn maybe_trim(self: &Arc<Self>, topic: &str) {
        {
            let mut last = lock(&self.last_trim);
            let now = Instant::now();
            match last.get(topic) {
                Some(at) if now.duration_since(*at) < trim::TRIM_INTERVAL => return,
                _ => {}
            }
            if last.len() > 10_000 {
                last.retain(|_, at| now.duration_since(*at) < trim::TRIM_INTERVAL);
            }
            last.insert(topic.to_owned(), now);
        }
        let shared = Arc::clone(self);
        let topic = topic.to_owned();
        tokio::spawn(async move { shared.trim_now(&topic).await });
    }

    /// Trims the topic's message and dead-letter streams now.
    pub(crate) async fn trim_now(&self, topic: &str) {
        if self.is_closed() {
            return;
        }
        for stream in [
            self.names.topic_stream(topic),
            self.names.dead_letter_stream(topic),
        ] {
            if let Err(e) = trim::trim_stream(&self.api, &stream).await {
                tracing::debug!("nats: trimming {stream} failed: {e}");
            }
        }
    }

    /// Sends a settlement (`+ACK`, `-NAK ...`) for a delivery; with `confirm_settlement`, waits
    /// for the server to confirm it.
    pub(crate) async fn settle_request(
        &self,
        reply: Subject,
        payload: Bytes,
        what: &str,
    ) -> Result<(), TransportError> {
        if self.cfg.confirm_settlement {
            let request = async_nats::Request::new()
                .payload(payload)
                .timeout(Some(self.cfg.request_timeout));
            match self.client.send_request(reply, request).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    Err(unavailable(format!(
                        "{what}: the consumer is gone (subscription deleted?)"
                    )))
                }
                Err(e) => Err(request_error(&e, what)),
            }
        } else {
            self.client
                .publish(reply, payload)
                .await
                .map_err(|e| unavailable(format!("{what}: {e}")))
        }
    }
}

/// A [`Transport`] over NATS JetStream (server 2.9 or later). Cheap to clone: clones share one
/// connection.
///
/// See the [crate documentation](crate) for how topics, subscriptions, filters, locks,
/// dead-letter sub-queues and scheduled delivery map onto streams and consumers.
#[derive(Clone)]
pub struct NatsTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("servers", &self.shared.cfg.servers)
            .field("prefix", &self.shared.cfg.prefix)
            .finish()
    }
}

impl NatsTransport {
    /// Connects (retrying for `cfg.connect_timeout`, then failing with
    /// [`TransportError::Unavailable`]) and checks that JetStream answers.
    pub async fn connect(cfg: NatsConfig) -> Result<Self, TransportError> {
        cfg.validate()?;
        let client = connect::connect(&cfg).await?;
        let js = ContextBuilder::new()
            .timeout(cfg.request_timeout)
            // Acknowledgements given up on release their permit after this long.
            .ack_timeout(cfg.request_timeout)
            .build(client.clone());
        let api = Api::new(js.clone());
        api.ping().await?;
        let max_payload = client.max_payload();
        let derived = max_payload.saturating_sub(HEADER_ALLOWANCE).max(1);
        let max_message_size = cfg.max_message_size.unwrap_or(derived).min(derived);
        let (close_tx, _) = watch::channel(false);
        Ok(NatsTransport {
            shared: Arc::new(Shared {
                names: Names::new(&cfg.prefix),
                client,
                js,
                api,
                max_message_size,
                max_wire_size: max_payload.saturating_sub(DEAD_LETTER_RESERVE),
                window: Arc::new(Semaphore::new(cfg.publish_window.max(1))),
                cfg,
                closed: AtomicBool::new(false),
                close_tx,
                topics: Mutex::new(HashSet::new()),
                pumps: Mutex::new(HashMap::new()),
                last_trim: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Connects to `nats://host:port[?prefix=...]` (see [`NatsConfig::from_url`]).
    pub async fn connect_url(url: &str) -> Result<Self, TransportError> {
        Self::connect(NatsConfig::from_url(url)?).await
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.shared.cfg
    }

    /// Deletes every stream of `topic` (messages, dead letters, schedule) with all their
    /// subscriptions. Not part of the [`Transport`] contract; for tests and tooling.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), TransportError> {
        self.shared.check_open()?;
        check_name("topic", topic)?;
        let names = &self.shared.names;
        self.shared.forget_topic(topic);
        for stream in [
            names.topic_stream(topic),
            names.dead_letter_stream(topic),
            names.schedule_stream(topic),
        ] {
            self.shared.api.delete_stream(&stream).await?;
        }
        Ok(())
    }

    /// Removes now the messages of `topic` that every subscription is done with (acknowledged,
    /// dead-lettered, or filtered out), in its message and dead-letter streams. The transport
    /// also does this by itself every 30 s while it publishes to or receives from the topic.
    pub async fn trim(&self, topic: &str) -> Result<(), TransportError> {
        self.shared.check_open()?;
        check_name("topic", topic)?;
        let names = &self.shared.names;
        for stream in [names.topic_stream(topic), names.dead_letter_stream(topic)] {
            trim::trim_stream(&self.shared.api, &stream).await?;
        }
        Ok(())
    }

    /// Deletes every stream under this transport's prefix. For tests and tooling: it removes
    /// all topics, subscriptions and messages of the prefix.
    pub async fn delete_all_topics(&self) -> Result<usize, TransportError> {
        self.shared.check_open()?;
        let prefix = self.shared.names.prefix();
        let streams = self.shared.api.stream_names(&format!("{prefix}.>")).await?;
        let ours: Vec<&String> = streams
            .iter()
            .filter(|s| s.starts_with(&format!("{prefix}_")))
            .collect();
        for stream in &ours {
            self.shared.api.delete_stream(stream).await?;
        }
        *lock(&self.shared.topics) = HashSet::new();
        Ok(ours.len())
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::new("nats");
        caps.persistent = true;
        caps.atomic_batch = false;
        caps.release_on_drop = true;
        caps.max_message_size = self.shared.max_message_size;
        caps
    }

    async fn ensure_subscription(&self, spec: &SubscriptionSpec) -> Result<(), TransportError> {
        topology::ensure_subscription(&self.shared, spec).await
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), TransportError> {
        topology::delete_subscription(&self.shared, topic, name).await
    }

    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), TransportError> {
        publish::publish(&self.shared, topic, messages).await?;
        self.shared.maybe_trim(topic);
        Ok(())
    }

    async fn receiver(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Box<dyn Receiver>, TransportError> {
        self.shared.check_open()?;
        check_name("topic", topic)?;
        check_name("subscription", subscription)?;
        let receiver = NatsReceiver::open(&self.shared, topic, subscription, queue).await?;
        Ok(Box::new(receiver))
    }

    async fn close(&self) -> Result<(), TransportError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _ = self.shared.close_tx.send(true);
        let pumps: Vec<Arc<Pump>> = lock(&self.shared.pumps)
            .drain()
            .filter_map(|(_, p)| p.upgrade())
            .collect();
        for pump in pumps {
            pump.stop();
        }
        // Publishes were all confirmed before `publish` returned; flush what settlements and
        // releases are still buffered, then let the connection go.
        let flushed =
            tokio::time::timeout(Duration::from_secs(2), self.shared.client.flush()).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::debug!("nats: flush at close did not complete");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.client.drain()).await;
        Ok(())
    }
}

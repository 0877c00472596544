//! [`AmqpTransport`]: the [`Transport`] implementation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventyard_core::transport::check_name;
use eventyard_core::{
    Capabilities, OutgoingMessage, Receiver, SubQueue, SubscriptionSpec, Transport, TransportError,
};

use crate::acker::AckTracker;
use crate::config::AmqpConfig;
use crate::connection::Manager;
use crate::publish;
use crate::receive::AmqpReceiver;
use crate::settle::RxContext;
use crate::topology::Topology;

/// How long `close` waits for pending acknowledgements to be sent.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// The RabbitMQ transport (see the [crate docs](crate) for the mapping).
///
/// Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct AmqpTransport {
    manager: Arc<Manager>,
    topology: Arc<Topology>,
    tracker: Arc<AckTracker>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("config", &self.manager.config)
            .finish()
    }
}

impl AmqpTransport {
    /// Connects to the broker, retrying for up to [`AmqpConfig::connect_timeout`]. Call it
    /// within a Tokio runtime: the connection, its background tasks and its lapin I/O thread
    /// are tied to that runtime.
    ///
    /// # Errors
    /// `Config` for an invalid configuration; `Unavailable` when the broker cannot be reached
    /// (or refuses the credentials or virtual host) within the timeout.
    pub async fn connect(config: AmqpConfig) -> Result<Self, TransportError> {
        let manager = Manager::connect(config).await?;
        Ok(AmqpTransport {
            topology: Arc::new(Topology::new(manager.clone())),
            manager,
            tracker: Arc::new(AckTracker::default()),
        })
    }

    /// Connects to `amqp://user:pass@host:port/vhost?prefix=…` (see [`AmqpConfig::from_url`]).
    ///
    /// # Errors
    /// As [`AmqpConfig::from_url`] and [`AmqpTransport::connect`].
    pub async fn connect_url(url: &str) -> Result<Self, TransportError> {
        Self::connect(AmqpConfig::from_url(url)?).await
    }

    /// The configuration in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.manager.config
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::new("amqp");
        c.persistent = true;
        c.atomic_batch = false;
        c.release_on_drop = true;
        c.max_message_size = self.manager.config.max_message_size;
        c
    }

    async fn ensure_subscription(&self, spec: &SubscriptionSpec) -> Result<(), TransportError> {
        self.topology.ensure(spec).await
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), TransportError> {
        self.topology.delete(topic, name).await
    }

    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), TransportError> {
        check_name("topic", topic)?;
        self.manager.check_open()?;
        if messages.is_empty() {
            return Ok(());
        }
        let outgoing = publish::prepare(topic, messages, self.manager.config.max_message_size)?;
        publish::send(&self.manager, &outgoing).await
    }

    async fn receiver(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Box<dyn Receiver>, TransportError> {
        check_name("topic", topic)?;
        check_name("subscription", subscription)?;
        self.manager.check_open()?;
        let names = self.topology.names(topic, subscription);
        let dead_letter = queue == SubQueue::DeadLetter;
        let queue_name = if dead_letter { &names.dlq } else { &names.main };
        self.topology
            .check_exists(topic, subscription, queue_name)
            .await?;
        let settings = self.topology.settings(topic, subscription).await?;
        let ctx = Arc::new(RxContext {
            manager: self.manager.clone(),
            tracker: self.tracker.clone(),
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            dead_letter,
            names,
            settings,
        });
        Ok(Box::new(AmqpReceiver::new(ctx)))
    }

    async fn close(&self) -> Result<(), TransportError> {
        if self.manager.is_closed() {
            return Ok(());
        }
        // Refuse new work and wake waiting receivers; let ackers send what is pending; close.
        self.manager.mark_closed();
        self.tracker.drain(CLOSE_FLUSH).await;
        self.manager.close().await;
        Ok(())
    }
}

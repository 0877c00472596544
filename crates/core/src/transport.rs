//! The transport contract: how a broker (embedded SQLite, RabbitMQ, NATS JetStream, Azure
//! Service Bus) carries messages from publishers through topics and filtered subscriptions to
//! consumers. The conformance suite in `eventyard-testkit` tests every sentence below.
//!
//! # Model
//! - A **topic** receives published messages. A **subscription** is a named, durable queue on a
//!   topic with a [`Filter`] over the message [`Properties`]; every message published to the topic
//!   *after* the subscription exists and whose properties match the filter is copied into it.
//!   A message matching no subscription is discarded (as on Azure Service Bus).
//! - Several receivers on one subscription are **competing consumers**: each message is delivered
//!   to one of them at a time.
//! - Delivery is **peek-lock**: a received message is locked for the subscription's
//!   `lock_duration` and must be settled exactly once through its [`Delivery`]:
//!   [`Delivery::ack`] removes it; [`Delivery::abandon`] makes it available again after the given
//!   delay (a scheduled redelivery — the receiver is not blocked meanwhile);
//!   [`Delivery::dead_letter`] moves it to the subscription's dead-letter sub-queue with a reason.
//!   If the lock expires before settlement (consumer crashed or hung), the message becomes
//!   available again. A delivery dropped unsettled is released (available again) where the
//!   transport can do that, otherwise at lock expiry.
//! - Every delivery increments the message's **delivery count** (1 on first delivery). When a
//!   message would be delivered more than `max_delivery_count` times it is moved to the
//!   dead-letter sub-queue with reason [`MAX_DELIVERY_EXCEEDED`] instead.
//! - A message published with `deliver_at` in the future is not delivered before that time
//!   (scheduled delivery).
//! - [`Transport::publish`] returns `Ok` only once the whole batch is durable (committed, confirmed
//!   by the broker); it survives a crash of the process after that. A batch is all-or-nothing
//!   where the transport can do so (see [`Capabilities::atomic_batch`]).
//! - Messages of one subscription are delivered in publish order when there is one consumer and no
//!   redelivery; redeliveries and competing consumers may reorder.
//! - Dead-lettered messages keep their body and properties and gain
//!   `cs-dead-letter-reason`/`-description`/`-source`; they are read through a receiver on
//!   [`SubQueue::DeadLetter`] with the same peek-lock settlement.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::envelope::Envelope;
use crate::filter::{Filter, FilterError};
use crate::properties::Properties;

/// Reason given to messages dead-lettered because they exceeded the subscription's
/// `max_delivery_count`.
pub const MAX_DELIVERY_EXCEEDED: &str = "MaxDeliveryCountExceeded";

/// A message as it travels: the envelope's JSON bytes and its application properties.
/// The body is kept as bytes so that a malformed message can still be dead-lettered intact.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Serialized envelope (or, for a malformed message, whatever bytes arrived).
    pub body: Bytes,
    /// Application properties (`cs-*`), the only thing filters see.
    pub properties: Properties,
}

impl Message {
    /// The message for an envelope: its JSON and its properties.
    pub fn from_envelope(envelope: &Envelope) -> Self {
        Message {
            body: Bytes::from(envelope.to_json()),
            properties: envelope.properties(),
        }
    }

    /// Parses and validates the body as an envelope.
    pub fn envelope(&self) -> Result<Envelope, crate::EnvelopeError> {
        Envelope::from_json(&self.body)
    }
}

/// A message to publish, with an optional scheduled delivery time.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The message.
    pub message: Message,
    /// Not delivered before this time (scheduled delivery). `None`: immediately.
    pub deliver_at: Option<DateTime<Utc>>,
}

impl From<Message> for OutgoingMessage {
    fn from(message: Message) -> Self {
        OutgoingMessage {
            message,
            deliver_at: None,
        }
    }
}

impl From<&Envelope> for OutgoingMessage {
    fn from(e: &Envelope) -> Self {
        Message::from_envelope(e).into()
    }
}

/// Who a subscription serves: consumers of the same platform, or another platform (where
/// governance redaction applies at the boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubscriptionScope {
    /// Consumers inside the producing platform. Default.
    #[default]
    InPlatform,
    /// Consumers in another platform: a boundary crossing.
    CrossPlatform,
}

impl SubscriptionScope {
    /// `in-platform` / `cross-platform`.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionScope::InPlatform => "in-platform",
            SubscriptionScope::CrossPlatform => "cross-platform",
        }
    }
}

/// Declaration of a subscription (and implicitly its topic).
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionSpec {
    /// Topic name (see [`check_name`]).
    pub topic: String,
    /// Subscription name, unique within the topic (see [`check_name`]).
    pub name: String,
    /// Which messages of the topic it receives. Default: all.
    pub filter: Filter,
    /// In-platform or cross-platform. Default: in-platform.
    pub scope: SubscriptionScope,
    /// Deliveries before a message is dead-lettered by the transport. Default 10 (as Service Bus).
    pub max_delivery_count: u32,
    /// How long a received message stays locked. Default 30 s.
    pub lock_duration: Duration,
}

impl SubscriptionSpec {
    /// A subscription with the defaults: all messages, in-platform, 10 deliveries, 30 s lock.
    pub fn new(topic: impl Into<String>, name: impl Into<String>) -> Self {
        SubscriptionSpec {
            topic: topic.into(),
            name: name.into(),
            filter: Filter::all(),
            scope: SubscriptionScope::InPlatform,
            max_delivery_count: 10,
            lock_duration: Duration::from_secs(30),
        }
    }

    /// Sets the filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the scope.
    pub fn scope(mut self, scope: SubscriptionScope) -> Self {
        self.scope = scope;
        self
    }

    /// Sets the maximum delivery count (at least 1).
    pub fn max_delivery_count(mut self, n: u32) -> Self {
        self.max_delivery_count = n.max(1);
        self
    }

    /// Sets the lock duration.
    pub fn lock_duration(mut self, d: Duration) -> Self {
        self.lock_duration = d;
        self
    }

    /// Checks names and numbers.
    pub fn validate(&self) -> Result<(), TransportError> {
        check_name("topic", &self.topic)?;
        check_name("subscription", &self.name)?;
        if self.max_delivery_count == 0 {
            return Err(TransportError::Config(
                "max_delivery_count must be at least 1".into(),
            ));
        }
        if self.lock_duration.is_zero() {
            return Err(TransportError::Config(
                "lock_duration must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Topic and subscription names: 1–200 characters from `[A-Za-z0-9._-]`, not starting with `.`
/// (fits exchange/queue names, NATS tokens and Service Bus entity names).
pub fn check_name(what: &'static str, name: &str) -> Result<(), TransportError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TransportError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

/// The main queue of a subscription or its dead-letter sub-queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubQueue {
    /// Live messages.
    #[default]
    Main,
    /// Dead-lettered messages.
    DeadLetter,
}

/// What a transport can do natively; the conformance suite adapts to it rather than forking.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Short name (`sqlite`, `amqp`, `nats`).
    pub name: &'static str,
    /// Messages survive a restart of the process/broker.
    pub persistent: bool,
    /// A publish batch commits all-or-nothing.
    pub atomic_batch: bool,
    /// A delivery dropped unsettled is released at once (not only at lock expiry).
    pub release_on_drop: bool,
    /// Largest body accepted, in bytes.
    pub max_message_size: usize,
    /// [`Delivery::abandon_with`] really stores the given properties for the next deliveries.
    pub modify_on_abandon: bool,
}

impl Capabilities {
    /// Capabilities named `name` with everything off and a 1 MiB size limit; set the fields
    /// that apply (the struct is `#[non_exhaustive]`, so construct it through this).
    pub fn new(name: &'static str) -> Self {
        Capabilities {
            name,
            persistent: false,
            atomic_batch: false,
            release_on_drop: false,
            max_message_size: 1024 * 1024,
            modify_on_abandon: false,
        }
    }
}

/// Why a delivery is being dead-lettered: a short reason code and the failure context.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterInfo {
    /// Short, stable reason (e.g. `MalformedEnvelope`, `HandlerFailed`, `TenantMismatch`).
    pub reason: String,
    /// Human-readable description: the error message chain.
    pub description: String,
    /// Structured failure context (handler, attempts, first/last failure, host...).
    pub context: serde_json::Value,
}

impl DeadLetterInfo {
    /// A reason and description with no structured context.
    pub fn new(reason: impl Into<String>, description: impl Into<String>) -> Self {
        DeadLetterInfo {
            reason: reason.into(),
            description: description.into(),
            context: serde_json::Value::Null,
        }
    }
}

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Done: remove the message.
    Ack,
    /// Release the lock; deliver again after the delay (zero: at once).
    Abandon {
        /// Delay before redelivery.
        after: Duration,
    },
    /// Move to the dead-letter sub-queue.
    DeadLetter(DeadLetterInfo),
}

/// Transport-specific settlement of one delivery. Implementations consume themselves, so a
/// delivery is settled at most once; `Drop` without settling should release the message where
/// the transport can (see [`Capabilities::release_on_drop`]).
#[async_trait]
pub trait Settle: Send + Sync {
    /// Settles the delivery.
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), TransportError>;

    /// Abandons (redeliver after `after`) and merges `properties` into the message's
    /// properties for its next deliveries, as Service Bus's abandon with "properties to modify".
    /// Transports that cannot change a message in place keep this default, which ignores the
    /// properties (see [`Capabilities::modify_on_abandon`]).
    async fn abandon_with(
        self: Box<Self>,
        after: Duration,
        properties: Properties,
    ) -> Result<(), TransportError> {
        let _ = properties;
        self.settle(Settlement::Abandon { after }).await
    }
}

/// A received message, locked for this consumer until settled or until the lock expires.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// 1 on first delivery, +1 on each redelivery.
    pub delivery_count: u32,
    /// When the message entered the subscription.
    pub enqueued_at: DateTime<Utc>,
    /// Broker sequence number (unique within the subscription).
    pub sequence: u64,
    /// The subscription it was received from.
    pub subscription: String,
    settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subscription", &self.subscription)
            .field("sequence", &self.sequence)
            .field("delivery_count", &self.delivery_count)
            .field("properties", &self.message.properties)
            .finish()
    }
}

impl Delivery {
    /// Assembles a delivery (for transport implementations).
    pub fn new(
        message: Message,
        delivery_count: u32,
        enqueued_at: DateTime<Utc>,
        sequence: u64,
        subscription: String,
        settle: Box<dyn Settle>,
    ) -> Self {
        Delivery {
            message,
            delivery_count,
            enqueued_at,
            sequence,
            subscription,
            settle,
        }
    }

    /// Removes the message: processing is done.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.settle.settle(Settlement::Ack).await
    }

    /// Releases the message for redelivery after `after` (a scheduled redelivery).
    pub async fn abandon(self, after: Duration) -> Result<(), TransportError> {
        self.settle.settle(Settlement::Abandon { after }).await
    }

    /// Releases the message for redelivery after `after`, merging `properties` into its
    /// properties for the next deliveries where the transport can
    /// ([`Capabilities::modify_on_abandon`]); used to carry retry state such as the time of the
    /// first failure.
    pub async fn abandon_with(
        self,
        after: Duration,
        properties: Properties,
    ) -> Result<(), TransportError> {
        self.settle.abandon_with(after, properties).await
    }

    /// Moves the message to the dead-letter sub-queue.
    pub async fn dead_letter(self, info: DeadLetterInfo) -> Result<(), TransportError> {
        self.settle.settle(Settlement::DeadLetter(info)).await
    }

    /// Settles with an explicit [`Settlement`].
    pub async fn settle(self, settlement: Settlement) -> Result<(), TransportError> {
        self.settle.settle(settlement).await
    }
}

/// Receives deliveries from one subscription (or its dead-letter sub-queue).
#[async_trait]
pub trait Receiver: Send {
    /// Waits up to `wait` for at least one available message and returns up to `max` of them,
    /// each locked for the subscription's lock duration. Returns an empty batch on timeout.
    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError>;
}

/// A message broker. Handles are cheap to share (`Arc<dyn Transport>`).
///
/// `Any` is a supertrait so that a component given a `&dyn Transport` can recognise a concrete
/// transport it works with more closely (the embedded outbox recognises the broker of its own
/// data file: see [`OutboxStore::dispatches_into`](crate::outbox::OutboxStore::dispatches_into)).
#[async_trait]
pub trait Transport: std::any::Any + Send + Sync + 'static {
    /// What this transport can do.
    fn capabilities(&self) -> Capabilities;

    /// Declares the topic and the subscription, idempotently. Declaring an existing subscription
    /// again with another filter, lock or delivery count replaces those settings.
    async fn ensure_subscription(&self, spec: &SubscriptionSpec) -> Result<(), TransportError>;

    /// Removes a subscription and its messages (dead-letter sub-queue included).
    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), TransportError>;

    /// Publishes a batch to `topic`; returns once it is durable. Each message is copied to every
    /// subscription of the topic whose filter matches its properties.
    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), TransportError>;

    /// Opens a receiver on a subscription's main queue or dead-letter sub-queue. Fails with
    /// [`TransportError::UnknownSubscription`] if the subscription was never declared.
    async fn receiver(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Box<dyn Receiver>, TransportError>;

    /// Flushes and closes; later calls fail with [`TransportError::Closed`].
    async fn close(&self) -> Result<(), TransportError>;
}

/// Errors of transports. Engine error types never appear here: they are described in text.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The broker or database cannot be reached or refused the connection (transient).
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        /// Which engine.
        backend: &'static str,
        /// What happened.
        message: String,
    },
    /// The data file exists but is not a database of ours (or not a database at all).
    #[error("data file {path} is not usable: {reason}")]
    InvalidDataFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The data file stayed locked by another process beyond the busy timeout (transient).
    #[error("data file {path} is locked by another process (waited {waited_ms} ms)")]
    Locked {
        /// The file.
        path: String,
        /// How long we waited.
        waited_ms: u64,
    },
    /// A topic or subscription name has the wrong form.
    #[error("invalid {what} name `{name}`: use 1-200 of [A-Za-z0-9._-], not starting with `.`")]
    InvalidName {
        /// `topic` or `subscription`.
        what: &'static str,
        /// The rejected name.
        name: String,
    },
    /// The subscription was never declared.
    #[error("unknown subscription `{subscription}` on topic `{topic}`")]
    UnknownSubscription {
        /// Topic.
        topic: String,
        /// Subscription.
        subscription: String,
    },
    /// The delivery's lock expired and the message was delivered again elsewhere.
    #[error("lock lost on message {sequence} of `{subscription}` (lock expired; redelivered)")]
    LockLost {
        /// Subscription.
        subscription: String,
        /// Message sequence.
        sequence: u64,
    },
    /// A message body exceeds the transport's limit.
    #[error("message of {size} bytes exceeds the {max}-byte limit")]
    MessageTooLarge {
        /// Body size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// A stored filter could not be parsed.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// Invalid configuration (URL, option value).
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The transport was closed.
    #[error("transport is closed")]
    Closed,
    /// Any other engine error, described.
    #[error("{backend} error: {message}")]
    Backend {
        /// Which engine.
        backend: &'static str,
        /// The engine's message.
        message: String,
    },
}

impl TransportError {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Unavailable { .. } | TransportError::Locked { .. }
        )
    }

    /// True when the transport refuses the message for good (too large, invalid name): an
    /// outbox relay parks such a record instead of retrying it.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            TransportError::MessageTooLarge { .. } | TransportError::InvalidName { .. }
        )
    }
}

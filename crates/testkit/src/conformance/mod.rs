//! The transport conformance suite: one `pub async fn` per rule of the
//! [`Transport`] contract, each taking a [`TransportFactory`].
//!
//! Every backend runs the same cases with [`transport_conformance!`](crate::transport_conformance),
//! which expands to one `#[tokio::test]` per case:
//!
//! ```ignore
//! // crates/<backend>/tests/conformance.rs — needs `tokio` and `eventyard-testkit` as
//! // dev-dependencies.
//! eventyard_testkit::transport_conformance!(MyFactory::new());
//! ```
//!
//! The suite adapts to [`Capabilities`](eventyard_core::Capabilities) instead of forking:
//! `persistent` (the reconnect case is skipped, with a printed reason, when false),
//! `release_on_drop` (a dropped delivery must come back at once, else after lock expiry),
//! `atomic_batch` (an oversized message fails the whole batch) and `max_message_size`.
//!
//! Timing: lower bounds ("not delivered before") are asserted strictly, up to
//! [`LOWER_BOUND_SLACK`] for timestamp granularity; upper bounds ("delivered promptly") are
//! loose ([`PATIENCE`]), since CI machines are slow. Every case is bounded by [`CASE_TIMEOUT`].
//!
//! # Contract → cases
//!
//! | rule of the contract | case |
//! |---|---|
//! | publish → receive carries body and properties (with their types) intact; delivery count 1 on first delivery | [`publish_receive_round_trip`] |
//! | one consumer, no redelivery: publish order, across a batch and between batches | [`batch_publish_preserves_order`] |
//! | a subscription gets only messages published *after* it exists | [`message_published_before_subscription_is_not_delivered`] |
//! | every matching subscription of a topic gets its own copy | [`each_subscription_gets_a_copy`] |
//! | bodies over `max_message_size` fail with `MessageTooLarge`; a batch is all-or-nothing (`atomic_batch`) | [`message_too_large_is_rejected`] |
//! | `ack` removes the message (not redelivered even after the lock expires) | [`ack_removes_message`] |
//! | `abandon(0)` makes it available at once; the delivery count increments | [`abandon_without_delay_redelivers`] |
//! | `abandon(d)`: not redelivered before `d`, redelivered after | [`abandon_with_delay_redelivers_after_delay`] |
//! | `abandon(d)` is a scheduled redelivery: the receiver is not blocked meanwhile | [`abandon_with_delay_does_not_block_receiver`] |
//! | an unsettled message becomes available again when its lock expires, not before | [`lock_expiry_redelivers`] |
//! | settling after the lock expired and the message was redelivered fails with `LockLost` | [`settle_after_lock_lost_fails`] |
//! | a delivery dropped unsettled is released (at once with `release_on_drop`, else by lock expiry) | [`dropped_delivery_is_released`] |
//! | more than `max_delivery_count` deliveries → dead-letter sub-queue, reason `MaxDeliveryCountExceeded`, body intact | [`max_delivery_count_dead_letters`] |
//! | `dead_letter` moves to the sub-queue with `cs-dead-letter-reason`/`-description`/`-source`; DLQ uses peek-lock too | [`explicit_dead_letter`] |
//! | SQL filters are evaluated over the properties at publish | [`sql_filter`] |
//! | correlation filters likewise | [`correlation_filter`] |
//! | per-tenant subscriptions see only their tenant's messages | [`tenant_isolation`] |
//! | a comparison with an absent property does not match (`=` nor `<>`) | [`absent_property_does_not_match`] |
//! | `ensure_subscription` is idempotent; declaring again with another filter replaces it | [`ensure_subscription_is_idempotent_and_updates_filter`] |
//! | competing consumers: each message goes to one receiver at a time; none lost, none acked twice | [`competing_consumers`] |
//! | `deliver_at` in the future: not delivered before that time, delivered after | [`scheduled_delivery`] |
//! | `receive` returns an empty batch on timeout, within the wait (plus slack) | [`empty_receive_returns_within_wait`] |
//! | a waiting `receive` returns promptly when a message arrives | [`receive_wakes_on_publish`] |
//! | `publish` returns once durable: messages survive a reconnect (`persistent`) | [`persistence_across_reconnect`] |
//! | `receiver` on an undeclared subscription fails with `UnknownSubscription` | [`unknown_subscription`] |
//! | names outside `[A-Za-z0-9._-]{1,200}` (or starting with `.`) fail with `InvalidName` | [`invalid_names`] |
//! | `delete_subscription` removes it and its messages, dead-letter sub-queue included | [`delete_subscription_removes_it`] |
//! | after `close`, calls fail with `Closed`; a waiting receive returns | [`close_rejects_further_calls`] |

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventyard_core::{OutgoingMessage, Receiver, SubQueue, SubscriptionSpec, Transport};

mod filtering;
mod lifecycle;
mod publishing;
mod receiving;
mod settlement;

pub use filtering::{
    absent_property_does_not_match, correlation_filter,
    ensure_subscription_is_idempotent_and_updates_filter, sql_filter, tenant_isolation,
};
pub use lifecycle::{
    close_rejects_further_calls, delete_subscription_removes_it, invalid_names,
    persistence_across_reconnect, unknown_subscription,
};
pub use publishing::{
    batch_publish_preserves_order, each_subscription_gets_a_copy,
    message_published_before_subscription_is_not_delivered, message_too_large_is_rejected,
    publish_receive_round_trip,
};
pub use receiving::{
    competing_consumers, empty_receive_returns_within_wait, receive_wakes_on_publish,
    scheduled_delivery,
};
pub use settlement::{
    abandon_with_delay_does_not_block_receiver, abandon_with_delay_redelivers_after_delay,
    abandon_without_delay_redelivers, ack_removes_message, dropped_delivery_is_released,
    explicit_dead_letter, lock_expiry_redelivers, max_delivery_count_dead_letters,
    settle_after_lock_lost_fails,
};

/// How long something that should happen "promptly" may take before a case fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Tolerance on lower bounds ("not before"), for brokers storing times in milliseconds.
pub const LOWER_BOUND_SLACK: Duration = Duration::from_millis(5);

/// Upper bound on one whole case; a case still running then fails rather than hanging CI.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// Connects the suite to a backend.
///
/// Each call to [`connect`](TransportFactory::connect) opens a new handle onto the *same*
/// underlying storage (file, broker, in-memory store), so that a reconnect sees what was
/// published before. [`unique`](TransportFactory::unique) makes topic and subscription names
/// that no other test (or earlier run against a shared broker) uses.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    /// A new transport handle onto the factory's storage. Panics if it cannot connect.
    async fn connect(&self) -> Arc<dyn Transport>;

    /// A valid topic/subscription name starting with `base`, unique per factory and test run.
    /// `base` is short (at most 24 characters of `[a-z0-9-]`); the result must stay a valid name
    /// (see [`eventyard_core::transport::check_name`]).
    fn unique(&self, base: &str) -> String;
}

#[async_trait]
impl<T: TransportFactory + ?Sized> TransportFactory for Arc<T> {
    async fn connect(&self) -> Arc<dyn Transport> {
        (**self).connect().await
    }

    fn unique(&self, base: &str) -> String {
        (**self).unique(base)
    }
}

#[async_trait]
impl<T: TransportFactory + ?Sized> TransportFactory for Box<T> {
    async fn connect(&self) -> Arc<dyn Transport> {
        (**self).connect().await
    }

    fn unique(&self, base: &str) -> String {
        (**self).unique(base)
    }
}

/// Runs one case under [`CASE_TIMEOUT`] (used by
/// [`transport_conformance!`](crate::transport_conformance)).
///
/// # Panics
/// If the case panics or does not finish in time.
pub async fn run_case<F: Future<Output = ()>>(name: &str, case: F) {
    if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
        panic!("conformance case `{name}` did not finish within {CASE_TIMEOUT:?}");
    }
}

/// A connected transport with one declared subscription on a fresh topic.
pub(crate) struct Fixture {
    pub transport: Arc<dyn Transport>,
    pub spec: SubscriptionSpec,
}

impl Fixture {
    /// Connects and declares a subscription on a unique topic; `configure` adjusts the spec.
    pub async fn new(
        factory: &dyn TransportFactory,
        base: &str,
        configure: impl FnOnce(SubscriptionSpec) -> SubscriptionSpec,
    ) -> Fixture {
        Fixture::on(factory.connect().await, factory, base, configure).await
    }

    /// As [`Fixture::new`], on an already connected transport.
    pub async fn on(
        transport: Arc<dyn Transport>,
        factory: &dyn TransportFactory,
        base: &str,
        configure: impl FnOnce(SubscriptionSpec) -> SubscriptionSpec,
    ) -> Fixture {
        let topic = factory.unique(base);
        let name = factory.unique(&format!("{base}-s"));
        let spec = configure(SubscriptionSpec::new(topic, name));
        transport
            .ensure_subscription(&spec)
            .await
            .unwrap_or_else(|e| panic!("ensure_subscription({spec:?}) failed: {e}"));
        Fixture { transport, spec }
    }

    pub fn topic(&self) -> &str {
        &self.spec.topic
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Declares another subscription on the same topic.
    pub async fn add_subscription(
        &self,
        factory: &dyn TransportFactory,
        base: &str,
        configure: impl FnOnce(SubscriptionSpec) -> SubscriptionSpec,
    ) -> SubscriptionSpec {
        let spec = configure(SubscriptionSpec::new(self.topic(), factory.unique(base)));
        self.transport
            .ensure_subscription(&spec)
            .await
            .unwrap_or_else(|e| panic!("ensure_subscription({spec:?}) failed: {e}"));
        spec
    }

    /// Publishes a batch to the fixture's topic.
    pub async fn publish(&self, messages: Vec<OutgoingMessage>) {
        self.transport
            .publish(self.topic(), messages)
            .await
            .unwrap_or_else(|e| panic!("publish to `{}` failed: {e}", self.topic()));
    }

    /// A receiver on the fixture's subscription (`queue`), or on `name` when given.
    pub async fn receiver_on(&self, name: &str, queue: SubQueue) -> Box<dyn Receiver> {
        self.transport
            .receiver(self.topic(), name, queue)
            .await
            .unwrap_or_else(|e| panic!("receiver({}, {name}, {queue:?}) failed: {e}", self.topic()))
    }

    /// A receiver on the fixture's subscription main queue.
    pub async fn receiver(&self) -> Box<dyn Receiver> {
        self.receiver_on(self.name(), SubQueue::Main).await
    }

    /// A receiver on the fixture's dead-letter sub-queue.
    pub async fn dead_letter_receiver(&self) -> Box<dyn Receiver> {
        self.receiver_on(self.name(), SubQueue::DeadLetter).await
    }
}

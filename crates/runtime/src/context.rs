//! The handler's view of the message being handled, and automatic propagation.
//!
//! While a handler runs, the envelope it handles is the *current* envelope of its task
//! ([`current_envelope`]). Anything published from that task — through [`MessageContext`] or
//! straight through the [`Bus`] — inherits tenantId, traceId and correlationId and gets
//! causationId = the handled eventId, without the handler writing any of it (SPEC §1).

use std::sync::Arc;

use eventyard_core::{Envelope, Event, EventId, IdempotencyKey, TenantId};

use crate::bus::Bus;
use crate::error::BusError;

tokio::task_local! {
    static CURRENT: Arc<Envelope>;
}

/// The envelope being handled by the current task, if any.
pub fn current_envelope() -> Option<Arc<Envelope>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs `fut` with `envelope` as the current envelope.
pub async fn with_current<F: std::future::Future>(envelope: Arc<Envelope>, fut: F) -> F::Output {
    CURRENT.scope(envelope, fut).await
}

/// What a handler knows about the message it handles, and how it publishes follow-ups.
#[derive(Clone)]
pub struct MessageContext {
    envelope: Arc<Envelope>,
    delivery_count: u32,
    subscription: Arc<str>,
    handler_name: Arc<str>,
    replayed: bool,
    bus: Bus,
}

impl std::fmt::Debug for MessageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageContext")
            .field("event_id", &self.envelope.event_id)
            .field("subscription", &self.subscription)
            .field("delivery_count", &self.delivery_count)
            .finish()
    }
}

impl MessageContext {
    pub(crate) fn new(
        envelope: Arc<Envelope>,
        delivery_count: u32,
        subscription: Arc<str>,
        handler_name: Arc<str>,
        replayed: bool,
        bus: Bus,
    ) -> Self {
        MessageContext {
            envelope,
            delivery_count,
            subscription,
            handler_name,
            replayed,
            bus,
        }
    }

    /// True when the message was re-driven from a dead-letter queue or archive (it carries the
    /// `cs-replayed` property). Replays go through the same guard and inbox as any delivery.
    pub fn is_replay(&self) -> bool {
        self.replayed
    }

    /// The handler's name (the subscription name unless set with
    /// [`SubscriptionBuilder::handler_name`](crate::SubscriptionBuilder::handler_name)).
    pub fn handler_name(&self) -> &str {
        &self.handler_name
    }

    /// The idempotency key of this event for this handler and the aggregate it changes (SPEC §3):
    /// `sha256(eventId ":" handlerName ":" targetAggregateId)`. A redelivery, a duplicate
    /// publish or a replay of the same event gets the same key.
    pub fn idempotency_key(&self, target_aggregate_id: &str) -> IdempotencyKey {
        IdempotencyKey::new(
            &self.envelope.event_id,
            &self.handler_name,
            target_aggregate_id,
        )
    }

    /// The full envelope being handled.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Its tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.envelope.tenant_id
    }

    /// 1 on the first delivery, higher on redeliveries.
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// The subscription it came from.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Publishes a follow-up event caused by this one (same tenant, trace and correlation;
    /// causationId = this eventId).
    pub async fn publish<E: Event>(&self, event: &E) -> Result<EventId, BusError> {
        let mut env = Envelope::for_event(event, self.envelope.tenant_id.clone())?;
        env.inherit_from(&self.envelope);
        self.bus.publish_envelope(env).await
    }
}

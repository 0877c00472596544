//! Peek-lock settlement emulated over AMQP acknowledgements.
//!
//! A received message stays unacknowledged on its receiver's channel while it is "locked".
//! Each delivery has a lock (a slot in its receiver's lock timer, see `locks`, expiring after
//! the subscription's lock duration); a delivery's state moves once from *pending* to
//! *settled*, *expired* or *released*, so either the application or the timer wins:
//!
//! - `ack` queues a `basic.ack` (batched by the channel's [`Acker`](crate::acker::Acker));
//! - `abandon(0)`, lock expiry and a dropped delivery republish a copy to the subscription's
//!   queue with the delivery count so far in a header (publisher-confirmed), then ack the
//!   original. (A `basic.nack(requeue)` cannot carry the count.) Once the count reaches
//!   `max_delivery_count` the copy goes to the dead-letter queue instead, with
//!   `MaxDeliveryCountExceeded`;
//! - `abandon(after)` republishes the copy through a delay queue;
//! - `dead_letter` republishes to the dead-letter queue with the `cs-dead-letter-*` properties
//!   and the context (JSON, header `x-eventyard-dead-letter-context`);
//! - settling after the lock expired (or after the channel closed, which makes the broker
//!   requeue the message) fails with `LockLost`.
//!
//! Republish-then-ack is not atomic: a crash in between leaves two copies (at-least-once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use eventyard_core::properties::names;
use eventyard_core::transport::MAX_DELIVERY_EXCEEDED;
use eventyard_core::{DeadLetterInfo, Properties, Settle, Settlement, TransportError};
use lapin::{BasicProperties, Channel};

use crate::acker::{AckTracker, Acker};
use crate::connection::Manager;
use crate::delay;
use crate::headers::{self, Meta};
use crate::locks::Slot;
use crate::names::SubscriptionNames;
use crate::publish::{self, Outgoing, Target};
use crate::topology::SharedSettings;

const PENDING: u8 = 0;
const SETTLING: u8 = 1;
const SETTLED: u8 = 2;
const EXPIRED: u8 = 3;
const RELEASED: u8 = 4;

/// A receiver's channel and its acker; closed (after pending acks are sent) when the receiver
/// and all its deliveries are gone.
pub(crate) struct RxChannel {
    /// The channel.
    pub channel: Channel,
    /// Its acker.
    pub acker: Arc<Acker>,
}

impl RxChannel {
    /// True while the channel is open (its unacknowledged deliveries are still ours).
    pub(crate) fn alive(&self) -> bool {
        self.channel.status().connected()
    }
}

impl Drop for RxChannel {
    fn drop(&mut self) {
        self.acker.shutdown();
    }
}

/// What a receiver receives from.
pub(crate) struct RxContext {
    /// The connection manager.
    pub manager: Arc<Manager>,
    /// Acker tasks and background jobs of the transport.
    pub tracker: Arc<AckTracker>,
    /// Topic name.
    pub topic: String,
    /// Subscription name.
    pub subscription: String,
    /// True for the dead-letter sub-queue.
    pub dead_letter: bool,
    /// Queue names.
    pub names: SubscriptionNames,
    /// The subscription's current settings.
    pub settings: SharedSettings,
}

impl RxContext {
    /// The queue received from.
    pub(crate) fn own_queue(&self) -> &str {
        if self.dead_letter {
            &self.names.dlq
        } else {
            &self.names.main
        }
    }

    /// `max_delivery_count` (unlimited in the dead-letter sub-queue).
    pub(crate) fn max_deliveries(&self) -> u32 {
        if self.dead_letter {
            u32::MAX
        } else {
            self.settings
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .max_delivery_count
        }
    }
}

/// A received message, as needed to republish it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// Body.
    pub body: Bytes,
    /// AMQP properties as received (message id, content type... kept on copies).
    pub amqp: BasicProperties,
    /// Bookkeeping as received.
    pub meta: Meta,
}

impl Held {
    /// The application properties (decoded again from the headers: only needed to republish).
    fn props(&self) -> Properties {
        headers::decode(self.amqp.headers().as_ref()).0
    }

    /// When the message first entered the subscription, ms since the epoch.
    pub(crate) fn enqueued_at_ms(&self) -> i64 {
        self.meta
            .enqueued_at_ms
            .or_else(|| {
                self.amqp
                    .timestamp()
                    .and_then(|s| i64::try_from(s).ok())
                    .map(|s| s.saturating_mul(1000))
            })
            .unwrap_or_else(headers::now_ms)
    }

    fn copy(
        &self,
        target: Target,
        props: &Properties,
        meta: &Meta,
    ) -> Result<Outgoing, TransportError> {
        let base = self.amqp.clone().with_delivery_mode(2);
        Outgoing::new(target, self.body.clone(), base, props, meta)
    }

    /// A copy for the subscription's queue after `deliveries` deliveries, after `delay` (a
    /// copy that has had its deliveries goes to the dead-letter queue instead).
    pub(crate) fn retry(
        &self,
        ctx: &RxContext,
        deliveries: u32,
        delay: Option<Duration>,
    ) -> Result<Outgoing, TransportError> {
        let max = ctx.max_deliveries();
        if deliveries >= max {
            let info = DeadLetterInfo::new(
                MAX_DELIVERY_EXCEEDED,
                format!(
                    "delivered {deliveries} times without being completed \
                     (max_delivery_count = {max})"
                ),
            );
            return self.dead_letter(ctx, &info);
        }
        let mut meta = Meta {
            deliveries,
            enqueued_at_ms: Some(self.enqueued_at_ms()),
            dead_letter_context: self.meta.dead_letter_context.clone(),
            ..Meta::default()
        };
        if let Some(d) = delay.filter(|d| !d.is_zero()) {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            meta.not_before_ms =
                Some(headers::now_ms().saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)));
            meta.delay_ms = Some(delay::bucket(ms));
        }
        self.copy(
            Target::Queue(ctx.own_queue().to_owned()),
            &self.props(),
            &meta,
        )
    }

    /// A copy for the subscription's queue delayed until `not_before_ms` (a message that
    /// arrived early from a delay queue); the delivery count is unchanged.
    pub(crate) fn redelay(
        &self,
        ctx: &RxContext,
        not_before_ms: i64,
    ) -> Result<Outgoing, TransportError> {
        let wait = delay::remaining_ms(not_before_ms, headers::now_ms()).max(1);
        let meta = Meta {
            not_before_ms: Some(not_before_ms),
            delay_ms: Some(delay::bucket(wait)),
            ..self.meta.clone()
        };
        self.copy(
            Target::Queue(ctx.own_queue().to_owned()),
            &self.props(),
            &meta,
        )
    }

    /// A copy for the dead-letter queue.
    pub(crate) fn dead_letter(
        &self,
        ctx: &RxContext,
        info: &DeadLetterInfo,
    ) -> Result<Outgoing, TransportError> {
        let mut props = self.props();
        props.insert(names::DEAD_LETTER_REASON, info.reason.as_str());
        props.insert(names::DEAD_LETTER_DESCRIPTION, info.description.as_str());
        props.insert(names::DEAD_LETTER_SOURCE, ctx.subscription.as_str());
        let meta = Meta {
            enqueued_at_ms: Some(self.enqueued_at_ms()),
            dead_letter_context: if info.context.is_null() {
                self.meta.dead_letter_context.clone()
            } else {
                Some(info.context.to_string())
            },
            ..Meta::default()
        };
        self.copy(Target::Queue(ctx.names.dlq.clone()), &props, &meta)
    }
}

/// One delivery handed to the application.
pub(crate) struct Inflight {
    state: AtomicU8,
    tag: u64,
    sequence: u64,
    count: u32,
    held: Held,
    ctx: Arc<RxContext>,
    rx: Arc<RxChannel>,
}

impl Inflight {
    /// A delivery handed out now, pending.
    pub(crate) fn new(
        held: Held,
        tag: u64,
        sequence: u64,
        count: u32,
        ctx: Arc<RxContext>,
        rx: Arc<RxChannel>,
    ) -> Arc<Self> {
        Arc::new(Inflight {
            state: AtomicU8::new(PENDING),
            tag,
            sequence,
            count,
            held,
            ctx,
            rx,
        })
    }

    /// The lock expired: unless the delivery was settled meanwhile (or a settlement under way
    /// succeeds), it is released.
    pub(crate) async fn expire(&self) {
        loop {
            match self
                .state
                .compare_exchange(PENDING, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return self.release().await,
                // A settlement is under way: see how it ends.
                Err(SETTLING) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => return,
            }
        }
    }

    fn lock_lost(&self) -> TransportError {
        TransportError::LockLost {
            subscription: self.ctx.subscription.clone(),
            sequence: self.sequence,
        }
    }

    /// Republishes a copy counting this delivery and acks the original, retrying a few times.
    async fn release(&self) {
        let _job = self.ctx.tracker.job();
        for attempt in 0..3 {
            if self.ctx.manager.is_closed() || !self.rx.alive() {
                return; // the broker requeues it with the channel
            }
            let result = match self.held.retry(&self.ctx, self.count, None) {
                Ok(copy) => publish::send_internal(&self.ctx.manager, &[copy]).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.rx.acker.ack(self.tag);
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e, attempt, subscription = %self.ctx.subscription,
                        "could not release a message"
                    );
                    if self.ctx.manager.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// The [`Settle`] of an AMQP delivery.
pub(crate) struct AmqpSettle {
    inflight: Arc<Inflight>,
    /// Its lock in the receiver's lock timer.
    slot: Arc<Slot>,
}

impl AmqpSettle {
    /// The settlement handle of a delivery whose lock is `slot`.
    pub(crate) fn new(inflight: Arc<Inflight>, slot: Arc<Slot>) -> Self {
        AmqpSettle { inflight, slot }
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn settle(mut self: Box<Self>, settlement: Settlement) -> Result<(), TransportError> {
        let f = self.inflight.clone();
        f.ctx.manager.check_open()?;
        if f.state
            .compare_exchange(PENDING, SETTLING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(f.lock_lost());
        }
        if !f.rx.alive() {
            f.state.store(EXPIRED, Ordering::Release);
            return Err(f.lock_lost());
        }
        let copy = match &settlement {
            Settlement::Ack => Ok(None),
            Settlement::Abandon { after } => f.held.retry(&f.ctx, f.count, Some(*after)).map(Some),
            Settlement::DeadLetter(info) => f.held.dead_letter(&f.ctx, info).map(Some),
        };
        let result = match copy {
            // Boxed on its own: the publish is a large future, and most settlements (acks)
            // never reach it, so it should not size (and make costly to allocate) every one.
            Ok(Some(copy)) => {
                let manager = f.ctx.manager.clone();
                Box::pin(async move { publish::send(&manager, &[copy]).await }).await
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                f.state.store(SETTLED, Ordering::Release);
                self.slot.clear();
                f.rx.acker.ack(f.tag);
                Ok(())
            }
            Err(e) => {
                // Still locked: released when this handle drops (right after returning).
                f.state.store(PENDING, Ordering::Release);
                Err(if f.ctx.manager.is_closed() {
                    TransportError::Closed
                } else {
                    e
                })
            }
        }
    }
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        let f = &self.inflight;
        match f
            .state
            .compare_exchange(PENDING, RELEASED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    self.slot.clear();
                    let (f, job) = (f.clone(), f.ctx.tracker.job());
                    handle.spawn(async move {
                        f.release().await;
                        drop(job);
                    });
                }
                // No runtime to release it now: the lock timer will.
                Err(_) => f.state.store(PENDING, Ordering::Release),
            },
            // A settlement future dropped half-way: leave it to the lock timer.
            Err(SETTLING) => f.state.store(PENDING, Ordering::Release),
            // Settled (slot already cleared) or expired (the timer is releasing it).
            Err(_) => {}
        }
    }
}

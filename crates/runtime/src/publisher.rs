//! [`Publisher`]: pipelined publishing. The next batch goes out while earlier ones still await
//! their confirmations, so one caller keeps the transport's window full — the bus's counterpart
//! of a raw client's asynchronous publish (async-nats `send_publish`, lapin confirms).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use eventyard_core::{Envelope, OutgoingMessage, Transport};
use tokio::sync::{Semaphore, oneshot};

use crate::bus::Bus;
use crate::error::BusError;

/// Envelopes of one batch routed to one topic, as transport messages.
pub(crate) struct Routed {
    /// The topic.
    pub topic: String,
    /// Its messages, in the batch's order.
    pub messages: Vec<OutgoingMessage>,
}

/// Publishes routed batches one topic after the other; returns once all are stored, or with
/// the first failure (later topics are then not published).
pub(crate) async fn publish_routed(
    transport: &Arc<dyn Transport>,
    batches: Vec<Routed>,
) -> Result<(), BusError> {
    for Routed { topic, messages } in batches {
        transport.publish(&topic, messages).await?;
    }
    Ok(())
}

/// A pipelined publisher, made by [`Bus::publisher`]: [`Publisher::send`] validates and routes
/// a batch, starts publishing it and returns a [`PublishReceipt`] as soon as it is on its way;
/// the receipt resolves once the transport confirmed every message of the batch (or with the
/// failure). At most `max_in_flight` batches are on their way at once: `send` waits for a free
/// slot first. Messages in flight are further bounded by the transport's own window (NATS
/// `publish_window`, RabbitMQ `confirm_window`), shared with every other publisher.
///
/// Outcomes are never lost silently: a failed batch's error goes to its receipt, and if the
/// receipt was dropped, it is logged (`tracing` warning). A failed batch may have been stored in
/// part; publish it again to be sure (brokers drop a republished event id within their
/// duplicate window, and consumers with an inbox skip it anyway).
///
/// **Order.** With `max_in_flight` = 1 batches are stored in the order they were sent (each
/// waits for the one before), as with sequential [`Bus::publish_batch`] calls. With more, batches
/// on their way together may interleave; within a batch, order per topic is kept.
///
/// Causation and tenant propagation apply at `send`, in the caller's context (inside a
/// handler, the batch inherits from the handled event), exactly as for [`Bus::publish_batch`].
///
/// ```no_run
/// # async fn demo(bus: eventyard_runtime::Bus, batches: Vec<Vec<eventyard_core::Envelope>>) -> Result<(), eventyard_runtime::BusError> {
/// use std::collections::VecDeque;
/// let publisher = bus.publisher(4);
/// let mut receipts = VecDeque::new();
/// for batch in batches {
///     receipts.push_back(publisher.send(batch).await?);
///     // Check outcomes as they come, not only at the end.
///     while receipts.len() > 4 {
///         receipts.pop_front().expect("not empty").await?;
///     }
/// }
/// for receipt in receipts {
///     receipt.await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    bus: Bus,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("max_in_flight", &self.max_in_flight)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Publisher {
    /// A publisher on `bus` with up to `max_in_flight` batches (at least 1) on their way.
    pub(crate) fn new(bus: Bus, max_in_flight: usize) -> Self {
        let most = Semaphore::MAX_PERMITS.min(u32::MAX as usize);
        let max_in_flight = max_in_flight.clamp(1, most);
        Publisher {
            bus,
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// Validates and routes `envelopes` (an invalid envelope fails the call and nothing of the
    /// batch is sent), waits for a free slot, and starts publishing the batch in a task of its
    /// own. Must be called within a Tokio runtime. Cancelling the call before it returns sends
    /// nothing.
    pub async fn send(&self, envelopes: Vec<Envelope>) -> Result<PublishReceipt, BusError> {
        let len = envelopes.len();
        let batches = self.bus.route_batch(envelopes)?;
        // The semaphore is never closed.
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| BusError::PublishAborted)?;
        let (outcome, receipt) = oneshot::channel();
        let transport = Arc::clone(self.bus.transport());
        tokio::spawn(async move {
            let result = publish_routed(&transport, batches).await;
            drop(slot);
            if let Err(Err(e)) = outcome.send(result) {
                tracing::warn!(
                    messages = len,
                    "a pipelined batch failed and nobody awaits its receipt: {e}"
                );
            }
        });
        Ok(PublishReceipt { receipt, len })
    }

    /// Batches on their way now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.slots.available_permits().min(self.max_in_flight)
    }

    /// The most batches on their way at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Waits until no batch of this publisher (or its clones) is on its way.
    pub async fn idle(&self) {
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        // Never closed; the permits go back when the guard drops.
        let _all = self.slots.acquire_many(all).await;
    }
}

/// The outcome of one batch sent through a [`Publisher`]: a future that resolves once the
/// transport stored (confirmed) every message of the batch, or with the failure. Dropping it
/// does not stop the publish; a failure is then logged.
#[must_use = "a receipt is how a failed publish is reported; await it"]
#[derive(Debug)]
pub struct PublishReceipt {
    receipt: oneshot::Receiver<Result<(), BusError>>,
    len: usize,
}

impl PublishReceipt {
    /// Envelopes in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Future for PublishReceipt {
    type Output = Result<(), BusError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receipt)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(BusError::PublishAborted)))
    }
}

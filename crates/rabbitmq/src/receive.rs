//! Receiving: one channel per receiver, a consumer only while `receive` runs.
//!
//! Each `receive(max, wait)` sets the channel's prefetch to `max`, starts a consumer
//! (`basic.consume`), waits for the first delivery (or the end of the wait, or `close`), cancels
//! the consumer and collects what the broker pushed before the cancel-ok (RabbitMQ's classic
//! queues send the cancel-ok after every delivery to that consumer, and the prefetch bounds them
//! by `max`). So a receiver never holds messages its application did not ask for: competing
//! receivers only get messages while they wait for them, and a message released by one receiver
//! goes to whichever receiver asks next.
//!
//! Before handing a message out the receiver completes what the broker cannot do:
//! - a message that arrived from a delay queue before its `not-before` time is delayed again;
//! - a message the broker *redelivers* (its channel closed while it was unsettled: crash,
//!   connection loss) is counted — a copy with the delivery count incremented is republished and
//!   the original acked — since a plain requeue cannot carry the count;
//! - a message beyond `max_delivery_count` is dead-lettered with `MaxDeliveryCountExceeded`;
//! - a message not matching a client-side filter is acked and dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use eventyard_core::transport::MAX_DELIVERY_EXCEEDED;
use eventyard_core::{DeadLetterInfo, Delivery, Message, Receiver, TransportError};
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Consumer, message};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::acker::Acker;
use crate::connection::{
    Manager, OpError, is_connection_error, is_not_found, lock, map_err, with_retry,
};
use crate::headers::{self, Meta};
use crate::publish::{self, Outgoing, Target};
use crate::settle::{AmqpSettle, Held, RxChannel, RxContext};

/// Process-wide receiver ids: they make sequence numbers and consumer tags unique.
static RECEIVER_IDS: AtomicU64 = AtomicU64::new(1);

/// How long to wait for a cancel-ok's trailing deliveries (a safety bound; normally instant).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A receiver on a subscription's main or dead-letter queue.
pub(crate) struct AmqpReceiver {
    ctx: Arc<RxContext>,
    closed: watch::Receiver<bool>,
    id: u64,
    next_sequence: u64,
    next_consumer: u64,
    rx: Option<Arc<RxChannel>>,
    prefetch: u16,
    /// The consumer of this `receive`, or of one that was interrupted (its future dropped).
    active: Option<(Consumer, String)>,
    /// Where a consumer being started is put once the broker confirmed it (the start runs as
    /// a task, so a dropped `receive` cannot lose a consumer the broker already feeds).
    starting: Arc<Mutex<Option<(Consumer, String)>>>,
    /// Received from the broker, not yet handed out.
    raw: VecDeque<message::Delivery>,
}

enum Pulled {
    Ok,
    Closed,
}

impl AmqpReceiver {
    pub(crate) fn new(ctx: Arc<RxContext>) -> Self {
        let closed = ctx.manager.closed_signal();
        AmqpReceiver {
            ctx,
            closed,
            id: RECEIVER_IDS.fetch_add(1, Ordering::Relaxed),
            next_sequence: 1,
            next_consumer: 1,
            rx: None,
            prefetch: 0,
            active: None,
            starting: Arc::new(Mutex::new(None)),
            raw: VecDeque::new(),
        }
    }

    /// Forgets the channel and what was received on it (after it closed: the broker requeued
    /// its unacknowledged messages).
    fn reset(&mut self) {
        self.rx = None;
        self.active = None;
        lock(&self.starting).take();
        self.raw.clear();
        self.prefetch = 0;
    }

    async fn channel(&mut self) -> Result<Arc<RxChannel>, TransportError> {
        if let Some(rx) = &self.rx
            && rx.alive()
        {
            return Ok(rx.clone());
        }
        self.reset();
        let channel = with_retry(&self.ctx.manager, |live| async move {
            live.channel().await.map_err(OpError::from)
        })
        .await?;
        let acker = Acker::start(channel.clone(), self.ctx.tracker.clone());
        let rx = Arc::new(RxChannel { channel, acker });
        self.rx = Some(rx.clone());
        Ok(rx)
    }

    /// Starts a consumer, waits for a first delivery (or the deadline, or close), then cancels
    /// it and collects everything delivered to it.
    ///
    /// (The cancel cannot go out right behind the consume to save the wait: the broker's
    /// channel registers a consumer only when its queue confirmed it, and answers a cancel of a
    /// consumer it does not know yet with a cancel-ok — leaving the consumer running, its
    /// deliveries unread and locked.)
    async fn pull(
        &mut self,
        rx: &RxChannel,
        max: usize,
        deadline: Instant,
    ) -> Result<Pulled, lapin::Error> {
        let prefetch = u16::try_from(max).unwrap_or(u16::MAX);
        // A new prefetch goes out in the same write as the consume (lapin matches the replies),
        // so a changed `max` costs no extra round trip; it applies to consumers started after it.
        let qos = (self.prefetch != prefetch).then_some(prefetch);
        self.prefetch = 0; // unknown until the qos-ok is in
        let tag = format!("eventyard-{}-{}", self.id, self.next_consumer);
        self.next_consumer += 1;
        let (channel, queue, slot) = (
            rx.channel.clone(),
            self.ctx.own_queue().to_owned(),
            self.starting.clone(),
        );
        let starting = tokio::spawn(async move {
            let set_qos = async {
                match qos {
                    Some(n) => {
                        channel
                            .basic_qos(n, BasicQosOptions { global: false })
                            .await
                    }
                    None => Ok(()),
                }
            };
            let consume = channel.basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            );
            let (qos_set, consumer) = tokio::join!(set_qos, consume);
            let consumer = consumer?;
            *lock(&slot) = Some((consumer, tag));
            qos_set
        });
        match starting.await {
            Ok(result) => result?,
            Err(e) => return Err(std::io::Error::other(format!("consumer start: {e}")).into()),
        }
        self.prefetch = prefetch;
        let Some(started) = lock(&self.starting).take() else {
            return Ok(Pulled::Ok);
        };
        let (consumer, _) = self.active.insert(started);
        let first = tokio::select! {
            biased;
            _ = self.closed.wait_for(|closed| *closed) => return Ok(Pulled::Closed),
            item = consumer.next() => Some(item),
            () = tokio::time::sleep_until(deadline) => None,
        };
        match first {
            Some(Some(Ok(d))) => {
                rx.acker.track(d.delivery_tag);
                self.raw.push_back(d);
            }
            Some(Some(Err(e))) => return Err(e),
            Some(None) => {
                // Cancelled by the broker (queue deleted): the next consume reports it.
                self.active = None;
                return Ok(Pulled::Ok);
            }
            None => {}
        }
        self.finish_consumer(rx).await?;
        Ok(Pulled::Ok)
    }

    /// Cancels the active consumer and collects its remaining deliveries.
    async fn finish_consumer(&mut self, rx: &RxChannel) -> Result<(), lapin::Error> {
        let Some((_, tag)) = &self.active else {
            return Ok(());
        };
        rx.channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        while let Some((consumer, _)) = self.active.as_mut() {
            match tokio::time::timeout(DRAIN_TIMEOUT, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    rx.acker.track(d.delivery_tag);
                    self.raw.push_back(d);
                }
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) | Err(_) => self.active = None,
            }
        }
        Ok(())
    }

    /// Turns up to `max` received messages into deliveries, handling the special cases.
    fn process(&mut self, rx: &Arc<RxChannel>, max: usize) -> Vec<Delivery> {
        let ctx = &self.ctx;
        let settings = ctx
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = headers::now_ms();
        let mut out = Vec::new();
        let mut jobs: Vec<(u64, Outgoing)> = Vec::new();
        while out.len() < max {
            let Some(d) = self.raw.pop_front() else { break };
            let tag = d.delivery_tag;
            let (props, meta) = headers::decode(d.properties.headers().as_ref());
            let held = Held {
                body: Bytes::from(d.data),
                amqp: d.properties,
                meta,
            };
            let count = held.meta.deliveries.saturating_add(1);
            let special = if let Some(nb) = held.meta.not_before_ms.filter(|nb| *nb > now) {
                Some(held.redelay(ctx, nb))
            } else if d.redelivered {
                Some(held.retry(ctx, count, None))
            } else if !ctx.dead_letter && count > settings.max_delivery_count {
                let info = DeadLetterInfo::new(
                    MAX_DELIVERY_EXCEEDED,
                    format!(
                        "delivered {} times without being completed (max_delivery_count = {})",
                        count - 1,
                        settings.max_delivery_count
                    ),
                );
                Some(held.dead_letter(ctx, &info))
            } else {
                None
            };
            match special {
                Some(Ok(copy)) => {
                    jobs.push((tag, copy));
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot republish a message; delivering it as is")
                }
                None => {}
            }
            if !ctx.dead_letter && settings.client_side && !settings.filter.matches(&props) {
                rx.acker.ack(tag); // not for this subscription
                continue;
            }
            let sequence = (self.id << 40) | self.next_sequence;
            self.next_sequence += 1;
            let message = Message {
                body: held.body.clone(),
                properties: props,
            };
            let enqueued_at = headers::time_of(held.enqueued_at_ms());
            let settle = AmqpSettle::start(
                held,
                tag,
                sequence,
                count,
                settings.lock(),
                ctx.clone(),
                rx.clone(),
            );
            out.push(Delivery::new(
                message,
                count,
                enqueued_at,
                sequence,
                ctx.subscription.clone(),
                Box::new(settle),
            ));
        }
        if !jobs.is_empty() {
            let (manager, rx, job) = (ctx.manager.clone(), rx.clone(), self.ctx.tracker.job());
            tokio::spawn(async move {
                republish_then_ack(&manager, &rx, jobs).await;
                drop(job);
            });
        }
        out
    }
}

/// Publishes the copies (confirmed), then acks the originals; if publishing fails, gives the
/// originals back to the queue. Runs as its own task, so that a dropped `receive` cannot leave
/// it half done.
async fn republish_then_ack(manager: &Arc<Manager>, rx: &RxChannel, jobs: Vec<(u64, Outgoing)>) {
    let copies: Vec<Outgoing> = jobs.iter().map(|(_, c)| c.clone()).collect();
    match publish::send_internal(manager, &copies).await {
        Ok(()) => jobs.iter().for_each(|(tag, _)| rx.acker.ack(*tag)),
        Err(e) => {
            tracing::warn!(error = %e, "republishing failed; returning the messages to the queue");
            for (tag, _) in &jobs {
                rx.acker.forget(*tag);
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                let _ = rx.channel.basic_nack(*tag, requeue).await;
            }
        }
    }
}

#[async_trait]
impl Receiver for AmqpReceiver {
    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        self.ctx.manager.check_open()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            let rx = self.channel().await?;
            if self.active.is_none() {
                self.active = lock(&self.starting).take();
            }
            let pulled = if self.active.is_some() {
                self.finish_consumer(&rx).await.map(|()| Pulled::Ok)
            } else if self.raw.is_empty() {
                self.pull(&rx, max, deadline).await
            } else {
                Ok(Pulled::Ok)
            };
            match pulled {
                Ok(Pulled::Ok) => {}
                Ok(Pulled::Closed) => return Ok(Vec::new()),
                Err(e) => {
                    self.ctx.manager.check_open()?;
                    if is_not_found(&e) {
                        self.reset();
                        return Err(TransportError::UnknownSubscription {
                            topic: self.ctx.topic.clone(),
                            subscription: self.ctx.subscription.clone(),
                        });
                    }
                    if is_connection_error(&e) || !rx.alive() {
                        tracing::warn!(error = %e, "receiver channel lost; reopening");
                        self.reset();
                        continue;
                    }
                    return Err(map_err(&e));
                }
            }
            let out = self.process(&rx, max);
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
        }
    }
}

impl Drop for AmqpReceiver {
    fn drop(&mut self) {
        // Messages received but never handed out go back unchanged (not counted).
        let (Some(rx), Ok(handle)) = (self.rx.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        if self.active.is_none() {
            self.active = lock(&self.starting).take();
        }
        if self.active.is_none() && self.raw.is_empty() {
            return;
        }
        let mut leftover = AmqpReceiver {
            ctx: self.ctx.clone(),
            closed: self.closed.clone(),
            id: self.id,
            next_sequence: self.next_sequence,
            next_consumer: self.next_consumer,
            rx: None,
            prefetch: self.prefetch,
            active: self.active.take(),
            starting: Arc::new(Mutex::new(None)),
            raw: std::mem::take(&mut self.raw),
        };
        let job = self.ctx.tracker.job();
        handle.spawn(async move {
            let _job = job;
            if leftover.finish_consumer(&rx).await.is_err() || !rx.alive() {
                return;
            }
            let raw: Vec<message::Delivery> = leftover.raw.drain(..).collect();
            let mut copies = Vec::new();
            for d in raw {
                let (props, meta) = headers::decode(d.properties.headers().as_ref());
                let meta = Meta {
                    delay_ms: None,
                    ..meta
                };
                let target = Target::Queue(leftover.ctx.own_queue().to_owned());
                if let Ok(copy) =
                    Outgoing::new(target, Bytes::from(d.data), d.properties, &props, &meta)
                {
                    copies.push((d.delivery_tag, copy));
                }
            }
            republish_then_ack(&leftover.ctx.manager, &rx, copies).await;
        });
    }
}

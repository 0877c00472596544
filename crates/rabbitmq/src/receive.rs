//! Receiving: one channel per receiver, a standing consumer while `receive` calls keep coming
//! (see `standing`).
//!
//! `receive(max, wait)` hands out what the consumer's buffer holds (up to `max`), else waits
//! for the broker's next push, up to `wait`. The consumer's prefetch is the largest `max` the
//! receiver asked for, which bounds what it holds back from competing receivers; a consumer
//! with a smaller prefetch than a `receive` asks for is replaced. A receiver that stops asking
//! gives its buffer back after `standing::IDLE`.
//!
//! Before handing a message out the receiver completes what the broker cannot do:
//! - a message that arrived from a delay queue before its `not-before` time is delayed again;
//! - a message the broker *redelivers* (its channel closed while it was unsettled: crash,
//!   connection loss) is counted — a copy with the delivery count incremented is republished and
//!   the original acked — since a plain requeue cannot carry the count;
//! - a message beyond `max_delivery_count` is dead-lettered with `MaxDeliveryCountExceeded`;
//! - a message not matching a client-side filter is acked and dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use eventyard_core::transport::MAX_DELIVERY_EXCEEDED;
use eventyard_core::{DeadLetterInfo, Delivery, Message, Receiver, TransportError};
use futures::StreamExt;
use lapin::message;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::acker::Acker;
use crate::connection::{OpError, is_connection_error, is_not_found, map_err, with_retry};
use crate::headers;
use crate::locks::LockTimer;
use crate::publish::Outgoing;
use crate::settle::{AmqpSettle, Held, Inflight, RxChannel, RxContext};
use crate::standing::{self, Standing};

/// `at + d`, saturating about a century ahead instead of overflowing (a lock "forever").
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Process-wide receiver ids: they make sequence numbers and consumer tags unique.
static RECEIVER_IDS: AtomicU64 = AtomicU64::new(1);

/// A `receive` whose wait is shorter than this and that had to start a consumer cancels it
/// again before returning empty: the cancel-ok comes after every delivery of the consumer, so a
/// poll (zero wait) still sees what the queue held.
const POLL: Duration = Duration::from_millis(10);

/// A receiver on a subscription's main or dead-letter queue.
pub(crate) struct AmqpReceiver {
    ctx: Arc<RxContext>,
    closed: watch::Receiver<bool>,
    id: u64,
    next_sequence: u64,
    next_consumer: u64,
    rx: Option<Arc<RxChannel>>,
    /// The largest batch asked for: the prefetch of the consumers started from now on.
    largest: u16,
    /// The standing consumer and its buffer, shared with its watchdog.
    state: Arc<Mutex<Standing>>,
    /// A consumer start in progress (kept across a dropped `receive`).
    starting: Option<tokio::task::JoinHandle<Result<(), lapin::Error>>>,
    /// The locks of the deliveries handed out.
    locks: Arc<LockTimer>,
}

/// What [`AmqpReceiver::fill`] found.
enum Step {
    /// The buffer holds deliveries, or the wait ended.
    Ready,
    /// No consumer: start one.
    Start,
    /// The transport closed.
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
            largest: 0,
            state: Standing::shared(),
            starting: None,
            locks: Arc::default(),
        }
    }

    async fn channel(&mut self) -> Result<Arc<RxChannel>, TransportError> {
        if let Some(rx) = &self.rx
            && rx.alive()
        {
            return Ok(rx.clone());
        }
        self.reset().await;
        let channel = with_retry(&self.ctx.manager, |live| async move {
            live.channel().await.map_err(OpError::from)
        })
        .await?;
        let acker = Acker::start(channel.clone(), self.ctx.tracker.clone());
        let rx = Arc::new(RxChannel { channel, acker });
        self.rx = Some(rx.clone());
        Ok(rx)
    }

    /// Forgets the channel and what was received on it (after it closed: the broker requeued
    /// its unacknowledged messages).
    async fn reset(&mut self) {
        self.rx = None;
        if let Some(start) = self.starting.take() {
            start.abort();
        }
        self.state.lock().await.reset();
    }

    /// Starts a consumer (as a task, see `standing::start`) and waits until it is installed.
    async fn start(&mut self, rx: &Arc<RxChannel>) -> Result<(), lapin::Error> {
        let starting = match self.starting.take() {
            Some(task) => task,
            None => {
                let channel_prefetch = self.state.lock().await.channel_prefetch;
                let tag = format!("eventyard-{}-{}", self.id, self.next_consumer);
                self.next_consumer += 1;
                standing::start(
                    &self.state,
                    &self.ctx,
                    rx,
                    tag,
                    self.largest.max(1),
                    channel_prefetch,
                )
            }
        };
        let starting = self.starting.insert(starting);
        let result = starting.await;
        self.starting = None;
        match result {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(format!("consumer start: {e}")).into()),
        }
    }

    /// Fills the buffer: takes what the consumer has, else waits for its next delivery until
    /// `deadline` (or close). `fresh`: the consumer was started by this `receive`.
    async fn fill(
        &mut self,
        s: &mut Standing,
        max: usize,
        deadline: Instant,
        fresh: bool,
    ) -> Result<Step, lapin::Error> {
        if s.live.as_ref().is_some_and(|l| l.prefetch < self.largest) {
            s.finish().await?; // too small a prefetch: replaced below
        }
        s.take_ready(max)?;
        if !s.raw.is_empty() {
            return Ok(Step::Ready);
        }
        let Some(live) = s.live.as_mut() else {
            return Ok(Step::Start);
        };
        let first = tokio::select! {
            biased;
            _ = self.closed.wait_for(|closed| *closed) => return Ok(Step::Closed),
            item = live.consumer.next() => Some(item),
            () = tokio::time::sleep_until(deadline) => None,
        };
        match first {
            Some(Some(Ok(d))) => {
                live.rx.acker.track(d.delivery_tag);
                s.raw.push_back(d);
                s.take_ready(max)?;
            }
            Some(Some(Err(e))) => return Err(e),
            // Cancelled by the broker (queue deleted): the next consume reports it.
            Some(None) => s.live = None,
            None if fresh => s.finish().await?,
            None => {}
        }
        Ok(Step::Ready)
    }

    /// Turns up to `max` received messages into deliveries, handling the special cases.
    fn process(
        &mut self,
        rx: &Arc<RxChannel>,
        raw: &mut VecDeque<message::Delivery>,
        max: usize,
    ) -> Vec<Delivery> {
        let ctx = &self.ctx;
        // What this batch needs of the settings (not a clone of them all: they hold the
        // bindings' tables); the filter only when receivers apply it.
        let (max_delivery_count, lock_for, filter) = {
            let s = ctx.settings.read().unwrap_or_else(|e| e.into_inner());
            let filter = (!ctx.dead_letter && s.client_side).then(|| s.filter.clone());
            (s.max_delivery_count, s.lock(), filter)
        };
        let now = headers::now_ms();
        let mut out = Vec::with_capacity(max.min(raw.len()));
        let mut jobs: Vec<(u64, Outgoing)> = Vec::new();
        while out.len() < max {
            let Some(d) = raw.pop_front() else { break };
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
            } else if !ctx.dead_letter && count > max_delivery_count {
                let info = DeadLetterInfo::new(
                    MAX_DELIVERY_EXCEEDED,
                    format!(
                        "delivered {} times without being completed (max_delivery_count = {})",
                        count - 1,
                        max_delivery_count
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
            if filter.as_ref().is_some_and(|f| !f.matches(&props)) {
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
            let inflight = Inflight::new(held, tag, sequence, count, ctx.clone(), rx.clone());
            out.push((message, count, enqueued_at, sequence, inflight));
        }
        // The locks start now, at hand-out, all in one entry of the receiver's lock timer.
        let deadline = later(Instant::now(), lock_for);
        let slots = self
            .locks
            .lock_all(deadline, out.iter().map(|o| o.4.clone()).collect());
        let out: Vec<Delivery> = out
            .into_iter()
            .zip(slots)
            .map(
                |((message, count, enqueued_at, sequence, inflight), slot)| {
                    Delivery::new(
                        message,
                        count,
                        enqueued_at,
                        sequence,
                        ctx.subscription.clone(),
                        Box::new(AmqpSettle::new(inflight, slot)),
                    )
                },
            )
            .collect();
        if !jobs.is_empty() {
            let (manager, rx, job) = (ctx.manager.clone(), rx.clone(), self.ctx.tracker.job());
            tokio::spawn(async move {
                standing::republish_then_ack(&manager, &rx, jobs).await;
                drop(job);
            });
        }
        out
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
        self.largest = self.largest.max(u16::try_from(max).unwrap_or(u16::MAX));
        let mut started_here = false;
        loop {
            let rx = self.channel().await?;
            let state = self.state.clone();
            let mut s = state.lock().await;
            s.last_used = Instant::now();
            let fresh = started_here && wait < POLL;
            let failed = match self.fill(&mut s, max, deadline, fresh).await {
                Ok(Step::Ready) => {
                    let out = self.process(&rx, &mut s.raw, max);
                    s.last_used = Instant::now();
                    drop(s);
                    if !out.is_empty() || Instant::now() >= deadline {
                        return Ok(out);
                    }
                    continue;
                }
                Ok(Step::Closed) => return Ok(Vec::new()),
                Ok(Step::Start) => {
                    drop(s);
                    started_here = true;
                    match self.start(&rx).await {
                        Ok(()) => continue,
                        Err(e) => e,
                    }
                }
                Err(e) => {
                    drop(s);
                    e
                }
            };
            self.ctx.manager.check_open()?;
            if is_not_found(&failed) {
                self.reset().await;
                return Err(TransportError::UnknownSubscription {
                    topic: self.ctx.topic.clone(),
                    subscription: self.ctx.subscription.clone(),
                });
            }
            if is_connection_error(&failed) || !rx.alive() {
                tracing::warn!(error = %failed, "receiver channel lost; reopening");
                self.reset().await;
                continue;
            }
            return Err(map_err(&failed));
        }
    }
}

impl Drop for AmqpReceiver {
    fn drop(&mut self) {
        // The consumer is cancelled and what it buffered goes back unchanged (not counted);
        // a start still in progress finds the receiver retired and does the same.
        standing::retire_in_background(self.state.clone(), self.ctx.clone(), self.rx.take());
        self.locks.orphan();
    }
}

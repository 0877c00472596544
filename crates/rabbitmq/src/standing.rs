//! A receiver's standing consumer: one `basic.consume` kept open while `receive` calls keep
//! coming, instead of a consume/cancel round per call.
//!
//! The consumer's prefetch is the largest batch its receiver has asked for, so the broker pushes
//! at most that many unacknowledged messages to it — counting the ones handed out and not yet
//! settled. Under the runtime's consumer loop (`max` = free handler slots) that is exactly its
//! free slots: a receiver whose handlers are all busy holds nothing back from its competitors.
//! What the broker pushed and no `receive` took yet (the *buffer*) is not locked: a lock starts
//! when `receive` hands the message out.
//!
//! A consumer with no `receive` for [`IDLE`] is cancelled by its watchdog task, which gives the
//! buffered messages back; so is the consumer of a dropped receiver and, when the transport
//! closes, every consumer (each holds a tracker job until then, so `close` waits for it).
//! *Giving back* republishes an unchanged copy (delivery count as received: never handed out,
//! not a delivery attempt) and then acks the original; `basic.nack(requeue)` would set the
//! `redelivered` flag, which the receiver must count (it is how a crashed consumer's messages
//! come back). A message given back goes to the back of the queue.
//!
//! Cancelling relies on no delivery following the cancel-ok (for a classic queue the queue
//! process sends the cancel-ok after that consumer's deliveries): the trailing deliveries are
//! drained into the buffer before the consumer is forgotten.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Consumer, message};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::acker::JobGuard;
use crate::connection::Manager;
use crate::headers::{self, Meta};
use crate::publish::{self, Outgoing, Target};
use crate::settle::{RxChannel, RxContext};

/// How long a consumer stays open without a `receive` before it is cancelled and its buffer
/// given back.
pub(crate) const IDLE: Duration = Duration::from_millis(500);

/// How long to wait for a cancel-ok's trailing deliveries (a safety bound; normally instant).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// An open consumer.
pub(crate) struct Live {
    /// The lapin consumer (its stream of deliveries).
    pub consumer: Consumer,
    /// Its consumer tag.
    pub tag: String,
    /// Its prefetch (fixed for its life: a `basic.qos` applies to later consumers only).
    pub prefetch: u16,
    /// The channel it consumes on.
    pub rx: Arc<RxChannel>,
    /// Keeps `close` waiting until the consumer is cancelled and its buffer given back.
    _job: JobGuard,
}

/// What a receiver shares with its consumer's watchdog and start tasks.
pub(crate) struct Standing {
    /// The open consumer, if any.
    pub live: Option<Live>,
    /// Delivered on the receiver's channel, not handed out yet (tracked by its acker).
    pub raw: VecDeque<message::Delivery>,
    /// When a `receive` last ran (the watchdog cancels [`IDLE`] after it).
    pub last_used: Instant,
    /// The `basic.qos` prefetch set on the receiver's channel (0: none yet).
    pub channel_prefetch: u16,
    /// The receiver is gone: a consumer whose start completes now is cancelled at once.
    pub retired: bool,
}

impl Standing {
    /// A shared, empty state.
    pub(crate) fn shared() -> Arc<Mutex<Standing>> {
        Arc::new(Mutex::new(Standing {
            live: None,
            raw: VecDeque::new(),
            last_used: Instant::now(),
            channel_prefetch: 0,
            retired: false,
        }))
    }

    /// Forgets the consumer and the buffer (their channel closed: the broker requeued them).
    pub(crate) fn reset(&mut self) {
        self.live = None;
        self.raw.clear();
        self.channel_prefetch = 0;
    }

    /// Moves deliveries the consumer already has into the buffer, without waiting, until the
    /// buffer holds `max`.
    pub(crate) fn take_ready(&mut self, max: usize) -> Result<(), lapin::Error> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        // Tracked all at once (one lock of the acker), before any of them is handed out.
        let first = self.raw.len();
        let mut result = Ok(());
        let mut cancelled = false;
        while self.raw.len() < max {
            match live.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => self.raw.push_back(d),
                Some(Some(Err(e))) => {
                    result = Err(e);
                    break;
                }
                // Cancelled by the broker (queue deleted): the next consume reports it.
                Some(None) => {
                    cancelled = true;
                    break;
                }
                None => break,
            }
        }
        live.rx
            .acker
            .track_all(self.raw.range(first..).map(|d| d.delivery_tag));
        if cancelled {
            self.live = None;
        }
        result
    }

    /// Cancels the consumer and moves its remaining deliveries into the buffer.
    pub(crate) async fn finish(&mut self) -> Result<(), lapin::Error> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let cancelled = live
            .rx
            .channel
            .basic_cancel(live.tag.as_str().into(), BasicCancelOptions::default())
            .await;
        if let Err(e) = cancelled {
            self.live = None;
            return Err(e);
        }
        while let Some(live) = self.live.as_mut() {
            match tokio::time::timeout(DRAIN_TIMEOUT, live.consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    live.rx.acker.track(d.delivery_tag);
                    self.raw.push_back(d);
                }
                Ok(Some(Err(e))) => {
                    self.live = None;
                    return Err(e);
                }
                Ok(None) | Err(_) => self.live = None,
            }
        }
        Ok(())
    }

    /// Cancels the consumer and gives back everything buffered on `rx` (see the module docs).
    async fn retire(&mut self, ctx: &Arc<RxContext>, rx: &Arc<RxChannel>) {
        // Taken before the consumer's own job ends, so `close` keeps waiting until the buffer
        // is given back.
        let _job = ctx.tracker.job();
        if self.finish().await.is_err() || !rx.alive() {
            self.raw.clear(); // requeued by the broker with the channel
            return;
        }
        let raw: Vec<message::Delivery> = self.raw.drain(..).collect();
        give_back(ctx, rx, raw).await;
    }
}

/// Starts a consumer on `rx` with `prefetch` (sending the `basic.qos` in the same write when the
/// channel's differs) and installs it in `state` with its watchdog. Runs as its own task, so a
/// dropped `receive` cannot lose a consumer the broker already feeds.
pub(crate) fn start(
    state: &Arc<Mutex<Standing>>,
    ctx: &Arc<RxContext>,
    rx: &Arc<RxChannel>,
    tag: String,
    prefetch: u16,
    channel_prefetch: u16,
) -> tokio::task::JoinHandle<Result<(), lapin::Error>> {
    let (state, ctx, rx) = (state.clone(), ctx.clone(), rx.clone());
    let job = ctx.tracker.job();
    tokio::spawn(async move {
        let channel = &rx.channel;
        let set_qos = async {
            if prefetch == channel_prefetch {
                return Ok(());
            }
            channel
                .basic_qos(prefetch, BasicQosOptions { global: false })
                .await
        };
        let consume = channel.basic_consume(
            ctx.own_queue().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let (qos_set, consumer) = tokio::join!(set_qos, consume);
        let consumer = consumer?;
        let mut s = state.lock().await;
        s.live = Some(Live {
            consumer,
            tag: tag.clone(),
            prefetch,
            rx: rx.clone(),
            _job: job,
        });
        if s.retired {
            s.retire(&ctx, &rx).await;
            return qos_set;
        }
        if qos_set.is_ok() {
            s.channel_prefetch = prefetch;
        }
        s.last_used = Instant::now();
        drop(s);
        tokio::spawn(watchdog(Arc::downgrade(&state), ctx, tag));
        qos_set
    })
}

/// Cancels the consumer `tag` once no `receive` ran for [`IDLE`], or when the transport
/// closes, giving its buffer back; ends when the consumer is gone. (It holds no reference to
/// the channel: the channel closes as soon as its receiver and consumer are gone.)
async fn watchdog(state: Weak<Mutex<Standing>>, ctx: Arc<RxContext>, tag: String) {
    let mut closed = ctx.manager.closed_signal();
    loop {
        let due = {
            let Some(state) = state.upgrade() else { return };
            let s = state.lock().await;
            if s.live.as_ref().is_none_or(|l| l.tag != tag) {
                return;
            }
            s.last_used + IDLE
        };
        let closing = tokio::select! {
            _ = closed.wait_for(|c| *c) => true,
            () = tokio::time::sleep_until(due) => false,
        };
        let Some(state) = state.upgrade() else { return };
        let mut s = state.lock().await;
        let Some(rx) = s
            .live
            .as_ref()
            .filter(|l| l.tag == tag)
            .map(|l| l.rx.clone())
        else {
            return;
        };
        if closing || s.last_used + IDLE <= Instant::now() {
            s.retire(&ctx, &rx).await;
            return;
        }
    }
}

/// Gives back deliveries never handed out: republishes unchanged copies (publisher-confirmed;
/// a broker redelivery's copy counts that delivery, as its receipt would have), then acks the
/// originals (see [`republish_then_ack`]).
pub(crate) async fn give_back(ctx: &Arc<RxContext>, rx: &RxChannel, raw: Vec<message::Delivery>) {
    if raw.is_empty() {
        return;
    }
    let mut copies = Vec::with_capacity(raw.len());
    for d in raw {
        let (props, meta) = headers::decode(d.properties.headers().as_ref());
        // A redelivery (its earlier consumer's channel closed with it unsettled) is counted on
        // receipt; the copy cannot carry the flag, so it carries the count instead.
        let deliveries = if d.redelivered {
            meta.deliveries.saturating_add(1)
        } else {
            meta.deliveries
        };
        let meta = Meta {
            delay_ms: None,
            deliveries,
            ..meta
        };
        let target = Target::Queue(ctx.own_queue().to_owned());
        match Outgoing::new(target, Bytes::from(d.data), d.properties, &props, &meta) {
            Ok(copy) => copies.push((d.delivery_tag, copy)),
            Err(e) => {
                // Cannot be copied (cannot happen for what the broker accepted): requeue it.
                tracing::warn!(error = %e, "cannot copy a message to give it back; requeueing it");
                requeue(rx, d.delivery_tag).await;
            }
        }
    }
    republish_then_ack(&ctx.manager, rx, copies).await;
}

/// Publishes the copies (confirmed), then acks the originals; if publishing fails, gives the
/// originals back to the queue.
pub(crate) async fn republish_then_ack(
    manager: &Arc<Manager>,
    rx: &RxChannel,
    jobs: Vec<(u64, Outgoing)>,
) {
    if jobs.is_empty() {
        return;
    }
    let copies: Vec<Outgoing> = jobs.iter().map(|(_, c)| c.clone()).collect();
    match publish::send_internal(manager, &copies).await {
        Ok(()) => jobs.iter().for_each(|(tag, _)| rx.acker.ack(*tag)),
        Err(e) => {
            tracing::warn!(error = %e, "republishing failed; returning the messages to the queue");
            for (tag, _) in &jobs {
                requeue(rx, *tag).await;
            }
        }
    }
}

/// `basic.nack(requeue)` of one delivery, outside the acker.
async fn requeue(rx: &RxChannel, tag: u64) {
    rx.acker.forget(tag);
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    let _ = rx.channel.basic_nack(tag, options).await;
}

/// Retires the consumer and buffer of a dropped receiver whose channel is `rx` (in a task:
/// `Drop` cannot wait).
pub(crate) fn retire_in_background(
    state: Arc<Mutex<Standing>>,
    ctx: Arc<RxContext>,
    rx: Option<Arc<RxChannel>>,
) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let job = ctx.tracker.job();
    handle.spawn(async move {
        let _job = job;
        let mut s = state.lock().await;
        s.retired = true;
        let rx = s.live.as_ref().map(|l| l.rx.clone()).or(rx);
        if let Some(rx) = rx {
            s.retire(&ctx, &rx).await;
        }
    });
}

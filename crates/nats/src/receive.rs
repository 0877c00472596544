//! [`NatsReceiver`]: pull requests on a subscription's durable consumer, peek-lock deliveries.
//!
//! Each receiver owns one inbox subscription (`<inbox>.*`); every pull request gets its own
//! reply subject `<inbox>.<n>`, so the status that ends a request (408 timeout, 404 no
//! messages, 409 consumer deleted) is matched to it. At most one request is open at a time
//! (except in the contended case below): a delivered message does not say which request it
//! filled, so only then are the counts exact.
//!
//! A call that does not follow the previous one's return within [`LOOP_GAP`] asks for up to
//! `max` messages with one `no_wait` request that also carries an `expires` within the wait (at
//! most 5 s): the server answers at once with what is pending, or waits for the first message
//! and then sends what is pending, and ends the request right after — one round trip whether or
//! not anything is waiting. Such a call never leaves a request open when it returns normally.
//! (Only when the server refuses such a request because other receivers' requests already cover
//! the pending messages does the call fall back to long-polling for one message.)
//!
//! A *looping* caller's call (the runtime's consumer loop) instead leaves a **standing
//! request** at the server: up to `max` messages, without `no_wait`, expiring after at most
//! [`LEASE`]. The call returns as soon as it has something, and the request keeps bringing
//! messages until its batch is filled or its lease ends, so a message stored while the caller
//! is between calls is sent at once instead of waiting for the next call's request. The rule for
//! what such a request brings after its call returned (the deliveries are locked from their
//! arrival, as every delivery):
//! - it is handed out by the next `receive`, with the lock deadline counted from its arrival;
//! - if no `receive` comes for [`IDLE`] after the last one returned, the receiver's watchdog
//!   releases it (NAK without delay: available again at once, and counted as a delivery by the
//!   server), as it does what still arrives until the lease ends;
//! - when the receiver is dropped it is released the same way.
//!
//! So nothing stays locked to a receiver that stops asking for longer than [`IDLE`] plus the
//! lease, and a standing request never asks for more than its call's `max` (the runtime asks
//! for its free handler slots), so a busy receiver holds nothing back from its competitors.
//! A request whose expiry passed is forgotten [`EXPIRY_GRACE`] later even without its status
//! (nats-server 2.9 sometimes drops an expired request silently), so a looping receiver is
//! never left without a request for longer than that.
//! Whatever arrives for a cancelled call is kept and returned by the next call, or released
//! as above.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::{Message as NatsMessage, StatusCode, Subject, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use eventyard_core::transport::MAX_DELIVERY_EXCEEDED;
use eventyard_core::{DeadLetterInfo, Delivery, Message, Receiver, SubQueue, TransportError};
use futures::{FutureExt, StreamExt};
use tokio::sync::{Mutex, Notify, watch};
use tokio::time::Instant;

use crate::error::unavailable;
use crate::headers;
use crate::schedule::Pump;
use crate::settle::{Locked, NatsSettle, Origin, Original, copy_to_dead_letter};
use crate::topology::{self, SubMeta};
use crate::transport::Shared;

/// Longest server-side wait of one pull request.
const MAX_LONG_POLL: Duration = Duration::from_secs(5);
/// Below this much remaining wait, no long poll is started.
const MIN_LONG_POLL: Duration = Duration::from_millis(40);
/// The server ends a long poll this much before the caller's deadline.
const LONG_POLL_MARGIN: Duration = Duration::from_millis(15);
/// How long past its expiry a request with no answer is still waited for (a request without
/// `expires`, which the server answers at once).
const REQUEST_GRACE: Duration = Duration::from_secs(1);
/// How long past its expiry a request with `expires` is still waited for. nats-server 2.9 drops
/// a request that expired without a status when a message comes before its expiry timer
/// fires; waiting for a status that never comes would leave no request open meanwhile.
const EXPIRY_GRACE: Duration = Duration::from_millis(2);
/// Longest server-side wait of a standing request: how long at most it may still bring
/// messages after the call that issued it returned.
const LEASE: Duration = Duration::from_millis(50);
/// A call that comes at most this long after the previous one returned is a looping caller's.
const LOOP_GAP: Duration = Duration::from_millis(10);
/// Buffered deliveries of a receiver without a `receive` for this long are released.
const IDLE: Duration = Duration::from_millis(100);
/// Settings are reloaded at least this often (change notices make it sooner).
const META_MAX_AGE: Duration = Duration::from_secs(5);

/// What a pull request asks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `no_wait`: ends right after what is pending (or, with `expires`, after the first burst).
    NoWait,
    /// Waits up to its `expires` for its whole batch (one message: the contended case).
    LongPoll,
    /// Waits up to its lease ([`LEASE`]) for its whole batch, also after the call returned.
    Standing,
}

/// A pull request awaiting its end.
struct Pull {
    token: u64,
    remaining: usize,
    no_wait: bool,
    standing: bool,
    /// Local time after which it is presumed lost (server restart, vanished consumer).
    gone_at: Instant,
    answered: bool,
}

/// Fields of a JetStream ack subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckInfo {
    pub delivered: u64,
    pub stream_sequence: u64,
    pub timestamp_ns: i64,
}

/// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (and the
/// longer form with domain and account hash). Runs on every delivery: the tokens are found
/// in one pass over the bytes, without collecting them.
pub(crate) fn parse_ack_subject(reply: &str) -> Option<AckInfo> {
    // The tokens read are among the first ten (the long form's timestamp is the tenth), so
    // the first ten dots bound them; the dots are only counted past those.
    let bytes = reply.as_bytes();
    let mut dots = [0usize; 10];
    let mut count = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'.' {
            if let Some(slot) = dots.get_mut(count) {
                *slot = i;
            }
            count += 1;
        }
    }
    let tokens = count + 1;
    if tokens < 9 || !reply.starts_with("$JS.ACK.") {
        return None;
    }
    // Token `k` (at most 9) runs from after dot `k - 1` to dot `k` or the end.
    let token = |k: usize| {
        let start = dots[k - 1] + 1;
        let end = dots
            .get(k)
            .filter(|_| k < count)
            .copied()
            .unwrap_or(bytes.len());
        &reply[start..end]
    };
    let base = if tokens == 9 { 4 } else { 6 };
    Some(AckInfo {
        delivered: token(base).parse().ok()?,
        stream_sequence: token(base + 1).parse().ok()?,
        timestamp_ns: token(base + 3).parse().ok()?,
    })
}

/// The JSON body of a pull request (written directly: one is sent per receive call or lease).
/// Without `expires`, a `no_wait` request.
fn pull_body(batch: usize, no_wait: bool, expires: Option<Duration>) -> String {
    match expires {
        Some(e) => format!(
            r#"{{"batch":{batch},"no_wait":{no_wait},"expires":{}}}"#,
            crate::api::nanos(e)
        ),
        None => format!(r#"{{"batch":{batch},"no_wait":true}}"#),
    }
}

/// Local lock deadline of a delivery received now: the lock, less a margin for the time the
/// message spent between the server's send (where its ack wait starts) and here.
fn lock_deadline(received: Instant, lock: Duration) -> Instant {
    let margin = (lock / 20).min(Duration::from_millis(25));
    later(received, lock.saturating_sub(margin))
}

/// `at + d`, saturating about a century ahead instead of overflowing.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Unsettled deliveries a receiver handed out, by stream sequence: a later delivery of the same
/// message marks the earlier one superseded (see `Locked::superseded`).
#[derive(Default)]
struct Outstanding {
    by_sequence: HashMap<u64, Weak<AtomicBool>, BuildHasherDefault<SequenceHasher>>,
    /// Size at which settled (dropped) entries are next swept out.
    sweep_at: usize,
}

/// Hashes a stream sequence with one multiplication (Fibonacci hashing) instead of SipHash:
/// the keys are the server's own sequence numbers, not chosen by whoever publishes, and this
/// map is written on every delivery.
#[derive(Default)]
struct SequenceHasher(u64);

impl Hasher for SequenceHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Outstanding {
    /// The superseded flag of a new delivery of `sequence`; marks an earlier, still unsettled
    /// delivery of the same message superseded.
    fn track(&mut self, sequence: u64) -> Arc<AtomicBool> {
        if let Some(earlier) = self.by_sequence.get(&sequence).and_then(Weak::upgrade) {
            earlier.store(true, Ordering::Release);
        }
        if self.by_sequence.len() >= self.sweep_at.max(1024) {
            self.by_sequence.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = self.by_sequence.len() * 2;
        }
        let flag = Arc::new(AtomicBool::new(false));
        self.by_sequence.insert(sequence, Arc::downgrade(&flag));
        flag
    }
}

/// A receiver's state: everything a `receive` call works on, shared with its watchdog.
struct Inner {
    shared: Arc<Shared>,
    origin: Arc<Origin>,
    stream: String,
    consumer: String,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` (cloned per request without copying).
    next_subject: Subject,
    inbox: String,
    inbox_sub: Subscriber,
    control: Subscriber,
    meta: SubMeta,
    meta_loaded: Instant,
    pulls: VecDeque<Pull>,
    /// The server refused a waiting `no_wait` request ("Requests Pending"): other receivers'
    /// requests cover the pending messages. The rest of the call long-polls for one message.
    contended: bool,
    ready: VecDeque<Delivery>,
    outstanding: Outstanding,
    next_token: u64,
    closed: watch::Receiver<bool>,
    /// When the last `receive` call returned (or the receiver opened).
    last_return: Instant,
    _pump: Option<Arc<Pump>>,
}

/// Work left to do for a message on a rare path (see [`Inner::on_message`]).
type Rare = futures::future::BoxFuture<'static, ()>;

/// A receiver on one subscription's main queue or dead-letter sub-queue.
pub(crate) struct NatsReceiver {
    inner: Arc<Mutex<Inner>>,
    /// Told at each return that leaves a standing request open or deliveries buffered.
    wake: Arc<Notify>,
}

impl NatsReceiver {
    /// Opens a receiver; `UnknownSubscription` if the subscription was never declared.
    pub(crate) async fn open(
        shared: &Arc<Shared>,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Self, TransportError> {
        let inner = Arc::new(Mutex::new(
            Inner::open(shared, topic, subscription, queue).await?,
        ));
        let wake = Arc::new(Notify::new());
        tokio::spawn(watchdog(Arc::downgrade(&inner), Arc::clone(&wake)));
        Ok(NatsReceiver { inner, wake })
    }
}

/// Releases what a receiver's standing request brought after its caller stopped asking: once
/// no `receive` ran for [`IDLE`], buffered deliveries are NAKed (no delay), and so is whatever
/// still arrives until the request's lease ended. Ends with the receiver.
async fn watchdog(inner: Weak<Mutex<Inner>>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            tokio::time::sleep(IDLE).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            // A call is running: it tells again when it returns.
            let Ok(mut state) = inner.try_lock() else {
                break;
            };
            if state.last_return.elapsed() < IDLE {
                continue;
            }
            if let Err(e) = state.release_idle().await {
                tracing::debug!("nats: releasing an idle receiver's deliveries: {e}");
            }
            if state.pulls.is_empty() && state.ready.is_empty() {
                break;
            }
        }
    }
}

impl Inner {
    async fn open(
        shared: &Arc<Shared>,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Self, TransportError> {
        let (stream, consumer, meta) = topology::locate(shared, topic, subscription, queue).await?;
        let client = &shared.client;
        let inbox = client.new_inbox();
        let inbox_sub = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| unavailable(format!("subscribing the receiver's inbox: {e}")))?;
        let control = client
            .subscribe(shared.names.control_subject(topic, subscription))
            .await
            .map_err(|e| unavailable(format!("subscribing to change notices: {e}")))?;
        // Scheduled messages of the topic are moved while someone receives from it.
        let pump = (queue == SubQueue::Main).then(|| shared.pump(topic));
        Ok(Inner {
            origin: Arc::new(Origin {
                topic: topic.to_owned(),
                subscription: subscription.to_owned(),
                queue,
                dead_letter_subject: shared.names.dead_letter_subject(topic, subscription),
            }),
            next_subject: Subject::from(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")),
            stream,
            consumer,
            inbox,
            inbox_sub,
            control,
            meta,
            meta_loaded: Instant::now(),
            pulls: VecDeque::new(),
            contended: false,
            ready: VecDeque::new(),
            outstanding: Outstanding::default(),
            next_token: 0,
            closed: shared.closed_signal(),
            last_return: Instant::now(),
            shared: Arc::clone(shared),
            _pump: pump,
        })
    }

    fn unknown(&self) -> TransportError {
        TransportError::UnknownSubscription {
            topic: self.origin.topic.clone(),
            subscription: self.origin.subscription.clone(),
        }
    }

    /// Reloads the subscription's settings after a change notice, or when they are old.
    async fn refresh_meta(&mut self) -> Result<(), TransportError> {
        let mut changed = false;
        while let Some(Some(_)) = self.control.next().now_or_never() {
            changed = true;
        }
        if changed || self.meta_loaded.elapsed() >= META_MAX_AGE {
            let o = &self.origin;
            // Boxed: a rare round trip whose future would otherwise size every `receive` call's.
            self.meta = Box::pin(topology::load_meta(
                &self.shared,
                &self.stream,
                &self.consumer,
                &o.topic,
                &o.subscription,
            ))
            .await?;
            self.meta_loaded = Instant::now();
        }
        Ok(())
    }

    /// Asks the server for up to `batch` messages (see [`Kind`]). Without `expires`, a
    /// `no_wait` request answered at once.
    async fn pull(
        &mut self,
        batch: usize,
        kind: Kind,
        expires: Option<Duration>,
    ) -> Result<(), TransportError> {
        self.next_token += 1;
        let token = self.next_token;
        let no_wait = kind == Kind::NoWait;
        let body = pull_body(batch, no_wait, expires);
        let reply = format!("{}.{token}", self.inbox);
        self.shared
            .client
            .publish_with_reply(self.next_subject.clone(), reply, Bytes::from(body))
            .await
            .map_err(|e| unavailable(format!("pull request: {e}")))?;
        let gone_at = match expires {
            Some(e) => Instant::now() + e + EXPIRY_GRACE,
            None => Instant::now() + REQUEST_GRACE,
        };
        self.pulls.push_back(Pull {
            token,
            remaining: batch,
            no_wait: no_wait || expires.is_none(),
            standing: kind == Kind::Standing,
            gone_at,
            answered: false,
        });
        Ok(())
    }

    /// Handles everything that already arrived, without waiting.
    async fn drain_arrived(&mut self) -> Result<(), TransportError> {
        while let Some(next) = self.inbox_sub.next().now_or_never() {
            if let Some(rare) = self.on_next(next)? {
                rare.await;
            }
        }
        Ok(())
    }

    /// What the inbox subscription gave: a message or status ([`Inner::on_message`]), or its
    /// end (an error).
    fn on_next(&mut self, next: Option<NatsMessage>) -> Result<Option<Rare>, TransportError> {
        match next {
            Some(message) => self.on_message(message),
            None => Err(self.ended()),
        }
    }

    /// The error for an inbox subscription that ended.
    fn ended(&self) -> TransportError {
        if self.shared.is_closed() {
            TransportError::Closed
        } else {
            unavailable("the connection to the server was closed")
        }
    }

    /// Drops requests past their expiry (their status may still come, or never: see
    /// [`EXPIRY_GRACE`]); if one never got any answer, checks that the consumer still exists
    /// (not for standing requests, renewed every [`LEASE`] on an idle subscription: a deleted
    /// consumer ends them with a status, and the settings are reloaded every few seconds).
    async fn expire_pulls(&mut self) -> Result<(), TransportError> {
        let now = Instant::now();
        let mut silent = false;
        self.pulls.retain(|p| {
            let keep = p.gone_at > now;
            silent |= !keep && !p.answered && !p.standing;
            keep
        });
        if silent {
            self.refresh_meta_now().await?;
        }
        Ok(())
    }

    async fn refresh_meta_now(&mut self) -> Result<(), TransportError> {
        self.meta_loaded = Instant::now() - META_MAX_AGE;
        self.refresh_meta().await
    }

    /// One message or status from the inbox. Synchronous: what is left to do on a rare path
    /// (acking a filtered-out message, dead-lettering one delivered too often) is returned as a
    /// boxed future for the caller to await, so the per-message futures of `receive` stay
    /// small (below the allocator's thread-cache limit).
    fn on_message(&mut self, message: NatsMessage) -> Result<Option<Rare>, TransportError> {
        match message.status {
            None | Some(StatusCode::OK) => {}
            Some(StatusCode::IDLE_HEARTBEAT) => return Ok(None),
            Some(status) => {
                // The end of one request, named by its reply subject.
                let token = message
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok());
                self.pulls.retain(|p| Some(p.token) != token);
                let deleted = status == StatusCode::REQUEST_TERMINATED
                    && message
                        .description
                        .as_deref()
                        .is_some_and(|d| d.to_ascii_lowercase().contains("deleted"));
                if deleted {
                    return Err(self.unknown());
                }
                if status == StatusCode::TIMEOUT
                    && message
                        .description
                        .as_deref()
                        .is_some_and(|d| d.to_ascii_lowercase().contains("pending"))
                {
                    self.contended = true;
                }
                if status != StatusCode::TIMEOUT && status != StatusCode::NOT_FOUND {
                    tracing::debug!(
                        "nats: pull request on {} ended with {status} {:?}",
                        self.consumer,
                        message.description
                    );
                }
                return Ok(None);
            }
        }
        // A message: it fills the oldest open request.
        if let Some(front) = self.pulls.front_mut() {
            front.answered = true;
            front.remaining = front.remaining.saturating_sub(1);
            if front.remaining == 0 {
                self.pulls.pop_front();
            }
        }
        Ok(self.accept(message))
    }

    /// Turns a delivered message into a [`Delivery`] (or filters / dead-letters it: the work
    /// left to do then is returned, see [`Inner::on_message`]).
    fn accept(&mut self, message: NatsMessage) -> Option<Rare> {
        let received = Instant::now();
        let reply = message.reply?;
        let Some(ack) = parse_ack_subject(reply.as_str()) else {
            tracing::warn!(
                "nats: unexpected reply subject {reply} on {}",
                self.consumer
            );
            return None;
        };
        let properties = headers::decode(message.headers.as_ref());
        let count = u32::try_from(ack.delivered).unwrap_or(u32::MAX);
        if self.origin.queue == SubQueue::Main {
            // The consumer's filter subject applied the tenant/type part natively; the whole
            // filter is applied here (a no-op for what the subject already selected).
            if !self.meta.filter.matches(&properties) {
                let client = self.shared.client.clone();
                return Some(Box::pin(async move {
                    if let Err(e) = client.publish(reply, Bytes::from_static(b"+ACK")).await {
                        tracing::debug!("nats: ack of a filtered-out message failed: {e}");
                    }
                }));
            }
            if count > self.meta.max_delivery_count {
                let info = DeadLetterInfo::new(
                    MAX_DELIVERY_EXCEEDED,
                    format!(
                        "delivered {count} times; the subscription allows {}",
                        self.meta.max_delivery_count
                    ),
                );
                let original = Original {
                    headers: message.headers,
                    body: message.payload,
                };
                let (shared, origin) = (Arc::clone(&self.shared), Arc::clone(&self.origin));
                return Some(Box::pin(async move {
                    let moved = copy_to_dead_letter(
                        &shared,
                        &origin,
                        ack.stream_sequence,
                        &original,
                        &info,
                    )
                    .await;
                    match moved {
                        Ok(()) => shared
                            .settle_request(reply, Bytes::from_static(b"+ACK"), "dead-letter")
                            .await
                            .unwrap_or_else(|e| tracing::warn!("nats: {e}")),
                        // Left locked: it comes back at lock expiry and is tried again.
                        Err(e) => tracing::warn!("nats: dead-lettering failed: {e}"),
                    }
                }));
            }
        }
        let enqueued_at = DateTime::<Utc>::from_timestamp_nanos(ack.timestamp_ns);
        let superseded = self.outstanding.track(ack.stream_sequence);
        let settle = NatsSettle {
            shared: Arc::clone(&self.shared),
            origin: Arc::clone(&self.origin),
            locked: Locked {
                reply,
                sequence: ack.stream_sequence,
                deadline: lock_deadline(received, self.meta.lock()),
                superseded,
            },
            original: Original {
                headers: message.headers,
                body: message.payload.clone(),
            },
            settled: false,
        };
        self.ready.push_back(Delivery::new(
            Message {
                body: message.payload,
                properties,
            },
            count,
            enqueued_at,
            ack.stream_sequence,
            self.origin.subscription.clone(),
            Box::new(settle),
        ));
        None
    }

    /// Waits until something arrives, the transport closes, or `until`.
    async fn wait(&mut self, until: Instant) -> Result<(), TransportError> {
        let next = tokio::select! {
            biased;
            _ = self.closed.changed() => return Err(TransportError::Closed),
            next = self.inbox_sub.next() => next,
            _ = tokio::time::sleep_until(until) => return Ok(()),
        };
        if let Some(rare) = self.on_next(next)? {
            rare.await;
        }
        Ok(())
    }

    fn take(&mut self, max: usize) -> Vec<Delivery> {
        let n = self.ready.len().min(max);
        self.ready.drain(..n).collect()
    }
}

impl Inner {
    /// One `receive` call (see the module doc).
    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        // A caller that comes back at once is looping: its requests may stand past its return.
        let looping = self.last_return.elapsed() <= LOOP_GAP;
        self.refresh_meta().await?;
        let deadline = later(Instant::now(), wait);
        let mut polled = false;
        self.contended = false;
        loop {
            self.drain_arrived().await?;
            self.expire_pulls().await?;
            if self.ready.len() >= max {
                break;
            }
            if let Some(gone_at) = self.pulls.iter().find(|p| p.no_wait).map(|p| p.gone_at) {
                // A no_wait request ends right after what it found: wait for its end.
                self.wait(gone_at).await?;
                continue;
            }
            if !self.ready.is_empty() {
                break;
            }
            let now = Instant::now();
            if polled && now >= deadline {
                break;
            }
            if !self.pulls.is_empty() {
                // A standing request (or, contended, a long poll for one message) is open.
                let until = self
                    .pulls
                    .iter()
                    .map(|p| p.gone_at)
                    .min()
                    .map_or(deadline, |g| g.min(deadline));
                self.wait(until).await?;
                continue;
            }
            let left = deadline.saturating_duration_since(now);
            let expires =
                (left >= MIN_LONG_POLL).then(|| (left - LONG_POLL_MARGIN).min(MAX_LONG_POLL));
            match expires {
                // Too little wait left for a server-side wait: poll once, then sleep it out.
                None if polled => self.wait(deadline).await?,
                None => self.pull(max, Kind::NoWait, None).await?,
                Some(e) if self.contended => self.pull(1, Kind::LongPoll, Some(e)).await?,
                Some(e) if looping => self.pull(max, Kind::Standing, Some(e.min(LEASE))).await?,
                Some(e) => self.pull(max, Kind::NoWait, Some(e)).await?,
            }
            polled = true;
        }
        Ok(self.take(max))
    }

    /// The watchdog's release of an idle receiver: handles what arrived, then releases every
    /// buffered delivery (their settle handles NAK on drop).
    async fn release_idle(&mut self) -> Result<(), TransportError> {
        self.drain_arrived().await?;
        self.expire_pulls().await?;
        self.ready.clear();
        Ok(())
    }
}

#[async_trait]
impl Receiver for NatsReceiver {
    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        let mut inner = self.inner.lock().await;
        inner.shared.check_open()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let result = inner.receive(max, wait).await;
        inner.last_return = Instant::now();
        if !inner.pulls.is_empty() || !inner.ready.is_empty() {
            self.wake.notify_one();
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Deliveries fetched but never handed out are released (their settle handles NAK on
        // drop); so is whatever already arrived.
        while let Some(Some(message)) = self.inbox_sub.next().now_or_never() {
            if message.status.is_none()
                && let Some(reply) = message.reply
            {
                crate::settle::release(&self.shared, reply);
            }
        }
        self.ready.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects() {
        assert_eq!(
            parse_ack_subject("$JS.ACK.S_T_x~y.c1.2.5.8.1795795405786402422.0"),
            Some(AckInfo {
                delivered: 2,
                stream_sequence: 5,
                timestamp_ns: 1_795_795_405_786_402_422
            })
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK.dom.hash.S.c.3.9.10.1700000000000000000.4.rand"),
            Some(AckInfo {
                delivered: 3,
                stream_sequence: 9,
                timestamp_ns: 1_700_000_000_000_000_000
            })
        );
        assert_eq!(parse_ack_subject("_INBOX.abc.1"), None);
        assert_eq!(parse_ack_subject("$JS.ACK.S.c.x.5.8.1.0"), None);
        // The same answers as splitting into a vector (the former implementation).
        let by_vector = |reply: &str| -> Option<AckInfo> {
            let tokens: Vec<&str> = reply.split('.').collect();
            if tokens.len() < 9 || tokens[0] != "$JS" || tokens[1] != "ACK" {
                return None;
            }
            let base = if tokens.len() == 9 { 4 } else { 6 };
            Some(AckInfo {
                delivered: tokens.get(base)?.parse().ok()?,
                stream_sequence: tokens.get(base + 1)?.parse().ok()?,
                timestamp_ns: tokens.get(base + 3)?.parse().ok()?,
            })
        };
        for reply in [
            "$JS.ACK.S.c.1.2.3.4.5",
            "$JS.ACK.S.c.1.2.3.4",
            "$JS.ACK.S.c.1.2.3.4.5.6",
            "$JS.ACK.d.h.S.c.1.2.3.4",
            "$JS.ACK.d.h.S.c.1.2.3.4.5",
            "$JS.ACK.d.h.S.c.1.2.3.4.5.6.7.8.9",
            "$JS.ACK.d.h.S.c.+1.2.3.4.5.6",
            "$JS.ACK.d.h.S.c.1.2.3.4.5.6.",
            "$JS.ACK.S.c.1.2.3.4.",
            "$JS.ACK.S.c.1.2.3.4.5.",
            "$JS.ACK.S.c.1.2.3..5",
            "$JS.ACK.S.c.-1.2.3.4.5",
            "$JS.ACK.S.c.1.2.3.-4.5",
            "$JS.ACK.........",
            "$JS.NAK.S.c.1.2.3.4.5",
            "",
        ] {
            assert_eq!(parse_ack_subject(reply), by_vector(reply), "{reply}");
        }
    }

    #[test]
    fn a_redelivery_supersedes_the_unsettled_earlier_delivery_only() {
        let mut o = Outstanding::default();
        let first = o.track(7);
        let other = o.track(8);
        let again = o.track(7);
        assert!(
            first.load(Ordering::Acquire),
            "earlier delivery of 7 superseded"
        );
        assert!(!again.load(Ordering::Acquire) && !other.load(Ordering::Acquire));
        drop(again); // settled
        let third = o.track(7);
        assert!(!third.load(Ordering::Acquire));
        // Settled entries are swept out once the map grows.
        drop((first, other, third));
        for s in 100..1200 {
            drop(o.track(s));
        }
        assert!(o.by_sequence.len() < 1024, "{}", o.by_sequence.len());
    }

    #[test]
    fn pull_bodies_are_the_requests_json() {
        let parse = |body: String| -> serde_json::Value { serde_json::from_str(&body).unwrap() };
        assert_eq!(
            parse(pull_body(64, false, Some(Duration::from_millis(50)))),
            serde_json::json!({ "batch": 64, "no_wait": false, "expires": 50_000_000 })
        );
        assert_eq!(
            parse(pull_body(1, true, Some(Duration::from_secs(5)))),
            serde_json::json!({ "batch": 1, "no_wait": true, "expires": 5_000_000_000_i64 })
        );
        assert_eq!(
            parse(pull_body(256, true, None)),
            serde_json::json!({ "batch": 256, "no_wait": true })
        );
    }

    #[test]
    fn lock_deadline_keeps_a_margin() {
        let now = Instant::now();
        assert_eq!(
            lock_deadline(now, Duration::from_millis(300)),
            now + Duration::from_millis(285)
        );
        assert_eq!(
            lock_deadline(now, Duration::from_secs(30)),
            now + Duration::from_millis(29_975)
        );
    }
}

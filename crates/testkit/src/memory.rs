//! An in-memory [`Transport`]: no persistence, no I/O, the whole contract.
//!
//! Meant for unit tests of the runtime and of applications: it honours every rule of
//! [`eventyard_core::transport`] (filters evaluated at publish, competing consumers, peek-lock with
//! lock expiry, abandon with delay, scheduled delivery, max delivery count → dead-letter
//! sub-queue, release on drop, `LockLost`, `Closed`) and passes the conformance suite
//! ([`crate::conformance`]).
//!
//! Waiting receivers sleep on a [`tokio::sync::Notify`] (woken by publish, abandon, release,
//! dead-lettering, deletion) and on a timer set to the next scheduled visibility change
//! (lock expiry, abandon delay, `deliver_at`); closing is signalled through a
//! [`tokio::sync::watch`] channel. There is no polling loop. Times use [`tokio::time::Instant`],
//! so tests running with a paused clock see locks and delays follow the paused clock (`deliver_at`
//! is converted from wall-clock time at publish).
//!
//! ```no_run
//! # async fn demo() -> Result<(), eventyard_core::TransportError> {
//! use std::sync::Arc;
//! use eventyard_core::{SubQueue, SubscriptionSpec, Transport};
//! use eventyard_testkit::memory::MemoryTransport;
//!
//! let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
//! transport.ensure_subscription(&SubscriptionSpec::new("orders", "billing")).await?;
//! let mut receiver = transport.receiver("orders", "billing", SubQueue::Main).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventyard_core::properties::names;
use eventyard_core::transport::{MAX_DELIVERY_EXCEEDED, check_name};
use eventyard_core::{
    Capabilities, Delivery, Message, OutgoingMessage, Receiver, Settle, Settlement, SubQueue,
    SubscriptionSpec, Transport, TransportError,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Largest body the memory transport accepts: 1 MiB.
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// The capabilities of [`MemoryTransport`].
fn memory_capabilities() -> Capabilities {
    let mut caps = Capabilities::new("memory");
    caps.persistent = false;
    caps.atomic_batch = true;
    caps.release_on_drop = true;
    caps.max_message_size = MAX_MESSAGE_SIZE;
    caps
}

/// `now + d`, saturating far in the future instead of overflowing.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// One message copy in a queue.
struct Entry {
    message: Message,
    enqueued_at: DateTime<Utc>,
    /// Deliveries so far (from this queue).
    delivery_count: u32,
    /// Not deliverable before this instant (scheduled delivery, abandon delay or lock expiry).
    visible_at: Instant,
    /// Token of the delivery that last locked it; 0 when not locked.
    lock: u64,
}

/// A queue (main or dead-letter) of one subscription.
///
/// Every entry is indexed in exactly one of `ready` (visible now, by sequence = publish order)
/// or `waiting` (by the instant it becomes visible).
#[derive(Default)]
struct Queue {
    entries: HashMap<u64, Entry>,
    ready: BTreeSet<u64>,
    waiting: BTreeSet<(Instant, u64)>,
    /// Wakes receivers waiting on this queue.
    notify: Arc<Notify>,
}

impl Queue {
    fn place(&mut self, seq: u64, at: Instant, now: Instant) {
        if at <= now {
            self.ready.insert(seq);
        } else {
            self.waiting.insert((at, seq));
        }
    }

    fn unplace(&mut self, seq: u64, at: Instant) {
        self.ready.remove(&seq);
        self.waiting.remove(&(at, seq));
    }

    fn insert(&mut self, seq: u64, entry: Entry, now: Instant) {
        self.place(seq, entry.visible_at, now);
        self.entries.insert(seq, entry);
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        self.unplace(seq, entry.visible_at);
        Some(entry)
    }

    /// Unlocks the entry and makes it visible at `at`.
    fn release(&mut self, seq: u64, at: Instant, now: Instant) {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        let old = entry.visible_at;
        entry.visible_at = at;
        entry.lock = 0;
        self.unplace(seq, old);
        self.place(seq, at, now);
    }

    /// Moves entries whose time has come from `waiting` to `ready`.
    fn promote(&mut self, now: Instant) {
        while let Some(&(at, seq)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            self.ready.insert(seq);
        }
    }

    /// The next instant an entry becomes visible.
    fn next_change(&self) -> Option<Instant> {
        self.waiting.first().map(|&(at, _)| at)
    }

    /// True when the entry is locked by the delivery holding `token`.
    fn locked_by(&self, seq: u64, token: u64) -> bool {
        self.entries.get(&seq).is_some_and(|e| e.lock == token)
    }
}

/// A subscription: its settings, main queue and dead-letter sub-queue.
struct Subscription {
    /// Distinguishes a re-created subscription from a deleted one of the same name.
    id: u64,
    spec: SubscriptionSpec,
    next_seq: u64,
    main: Queue,
    dead: Queue,
}

impl Subscription {
    fn queue(&self, queue: SubQueue) -> &Queue {
        match queue {
            SubQueue::Main => &self.main,
            SubQueue::DeadLetter => &self.dead,
        }
    }

    fn queue_mut(&mut self, queue: SubQueue) -> &mut Queue {
        match queue {
            SubQueue::Main => &mut self.main,
            SubQueue::DeadLetter => &mut self.dead,
        }
    }

    /// Moves an entry of the main queue to the dead-letter sub-queue with the given reason.
    fn dead_letter(&mut self, seq: u64, reason: &str, description: &str, now: Instant) {
        let Some(mut entry) = self.main.remove(seq) else {
            return;
        };
        mark_dead_lettered(&mut entry.message, reason, description, &self.spec.name);
        entry.delivery_count = 0;
        entry.lock = 0;
        entry.visible_at = now;
        self.dead.insert(seq, entry, now);
        self.dead.notify.notify_waiters();
    }
}

fn mark_dead_lettered(message: &mut Message, reason: &str, description: &str, source: &str) {
    let p = &mut message.properties;
    p.insert(names::DEAD_LETTER_REASON, reason);
    p.insert(names::DEAD_LETTER_DESCRIPTION, description);
    p.insert(names::DEAD_LETTER_SOURCE, source);
}

/// Everything the broker stores.
#[derive(Default)]
struct State {
    /// topic → subscription name → subscription.
    topics: HashMap<String, BTreeMap<String, Subscription>>,
    next_id: u64,
    next_token: u64,
}

impl State {
    /// The subscription `topic/name`, if it is still the one with `id` (when given).
    fn subscription_mut(
        &mut self,
        topic: &str,
        name: &str,
        id: Option<u64>,
    ) -> Result<&mut Subscription, TransportError> {
        find_subscription(&mut self.topics, topic, name, id)
    }
}

/// See [`State::subscription_mut`]; borrows only the topic map.
fn find_subscription<'a>(
    topics: &'a mut HashMap<String, BTreeMap<String, Subscription>>,
    topic: &str,
    name: &str,
    id: Option<u64>,
) -> Result<&'a mut Subscription, TransportError> {
    topics
        .get_mut(topic)
        .and_then(|subs| subs.get_mut(name))
        .filter(|s| id.is_none_or(|id| s.id == id))
        .ok_or_else(|| TransportError::UnknownSubscription {
            topic: topic.to_owned(),
            subscription: name.to_owned(),
        })
}

/// The in-memory broker shared by every handle of one [`MemoryTransport`] family.
#[derive(Default)]
struct Broker {
    state: Mutex<State>,
}

impl Broker {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test must not poison the broker for the others sharing it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Per-handle state: whether this handle was closed.
struct Handle {
    closed: watch::Sender<bool>,
}

impl Handle {
    fn new() -> Arc<Self> {
        Arc::new(Handle {
            closed: watch::Sender::new(false),
        })
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if *self.closed.borrow() {
            Err(TransportError::Closed)
        } else {
            Ok(())
        }
    }
}

/// An in-memory broker handle implementing [`Transport`].
///
/// Capabilities: `name: "memory"`, not persistent, atomic batches, release on drop,
/// [`MAX_MESSAGE_SIZE`] (1 MiB) bodies.
///
/// [`MemoryTransport::new`] creates a fresh, empty broker. [`MemoryTransport::reconnect`] opens
/// another handle onto the same broker, as a new connection to a running broker would: closing
/// one handle makes *its* calls, receivers and deliveries fail with [`TransportError::Closed`]
/// but leaves the stored messages to the other handles. The data lives as long as any handle,
/// receiver or delivery refers to it.
///
/// Not modelled: the `context` of [`eventyard_core::DeadLetterInfo`] is not stored (only reason,
/// description and source, as properties). Dead-lettering a delivery received from the
/// dead-letter sub-queue updates its reason properties and releases it there.
pub struct MemoryTransport {
    broker: Arc<Broker>,
    handle: Arc<Handle>,
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("closed", &*self.handle.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// A new, empty in-memory broker and a handle onto it.
    pub fn new() -> Self {
        MemoryTransport {
            broker: Arc::new(Broker::default()),
            handle: Handle::new(),
        }
    }

    /// Another handle onto the same broker (same topics, subscriptions and messages), open even
    /// if this one was closed.
    pub fn reconnect(&self) -> Self {
        MemoryTransport {
            broker: Arc::clone(&self.broker),
            handle: Handle::new(),
        }
    }

    /// Number of messages in a subscription's main queue or dead-letter sub-queue, counting
    /// locked and scheduled ones. Handy for assertions in unit tests.
    pub fn message_count(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<usize, TransportError> {
        let mut state = self.broker.lock();
        let sub = state.subscription_mut(topic, subscription, None)?;
        Ok(sub.queue(queue).entries.len())
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn capabilities(&self) -> Capabilities {
        memory_capabilities()
    }

    async fn ensure_subscription(&self, spec: &SubscriptionSpec) -> Result<(), TransportError> {
        self.handle.check_open()?;
        spec.validate()?;
        let mut state = self.broker.lock();
        let state = &mut *state;
        let subs = state.topics.entry(spec.topic.clone()).or_default();
        match subs.get_mut(&spec.name) {
            Some(sub) => {
                sub.spec = spec.clone();
                // The lock duration may have changed: let waiting receivers re-evaluate.
                sub.main.notify.notify_waiters();
                sub.dead.notify.notify_waiters();
            }
            None => {
                state.next_id += 1;
                subs.insert(
                    spec.name.clone(),
                    Subscription {
                        id: state.next_id,
                        spec: spec.clone(),
                        next_seq: 0,
                        main: Queue::default(),
                        dead: Queue::default(),
                    },
                );
            }
        }
        Ok(())
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), TransportError> {
        self.handle.check_open()?;
        check_name("topic", topic)?;
        check_name("subscription", name)?;
        let mut state = self.broker.lock();
        if let Some(subs) = state.topics.get_mut(topic) {
            if let Some(sub) = subs.remove(name) {
                // Receivers on it wake up and report `UnknownSubscription`.
                sub.main.notify.notify_waiters();
                sub.dead.notify.notify_waiters();
            }
            if subs.is_empty() {
                state.topics.remove(topic);
            }
        }
        Ok(())
    }

    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), TransportError> {
        self.handle.check_open()?;
        check_name("topic", topic)?;
        // Check the whole batch first: all-or-nothing.
        if let Some(m) = messages
            .iter()
            .find(|m| m.message.body.len() > MAX_MESSAGE_SIZE)
        {
            return Err(TransportError::MessageTooLarge {
                size: m.message.body.len(),
                max: MAX_MESSAGE_SIZE,
            });
        }
        let now = Instant::now();
        let wall_now = Utc::now();
        let mut state = self.broker.lock();
        let Some(subs) = state.topics.get_mut(topic) else {
            // No subscription: the messages are discarded.
            return Ok(());
        };
        for outgoing in &messages {
            let visible_at = match outgoing.deliver_at {
                Some(at) => later(now, (at - wall_now).to_std().unwrap_or_default()),
                None => now,
            };
            for sub in subs.values_mut() {
                if !sub.spec.filter.matches(&outgoing.message.properties) {
                    continue;
                }
                sub.next_seq += 1;
                let entry = Entry {
                    message: outgoing.message.clone(),
                    enqueued_at: wall_now,
                    delivery_count: 0,
                    visible_at,
                    lock: 0,
                };
                sub.main.insert(sub.next_seq, entry, now);
            }
        }
        for sub in subs.values() {
            sub.main.notify.notify_waiters();
        }
        Ok(())
    }

    async fn receiver(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Box<dyn Receiver>, TransportError> {
        self.handle.check_open()?;
        check_name("topic", topic)?;
        check_name("subscription", subscription)?;
        let mut state = self.broker.lock();
        let sub = state.subscription_mut(topic, subscription, None)?;
        Ok(Box::new(MemoryReceiver {
            broker: Arc::clone(&self.broker),
            handle: Arc::clone(&self.handle),
            closed: self.handle.closed.subscribe(),
            notify: Arc::clone(&sub.queue(queue).notify),
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            sub_id: sub.id,
            queue,
        }))
    }

    async fn close(&self) -> Result<(), TransportError> {
        // Wakes every receiver of this handle; they then report `Closed`.
        self.handle.closed.send_replace(true);
        Ok(())
    }
}

/// A receiver on one queue of one subscription.
struct MemoryReceiver {
    broker: Arc<Broker>,
    handle: Arc<Handle>,
    closed: watch::Receiver<bool>,
    notify: Arc<Notify>,
    topic: String,
    subscription: String,
    sub_id: u64,
    queue: SubQueue,
}

impl MemoryReceiver {
    /// Takes up to `max` visible messages, locking them. Returns the deliveries and, when there
    /// are none, the next instant something becomes visible.
    fn try_take(&self, max: usize) -> Result<(Vec<Delivery>, Option<Instant>), TransportError> {
        let now = Instant::now();
        let mut state = self.broker.lock();
        let State {
            topics, next_token, ..
        } = &mut *state;
        let sub = find_subscription(topics, &self.topic, &self.subscription, Some(self.sub_id))?;
        let lock_duration = sub.spec.lock_duration;
        let max_deliveries = sub.spec.max_delivery_count;
        sub.queue_mut(self.queue).promote(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(seq) = sub.queue_mut(self.queue).ready.pop_first() else {
                break;
            };
            let queue = sub.queue_mut(self.queue);
            let Some(entry) = queue.entries.get_mut(&seq) else {
                continue;
            };
            if self.queue == SubQueue::Main && entry.delivery_count >= max_deliveries {
                let description = format!(
                    "delivered {} times; the subscription allows {max_deliveries}",
                    entry.delivery_count
                );
                sub.dead_letter(seq, MAX_DELIVERY_EXCEEDED, &description, now);
                continue;
            }
            *next_token += 1;
            let token = *next_token;
            entry.delivery_count += 1;
            entry.lock = token;
            entry.visible_at = later(now, lock_duration);
            let delivery = Delivery::new(
                entry.message.clone(),
                entry.delivery_count,
                entry.enqueued_at,
                seq,
                self.subscription.clone(),
                Box::new(MemorySettle {
                    broker: Arc::clone(&self.broker),
                    handle: Arc::clone(&self.handle),
                    topic: self.topic.clone(),
                    subscription: self.subscription.clone(),
                    sub_id: self.sub_id,
                    queue: self.queue,
                    seq,
                    token,
                    settled: false,
                }),
            );
            let until = entry.visible_at;
            queue.waiting.insert((until, seq));
            out.push(delivery);
        }
        let next = sub.queue(self.queue).next_change();
        Ok((out, next))
    }
}

#[async_trait]
impl Receiver for MemoryReceiver {
    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        let deadline = later(Instant::now(), wait);
        let notify = Arc::clone(&self.notify);
        loop {
            self.handle.check_open()?;
            // Register for wake-ups before looking, so that a publish in between is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (deliveries, next) = self.try_take(max)?;
            if !deliveries.is_empty() || max == 0 {
                return Ok(deliveries);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            let wake = next.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.closed.changed() => {}
            }
        }
    }
}

/// Settlement of one memory delivery; releases the message when dropped unsettled.
struct MemorySettle {
    broker: Arc<Broker>,
    handle: Arc<Handle>,
    topic: String,
    subscription: String,
    sub_id: u64,
    queue: SubQueue,
    seq: u64,
    token: u64,
    settled: bool,
}

impl MemorySettle {
    fn lock_lost(&self) -> TransportError {
        TransportError::LockLost {
            subscription: self.subscription.clone(),
            sequence: self.seq,
        }
    }

    fn apply(&self, settlement: Settlement) -> Result<(), TransportError> {
        let now = Instant::now();
        let mut state = self.broker.lock();
        let sub = state.subscription_mut(&self.topic, &self.subscription, Some(self.sub_id))?;
        // A lock that expired is still honoured as long as nobody else received the message
        // since; once it was delivered again (new token) or settled by the other holder, the
        // lock is lost.
        if !sub.queue(self.queue).locked_by(self.seq, self.token) {
            return Err(self.lock_lost());
        }
        match settlement {
            Settlement::Ack => {
                sub.queue_mut(self.queue).remove(self.seq);
            }
            Settlement::Abandon { after } => {
                let queue = sub.queue_mut(self.queue);
                queue.release(self.seq, later(now, after), now);
                queue.notify.notify_waiters();
            }
            Settlement::DeadLetter(info) => match self.queue {
                SubQueue::Main => sub.dead_letter(self.seq, &info.reason, &info.description, now),
                SubQueue::DeadLetter => {
                    let source = sub.spec.name.clone();
                    let queue = &mut sub.dead;
                    if let Some(entry) = queue.entries.get_mut(&self.seq) {
                        mark_dead_lettered(
                            &mut entry.message,
                            &info.reason,
                            &info.description,
                            &source,
                        );
                    }
                    queue.release(self.seq, now, now);
                    queue.notify.notify_waiters();
                }
            },
        }
        Ok(())
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), TransportError> {
        let mut this = self;
        // On a closed handle the delivery stays unsettled; dropping it below releases it.
        this.handle.check_open()?;
        this.settled = true;
        this.apply(settlement)
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let now = Instant::now();
        let mut state = self.broker.lock();
        let Ok(sub) = state.subscription_mut(&self.topic, &self.subscription, Some(self.sub_id))
        else {
            return;
        };
        let queue = sub.queue_mut(self.queue);
        if queue.locked_by(self.seq, self.token) {
            queue.release(self.seq, now, now);
            queue.notify.notify_waiters();
        }
    }
}

/// A [`TransportFactory`](crate::conformance::TransportFactory) over one in-memory broker:
/// each [`connect`](crate::conformance::TransportFactory::connect) is a
/// [`MemoryTransport::reconnect`] onto it; names are made unique with a counter.
///
/// ```ignore
/// eventyard_testkit::transport_conformance!(eventyard_testkit::memory::MemoryFactory::new());
/// ```
#[derive(Debug, Default)]
pub struct MemoryFactory {
    broker: MemoryTransport,
    counter: std::sync::atomic::AtomicU64,
}

impl MemoryFactory {
    /// A factory over a new, empty in-memory broker.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl crate::conformance::TransportFactory for MemoryFactory {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(self.broker.reconnect())
    }

    fn unique(&self, base: &str) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{base}-{n}")
    }
}

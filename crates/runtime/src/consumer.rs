//! The consumer loop: receive, run handlers concurrently, classify, settle.
//!
//! Per delivery: parse and validate the envelope (a malformed message is dead-lettered with the
//! reason and never blocks the messages behind it) → run the handler with the envelope as the
//! task's current envelope (propagation), catching panics → classify the result with the retry
//! policy → ack, schedule a redelivery (abandon with delay: the loop keeps consuming), or
//! dead-letter with the failure context.
//!
//! Where handlers run: a received batch is split into one share per runtime worker. The first
//! share runs in the loop's own task (the *inline lane*, polled while the loop waits) when none of
//! its previous handlers is still running; the other shares run as tasks of their own. So a
//! message that arrives alone starts its handler without a task hop, while a batch still
//! spreads over the workers.
//!
//! Shutdown: the loop stops receiving, waits up to the grace period for running handlers, then
//! cancels the rest; a cancelled handler's delivery is released (redelivered), never lost.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use eventyard_core::{DeadLetterInfo, Delivery, Envelope, Receiver, Settlement, TransportError};
use futures::future::{Fuse, FusedFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::breaker::{CircuitBreaker, CircuitBreakerConfig, Permit};
use crate::bus::Bus;
use crate::context::{MessageContext, with_current};
use crate::guard::TenantScope;
use crate::handler::SharedHandler;
use crate::outcome::{ErrorKind, HandlerError, Outcome};
use crate::retry::RetryPolicy;

/// Settings of one consumer. Every field documents its default.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Handlers running at once. Default 32. A message whose handler has finished while the
    /// broker has not yet confirmed its settlement (ack, retry, dead-letter) frees its slot for
    /// the next message; up to `concurrency` such settlements may be pending, so at most twice
    /// `concurrency` messages are locked at once. The slot is not freed early when that many are.
    pub concurrency: usize,
    /// Retry policy. Default: [`RetryPolicy::default`] (5 attempts, 2 s → 2 min).
    pub retry: RetryPolicy,
    /// On shutdown, how long running handlers may take before being cancelled. Default 10 s.
    pub shutdown_grace: Duration,
    /// Longest single wait for messages (the loop re-checks shutdown between waits). Default 1 s.
    pub receive_wait: Duration,
    /// Circuit breaker for external-system failures; `None` disables it. Default: 5 consecutive
    /// external failures open it for 30 s.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Largest message body this consumer accepts; larger ones are dead-lettered as
    /// `MessageTooLarge` without being parsed. Default 256 KiB (Service Bus standard tier).
    pub max_message_bytes: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            concurrency: 32,
            retry: RetryPolicy::default(),
            shutdown_grace: Duration::from_secs(10),
            receive_wait: Duration::from_secs(1),
            circuit_breaker: Some(CircuitBreakerConfig::default()),
            max_message_bytes: 256 * 1024,
        }
    }
}

/// Counters of one consumer.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Deliveries acknowledged.
    pub acked: AtomicU64,
    /// Deliveries scheduled for redelivery.
    pub retried: AtomicU64,
    /// Deliveries dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Settlements that failed (e.g. lock lost).
    pub settle_errors: AtomicU64,
    /// Deliveries of a tenant outside the handler's scope (dead-lettered as security faults).
    pub tenant_rejected: AtomicU64,
}

/// A snapshot of [`ConsumerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ConsumerCounts {
    /// Deliveries acknowledged.
    pub acked: u64,
    /// Deliveries scheduled for redelivery.
    pub retried: u64,
    /// Deliveries dead-lettered.
    pub dead_lettered: u64,
    /// Settlements that failed.
    pub settle_errors: u64,
    /// Deliveries refused by the tenant guard.
    pub tenant_rejected: u64,
}

impl ConsumerStats {
    /// Current values.
    pub fn snapshot(&self) -> ConsumerCounts {
        ConsumerCounts {
            acked: self.acked.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            settle_errors: self.settle_errors.load(Ordering::Relaxed),
            tenant_rejected: self.tenant_rejected.load(Ordering::Relaxed),
        }
    }
}

/// Everything one consumer loop needs.
pub(crate) struct ConsumerSpec {
    pub(crate) bus: Bus,
    pub(crate) topic: String,
    pub(crate) subscription: Arc<str>,
    pub(crate) handler_name: Arc<str>,
    pub(crate) tenant_scope: TenantScope,
    pub(crate) breaker: Option<Arc<CircuitBreaker>>,
    pub(crate) handler: SharedHandler,
    pub(crate) options: ConsumerOptions,
    pub(crate) stats: Arc<ConsumerStats>,
}

pub(crate) async fn run(
    spec: ConsumerSpec,
    mut receiver: Box<dyn Receiver>,
    stop: watch::Receiver<bool>,
) {
    let spec = Arc::new(spec);
    let permits = Arc::new(Semaphore::new(spec.options.concurrency.max(1)));
    // Settlements awaiting the broker's confirmation after their handler's slot was freed.
    let settling = Arc::new(Semaphore::new(spec.options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    // The inline lane: deliveries run in this task, polled while the loop waits; how many of
    // their handlers are still running.
    let inline_running = AtomicUsize::new(0);
    let mut inline = FuturesUnordered::new();
    let mut failures: u32 = 0;
    // Whether the last receive returned more than one message.
    let mut batched = false;
    let workers = tokio::runtime::Handle::current()
        .metrics()
        .num_workers()
        .max(1);
    // Every wait below ends early on a stop: one future, registered with the signal once and
    // polled by each wait, rather than a new registration per wait (several per message).
    let stopped = stop_signal(stop.clone()).fuse();
    tokio::pin!(stopped);
    'outer: while !*stop.borrow() {
        // Claim only what can start now, so no message waits locked behind a full pipeline.
        // Inline deliveries keep running meanwhile (they free slots).
        let Some(Ok(first)) =
            alongside(permits.clone().acquire_owned(), &mut inline, &mut stopped).await
        else {
            break;
        };
        // Asked after a slot freed up, so a failure that just opened the circuit is seen: an
        // open circuit takes nothing (messages stay queued); half-open takes one trial.
        let permit = spec.breaker.as_ref().map_or(Permit::Flow, |b| b.permit());
        if let Permit::Wait(d) = permit {
            drop(first);
            if alongside(tokio::time::sleep(d), &mut inline, &mut stopped)
                .await
                .is_none()
            {
                break;
            }
            continue;
        }
        let max = if permit == Permit::Trial {
            1
        } else {
            // While messages come in batches, handlers settled by the same commit free their
            // slots together: let them all run before counting, so one claim takes them all
            // instead of one claim per freed slot. While they come one at a time, a yield would
            // only delay the next receive behind every other ready task (latency).
            if batched {
                tokio::task::yield_now().await;
            }
            permits.available_permits() + 1
        };
        // Not cancelled while inline deliveries progress: only a stop drops it.
        let receiving = receiver.receive(max, spec.options.receive_wait);
        let Some(batch) = alongside(receiving, &mut inline, &mut stopped).await else {
            break;
        };
        if permit == Permit::Trial
            && batch.as_ref().map_or(true, |b| b.is_empty())
            && let Some(b) = &spec.breaker
        {
            b.cancel_trial();
        }
        let batch = match batch {
            Ok(b) => {
                failures = 0;
                b
            }
            Err(TransportError::Closed) => break,
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(50u64 << failures.min(6));
                tracing::warn!(subscription = %spec.subscription, error = %e, ?backoff, "receive failed; retrying");
                if alongside(tokio::time::sleep(backoff), &mut inline, &mut stopped)
                    .await
                    .is_none()
                {
                    break;
                }
                continue;
            }
        };
        batched = batch.len() > 1;
        let mut first = Some(first);
        let mut ready = Vec::with_capacity(batch.len());
        for delivery in batch {
            let permit = match first.take() {
                Some(p) => p,
                None => match permits.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        // Cannot happen (we claimed no more than the free permits); release.
                        let _ = delivery.abandon(Duration::ZERO).await;
                        continue;
                    }
                },
            };
            ready.push((delivery, permit));
        }
        if *stop.borrow() {
            for (delivery, _) in ready {
                let _ = delivery.abandon(Duration::ZERO).await;
            }
            continue 'outer;
        }
        // One share per worker thread, each running its deliveries concurrently, rather than
        // one task per delivery: spawning (and waking a parked worker for) every message cost
        // more than a no-op handler. Each delivery still frees its slot on its own (see
        // `process`), and a slow handler does not hold up the others of its share.
        let share = ready.len().div_ceil(workers).max(1);
        let mut ready = ready.into_iter();
        // The inline lane: the first share runs in this task, polled while the loop waits, when
        // none of its handlers is still running — so a message arriving alone starts its
        // handler without waiting for another task to be scheduled (under load, one such hop
        // costs about the whole latency budget; docs/PERFORMANCE.md). A handler that computes
        // without yielding holds up receiving until it returns; the other shares run as tasks.
        if inline_running.load(Ordering::Acquire) == 0 {
            // The lane's futures borrow what this function owns: no reference counts to bump
            // per delivery.
            for (delivery, permit) in ready.by_ref().take(share) {
                let lane = LaneGuard::enter(&inline_running);
                inline.push(process(&spec, delivery, permit, &settling, Some(lane)));
            }
        }
        loop {
            let chunk: Vec<_> = ready.by_ref().take(share).collect();
            if chunk.is_empty() {
                break;
            }
            let spec = spec.clone();
            let settling = settling.clone();
            tasks.spawn(async move {
                let (spec, settling) = (&spec, &settling);
                let mut chunk = chunk.into_iter();
                if chunk.len() == 1 {
                    // One delivery: run it directly, without a `FuturesUnordered` to allocate
                    // and poll through.
                    if let Some((delivery, permit)) = chunk.next() {
                        process(spec, delivery, permit, settling, None).await;
                    }
                    return;
                }
                let mut running: FuturesUnordered<_> = chunk
                    .map(|(delivery, permit)| process(spec, delivery, permit, settling, None))
                    .collect();
                while running.next().await.is_some() {}
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    let grace = spec.options.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        tokio::join!(
            async { while tasks.join_next().await.is_some() {} },
            async { while inline.next().await.is_some() {} },
        )
    })
    .await;
    if drained.is_err() {
        tracing::warn!(subscription = %spec.subscription, "handlers still running after the grace period were cancelled; their messages are released");
        tasks.abort_all();
        // Dropping the inline futures drops their deliveries: released like the aborted ones.
        drop(inline);
        while tasks.join_next().await.is_some() {}
    }
}

/// Runs `fut` to its end while the inline lane's deliveries progress; `None` (and `fut`
/// dropped) if the consumer is told to stop first (`stopped` ends).
async fn alongside<T, F: Future<Output = ()>>(
    fut: impl Future<Output = T>,
    inline: &mut FuturesUnordered<F>,
    stopped: &mut Pin<&mut Fuse<impl Future<Output = ()>>>,
) -> Option<T> {
    if stopped.is_terminated() {
        return None;
    }
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            () = stopped.as_mut() => return None,
            Some(()) = inline.next(), if !inline.is_empty() => {}
            out = &mut fut => return Some(out),
        }
    }
}

/// Ends once `stop` is true or its sender is gone.
async fn stop_signal(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// One handler counted into the consumer's inline lane; counted out when dropped (its handler
/// returned, or its delivery was dropped unhandled).
struct LaneGuard<'a>(&'a AtomicUsize);

impl<'a> LaneGuard<'a> {
    fn enter(running: &'a AtomicUsize) -> Self {
        running.fetch_add(1, Ordering::AcqRel);
        LaneGuard(running)
    }
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What went wrong with one delivery, for the dead-letter context.
struct Failure {
    kind: ErrorKind,
    chain: Vec<String>,
}

/// Runs one delivery through its handler and settles it. `slot` (one of the consumer's
/// `concurrency` permits) is freed once the handler is done, if one of the `settling` permits
/// can take its place while the settlement is confirmed; otherwise it is held to the end.
async fn process(
    spec: &ConsumerSpec,
    delivery: Delivery,
    slot: tokio::sync::OwnedSemaphorePermit,
    settling: &Arc<Semaphore>,
    lane: Option<LaneGuard<'_>>,
) {
    let attempt = delivery.delivery_count;
    let size = delivery.message.body.len();
    let parsed = if size > spec.options.max_message_bytes {
        Err(None)
    } else {
        delivery.message.envelope().map_err(Some)
    };
    let (outcome, failure) = match parsed {
        Err(None) => {
            let msg = format!(
                "message body of {size} bytes exceeds this consumer's {}-byte limit",
                spec.options.max_message_bytes
            );
            (
                Outcome::DeadLetter {
                    reason: "MessageTooLarge".into(),
                    description: msg.clone(),
                },
                Some(Failure {
                    kind: ErrorKind::Validation,
                    chain: vec![msg],
                }),
            )
        }
        Err(Some(e)) => (
            Outcome::DeadLetter {
                reason: format!("MalformedEnvelope.{}", e.kind()),
                description: e.to_string(),
            },
            Some(Failure {
                kind: ErrorKind::Validation,
                chain: vec![e.to_string()],
            }),
        ),
        Ok(envelope) if !spec.tenant_scope.allows(&envelope.tenant_id) => {
            spec.stats.tenant_rejected.fetch_add(1, Ordering::Relaxed);
            let msg = format!(
                "envelope of tenant `{}` reached handler `{}`, whose scope excludes it",
                envelope.tenant_id, spec.handler_name
            );
            tracing::warn!(subscription = %spec.subscription, event_id = %envelope.event_id, "{msg}");
            (
                Outcome::DeadLetter {
                    reason: "TenantMismatch".into(),
                    description: msg.clone(),
                },
                Some(Failure {
                    kind: ErrorKind::Security,
                    chain: vec![msg],
                }),
            )
        }
        Ok(envelope) => {
            let replayed = matches!(
                delivery
                    .message
                    .properties
                    .get(eventyard_core::properties::names::REPLAYED),
                Some(eventyard_core::PropertyValue::Bool(true))
            ) || delivery
                .message
                .properties
                .get_str(eventyard_core::properties::names::REPLAYED)
                == Some("true");
            let (outcome, err) = run_handler(spec, envelope, attempt, replayed).await;
            if let Some(b) = &spec.breaker {
                b.record(err.as_ref().map(|e| e.kind()));
            }
            let failure = err.map(|e| Failure {
                kind: e.kind(),
                chain: e.chain().to_vec(),
            });
            (outcome, failure)
        }
    };
    // The handler is done: counted out of the inline lane (its settlement may still wait).
    drop(lane);
    let settlement = match &outcome {
        Outcome::Ack => Settlement::Ack,
        Outcome::Retry { after } => Settlement::Abandon { after: *after },
        Outcome::DeadLetter {
            reason,
            description,
        } => Settlement::DeadLetter(DeadLetterInfo {
            reason: reason.clone(),
            description: description.clone(),
            context: fault_context(spec, &delivery, reason, description, failure.as_ref()),
        }),
    };
    // The handler is done: free its slot for the next message while the broker confirms the
    // settlement (a commit, a flush), unless too many settlements are pending already.
    // Whichever permit is held is released when this function returns.
    let _held = match settling.clone().try_acquire_owned() {
        Ok(settling) => {
            drop(slot);
            settling
        }
        Err(_) => slot,
    };
    let counter = match &outcome {
        Outcome::Ack => &spec.stats.acked,
        Outcome::Retry { .. } => &spec.stats.retried,
        Outcome::DeadLetter { .. } => &spec.stats.dead_lettered,
    };
    let settled = match (settlement, failure) {
        // A retry carries the failure history to the next delivery (where the transport can).
        (Settlement::Abandon { after }, Some(f)) => {
            let now = chrono::Utc::now().to_rfc3339();
            let mut props = eventyard_core::Properties::new();
            if delivery
                .message
                .properties
                .get_str(FIRST_FAILURE_PROPERTY)
                .is_none()
            {
                props.insert(FIRST_FAILURE_PROPERTY, now.as_str());
            }
            props.insert(LAST_FAILURE_PROPERTY, now);
            props.insert(LAST_ERROR_PROPERTY, f.chain.join(": "));
            delivery.abandon_with(after, props).await
        }
        (settlement, _) => delivery.settle(settlement).await,
    };
    match settled {
        Ok(()) => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            spec.stats.settle_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subscription = %spec.subscription, error = %e, "settlement failed; the message will be redelivered");
        }
    }
}

/// The failure context stored with a dead letter (see `docs/ARCHITECTURE.md`).
fn fault_context(
    spec: &ConsumerSpec,
    delivery: &Delivery,
    reason: &str,
    description: &str,
    failure: Option<&Failure>,
) -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339();
    let kind = failure.map(|f| f.kind.as_str());
    let first = delivery
        .message
        .properties
        .get_str(FIRST_FAILURE_PROPERTY)
        .map(str::to_owned)
        .unwrap_or_else(|| now.clone());
    serde_json::json!({
        "handler": &*spec.handler_name,
        "subscription": &*spec.subscription,
        "topic": spec.topic,
        "errorKind": kind,
        "errors": failure.map(|f| f.chain.clone()).unwrap_or_else(|| vec![description.to_owned()]),
        // Over the error chain itself, not the outcome's wording (which adds attempt counts).
        "fingerprint": eventyard_core::fault::fingerprint(
            kind.unwrap_or(reason),
            &failure.map(|f| f.chain.join(": ")).unwrap_or_else(|| description.to_owned()),
            &spec.handler_name,
        ),
        "attempts": delivery.delivery_count,
        "firstFailureAt": first,
        "lastFailureAt": now,
        "host": host(),
        "pid": std::process::id(),
    })
}

/// Property carried across redeliveries (where the transport can modify a message on abandon)
/// with the time of the first failure; the dead-letter context reports it.
pub const FIRST_FAILURE_PROPERTY: &str = "cs-first-failure-at";
/// Property with the time of the latest failure before a redelivery.
pub const LAST_FAILURE_PROPERTY: &str = "cs-last-failure-at";
/// Property with the latest failure's message chain before a redelivery.
pub const LAST_ERROR_PROPERTY: &str = "cs-last-error";

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

async fn run_handler(
    spec: &ConsumerSpec,
    envelope: Envelope,
    attempt: u32,
    replayed: bool,
) -> (Outcome, Option<HandlerError>) {
    let envelope = Arc::new(envelope);
    let ctx = MessageContext::new(
        envelope.clone(),
        attempt,
        spec.subscription.clone(),
        spec.handler_name.clone(),
        replayed,
        spec.bus.clone(),
    );
    let handler = spec.handler.clone();
    // The call itself may panic before returning a future; catch both.
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        handler.handle_shared(&envelope, ctx)
    })) {
        Ok(f) => f,
        Err(p) => return panicked(&*p),
    };
    match with_current(envelope, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(())) => (Outcome::Ack, None),
        Ok(Err(e)) => (classify(spec, &e, attempt), Some(e)),
        Err(p) => panicked(&*p),
    }
}

fn panicked(p: &(dyn std::any::Any + Send)) -> (Outcome, Option<HandlerError>) {
    let description = format!("handler panicked: {}", panic_message(p));
    (
        Outcome::DeadLetter {
            reason: "HandlerPanicked".into(),
            description: description.clone(),
        },
        Some(HandlerError::new(ErrorKind::Panic, description)),
    )
}

fn classify(spec: &ConsumerSpec, e: &HandlerError, attempt: u32) -> Outcome {
    spec.options.retry.classify(e, attempt)
}

//! The bus over the embedded broker: propagation, classification, retries, poison messages,
//! panics, topology styles, graceful shutdown, and slots freed while settlements are confirmed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventyard::{
    Bus, BusError, Capabilities, ConsumerOptions, Delivery, Envelope, HandlerError, Message,
    MessageContext, OutgoingMessage, Properties, Receiver, RetryPolicy, Settle, Settlement,
    SubQueue, SubscriptionSpec, TopologyStyle, Transport, TransportError,
};
use tokio::sync::Semaphore;

mod common;
use common::{InvoiceIssued, OrderPlaced, tenant, wait_until};

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.db");
        Fixture { _dir: dir, path }
    }
    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
    fn bus(&self) -> Bus {
        Bus::new(std::sync::Arc::new(
            eventyard::sqlite::SqliteBroker::open_url(&self.url()).unwrap(),
        ))
    }
}

/// Publishes `OrderPlaced { n }` for `n` in `0..count`, tenant `connectsoft`.
async fn publish_orders(bus: &Bus, count: u32) {
    for n in 0..count {
        bus.publish(&tenant("connectsoft"), &OrderPlaced { n })
            .await
            .unwrap();
    }
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential(attempts, Duration::from_millis(100), Duration::from_secs(2))
}

/// A handler that counts the events it handles.
fn counting<E: Send + 'static>(
    n: &Arc<AtomicU32>,
) -> impl Fn(E, MessageContext) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
{
    let n = n.clone();
    move |_, _| {
        n.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

async fn dead_letters(bus: &Bus, topic: &str, sub: &str, n: usize) -> Vec<eventyard::Delivery> {
    let mut rx = bus
        .transport()
        .receiver(topic, sub, SubQueue::DeadLetter)
        .await
        .unwrap();
    let mut out = Vec::new();
    let t0 = Instant::now();
    while out.len() < n && t0.elapsed() < Duration::from_secs(10) {
        out.extend(
            rx.receive(n - out.len(), Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_inside_a_handler_propagates_ids() {
    let fx = Fixture::new();
    let bus = fx.bus();
    let seen: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    bus.subscription("billing.invoice")
        .handle(|e: OrderPlaced, ctx: MessageContext| async move {
            // One follow-up through the context, one straight through the bus: both inherit.
            ctx.publish(&InvoiceIssued { n: e.n })
                .await
                .map_err(|e| HandlerError::transient(e.to_string()))?;
            ctx.bus()
                .publish(ctx.tenant(), &InvoiceIssued { n: e.n + 100 })
                .await
                .map_err(|e| HandlerError::transient(e.to_string()))?;
            Ok(())
        })
        .await
        .unwrap();
    let s = seen.clone();
    bus.subscription("audit.invoices")
        .handle(move |_: InvoiceIssued, ctx: MessageContext| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(ctx.envelope().clone());
                Ok(())
            }
        })
        .await
        .unwrap();
    let root = Envelope::for_event(&OrderPlaced { n: 1 }, tenant("connectsoft")).unwrap();
    let root_id = root.event_id.clone();
    bus.publish_envelope(root.clone()).await.unwrap();
    wait_until("two invoices", || seen.lock().unwrap().len() == 2).await;
    for child in seen.lock().unwrap().iter() {
        assert_eq!(child.causation_id.as_ref(), Some(&root_id));
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.correlation_id, root.correlation_id);
        assert_eq!(child.tenant_id, root.tenant_id);
        assert_ne!(child.event_id, root_id);
    }
    // Outside a handler nothing is inherited.
    let id = bus
        .publish(&tenant("connectsoft"), &InvoiceIssued { n: 7 })
        .await
        .unwrap();
    wait_until("third invoice", || seen.lock().unwrap().len() == 3).await;
    let third = seen
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.event_id == id)
        .cloned()
        .unwrap();
    assert_eq!(third.causation_id, None);
    assert_ne!(third.trace_id, root.trace_id);
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_publish_from_a_handler_is_refused() {
    let fx = Fixture::new();
    let bus = fx.bus();
    let result: Arc<Mutex<Option<String>>> = Arc::default();
    let r = result.clone();
    bus.subscription("x.y")
        .handle(move |_: OrderPlaced, ctx: MessageContext| {
            let r = r.clone();
            async move {
                let e = ctx
                    .bus()
                    .publish(&tenant("acme"), &InvoiceIssued { n: 1 })
                    .await;
                *r.lock().unwrap() = Some(match e {
                    Err(BusError::CrossTenant { .. }) => "refused".into(),
                    other => format!("{other:?}"),
                });
                Ok(())
            }
        })
        .await
        .unwrap();
    bus.publish(&tenant("connectsoft"), &OrderPlaced { n: 1 })
        .await
        .unwrap();
    wait_until("handler ran", || result.lock().unwrap().is_some()).await;
    assert_eq!(result.lock().unwrap().as_deref(), Some("refused"));
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_with_growing_delays_without_blocking_others() {
    let fx = Fixture::new();
    let bus = fx.bus();
    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let others: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (a, o) = (attempts.clone(), others.clone());
    bus.subscription("flaky")
        .retry(fast_retry(5))
        .handle(move |e: OrderPlaced, _ctx: MessageContext| {
            let (a, o) = (a.clone(), o.clone());
            async move {
                if e.n != 0 {
                    o.lock().unwrap().push(Instant::now());
                    return Ok(());
                }
                let mut a = a.lock().unwrap();
                a.push(Instant::now());
                if a.len() <= 3 {
                    return Err(HandlerError::transient(format!(
                        "attempt {} failed",
                        a.len()
                    )));
                }
                Ok(())
            }
        })
        .await
        .unwrap();
    let t = tenant("connectsoft");
    let start = Instant::now();
    // One batch (one commit): the 20 others are queued behind the first from the start, so
    // "not delayed" does not depend on how fast 20 separate fsync'd commits are on a busy box.
    let batch = (0..=20)
        .map(|n| Envelope::for_event(&OrderPlaced { n }, t.clone()).unwrap())
        .collect();
    bus.publish_batch(batch).await.unwrap();
    wait_until("4 attempts", || attempts.lock().unwrap().len() == 4).await;
    let at = attempts.lock().unwrap().clone();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // Backoff 100 ms, 200 ms, 400 ms: each gap at least its delay, and growing.
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(200), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(400), "{gaps:?}");
    assert!(gaps[2] > gaps[0], "{gaps:?}");
    // The other 20 messages were handled while the first one waited for its retries.
    let others = others.lock().unwrap().clone();
    assert_eq!(others.len(), 20);
    assert!(
        others.iter().all(|t| *t < at[1]),
        "other messages were delayed behind the retrying one"
    );
    wait_until("acked", || bus.consumer_counts()[0].2.acked == 21).await;
    let c = bus.consumer_counts()[0].2;
    assert_eq!((c.acked, c.retried, c.dead_lettered), (21, 3, 0));
    assert!(start.elapsed() >= Duration::from_millis(700));
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_and_validation_errors_dead_letter_with_context() {
    let fx = Fixture::new();
    let bus = fx.bus();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    bus.subscription("strict")
        .retry(fast_retry(3))
        .handle(move |e: OrderPlaced, _ctx: MessageContext| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if e.n == 1 {
                    Err(HandlerError::validation("order has no lines"))
                } else {
                    Err(HandlerError::external("payment gateway down"))
                }
            }
        })
        .await
        .unwrap();
    let t = tenant("connectsoft");
    bus.publish(&t, &OrderPlaced { n: 1 }).await.unwrap();
    bus.publish(&t, &OrderPlaced { n: 2 }).await.unwrap();
    let dl = dead_letters(&bus, "OrderPlaced", "strict", 2).await;
    assert_eq!(dl.len(), 2);
    // Validation: 1 call; external: 3 attempts.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let mut reasons: Vec<(String, String)> = dl
        .iter()
        .map(|d| {
            let p = &d.message.properties;
            (
                p.get_str("cs-dead-letter-reason").unwrap().to_owned(),
                p.get_str("cs-dead-letter-description").unwrap().to_owned(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, "RetriesExhausted");
    assert!(reasons[0].1.contains("payment gateway down"), "{reasons:?}");
    assert!(reasons[0].1.contains("after 3 attempts"), "{reasons:?}");
    assert_eq!(reasons[1].0, "ValidationError");
    assert!(reasons[1].1.contains("order has no lines"));
    // The original envelope is intact in the dead-letter queue.
    for d in &dl {
        assert!(d.message.envelope().is_ok());
    }
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_do_not_block_good_ones() {
    let fx = Fixture::new();
    let bus = fx.bus();
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let consumer = bus
        .subscription("orders")
        .options(ConsumerOptions {
            concurrency: 1,
            retry: fast_retry(2),
            max_message_bytes: 8 * 1024,
            ..ConsumerOptions::default()
        })
        .handle(move |e: OrderPlaced, _ctx: MessageContext| {
            let h = h.clone();
            async move {
                if e.n == 666 {
                    panic!("boom on order 666");
                }
                h.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
    let t = tenant("connectsoft");
    let good = |n| -> OutgoingMessage {
        (&Envelope::for_event(&OrderPlaced { n }, t.clone()).unwrap()).into()
    };
    let raw = |body: &[u8]| {
        OutgoingMessage::from(Message {
            body: body.to_vec().into(),
            properties: Properties::new(),
        })
    };
    let valid = Envelope::for_event(&OrderPlaced { n: 1 }, t.clone()).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&valid.to_json()).unwrap();
    let mut wrong_types = json.clone();
    wrong_types["tenantId"] = serde_json::json!(5);
    let mut missing_tenant = json.clone();
    missing_tenant.as_object_mut().unwrap().remove("tenantId");
    json["payload"] = serde_json::json!({ "n": 1, "blob": "x".repeat(10_000) });
    let oversized = json;
    let mut wrong_type = Envelope::for_event(&InvoiceIssued { n: 1 }, t.clone()).unwrap();
    wrong_type.payload = serde_json::json!({"n": 1});
    let mut bad_payload = Envelope::for_event(&OrderPlaced { n: 1 }, t.clone()).unwrap();
    bad_payload.payload = serde_json::json!({"n": "not a number"});
    let batch = vec![
        raw(b"{\"eventId\": \"evt-trunc"),
        good(1),
        raw(b"\xff\xfe not utf-8"),
        good(2),
        raw(&serde_json::to_vec(&wrong_types).unwrap()),
        raw(&serde_json::to_vec(&missing_tenant).unwrap()),
        raw(&serde_json::to_vec(&oversized).unwrap()),
        (&wrong_type).into(),
        (&bad_payload).into(),
        good(666),
        good(3),
    ];
    bus.transport().publish("OrderPlaced", batch).await.unwrap();
    let dl = dead_letters(&bus, "OrderPlaced", "orders", 8).await;
    wait_until("good handled", || handled.load(Ordering::SeqCst) == 3).await;
    let mut got: Vec<(String, String)> = dl
        .iter()
        .map(|d| {
            let p = &d.message.properties;
            (
                p.get_str("cs-dead-letter-reason").unwrap().to_owned(),
                p.get_str("cs-dead-letter-description").unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let reasons: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        reasons,
        vec![
            "HandlerPanicked",
            "MalformedEnvelope.InvalidUtf8",
            "MalformedEnvelope.MalformedJson",
            "MalformedEnvelope.MalformedJson",
            "MalformedEnvelope.MissingField",
            "MessageTooLarge",
            "ValidationError",
            "ValidationError",
        ]
    );
    let all = format!("{got:?}");
    for needle in [
        "boom on order 666",
        "UnknownEventType",
        "PayloadMismatch",
        "field `tenantId`",
        "`tenantId` is required but missing",
        "exceeds this consumer's 8192-byte limit",
        "invalid byte at offset 0",
    ] {
        assert!(all.contains(needle), "`{needle}` not in {all}");
    }
    // The consumer survived all of it (including the panic) and is still consuming.
    bus.publish(&t, &OrderPlaced { n: 4 }).await.unwrap();
    wait_until("still consuming", || handled.load(Ordering::SeqCst) == 4).await;
    assert_eq!(consumer.counts().dead_lettered, 8);
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_per_context_routes_by_type_filter() {
    let fx = Fixture::new();
    let bus = Bus::with_style(
        eventyard::connect(&fx.url()).await.unwrap(),
        TopologyStyle::PerContext,
    );
    let orders = Arc::new(AtomicU32::new(0));
    let invoices = Arc::new(AtomicU32::new(0));
    let c1 = bus
        .subscription("sales.orders")
        .handle(counting::<OrderPlaced>(&orders))
        .await
        .unwrap();
    bus.subscription("sales.invoices")
        .handle(counting::<InvoiceIssued>(&invoices))
        .await
        .unwrap();
    assert_eq!(c1.spec().topic, "sales");
    publish_orders(&bus, 3).await;
    bus.publish(&tenant("connectsoft"), &InvoiceIssued { n: 9 })
        .await
        .unwrap();
    wait_until("routed", || {
        orders.load(Ordering::SeqCst) == 3 && invoices.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(orders.load(Ordering::SeqCst), 3);
    assert_eq!(invoices.load(Ordering::SeqCst), 1);
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_loses_nothing() {
    let fx = Fixture::new();
    let handled = Arc::new(AtomicU32::new(0));
    {
        let bus = fx.bus();
        let h = handled.clone();
        bus.subscription("slow")
            .concurrency(2)
            .handle(move |_: OrderPlaced, _c: MessageContext| {
                let h = h.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .await
            .unwrap();
        let t = tenant("connectsoft");
        for n in 0..10 {
            bus.publish(&t, &OrderPlaced { n }).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        bus.shutdown().await.unwrap();
        // The two in flight finished during shutdown; the rest were never started.
        assert_eq!(handled.load(Ordering::SeqCst), 2);
    }
    // Reopen: the 8 others are still there, and available at once (not locked).
    let bus = fx.bus();
    let mut rx = bus
        .transport()
        .receiver("OrderPlaced", "slow", SubQueue::Main)
        .await
        .unwrap();
    let mut left = 0;
    let t0 = Instant::now();
    while left < 8 && t0.elapsed() < Duration::from_secs(3) {
        for d in rx.receive(10, Duration::from_millis(200)).await.unwrap() {
            left += 1;
            d.ack().await.unwrap();
        }
    }
    assert_eq!(left, 8);
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_expired_releases_the_message() {
    let fx = Fixture::new();
    {
        let bus = fx.bus();
        bus.subscription("stuck")
            .options(ConsumerOptions {
                shutdown_grace: Duration::from_millis(100),
                ..ConsumerOptions::default()
            })
            .handle(|_: OrderPlaced, _c: MessageContext| async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
            .await
            .unwrap();
        bus.publish(&tenant("connectsoft"), &OrderPlaced { n: 1 })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        bus.shutdown().await.unwrap();
    }
    let bus = fx.bus();
    let mut rx = bus
        .transport()
        .receiver("OrderPlaced", "stuck", SubQueue::Main)
        .await
        .unwrap();
    // Released at cancellation, not after the 30 s lock: available now, second delivery.
    let got = rx.receive(1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery_count, 2);
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_pauses_consumption_after_external_failures() {
    let fx = Fixture::new();
    let bus = fx.bus();
    let calls: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, h) = (calls.clone(), healthy.clone());
    let consumer = bus
        .subscription("gateway")
        .concurrency(1)
        .retry(RetryPolicy::interval(10, Duration::from_millis(50)))
        .options(ConsumerOptions {
            concurrency: 1,
            retry: RetryPolicy::interval(10, Duration::from_millis(50)),
            circuit_breaker: Some(eventyard::CircuitBreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_millis(600),
            }),
            ..ConsumerOptions::default()
        })
        .handle(move |_: OrderPlaced, _ctx: MessageContext| {
            let (c, h) = (c.clone(), h.clone());
            async move {
                let ok = h.load(Ordering::SeqCst);
                c.lock().unwrap().push((Instant::now(), ok));
                if ok {
                    Ok(())
                } else {
                    Err(HandlerError::external("payment gateway unreachable"))
                }
            }
        })
        .await
        .unwrap();
    let t = tenant("connectsoft");
    for n in 0..5 {
        bus.publish(&t, &OrderPlaced { n }).await.unwrap();
    }
    wait_until("3 failures", || calls.lock().unwrap().len() >= 3).await;
    let opened_at = calls.lock().unwrap()[2].0;
    assert_eq!(
        consumer.breaker_state(),
        Some(eventyard::BreakerState::Open)
    );
    // The system recovers while the circuit is open; nothing is attempted until the trial.
    healthy.store(true, Ordering::SeqCst);
    wait_until("all acked", || consumer.counts().acked == 5).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        8,
        "3 failures, then the trial and the rest: {calls:?}"
    );
    let trial = calls[3].0;
    assert!(
        trial - opened_at >= Duration::from_millis(550),
        "a message was attempted {:?} after the circuit opened",
        trial - opened_at
    );
    assert_eq!(
        consumer.breaker_state(),
        Some(eventyard::BreakerState::Closed)
    );
    assert_eq!(
        consumer.counts().dead_lettered,
        0,
        "no attempts were burnt while open"
    );
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_context_carries_the_failure_history() {
    use eventyard::sqlite::dlq::{self, DlqQuery};
    let fx = Fixture::new();
    let bus = fx.bus();
    let consumer = bus
        .subscription("payments.capture")
        .handler_name("capture-payment")
        .retry(RetryPolicy::interval(3, Duration::from_millis(150)))
        .handle(|e: OrderPlaced, _ctx: MessageContext| async move {
            Err(
                HandlerError::external(format!("gateway timeout after {} ms", 3000 + e.n))
                    .context("capturing payment"),
            )
        })
        .await
        .unwrap();
    bus.publish(&tenant("connectsoft"), &OrderPlaced { n: 7 })
        .await
        .unwrap();
    wait_until("dead-lettered", || consumer.counts().dead_lettered == 1).await;
    let broker =
        eventyard::sqlite::SqliteBroker::open(eventyard::sqlite::SqliteConfig::new(&fx.path))
            .unwrap();
    let entries = dlq::list(&broker, &DlqQuery::new().subscription("payments.capture"))
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.reason, "RetriesExhausted");
    assert_eq!(e.handler.as_deref(), Some("capture-payment"));
    assert_eq!(e.error_kind.as_deref(), Some("External"));
    assert_eq!(
        e.errors,
        vec![
            "capturing payment".to_owned(),
            "gateway timeout after 3007 ms".to_owned()
        ]
    );
    assert_eq!(e.attempts, Some(3));
    let (first, last) = (e.first_failure_at.unwrap(), e.last_failure_at.unwrap());
    assert!(
        last - first >= chrono::Duration::milliseconds(290),
        "{first} .. {last}"
    );
    assert!(e.host.as_deref().is_some_and(|h| !h.is_empty()));
    assert_eq!(e.pid, Some(std::process::id()));
    assert_eq!(e.event_type.as_deref(), Some("OrderPlaced"));
    assert_eq!(e.tenant.as_deref(), Some("connectsoft"));
    // Similar faults (other numbers) share the fingerprint.
    assert_eq!(
        e.fingerprint,
        eventyard::core::fault::fingerprint(
            "External",
            "capturing payment: gateway timeout after 99 ms",
            "capture-payment"
        )
    );
    bus.shutdown().await.unwrap();
    eventyard::Transport::close(&broker).await.unwrap();
}

/// The embedded broker, except that every settlement waits for a permit of `gate` first: a
/// broker slow to confirm acknowledgements.
struct SlowSettles {
    inner: Arc<dyn Transport>,
    gate: Arc<Semaphore>,
}

struct GatedReceiver {
    inner: Box<dyn Receiver>,
    gate: Arc<Semaphore>,
}

struct GatedSettle {
    inner: Delivery,
    gate: Arc<Semaphore>,
}

#[async_trait]
impl Settle for GatedSettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), TransportError> {
        let _permit = self.gate.acquire().await.unwrap();
        self.inner.settle(settlement).await
    }
}

#[async_trait]
impl Receiver for GatedReceiver {
    async fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        let batch = self.inner.receive(max, wait).await?;
        Ok(batch
            .into_iter()
            .map(|d| {
                Delivery::new(
                    d.message.clone(),
                    d.delivery_count,
                    d.enqueued_at,
                    d.sequence,
                    d.subscription.clone(),
                    Box::new(GatedSettle {
                        inner: d,
                        gate: self.gate.clone(),
                    }),
                )
            })
            .collect())
    }
}

#[async_trait]
impl Transport for SlowSettles {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn ensure_subscription(&self, spec: &SubscriptionSpec) -> Result<(), TransportError> {
        self.inner.ensure_subscription(spec).await
    }
    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), TransportError> {
        self.inner.delete_subscription(topic, name).await
    }
    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), TransportError> {
        self.inner.publish(topic, messages).await
    }
    async fn receiver(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Box<dyn Receiver>, TransportError> {
        Ok(Box::new(GatedReceiver {
            inner: self.inner.receiver(topic, subscription, queue).await?,
            gate: self.gate.clone(),
        }))
    }
    async fn close(&self) -> Result<(), TransportError> {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_handler_frees_its_slot_while_its_ack_is_confirmed_up_to_a_bound() {
    let fx = Fixture::new();
    let broker = eventyard::sqlite::SqliteBroker::open_url(&fx.url()).unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let bus = Bus::new(Arc::new(SlowSettles {
        inner: Arc::new(broker),
        gate: gate.clone(),
    }));
    let handled = Arc::new(AtomicU32::new(0));
    let consumer = bus
        .subscription("orders")
        .options(ConsumerOptions {
            concurrency: 1,
            ..ConsumerOptions::default()
        })
        .handle(counting::<OrderPlaced>(&handled))
        .await
        .unwrap();
    publish_orders(&bus, 3).await;
    // One handler at a time. The first's ack waits at the gate, yet the second handler runs:
    // its slot was freed. The second's ack finds the one settling place taken and keeps its
    // slot, so the third waits.
    wait_until("two handlers ran", || handled.load(Ordering::SeqCst) == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 2, "the bound was not kept");
    assert_eq!(consumer.counts().acked, 0, "nothing confirmed yet");
    gate.add_permits(100);
    wait_until("all acked", || consumer.counts().acked == 3).await;
    assert_eq!(handled.load(Ordering::SeqCst), 3);
    bus.shutdown().await.unwrap();
}

/// The consumer hands a handler the envelope it shares with the handler's context
/// (`EnvelopeHandler::handle_shared`): the same allocation, not a copy. Typed handlers decode
/// from it; handlers that need their own copy get one from the default method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_get_the_envelope_shared_with_their_context() {
    type Handled =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send>>;
    struct Shared {
        shared: Arc<AtomicU32>,
        copied: Arc<AtomicU32>,
    }
    impl eventyard::EnvelopeHandler for Shared {
        fn handle(&self, _envelope: Envelope, _ctx: MessageContext) -> Handled {
            self.copied.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
        fn handle_shared(&self, envelope: &Arc<Envelope>, ctx: MessageContext) -> Handled {
            let same = std::ptr::eq(&**envelope, ctx.envelope());
            let shared = self.shared.clone();
            Box::pin(async move {
                if !same {
                    return Err(HandlerError::validation("the context holds a copy"));
                }
                shared.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }
    let fx = Fixture::new();
    let bus = fx.bus();
    let (shared, copied) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    bus.subscription("shipping.orders")
        .topic("OrderPlaced")
        .handle_envelopes(Shared {
            shared: shared.clone(),
            copied: copied.clone(),
        })
        .await
        .unwrap();
    publish_orders(&bus, 3).await;
    wait_until("three shared deliveries", || {
        shared.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(copied.load(Ordering::SeqCst), 0);
    bus.shutdown().await.unwrap();
}

/// `handle_shared_envelopes`: the closure gets the envelope its context holds (the same
/// allocation, no copy), and the messages are acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_envelope_closure_gets_the_contexts_envelope() {
    let fx = Fixture::new();
    let bus = fx.bus();
    let (shared, copied) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (s, c) = (shared.clone(), copied.clone());
    let consumer = bus
        .subscription("shipping.orders")
        .topic("OrderPlaced")
        .handle_shared_envelopes(move |env: Arc<Envelope>, ctx: MessageContext| {
            let counter = if std::ptr::eq(&*env, ctx.envelope()) {
                &s
            } else {
                &c
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let n = env.payload["n"].as_u64();
            async move {
                match n {
                    Some(_) => Ok(()),
                    None => Err(HandlerError::validation("no `n` in the payload")),
                }
            }
        })
        .await
        .unwrap();
    publish_orders(&bus, 3).await;
    wait_until("three acked", || consumer.counts().acked == 3).await;
    assert_eq!(shared.load(Ordering::SeqCst), 3);
    assert_eq!(copied.load(Ordering::SeqCst), 0, "a handler got a copy");
    bus.shutdown().await.unwrap();
}

/// The task each handled message ran in.
type TaskIds = Arc<Mutex<Vec<Option<tokio::task::Id>>>>;

async fn record_tasks(bus: &Bus, concurrency: usize) -> TaskIds {
    let ids: TaskIds = Arc::default();
    let seen = ids.clone();
    bus.subscription("shipping.orders")
        .topic("OrderPlaced")
        .concurrency(concurrency)
        .handle_envelopes(move |_env: Envelope, _ctx: MessageContext| {
            seen.lock().unwrap().push(tokio::task::try_id());
            async { Ok::<(), HandlerError>(()) }
        })
        .await
        .unwrap();
    ids
}

/// A message that arrives alone runs its handler in the consumer's own task (the inline lane:
/// no hop to a spawned task), so two messages arriving one after the other run in the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arriving_alone_runs_in_the_consumers_own_task() {
    let fx = Fixture::new();
    let bus = fx.bus();
    let ids = record_tasks(&bus, 8).await;
    for n in 0..2 {
        bus.publish(&tenant("connectsoft"), &OrderPlaced { n })
            .await
            .unwrap();
        wait_until("the message handled", || {
            ids.lock().unwrap().len() == n as usize + 1
        })
        .await;
    }
    let ids = ids.lock().unwrap().clone();
    assert!(ids[0].is_some(), "handlers run in a task");
    assert_eq!(
        ids[0], ids[1],
        "one after the other, both in the consumer's task"
    );
    bus.shutdown().await.unwrap();
}

/// A batch still spreads over the runtime's workers: the first share runs in the consumer's
/// task, the rest in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_in_more_than_one_task() {
    let fx = Fixture::new();
    let bus = fx.bus();
    bus.transport()
        .ensure_subscription(&SubscriptionSpec::new("OrderPlaced", "shipping.orders"))
        .await
        .unwrap();
    for n in 0..20 {
        bus.publish(&tenant("connectsoft"), &OrderPlaced { n })
            .await
            .unwrap();
    }
    let ids = record_tasks(&bus, 20).await;
    wait_until("twenty messages handled", || {
        ids.lock().unwrap().len() == 20
    })
    .await;
    let distinct: std::collections::HashSet<_> = ids.lock().unwrap().iter().copied().collect();
    assert!(
        distinct.len() >= 2,
        "one task ran the whole batch: {distinct:?}"
    );
    bus.shutdown().await.unwrap();
}

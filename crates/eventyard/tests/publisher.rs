//! The pipelined publisher (`Bus::publisher`) over the embedded broker: every batch stored and
//! confirmed through its receipt, the in-flight bound, failures reported per batch, order with
//! one batch in flight, and propagation from a handler.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventyard::{
    Bus, BusError, Capabilities, Envelope, HandlerError, MessageContext, OutgoingMessage, Receiver,
    SubQueue, SubscriptionSpec, TopologyStyle, Transport, TransportError,
};
use tokio::sync::Semaphore;

mod common;
use common::{InvoiceIssued, OrderPlaced, tenant, wait_until};

fn orders(range: std::ops::Range<u32>) -> Vec<Envelope> {
    range
        .map(|n| Envelope::for_event(&OrderPlaced { n }, tenant("connectsoft")).unwrap())
        .collect()
}

fn broker(dir: &tempfile::TempDir) -> Arc<dyn Transport> {
    let url = format!("sqlite://{}", dir.path().join("bus.db").display());
    Arc::new(eventyard::sqlite::SqliteBroker::open_url(&url).unwrap())
}

/// The embedded broker behind a gate: each publish call waits for a permit of `gate` (none
/// waits when `gate` is `None`), fails while `fail` is set, and is counted.
struct Gated {
    inner: Arc<dyn Transport>,
    gate: Option<Arc<Semaphore>>,
    fail: AtomicBool,
    publishes: AtomicU32,
}

impl Gated {
    fn new(inner: Arc<dyn Transport>, gate: Option<Arc<Semaphore>>) -> Arc<Self> {
        Arc::new(Gated {
            inner,
            gate,
            fail: AtomicBool::new(false),
            publishes: AtomicU32::new(0),
        })
    }
}

#[async_trait]
impl Transport for Gated {
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
        self.publishes.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(TransportError::Unavailable {
                backend: "test",
                message: "the broker is down".into(),
            });
        }
        self.inner.publish(topic, messages).await
    }
    async fn receiver(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Box<dyn Receiver>, TransportError> {
        self.inner.receiver(topic, subscription, queue).await
    }
    async fn close(&self) -> Result<(), TransportError> {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_are_all_stored_and_confirmed_by_their_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new(broker(&dir));
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let s = seen.clone();
    bus.subscription("billing.orders")
        .handle(move |e: OrderPlaced, _ctx: MessageContext| {
            s.lock().unwrap().push(e.n);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .await
        .unwrap();
    let publisher = bus.publisher(3);
    let mut receipts = Vec::new();
    for b in 0..10 {
        let receipt = publisher.send(orders(b * 50..(b + 1) * 50)).await.unwrap();
        assert_eq!(receipt.len(), 50);
        assert!(publisher.in_flight() <= 3);
        receipts.push(receipt);
    }
    for receipt in receipts {
        receipt.await.unwrap();
    }
    publisher.idle().await;
    assert_eq!(publisher.in_flight(), 0);
    wait_until("500 handled", || seen.lock().unwrap().len() == 500).await;
    let mut all = seen.lock().unwrap().clone();
    all.sort_unstable();
    assert_eq!(all, (0..500).collect::<Vec<_>>(), "each exactly once");
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let transport = Gated::new(broker(&dir), Some(gate.clone()));
    let bus = Bus::new(transport.clone());
    let publisher = bus.publisher(2);
    let first = publisher.send(orders(0..3)).await.unwrap();
    let second = publisher.send(orders(3..6)).await.unwrap();
    assert_eq!(publisher.in_flight(), 2);
    // Both slots are taken by publishes held at the gate: the third send waits.
    let third = publisher.send(orders(6..9));
    tokio::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third batch went out with two in flight"
    );
    wait_until("both publishes started", || {
        transport.publishes.load(Ordering::SeqCst) == 2
    })
    .await;
    gate.add_permits(1);
    let third = third.await.unwrap();
    gate.add_permits(2);
    for receipt in [first, second, third] {
        receipt.await.unwrap();
    }
    assert_eq!(transport.publishes.load(Ordering::SeqCst), 3);
    publisher.idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_reported_by_its_receipt_and_an_invalid_one_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let transport = Gated::new(broker(&dir), None);
    let bus = Bus::with_style(transport.clone(), TopologyStyle::PerContext);
    bus.register::<OrderPlaced>();
    let publisher = bus.publisher(4);

    transport.fail.store(true, Ordering::SeqCst);
    let failed = publisher.send(orders(0..5)).await.unwrap();
    match failed.await {
        Err(BusError::Transport(TransportError::Unavailable { message, .. })) => {
            assert_eq!(message, "the broker is down")
        }
        other => panic!("expected the transport's failure, got {other:?}"),
    }
    transport.fail.store(false, Ordering::SeqCst);
    publisher.send(orders(5..10)).await.unwrap().await.unwrap();
    assert_eq!(transport.publishes.load(Ordering::SeqCst), 2);

    // An envelope that cannot be routed (its type's context is unknown) fails the send; nothing
    // of its batch goes out.
    let mut batch = orders(10..12);
    batch.push(
        Envelope::for_event(&InvoiceIssued { n: 1 }, tenant("connectsoft")).unwrap(), // not registered
    );
    match publisher.send(batch).await {
        Err(BusError::UnknownContext(t)) => assert_eq!(t, "InvoiceIssued"),
        other => panic!("expected UnknownContext, got {other:?}"),
    }
    publisher.idle().await;
    assert_eq!(transport.publishes.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_batch_in_flight_batches_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new(broker(&dir));
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let s = seen.clone();
    bus.subscription("billing.orders")
        .options(eventyard::ConsumerOptions {
            concurrency: 1,
            ..eventyard::ConsumerOptions::default()
        })
        .handle(move |e: OrderPlaced, _ctx: MessageContext| {
            s.lock().unwrap().push(e.n);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .await
        .unwrap();
    let publisher = bus.publisher(1);
    let mut receipts = Vec::new();
    for b in 0..20 {
        receipts.push(publisher.send(orders(b * 5..(b + 1) * 5)).await.unwrap());
    }
    for receipt in receipts {
        receipt.await.unwrap();
    }
    wait_until("100 handled", || seen.lock().unwrap().len() == 100).await;
    assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
    bus.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_from_a_handler_inherits_from_the_handled_event() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::new(broker(&dir));
    bus.subscription("billing.invoice")
        .handle(|e: OrderPlaced, ctx: MessageContext| async move {
            let publisher = ctx.bus().publisher(2);
            let invoices = (0..3)
                .map(|k| {
                    Envelope::for_event(&InvoiceIssued { n: e.n * 10 + k }, tenant("connectsoft"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| HandlerError::permanent(e.to_string()))?;
            let receipt = publisher
                .send(invoices)
                .await
                .map_err(|e| HandlerError::transient(e.to_string()))?;
            receipt
                .await
                .map_err(|e| HandlerError::transient(e.to_string()))
        })
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let s = seen.clone();
    bus.subscription("audit.invoices")
        .handle(move |_: InvoiceIssued, ctx: MessageContext| {
            s.lock().unwrap().push(ctx.envelope().clone());
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .await
        .unwrap();
    let root = Envelope::for_event(&OrderPlaced { n: 1 }, tenant("connectsoft")).unwrap();
    bus.publish_envelope(root.clone()).await.unwrap();
    wait_until("three invoices", || seen.lock().unwrap().len() == 3).await;
    for child in seen.lock().unwrap().iter() {
        assert_eq!(child.causation_id.as_ref(), Some(&root.event_id));
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.correlation_id, root.correlation_id);
    }
    bus.shutdown().await.unwrap();
}

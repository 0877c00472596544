//! The standing consumer of a receiver: what its consumer was pushed and no `receive` took is
//! given back — after an idle period, or when the transport closes — without counting a
//! delivery, and a receive asking for more than the consumer's prefetch gets a bigger one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{AmqpFactory, TEST_PREFIX, depth};
use eventyard_core::{Delivery, OutgoingMessage, Receiver, SubQueue, SubscriptionSpec, Transport};
use eventyard_testkit::conformance::TransportFactory;
use eventyard_testkit::helpers::{
    ack_all, assert_nothing, event_id_of, message, outgoing_event_id, receive_exactly,
};
use eventyard_testkit::services::{Service, require};
use tokio::time::Instant;

const PATIENCE: Duration = Duration::from_secs(5);

/// One case: a subscription on a fresh topic, its queue, and messages for it.
struct Case {
    url: String,
    factory: AmqpFactory,
    transport: Arc<dyn Transport>,
    spec: SubscriptionSpec,
    queue: String,
    sent: Vec<OutgoingMessage>,
}

impl Case {
    /// `None` (test skipped) without a broker.
    async fn new(n: usize) -> Option<Case> {
        let url = require(Service::Amqp)?;
        let factory = AmqpFactory::new(url.clone());
        let transport = factory.connect().await;
        let topic = factory.unique("standing");
        let spec = SubscriptionSpec::new(&topic, factory.unique("standing-s"))
            .lock_duration(Duration::from_secs(30));
        transport.ensure_subscription(&spec).await.expect("ensure");
        let queue = format!("{TEST_PREFIX}.{topic}:{}", spec.name);
        let sent = (0..n).map(|_| message("tenant-a", "OrderPlaced")).collect();
        Some(Case {
            url,
            factory,
            transport,
            spec,
            queue,
            sent,
        })
    }

    async fn receiver_on(&self, transport: &dyn Transport) -> Box<dyn Receiver> {
        transport
            .receiver(&self.spec.topic, &self.spec.name, SubQueue::Main)
            .await
            .expect("receiver")
    }

    async fn receiver(&self) -> Box<dyn Receiver> {
        self.receiver_on(&*self.transport).await
    }

    /// Publishes `sent[range]`.
    async fn publish(&self, range: std::ops::Range<usize>) {
        self.transport
            .publish(&self.spec.topic, self.sent[range].to_vec())
            .await
            .expect("publish");
    }

    /// Messages ready in the queue.
    async fn depth(&self) -> u32 {
        depth(&self.url, &self.queue).await
    }
}

fn assert_uncounted(got: &[Delivery]) {
    assert!(
        got.iter().all(|d| d.delivery_count == 1),
        "a message never handed out was counted: {got:?}"
    );
}

/// Messages pushed to a receiver that stopped asking are held by its consumer (not ready in
/// the queue) only until its idle period ends; then another receiver gets them, delivery count
/// still 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_receiver_gives_its_buffer_back_uncounted() {
    let Some(case) = Case::new(4).await else {
        return;
    };
    let mut idle = case.receiver().await;
    // One receive with room for 4 opens a consumer with prefetch 4; then the receiver stops.
    case.publish(0..1).await;
    let first = idle.receive(4, PATIENCE).await.expect("receive");
    assert_eq!(first.len(), 1);
    ack_all(first).await;
    let published_at = Instant::now();
    case.publish(1..4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        case.depth().await,
        0,
        "the idle receiver's consumer should hold the 3 messages for now"
    );

    let mut other = case.receiver().await;
    let got = receive_exactly(&mut *other, 3, PATIENCE).await;
    assert!(
        published_at.elapsed() >= Duration::from_millis(300),
        "given back after {:?}, sooner than the idle period",
        published_at.elapsed()
    );
    let mut ids: Vec<String> = got.iter().map(event_id_of).collect();
    let mut expected: Vec<String> = case.sent[1..].iter().map(outgoing_event_id).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
    assert_uncounted(&got);
    ack_all(got).await;
    assert_nothing(&mut *idle, Duration::from_millis(300)).await;
    assert_nothing(&mut *other, Duration::from_millis(300)).await;
}

/// Closing the transport gives back what a live receiver's consumer buffered, uncounted: a
/// new connection receives it with delivery count 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_gives_the_buffer_back_uncounted() {
    let Some(case) = Case::new(3).await else {
        return;
    };
    let mut rx = case.receiver().await;
    case.publish(0..1).await;
    let first = rx.receive(3, PATIENCE).await.expect("receive");
    assert_eq!(first.len(), 1);
    ack_all(first).await;
    case.publish(1..3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(case.depth().await, 0, "buffered by the consumer");
    case.transport.close().await.expect("close");
    drop(rx);

    let again = case.factory.connect().await;
    let mut rx = case.receiver_on(&*again).await;
    let got = receive_exactly(&mut *rx, 2, PATIENCE).await;
    assert_uncounted(&got);
    ack_all(got).await;
    assert_nothing(&mut *rx, Duration::from_millis(300)).await;
}

/// A receive asking for more than the consumer's prefetch replaces the consumer with a bigger
/// one: after a receive of 1, receives of 20 get a consumer that the broker pushes the whole
/// backlog to (unacknowledged), instead of one message at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_batch_gets_a_larger_prefetch() {
    let Some(case) = Case::new(21).await else {
        return;
    };
    let mut rx = case.receiver().await;
    case.publish(0..1).await;
    ack_all(receive_exactly(&mut *rx, 1, PATIENCE).await).await;
    case.publish(1..21).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(case.depth().await, 19, "prefetch 1: one message pushed");
    // The first receive of 20 replaces the consumer (handing out what the old one had), the
    // next one starts the new consumer.
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(rx.receive(20, PATIENCE).await.expect("receive"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        case.depth().await,
        0,
        "the new consumer (prefetch 20) should hold the whole backlog"
    );
    got.extend(receive_exactly(&mut *rx, 20 - got.len(), PATIENCE).await);
    ack_all(got).await;
    assert_nothing(&mut *rx, Duration::from_millis(300)).await;
}

/// A broker redelivery (its consumer's connection closed with it unsettled) that an idle
/// receiver's consumer was pushed and gave back keeps that delivery counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_given_back_stays_counted() {
    let Some(case) = Case::new(1).await else {
        return;
    };
    case.publish(0..1).await;
    let crashing = case.factory.connect().await;
    let mut first = case.receiver_on(&*crashing).await;
    let held = receive_exactly(&mut *first, 1, PATIENCE).await.remove(0);
    // Another receiver opens its consumer (nothing to receive yet), then stops asking.
    let mut idle = case.receiver().await;
    let nothing = idle
        .receive(4, Duration::from_millis(50))
        .await
        .expect("receive");
    assert!(nothing.is_empty());
    std::mem::forget(held); // a crash: no release
    crashing.close().await.expect("close");
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        case.depth().await,
        0,
        "the redelivery went to the idle consumer"
    );

    let mut other = case.receiver().await;
    let again = receive_exactly(&mut *other, 1, PATIENCE).await.remove(0);
    assert_eq!(event_id_of(&again), outgoing_event_id(&case.sent[0]));
    assert_eq!(
        again.delivery_count, 2,
        "the crashed delivery must stay counted when the redelivery is given back"
    );
    again.ack().await.expect("ack");
    drop(idle);
}

//! Cases about publishing: round trip, ordering, fan-out to subscriptions, size limit.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use eventyard_core::{Message, OutgoingMessage, ProjectId, SubQueue, TransportError};

use super::{Fixture, PATIENCE, TransportFactory};
use crate::helpers::{
    ack_all, assert_nothing, event_id_of, message, outgoing_event_id, receive_exactly,
    sample_envelope,
};

const QUIET: Duration = Duration::from_millis(300);

/// A published message is received with its body and every property (with its type) intact,
/// delivery count 1, the subscription's name and a plausible `enqueued_at`; after `ack` nothing
/// is left.
pub async fn publish_receive_round_trip(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "round-trip", |s| s).await;
    let envelope = sample_envelope("tenant-a", "OrderPlaced")
        .with_header("region", "eu-west")
        .with_project(ProjectId::parse("proj-apollo").expect("valid project id"));
    let mut sent = Message::from_envelope(&envelope);
    sent.properties.insert("x-count", 42_i64);
    sent.properties.insert("x-ratio", 0.25_f64);
    sent.properties.insert("x-flag", true);
    sent.properties.insert("x-text", "naïve ✓");
    let before = Utc::now();
    fx.publish(vec![sent.clone().into()]).await;

    let mut rx = fx.receiver().await;
    let delivery = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    assert_eq!(delivery.message.body, sent.body, "body changed in transit");
    for (name, value) in sent.properties.iter() {
        assert_eq!(
            delivery.message.properties.get(name),
            Some(value),
            "property `{name}` changed in transit (all properties: {:?})",
            delivery.message.properties
        );
    }
    let received = delivery
        .message
        .envelope()
        .expect("the received body is a valid envelope");
    assert_eq!(received, envelope, "envelope changed in transit");
    assert_eq!(
        delivery.delivery_count, 1,
        "first delivery must have count 1"
    );
    assert_eq!(delivery.subscription, fx.name());
    let skew = chrono::Duration::seconds(30);
    assert!(
        delivery.enqueued_at >= before - skew && delivery.enqueued_at <= Utc::now() + skew,
        "implausible enqueued_at {} (published at {before})",
        delivery.enqueued_at
    );
    delivery.ack().await.expect("ack");
    assert_nothing(&mut *rx, QUIET).await;
}

/// With one consumer and no redelivery, messages arrive in publish order, within a batch and
/// across batches, with increasing sequence numbers.
pub async fn batch_publish_preserves_order(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "batch-order", |s| s).await;
    let first: Vec<OutgoingMessage> = (0..20)
        .map(|i| {
            message(
                "tenant-a",
                if i % 2 == 0 {
                    "OrderPlaced"
                } else {
                    "OrderShipped"
                },
            )
        })
        .collect();
    let second: Vec<OutgoingMessage> = (0..5).map(|_| message("tenant-b", "OrderPlaced")).collect();
    let expected: Vec<String> = first.iter().chain(&second).map(outgoing_event_id).collect();
    fx.publish(first).await;
    fx.publish(second).await;

    let mut rx = fx.receiver().await;
    let got = receive_exactly(&mut *rx, expected.len(), PATIENCE).await;
    let ids: Vec<String> = got.iter().map(event_id_of).collect();
    assert_eq!(ids, expected, "messages not delivered in publish order");
    for pair in got.windows(2) {
        assert!(
            pair[0].sequence < pair[1].sequence,
            "sequence numbers not increasing: {} then {}",
            pair[0].sequence,
            pair[1].sequence
        );
    }
    ack_all(got).await;
    assert_nothing(&mut *rx, QUIET).await;
}

/// A subscription receives only messages published after it was declared; a message published
/// to a topic without subscriptions is accepted and discarded.
pub async fn message_published_before_subscription_is_not_delivered(
    factory: &dyn TransportFactory,
) {
    let fx = Fixture::new(factory, "late-sub", |s| s).await;
    let early = message("tenant-a", "OrderPlaced");
    fx.publish(vec![early.clone()]).await;
    let late = fx.add_subscription(factory, "late-sub-2", |s| s).await;
    let later = message("tenant-a", "OrderShipped");
    fx.publish(vec![later.clone()]).await;

    let mut late_rx = fx.receiver_on(&late.name, SubQueue::Main).await;
    let got = receive_exactly(&mut *late_rx, 1, PATIENCE).await;
    assert_eq!(
        event_id_of(&got[0]),
        outgoing_event_id(&later),
        "the new subscription received a message published before it existed"
    );
    ack_all(got).await;
    assert_nothing(&mut *late_rx, QUIET).await;

    let mut rx = fx.receiver().await;
    let got = receive_exactly(&mut *rx, 2, PATIENCE).await;
    let ids: Vec<String> = got.iter().map(event_id_of).collect();
    assert_eq!(ids, [outgoing_event_id(&early), outgoing_event_id(&later)]);
    ack_all(got).await;

    // A topic nobody subscribes to: publish succeeds, the message is discarded.
    let lonely = factory.unique("no-subs");
    fx.transport
        .publish(&lonely, vec![message("tenant-a", "OrderPlaced")])
        .await
        .expect("publishing to a topic without subscriptions succeeds");
    let spec = eventyard_core::SubscriptionSpec::new(&lonely, factory.unique("no-subs-s"));
    fx.transport
        .ensure_subscription(&spec)
        .await
        .expect("ensure_subscription");
    let mut rx = fx
        .transport
        .receiver(&lonely, &spec.name, SubQueue::Main)
        .await
        .expect("receiver");
    assert_nothing(&mut *rx, QUIET).await;
}

/// Every subscription of a topic gets its own copy; settling in one does not affect the other.
pub async fn each_subscription_gets_a_copy(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "fan-out", |s| s).await;
    let other = fx.add_subscription(factory, "fan-out-2", |s| s).await;
    let sent: Vec<OutgoingMessage> = (0..3).map(|_| message("tenant-a", "OrderPlaced")).collect();
    let expected: Vec<String> = sent.iter().map(outgoing_event_id).collect();
    fx.publish(sent).await;

    let mut rx = fx.receiver().await;
    let got = receive_exactly(&mut *rx, 3, PATIENCE).await;
    assert_eq!(got.iter().map(event_id_of).collect::<Vec<_>>(), expected);
    ack_all(got).await;

    let mut other_rx = fx.receiver_on(&other.name, SubQueue::Main).await;
    let got = receive_exactly(&mut *other_rx, 3, PATIENCE).await;
    assert_eq!(
        got.iter().map(event_id_of).collect::<Vec<_>>(),
        expected,
        "acking in one subscription affected the other's copies"
    );
    assert!(got.iter().all(|d| d.subscription == other.name));
    ack_all(got).await;
    assert_nothing(&mut *rx, QUIET).await;
    assert_nothing(&mut *other_rx, QUIET).await;
}

/// A body over `max_message_size` fails with `MessageTooLarge { size, max }`; a body of exactly
/// `max_message_size` is delivered intact; with `atomic_batch`, a batch holding an oversized
/// message publishes nothing.
pub async fn message_too_large_is_rejected(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "too-large", |s| s).await;
    let caps = fx.transport.capabilities();
    let max = caps.max_message_size;
    if max > 64 * 1024 * 1024 {
        println!(
            "skipped: {}'s max_message_size ({max} bytes) is too large to test",
            caps.name
        );
        return;
    }
    let properties = sample_envelope("tenant-a", "OrderPlaced").properties();
    let too_big = OutgoingMessage::from(Message {
        body: Bytes::from(vec![b'x'; max + 1]),
        properties: properties.clone(),
    });
    match fx
        .transport
        .publish(fx.topic(), vec![too_big.clone()])
        .await
    {
        Err(TransportError::MessageTooLarge { size, max: limit }) => {
            assert_eq!(size, max + 1, "MessageTooLarge.size");
            assert_eq!(limit, max, "MessageTooLarge.max");
        }
        other => panic!(
            "expected MessageTooLarge for {} bytes, got {other:?}",
            max + 1
        ),
    }

    let mut rx = fx.receiver().await;
    let fits = Message {
        body: Bytes::from(vec![b'y'; max]),
        properties,
    };
    fx.publish(vec![fits.clone().into()]).await;
    let got = receive_exactly(&mut *rx, 1, PATIENCE).await;
    assert_eq!(
        got[0].message.body.len(),
        max,
        "a body of max_message_size must be delivered intact"
    );
    assert!(
        got[0].message.body == fits.body,
        "large body changed in transit"
    );
    ack_all(got).await;

    let small = message("tenant-a", "OrderPlaced");
    let result = fx.transport.publish(fx.topic(), vec![small, too_big]).await;
    assert!(
        matches!(result, Err(TransportError::MessageTooLarge { .. })),
        "expected MessageTooLarge for a batch with an oversized message, got {result:?}"
    );
    if caps.atomic_batch {
        // All-or-nothing: the fitting message of the failed batch was not published either.
        assert_nothing(&mut *rx, QUIET).await;
    }
}

//! Cases about the transport's lifecycle and its errors: persistence across reconnect, unknown
//! subscriptions, invalid names, deleting subscriptions, closing.

use std::time::Duration;

use eventyard_core::{DeadLetterInfo, OutgoingMessage, SubQueue, SubscriptionSpec, TransportError};
use tokio::time::Instant;

use super::{Fixture, PATIENCE, TransportFactory};
use crate::helpers::{
    ack_all, assert_nothing, event_id_of, message, outgoing_event_id, receive_exactly,
};

const QUIET: Duration = Duration::from_millis(300);

/// The error of a call that must fail.
fn expect_err<T>(result: Result<T, TransportError>, call: &str) -> TransportError {
    match result {
        Ok(_) => panic!("{call} succeeded; it must fail"),
        Err(e) => e,
    }
}

/// Messages published (and subscriptions declared) before the transport was closed are there
/// after `connect()` again; acknowledged ones are not. Skipped (with a printed reason) for
/// transports that are not `persistent`.
pub async fn persistence_across_reconnect(factory: &dyn TransportFactory) {
    let transport = factory.connect().await;
    let caps = transport.capabilities();
    if !caps.persistent {
        println!(
            "skipped persistence_across_reconnect: transport `{}` is not persistent",
            caps.name
        );
        return;
    }
    let fx = Fixture::on(transport, factory, "persist", |s| s).await;
    let acked = message("tenant-a", "OrderPlaced");
    fx.publish(vec![acked]).await;
    let mut rx = fx.receiver().await;
    ack_all(receive_exactly(&mut *rx, 1, PATIENCE).await).await;
    drop(rx);
    let kept: Vec<OutgoingMessage> = (0..3)
        .map(|_| message("tenant-a", "OrderShipped"))
        .collect();
    let expected: Vec<String> = kept.iter().map(outgoing_event_id).collect();
    fx.publish(kept).await;
    let Fixture { transport, spec } = fx;
    transport.close().await.expect("close");
    drop(transport);

    let again = factory.connect().await;
    let mut rx = again
        .receiver(&spec.topic, &spec.name, SubQueue::Main)
        .await
        .unwrap_or_else(|e| panic!("the subscription did not survive the reconnect: {e}"));
    let got = receive_exactly(&mut *rx, expected.len(), PATIENCE).await;
    assert_eq!(got.iter().map(event_id_of).collect::<Vec<_>>(), expected);
    ack_all(got).await;
    assert_nothing(&mut *rx, QUIET).await;
    drop(rx);
    again.close().await.expect("close");
}

/// A receiver on a subscription never declared (unknown topic, or unknown name on a known
/// topic, main queue or dead-letter sub-queue) fails with `UnknownSubscription`.
pub async fn unknown_subscription(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "unknown-sub", |s| s).await;
    let unknown_topic = factory.unique("nowhere");
    let unknown_name = factory.unique("nobody");
    for (topic, queue) in [
        (unknown_topic.as_str(), SubQueue::Main),
        (fx.topic(), SubQueue::Main),
        (fx.topic(), SubQueue::DeadLetter),
    ] {
        let call = format!("receiver({topic}, {unknown_name}, {queue:?})");
        match expect_err(
            fx.transport.receiver(topic, &unknown_name, queue).await,
            &call,
        ) {
            TransportError::UnknownSubscription {
                topic: t,
                subscription,
            } => {
                assert_eq!(t, topic, "UnknownSubscription.topic");
                assert_eq!(
                    subscription, unknown_name,
                    "UnknownSubscription.subscription"
                );
            }
            other => panic!("{call}: expected UnknownSubscription, got {other:?}"),
        }
    }
}

/// Names outside 1–200 characters of `[A-Za-z0-9._-]`, or starting with `.`, fail with
/// `InvalidName` (naming `topic` or `subscription`) in `ensure_subscription` and `publish`; a
/// 200-character name is valid.
pub async fn invalid_names(factory: &dyn TransportFactory) {
    let transport = factory.connect().await;
    let good = factory.unique("names");
    let too_long = "x".repeat(201);
    let bad = [
        "",
        ".hidden",
        "has space",
        "slash/name",
        "star*",
        "colon:name",
        "ünïcode",
        too_long.as_str(),
    ];
    for name in bad {
        let check = |e: TransportError, what: &str, call: &str| match e {
            TransportError::InvalidName { what: w, name: n } => {
                assert_eq!(w, what, "{call}: InvalidName.what");
                assert_eq!(n, name, "{call}: InvalidName.name");
            }
            other => panic!("{call}: expected InvalidName, got {other:?}"),
        };
        let call = format!("ensure_subscription(topic {name:?})");
        let spec = SubscriptionSpec::new(name, "sub");
        check(
            expect_err(transport.ensure_subscription(&spec).await, &call),
            "topic",
            &call,
        );
        let call = format!("ensure_subscription(subscription {name:?})");
        let spec = SubscriptionSpec::new(&good, name);
        check(
            expect_err(transport.ensure_subscription(&spec).await, &call),
            "subscription",
            &call,
        );
        let call = format!("publish(topic {name:?})");
        let published = transport
            .publish(name, vec![message("tenant-a", "OrderPlaced")])
            .await;
        check(expect_err(published, &call), "topic", &call);
    }

    // The longest valid names, with every allowed kind of character.
    let long = |base: String| {
        let mut name = format!("{base}_A.z-9");
        while name.len() < 200 {
            name.push('x');
        }
        name
    };
    let spec = SubscriptionSpec::new(long(factory.unique("long")), long(factory.unique("long")));
    transport
        .ensure_subscription(&spec)
        .await
        .unwrap_or_else(|e| panic!("200-character names must be valid: {e}"));
    let sent = message("tenant-a", "OrderPlaced");
    transport
        .publish(&spec.topic, vec![sent.clone()])
        .await
        .expect("publish to a 200-character topic");
    let mut rx = transport
        .receiver(&spec.topic, &spec.name, SubQueue::Main)
        .await
        .expect("receiver on 200-character names");
    let got = receive_exactly(&mut *rx, 1, PATIENCE).await;
    assert_eq!(event_id_of(&got[0]), outgoing_event_id(&sent));
    ack_all(got).await;
}

/// `delete_subscription` removes the subscription with its messages, dead-letter sub-queue
/// included: receivers fail with `UnknownSubscription`, other subscriptions of the topic are
/// untouched, and declaring it again yields an empty subscription.
pub async fn delete_subscription_removes_it(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "delete", |s| {
        s.lock_duration(Duration::from_secs(30))
    })
    .await;
    let other = fx.add_subscription(factory, "delete-keep", |s| s).await;
    fx.publish(vec![
        message("tenant-a", "OrderPlaced"),
        message("tenant-a", "OrderShipped"),
    ])
    .await;
    let mut rx = fx.receiver().await;
    let first = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    first
        .dead_letter(DeadLetterInfo::new(
            "Test",
            "to fill the dead-letter sub-queue",
        ))
        .await
        .expect("dead_letter");
    drop(rx);

    fx.transport
        .delete_subscription(fx.topic(), fx.name())
        .await
        .expect("delete_subscription");
    for queue in [SubQueue::Main, SubQueue::DeadLetter] {
        let call = format!("receiver on the deleted subscription ({queue:?})");
        match expect_err(
            fx.transport.receiver(fx.topic(), fx.name(), queue).await,
            &call,
        ) {
            TransportError::UnknownSubscription { .. } => {}
            other => panic!("{call}: expected UnknownSubscription, got {other:?}"),
        }
    }
    fx.publish(vec![message("tenant-a", "OrderCancelled")])
        .await;
    let mut other_rx = fx.receiver_on(&other.name, SubQueue::Main).await;
    ack_all(receive_exactly(&mut *other_rx, 3, PATIENCE).await).await;

    fx.transport
        .ensure_subscription(&fx.spec)
        .await
        .expect("declaring the deleted subscription again");
    let mut rx = fx.receiver().await;
    assert_nothing(&mut *rx, QUIET).await;
    let mut dlq = fx.dead_letter_receiver().await;
    assert_nothing(&mut *dlq, QUIET).await;
}

/// After `close`, `publish`, `ensure_subscription`, `receiver`, `delete_subscription`, a
/// receiver's `receive` and a delivery's settlement fail with `Closed`; a `receive` waiting when
/// the transport closed returns promptly.
pub async fn close_rejects_further_calls(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "close", |s| {
        s.lock_duration(Duration::from_secs(30))
    })
    .await;
    fx.publish(vec![message("tenant-a", "OrderPlaced")]).await;
    let mut rx = fx.receiver().await;
    let held = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    // Another, empty subscription (declared after the publish), so that only the close can end
    // the waiting receive — not the release of `held` below.
    let quiet = fx.add_subscription(factory, "close-quiet", |s| s).await;
    let mut waiting_rx = fx.receiver_on(&quiet.name, SubQueue::Main).await;
    let waiting = tokio::spawn(async move {
        let result = waiting_rx.receive(1, Duration::from_secs(30)).await;
        result.map(|deliveries| deliveries.len())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let closed_at = Instant::now();
    fx.transport.close().await.expect("close");
    let is_closed = |e: TransportError, call: &str| {
        assert!(
            matches!(e, TransportError::Closed),
            "{call} after close: expected Closed, got {e:?}"
        );
    };
    let published = fx
        .transport
        .publish(fx.topic(), vec![message("tenant-a", "OrderPlaced")])
        .await;
    is_closed(expect_err(published, "publish"), "publish");
    let ensured = fx.transport.ensure_subscription(&fx.spec).await;
    is_closed(
        expect_err(ensured, "ensure_subscription"),
        "ensure_subscription",
    );
    let opened = fx
        .transport
        .receiver(fx.topic(), fx.name(), SubQueue::Main)
        .await;
    is_closed(expect_err(opened, "receiver"), "receiver");
    let deleted = fx
        .transport
        .delete_subscription(fx.topic(), fx.name())
        .await;
    is_closed(
        expect_err(deleted, "delete_subscription"),
        "delete_subscription",
    );
    let received = rx.receive(1, Duration::from_millis(100)).await;
    is_closed(expect_err(received, "receive"), "receive");
    is_closed(expect_err(held.ack().await, "ack"), "ack");

    let waited = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "a receive waiting when the transport closed was still waiting {:?} later",
                closed_at.elapsed()
            )
        })
        .expect("the waiting task panicked");
    match waited {
        Ok(0) | Err(TransportError::Closed) => {}
        other => panic!("a receive waiting across close returned {other:?}"),
    }
}

//! Cases about peek-lock settlement: ack, abandon, lock expiry, release on drop, dead-lettering.

use std::time::Duration;

use eventyard_core::properties::names;
use eventyard_core::transport::MAX_DELIVERY_EXCEEDED;
use eventyard_core::{DeadLetterInfo, Delivery, TransportError};
use tokio::time::Instant;

use super::{Fixture, LOWER_BOUND_SLACK, PATIENCE, TransportFactory};
use crate::helpers::{assert_nothing, event_id_of, message, outgoing_event_id, receive_exactly};

/// Lock duration of cases that wait for lock expiry.
const SHORT_LOCK: Duration = Duration::from_millis(300);
/// Lock duration of cases where lock expiry must not interfere.
const LONG_LOCK: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(300);

/// Asserts that a string property has the expected value.
fn assert_property(delivery: &Delivery, name: &str, expected: &str) {
    assert_eq!(
        delivery.message.properties.get_str(name),
        Some(expected),
        "property `{name}` of {delivery:?}"
    );
}

/// An acknowledged message is gone: it does not come back, even after its lock would have
/// expired.
pub async fn ack_removes_message(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "ack", |s| s.lock_duration(SHORT_LOCK)).await;
    fx.publish(vec![
        message("tenant-a", "OrderPlaced"),
        message("tenant-a", "OrderShipped"),
    ])
    .await;
    let mut rx = fx.receiver().await;
    for d in receive_exactly(&mut *rx, 2, PATIENCE).await {
        d.ack().await.expect("ack");
    }
    assert_nothing(&mut *rx, SHORT_LOCK * 3).await;
}

/// `abandon(0)` makes the message available again at once (well before its lock would expire),
/// with delivery count 2.
pub async fn abandon_without_delay_redelivers(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "abandon-now", |s| s.lock_duration(LONG_LOCK)).await;
    let sent = message("tenant-a", "OrderPlaced");
    fx.publish(vec![sent.clone()]).await;
    let mut rx = fx.receiver().await;
    let first = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    assert_eq!(first.delivery_count, 1);
    first.abandon(Duration::ZERO).await.expect("abandon");

    let again = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    assert_eq!(event_id_of(&again), outgoing_event_id(&sent));
    assert_eq!(
        again.delivery_count, 2,
        "redelivery must increment the count"
    );
    again.ack().await.expect("ack");
    assert_nothing(&mut *rx, QUIET).await;
}

/// `abandon(d)`: the message is not redelivered before `d` has passed, and is redelivered after.
pub async fn abandon_with_delay_redelivers_after_delay(factory: &dyn TransportFactory) {
    const DELAY: Duration = Duration::from_millis(300);
    let fx = Fixture::new(factory, "abandon-later", |s| s.lock_duration(LONG_LOCK)).await;
    let sent = message("tenant-a", "OrderPlaced");
    fx.publish(vec![sent.clone()]).await;
    let mut rx = fx.receiver().await;
    let first = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    let start = Instant::now();
    first.abandon(DELAY).await.expect("abandon");

    let again = receive_exactly(&mut *rx, 1, DELAY + PATIENCE)
        .await
        .remove(0);
    let elapsed = start.elapsed();
    assert!(
        elapsed + LOWER_BOUND_SLACK >= DELAY,
        "redelivered {elapsed:?} after abandon({DELAY:?}): before the delay"
    );
    assert_eq!(event_id_of(&again), outgoing_event_id(&sent));
    assert_eq!(again.delivery_count, 2);
    again.ack().await.expect("ack");
    assert_nothing(&mut *rx, QUIET).await;
}

/// A delayed abandon is a scheduled redelivery: neither the `abandon` call nor the receiver
/// waits for the delay, so another message is received meanwhile.
pub async fn abandon_with_delay_does_not_block_receiver(factory: &dyn TransportFactory) {
    const DELAY: Duration = Duration::from_secs(3);
    let fx = Fixture::new(factory, "abandon-nonblock", |s| s.lock_duration(LONG_LOCK)).await;
    fx.publish(vec![message("tenant-a", "OrderPlaced")]).await;
    let mut rx = fx.receiver().await;
    let first = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    let start = Instant::now();
    first.abandon(DELAY).await.expect("abandon");
    let other = message("tenant-a", "OrderShipped");
    fx.publish(vec![other.clone()]).await;

    let got = receive_exactly(&mut *rx, 1, DELAY + PATIENCE)
        .await
        .remove(0);
    let elapsed = start.elapsed();
    assert_eq!(
        event_id_of(&got),
        outgoing_event_id(&other),
        "expected the other message while the abandoned one waits out its delay"
    );
    assert!(
        elapsed < DELAY,
        "the other message took {elapsed:?}: the receiver was blocked by abandon({DELAY:?})"
    );
    got.ack().await.expect("ack");
}

/// A message received but not settled becomes available again when its lock expires — not
/// before — with delivery count 2.
pub async fn lock_expiry_redelivers(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "lock-expiry", |s| s.lock_duration(SHORT_LOCK)).await;
    let sent = message("tenant-a", "OrderPlaced");
    fx.publish(vec![sent.clone()]).await;
    let mut rx = fx.receiver().await;
    let start = Instant::now();
    // Held, not settled and not dropped: a hung consumer.
    let held = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);

    let again = receive_exactly(&mut *rx, 1, SHORT_LOCK + PATIENCE)
        .await
        .remove(0);
    let elapsed = start.elapsed();
    assert!(
        elapsed + LOWER_BOUND_SLACK >= SHORT_LOCK,
        "redelivered {elapsed:?} after the first receive: before the {SHORT_LOCK:?} lock expired"
    );
    assert_eq!(event_id_of(&again), outgoing_event_id(&sent));
    assert_eq!(again.delivery_count, 2);
    again.ack().await.expect("ack of the redelivery");
    drop(held);
    assert_nothing(&mut *rx, SHORT_LOCK * 3).await;
}

/// Settling a delivery whose lock expired and whose message was delivered again fails with
/// `LockLost`; the new delivery settles normally.
pub async fn settle_after_lock_lost_fails(factory: &dyn TransportFactory) {
    let fx = Fixture::new(factory, "lock-lost", |s| s.lock_duration(SHORT_LOCK)).await;
    fx.publish(vec![message("tenant-a", "OrderPlaced")]).await;
    let mut rx = fx.receiver().await;
    let stale = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    let fresh = receive_exactly(&mut *rx, 1, SHORT_LOCK + PATIENCE)
        .await
        .remove(0);
    assert_eq!(fresh.delivery_count, 2);
    let stale_sequence = stale.sequence;
    match stale.ack().await {
        Err(TransportError::LockLost {
            subscription,
            sequence,
        }) => {
            assert_eq!(subscription, fx.name(), "LockLost.subscription");
            assert_eq!(sequence, stale_sequence, "LockLost.sequence");
        }
        other => panic!("expected LockLost when acking after redelivery, got {other:?}"),
    }
    fresh.ack().await.expect("ack of the current delivery");
    assert_nothing(&mut *rx, SHORT_LOCK * 3).await;
}

/// A delivery dropped without settlement is released: redelivered at once when the transport
/// has `release_on_drop` (within [`PATIENCE`] while the lock lasts 30 s, so this is not lock
/// expiry), else by the time its lock expired.
pub async fn dropped_delivery_is_released(factory: &dyn TransportFactory) {
    let transport = factory.connect().await;
    let release_on_drop = transport.capabilities().release_on_drop;
    let lock = if release_on_drop {
        LONG_LOCK
    } else {
        Duration::from_millis(500)
    };
    let fx = Fixture::on(transport, factory, "drop-release", |s| {
        s.lock_duration(lock)
    })
    .await;
    let sent = message("tenant-a", "OrderPlaced");
    fx.publish(vec![sent.clone()]).await;
    let mut rx = fx.receiver().await;
    let first = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    drop(first);

    // Without `release_on_drop` the message must be back by lock expiry (sooner is fine).
    let wait = if release_on_drop {
        PATIENCE
    } else {
        lock + PATIENCE
    };
    let again = receive_exactly(&mut *rx, 1, wait).await.remove(0);
    assert_eq!(event_id_of(&again), outgoing_event_id(&sent));
    assert_eq!(again.delivery_count, 2);
    again.ack().await.expect("ack");
    assert_nothing(&mut *rx, QUIET).await;
}

/// A message that would be delivered more than `max_delivery_count` times goes to the
/// dead-letter sub-queue with reason `MaxDeliveryCountExceeded`, the source subscription, a
/// description, and its original body and properties.
pub async fn max_delivery_count_dead_letters(factory: &dyn TransportFactory) {
    const MAX: u32 = 3;
    let fx = Fixture::new(factory, "max-deliveries", |s| {
        s.lock_duration(LONG_LOCK).max_delivery_count(MAX)
    })
    .await;
    let sent = message("tenant-a", "OrderPlaced");
    fx.publish(vec![sent.clone()]).await;
    let mut rx = fx.receiver().await;
    for attempt in 1..=MAX {
        let d = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
        assert_eq!(event_id_of(&d), outgoing_event_id(&sent));
        assert_eq!(d.delivery_count, attempt);
        d.abandon(Duration::ZERO).await.expect("abandon");
    }
    assert_nothing(&mut *rx, QUIET).await;

    let mut dlq = fx.dead_letter_receiver().await;
    let dead = receive_exactly(&mut *dlq, 1, PATIENCE).await.remove(0);
    assert_eq!(
        dead.message.body, sent.message.body,
        "dead-lettered body changed"
    );
    for (name, value) in sent.message.properties.iter() {
        assert_eq!(
            dead.message.properties.get(name),
            Some(value),
            "property `{name}`"
        );
    }
    assert_property(&dead, names::DEAD_LETTER_REASON, MAX_DELIVERY_EXCEEDED);
    assert_property(&dead, names::DEAD_LETTER_SOURCE, fx.name());
    assert!(
        dead.message
            .properties
            .get_str(names::DEAD_LETTER_DESCRIPTION)
            .is_some(),
        "missing `{}` on {dead:?}",
        names::DEAD_LETTER_DESCRIPTION
    );
    dead.ack().await.expect("ack in the dead-letter sub-queue");
    assert_nothing(&mut *dlq, QUIET).await;
    assert_nothing(&mut *rx, QUIET).await;
}

/// `dead_letter(info)` moves the message to the dead-letter sub-queue, where it carries
/// `cs-dead-letter-reason`/`-description`/`-source` and its original body and properties, and is
/// settled with peek-lock too (abandon → delivered again from the sub-queue, ack → gone).
pub async fn explicit_dead_letter(factory: &dyn TransportFactory) {
    // A short lock, so that a message left behind in the main queue would show up again.
    const LOCK: Duration = Duration::from_millis(500);
    let fx = Fixture::new(factory, "dead-letter", |s| s.lock_duration(LOCK)).await;
    let sent = message("tenant-a", "OrderPlaced");
    let kept = message("tenant-a", "OrderShipped");
    fx.publish(vec![sent.clone(), kept.clone()]).await;
    let mut rx = fx.receiver().await;
    let d = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    assert_eq!(event_id_of(&d), outgoing_event_id(&sent));
    d.dead_letter(DeadLetterInfo::new(
        "HandlerFailed",
        "boom: the handler failed (attempt 1)",
    ))
    .await
    .expect("dead_letter");
    let other = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    assert_eq!(
        event_id_of(&other),
        outgoing_event_id(&kept),
        "only the dead-lettered message leaves the main queue"
    );
    other.ack().await.expect("ack");
    assert_nothing(&mut *rx, LOCK * 3).await;

    let mut dlq = fx.dead_letter_receiver().await;
    let dead = receive_exactly(&mut *dlq, 1, PATIENCE).await.remove(0);
    assert_eq!(
        dead.message.body, sent.message.body,
        "dead-lettered body changed"
    );
    for (name, value) in sent.message.properties.iter() {
        assert_eq!(
            dead.message.properties.get(name),
            Some(value),
            "property `{name}`"
        );
    }
    assert_property(&dead, names::DEAD_LETTER_REASON, "HandlerFailed");
    assert_property(
        &dead,
        names::DEAD_LETTER_DESCRIPTION,
        "boom: the handler failed (attempt 1)",
    );
    assert_property(&dead, names::DEAD_LETTER_SOURCE, fx.name());
    let count = dead.delivery_count;
    dead.abandon(Duration::ZERO)
        .await
        .expect("abandon in the DLQ");

    let again = receive_exactly(&mut *dlq, 1, PATIENCE).await.remove(0);
    assert_eq!(event_id_of(&again), outgoing_event_id(&sent));
    assert_eq!(again.delivery_count, count + 1, "DLQ redelivery count");
    again.ack().await.expect("ack in the DLQ");
    assert_nothing(&mut *dlq, QUIET).await;
}

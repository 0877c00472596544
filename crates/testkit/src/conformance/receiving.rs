//! Cases about receiving: competing consumers, scheduled delivery, waiting and wake-up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use eventyard_core::OutgoingMessage;
use tokio::time::Instant;

use super::{Fixture, LOWER_BOUND_SLACK, PATIENCE, TransportFactory};
use crate::helpers::{
    ack_all, assert_nothing, event_id_of, message, outgoing_event_id, receive_exactly,
};

const QUIET: Duration = Duration::from_millis(300);

/// Several receivers on one subscription compete: a message locked by one receiver is not
/// delivered to another until released; of 200 messages each is acknowledged exactly once in
/// total, none is missing, and nothing is left afterwards.
pub async fn competing_consumers(factory: &dyn TransportFactory) {
    const MESSAGES: usize = 200;
    const RECEIVERS: usize = 3;
    let fx = Fixture::new(factory, "competing", |s| {
        s.lock_duration(Duration::from_secs(30))
    })
    .await;

    // One message, two receivers: while the first holds it, the second gets nothing.
    let sent = message("tenant-a", "OrderPlaced");
    fx.publish(vec![sent.clone()]).await;
    let mut first = fx.receiver().await;
    let mut second = fx.receiver().await;
    let held = receive_exactly(&mut *first, 1, PATIENCE).await.remove(0);
    assert_nothing(&mut *second, QUIET).await;
    held.abandon(Duration::ZERO).await.expect("abandon");
    let taken = receive_exactly(&mut *second, 1, PATIENCE).await.remove(0);
    assert_eq!(event_id_of(&taken), outgoing_event_id(&sent));
    assert_eq!(taken.delivery_count, 2);
    taken.ack().await.expect("ack");
    drop((first, second));

    // Many messages, several receivers that take a moment to process each batch.
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut tasks = Vec::new();
    for _ in 0..RECEIVERS {
        let mut rx = fx.receiver().await;
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            while done.load(Ordering::SeqCst) < MESSAGES && Instant::now() < deadline {
                let batch = rx
                    .receive(10, Duration::from_millis(200))
                    .await
                    .unwrap_or_else(|e| panic!("receive failed: {e}"));
                if !batch.is_empty() {
                    // "Processing": gives the other receivers a chance to grab locked messages.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                for d in batch {
                    let id = event_id_of(&d);
                    d.ack()
                        .await
                        .unwrap_or_else(|e| panic!("ack of {id} failed: {e}"));
                    acked.push(id);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
            acked
        }));
    }

    let sent: Vec<OutgoingMessage> = (0..MESSAGES)
        .map(|i| {
            message(
                if i % 3 == 0 { "tenant-b" } else { "tenant-a" },
                "OrderPlaced",
            )
        })
        .collect();
    let expected: BTreeSet<String> = sent.iter().map(outgoing_event_id).collect();
    for chunk in sent.chunks(50) {
        fx.publish(chunk.to_vec()).await;
    }

    let mut per_receiver = Vec::new();
    let mut all = Vec::new();
    for task in tasks {
        let acked = task.await.expect("a consumer task panicked");
        per_receiver.push(acked.len());
        all.extend(acked);
    }
    let distinct: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        distinct.len(),
        "some messages were acknowledged more than once (per receiver: {per_receiver:?})"
    );
    let missing: Vec<&String> = expected.difference(&distinct).collect();
    assert!(
        missing.is_empty(),
        "{} of {MESSAGES} messages never delivered (per receiver: {per_receiver:?}): {missing:?}",
        missing.len()
    );
    assert_eq!(distinct, expected, "unexpected messages delivered");
    let mut rx = fx.receiver().await;
    assert_nothing(&mut *rx, QUIET).await;
}

/// A message published with `deliver_at` 400 ms ahead is not delivered before that time, and is
/// delivered after it; a message of the same batch without `deliver_at` is not held back.
pub async fn scheduled_delivery(factory: &dyn TransportFactory) {
    const AHEAD: Duration = Duration::from_millis(400);
    let fx = Fixture::new(factory, "scheduled", |s| s).await;
    let deliver_at = Utc::now() + chrono::Duration::from_std(AHEAD).expect("small duration");
    let mut scheduled = message("tenant-a", "OrderPlaced");
    scheduled.deliver_at = Some(deliver_at);
    let immediate = message("tenant-a", "OrderShipped");
    fx.publish(vec![scheduled.clone(), immediate.clone()]).await;

    let mut rx = fx.receiver().await;
    let mut seen_scheduled = false;
    let mut seen_immediate = false;
    let deadline = Instant::now() + AHEAD + PATIENCE;
    while !(seen_scheduled && seen_immediate) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let d = receive_exactly(&mut *rx, 1, remaining).await.remove(0);
        let received_at = Utc::now();
        let id = event_id_of(&d);
        if id == outgoing_event_id(&scheduled) {
            let slack = chrono::Duration::from_std(LOWER_BOUND_SLACK).expect("small duration");
            assert!(
                received_at + slack >= deliver_at,
                "scheduled message delivered at {received_at}, before its deliver_at {deliver_at}"
            );
            assert!(!seen_scheduled, "scheduled message delivered twice");
            seen_scheduled = true;
        } else {
            assert_eq!(id, outgoing_event_id(&immediate), "unexpected message");
            assert!(!seen_immediate, "immediate message delivered twice");
            seen_immediate = true;
        }
        d.ack().await.expect("ack");
    }
    assert_nothing(&mut *rx, QUIET).await;
}

/// On an empty subscription, `receive` returns an empty batch within the wait (plus slack), and
/// a zero wait polls without blocking.
pub async fn empty_receive_returns_within_wait(factory: &dyn TransportFactory) {
    const WAIT: Duration = Duration::from_millis(500);
    let fx = Fixture::new(factory, "empty-wait", |s| s).await;
    let mut rx = fx.receiver().await;

    let start = Instant::now();
    let got = rx.receive(10, WAIT).await.expect("receive");
    let elapsed = start.elapsed();
    assert!(got.is_empty(), "nothing was published, got {got:?}");
    assert!(
        elapsed <= WAIT + PATIENCE,
        "receive with a {WAIT:?} wait took {elapsed:?}"
    );

    let start = Instant::now();
    let got = rx.receive(10, Duration::ZERO).await.expect("receive");
    let elapsed = start.elapsed();
    assert!(got.is_empty(), "nothing was published, got {got:?}");
    assert!(
        elapsed <= PATIENCE,
        "receive with a zero wait took {elapsed:?}"
    );
}

/// A `receive` waiting (20 s) on an empty subscription returns promptly — well under its wait —
/// with a message published meanwhile.
pub async fn receive_wakes_on_publish(factory: &dyn TransportFactory) {
    const WAIT: Duration = Duration::from_secs(20);
    let fx = Fixture::new(factory, "wake-up", |s| s).await;
    let mut rx = fx.receiver().await;
    let waiting = tokio::spawn(async move {
        let got = rx.receive(1, WAIT).await;
        (got, rx)
    });
    // Let the receiver start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = message("tenant-a", "OrderPlaced");
    let published_at = Instant::now();
    fx.publish(vec![sent.clone()]).await;

    let (got, mut rx) = waiting.await.expect("the receiving task panicked");
    let latency = published_at.elapsed();
    let got = got.expect("receive");
    assert_eq!(
        got.len(),
        1,
        "the waiting receive returned {got:?} instead of the published message"
    );
    assert_eq!(event_id_of(&got[0]), outgoing_event_id(&sent));
    assert!(
        latency < PATIENCE,
        "receive returned {latency:?} after the publish (its wait was {WAIT:?}): no prompt wake-up"
    );
    ack_all(got).await;
    assert_nothing(&mut *rx, QUIET).await;
}

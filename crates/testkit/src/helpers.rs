//! Small helpers for transport tests: sample messages, and receiving with a deadline.
//!
//! They panic with a descriptive message instead of returning errors: they are meant for tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventyard_core::properties::names;
use eventyard_core::{Delivery, Envelope, EventType, OutgoingMessage, Receiver, TenantId};
use tokio::time::Instant;

static SAMPLE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A valid root envelope for `tenant` (a tenant slug such as `tenant-a`) and `event_type` (an
/// event name such as `OrderPlaced`), with a small JSON payload `{"n": <counter>, "note": ...}`
/// holding a process-wide counter and some non-ASCII text.
///
/// # Panics
/// If `tenant` is not a valid tenant id or `event_type` not a valid event name.
pub fn sample_envelope(tenant: &str, event_type: &str) -> Envelope {
    let tenant = TenantId::parse(tenant)
        .unwrap_or_else(|e| panic!("sample_envelope: bad tenant `{tenant}`: {e}"));
    let event_type = EventType::event(event_type)
        .unwrap_or_else(|e| panic!("sample_envelope: bad event type `{event_type}`: {e}"));
    let n = SAMPLE_COUNTER.fetch_add(1, Ordering::Relaxed);
    Envelope::new(
        event_type,
        tenant,
        serde_json::json!({ "n": n, "note": "héllo ✓ \"quoted\"" }),
    )
}

/// The outgoing message (immediate delivery) of a [`sample_envelope`].
///
/// # Panics
/// As [`sample_envelope`].
pub fn message(tenant: &str, event_type: &str) -> OutgoingMessage {
    OutgoingMessage::from(&sample_envelope(tenant, event_type))
}

/// The `cs-event-id` property of a message's properties (empty if absent).
pub fn event_id_of(delivery: &Delivery) -> String {
    delivery
        .message
        .properties
        .get_str(names::EVENT_ID)
        .unwrap_or_default()
        .to_owned()
}

/// The `cs-event-id` property of an outgoing message (empty if absent).
pub fn outgoing_event_id(message: &OutgoingMessage) -> String {
    message
        .message
        .properties
        .get_str(names::EVENT_ID)
        .unwrap_or_default()
        .to_owned()
}

/// Receives until exactly `n` deliveries arrived, waiting at most `timeout` in total.
///
/// Never asks for more than the missing count, so surplus messages stay in the queue (check for
/// them with [`assert_nothing`]).
///
/// # Panics
/// If a receive fails, if the receiver returns more than it was asked for, or if fewer than `n`
/// deliveries arrive within `timeout`.
pub async fn receive_exactly(
    receiver: &mut dyn Receiver,
    n: usize,
    timeout: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let now = Instant::now();
        if now >= deadline {
            panic!(
                "receive_exactly: expected {n} deliveries within {timeout:?}, got {}: {got:?}",
                got.len()
            );
        }
        let missing = n - got.len();
        let batch = receiver
            .receive(missing, deadline - now)
            .await
            .unwrap_or_else(|e| panic!("receive_exactly: receive failed: {e}"));
        assert!(
            batch.len() <= missing,
            "receive_exactly: asked for at most {missing} deliveries, got {}",
            batch.len()
        );
        got.extend(batch);
    }
    got
}

/// Asserts that nothing is delivered on `receiver` during `duration`.
///
/// # Panics
/// If a receive fails or returns any delivery (which is listed in the message).
pub async fn assert_nothing(receiver: &mut dyn Receiver, duration: Duration) {
    let deadline = Instant::now() + duration;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let batch = receiver
            .receive(16, deadline - now)
            .await
            .unwrap_or_else(|e| panic!("assert_nothing: receive failed: {e}"));
        assert!(
            batch.is_empty(),
            "assert_nothing: expected no delivery for {duration:?}, got {batch:?}"
        );
    }
}

/// Acknowledges every delivery.
///
/// # Panics
/// If an acknowledgement fails.
pub async fn ack_all(deliveries: Vec<Delivery>) {
    for d in deliveries {
        let what = format!("{d:?}");
        d.ack()
            .await
            .unwrap_or_else(|e| panic!("ack_all: ack of {what} failed: {e}"));
    }
}

//! NATS-specific behaviour beyond the conformance suite: connecting to a dead server,
//! scheduled delivery counts, filter changes seen by open receivers, trimming, odd properties.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use chrono::Utc;
use eventyard_core::properties::names;
use eventyard_core::{Filter, SubQueue, SubscriptionSpec, Transport, TransportError};
use eventyard_nats::{NatsConfig, NatsTransport};
use eventyard_testkit::helpers::{message, receive_exactly};
use eventyard_testkit::services::{self, Service};
use tokio::time::Instant;

/// A connected transport under a fresh prefix (deleted by the returned guard), or `None` when
/// the test is skipped.
async fn transport() -> Option<(NatsTransport, Cleanup)> {
    let url = services::require(Service::Nats)?;
    let prefix = common::unique_prefix();
    let transport = NatsTransport::connect(common::config(&url, &prefix))
        .await
        .expect("connect");
    Some((transport, Cleanup { url, prefix }))
}

struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        common::cleanup_blocking(&self.url, &self.prefix);
    }
}

/// The number of messages a stream holds (through the raw client).
async fn stored(url: &str, stream: &str) -> u64 {
    let client = async_nats::connect(url.split('?').next().unwrap_or(url))
        .await
        .expect("raw connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_after_the_connect_timeout() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let cfg = NatsConfig::new(format!("nats://127.0.0.1:{port}"));
    assert_eq!(cfg.connect_timeout, Duration::from_secs(5));
    let start = Instant::now();
    let result = NatsTransport::connect(cfg).await;
    let elapsed = start.elapsed();
    match result {
        Err(TransportError::Unavailable { backend, message }) => {
            assert_eq!(backend, "nats");
            assert!(message.contains(&port.to_string()), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(4500) && elapsed < Duration::from_secs(10),
        "gave up after {elapsed:?}, expected about 5 s"
    );
}

#[tokio::test]
async fn bad_urls_are_config_errors() {
    for url in [
        "redis://x:1",
        "nats://x:1?prefix=has.dot",
        "nats://x:1?unknown=1",
    ] {
        assert!(
            matches!(
                NatsTransport::connect_url(url).await,
                Err(TransportError::Config(_))
            ),
            "{url}"
        );
    }
}

/// A scheduled message enters the subscription when due: its first delivery counts 1, even with
/// `max_delivery_count` 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_message_is_delivered_once_with_count_one() {
    let Some((t, _cleanup)) = transport().await else {
        return;
    };
    let spec = SubscriptionSpec::new("sched", "s").max_delivery_count(1);
    t.ensure_subscription(&spec).await.expect("ensure");
    let mut m = message("tenant-a", "OrderPlaced");
    let due = Utc::now() + chrono::Duration::milliseconds(300);
    m.deliver_at = Some(due);
    t.publish("sched", vec![m]).await.expect("publish");
    let mut rx = t.receiver("sched", "s", SubQueue::Main).await.expect("rx");
    let d = receive_exactly(&mut *rx, 1, Duration::from_secs(5))
        .await
        .remove(0);
    assert!(Utc::now() >= due, "delivered before its time");
    assert_eq!(d.delivery_count, 1);
    d.ack().await.expect("ack");
    assert!(
        rx.receive(1, Duration::from_millis(300))
            .await
            .expect("rx")
            .is_empty()
    );
    let mut dlq = t
        .receiver("sched", "s", SubQueue::DeadLetter)
        .await
        .expect("dlq");
    assert!(
        dlq.receive(1, Duration::from_millis(200))
            .await
            .expect("dlq")
            .is_empty()
    );
}

/// A receiver opened before the filter changed applies the new (client-side) filter to the
/// next messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_receiver_applies_a_changed_client_side_filter() {
    let Some((t, _cleanup)) = transport().await else {
        return;
    };
    let spec = SubscriptionSpec::new("refilter", "s");
    t.ensure_subscription(&spec).await.expect("ensure");
    let mut rx = t
        .receiver("refilter", "s", SubQueue::Main)
        .await
        .expect("rx");
    assert!(rx.receive(1, Duration::ZERO).await.expect("rx").is_empty());
    let changed = spec.filter(Filter::sql("[x-n] > 5").expect("filter"));
    t.ensure_subscription(&changed).await.expect("ensure again");
    let with = |n: i64| {
        let mut m = message("tenant-a", "OrderPlaced");
        m.message.properties.insert("x-n", n);
        m
    };
    t.publish("refilter", vec![with(1), with(10)])
        .await
        .expect("publish");
    let got = receive_exactly(&mut *rx, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].message.properties.get("x-n"), Some(&10_i64.into()));
    for d in got {
        d.ack().await.expect("ack");
    }
    assert!(
        rx.receive(1, Duration::from_millis(300))
            .await
            .expect("rx")
            .is_empty()
    );
}

/// A looping receiver's standing request may bring a message after its last call returned;
/// when that receiver stops asking, the message is released within about 100 ms (not held
/// until its 30 s lock expires), so a competing receiver gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_asking_releases_what_its_standing_request_brought() {
    let Some((t, _cleanup)) = transport().await else {
        return;
    };
    let t = std::sync::Arc::new(t);
    t.ensure_subscription(&SubscriptionSpec::new("standing", "s"))
        .await
        .expect("ensure");
    let open = || t.receiver("standing", "s", SubQueue::Main);
    let publish_one = |t: std::sync::Arc<NatsTransport>| async move {
        t.publish("standing", vec![message("tenant-a", "OrderPlaced")])
            .await
            .expect("publish");
    };
    let mut looping = open().await.expect("rx");
    publish_one(std::sync::Arc::clone(&t)).await;
    let first = receive_exactly(&mut *looping, 1, Duration::from_secs(5)).await;
    for d in first {
        d.ack().await.expect("ack");
    }
    // The next call follows at once (a looping caller): it leaves a standing request.
    let later = publish_one(std::sync::Arc::clone(&t));
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        later.await;
    });
    let second = looping
        .receive(10, Duration::from_secs(5))
        .await
        .expect("rx");
    assert_eq!(second.len(), 1);
    for d in second {
        d.ack().await.expect("ack");
    }
    publisher.await.expect("publisher");
    // Within the standing request's lease: this one may go to the receiver that no longer asks.
    publish_one(std::sync::Arc::clone(&t)).await;
    let mut other = open().await.expect("rx");
    let start = Instant::now();
    let got = receive_exactly(&mut *other, 1, Duration::from_secs(5)).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "released after {:?}",
        start.elapsed()
    );
    assert!(got[0].delivery_count <= 2, "{}", got[0].delivery_count);
    for d in got {
        d.ack().await.expect("ack");
    }
    drop(looping);
}

/// Acknowledged messages are removed from the topic stream once every subscription is done with
/// them; a subscription that has not consumed them keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_what_a_subscription_still_needs() {
    let Some((t, cleanup)) = transport().await else {
        return;
    };
    for name in ["fast", "slow", "other-tenant"] {
        let mut spec = SubscriptionSpec::new("trim", name);
        if name == "other-tenant" {
            spec = spec.filter(Filter::sql("[cs-tenant-id] = 'tenant-z'").expect("filter"));
        }
        t.ensure_subscription(&spec).await.expect("ensure");
    }
    let batch: Vec<_> = (0..5).map(|_| message("tenant-a", "OrderPlaced")).collect();
    t.publish("trim", batch).await.expect("publish");
    let stream = format!("{}_T_trim", cleanup.prefix);
    for name in ["fast", "slow"] {
        t.trim("trim").await.expect("trim");
        assert_eq!(
            stored(&cleanup.url, &stream).await,
            5,
            "before {name} acked"
        );
        let mut rx = t.receiver("trim", name, SubQueue::Main).await.expect("rx");
        for d in receive_exactly(&mut *rx, 5, Duration::from_secs(5)).await {
            d.ack().await.expect("ack");
        }
    }
    t.trim("trim").await.expect("trim");
    assert_eq!(stored(&cleanup.url, &stream).await, 0);
}

/// Properties that cannot be plain headers (odd names, line breaks, padding) keep their values
/// and types through the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_properties_survive_the_server() {
    let Some((t, _cleanup)) = transport().await else {
        return;
    };
    t.ensure_subscription(&SubscriptionSpec::new("props", "s"))
        .await
        .expect("ensure");
    let mut m = message("tenant-a", "OrderPlaced");
    let p = &mut m.message.properties;
    p.insert("odd name: ü", "v");
    p.insert("x-lines", "one\r\ntwo");
    p.insert("x-padded", "  padded ");
    p.insert("x-neg", -7_i64);
    p.insert("x-float", 1e-300_f64);
    p.insert("Nats-Msg-Id", "spoof");
    let sent = m.message.properties.clone();
    t.publish("props", vec![m]).await.expect("publish");
    let mut rx = t.receiver("props", "s", SubQueue::Main).await.expect("rx");
    let d = receive_exactly(&mut *rx, 1, Duration::from_secs(5))
        .await
        .remove(0);
    assert_eq!(d.message.properties, sent);
    assert!(d.message.properties.get_str(names::EVENT_ID).is_some());
    d.ack().await.expect("ack");
}

/// Concurrent publish calls carrying many times the publish window: each waits for its slots
/// while settling its own acknowledgements, none is stuck, and every message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_beyond_the_window_all_complete() {
    let Some(url) = services::require(Service::Nats) else {
        return;
    };
    let prefix = common::unique_prefix();
    let cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let mut cfg = common::config(&url, &prefix);
    cfg.publish_window = 8;
    let t = NatsTransport::connect(cfg).await.expect("connect");
    t.ensure_subscription(&SubscriptionSpec::new("window", "all"))
        .await
        .expect("ensure");
    let calls = (0..6).map(|_| {
        let batch: Vec<_> = (0..40)
            .map(|_| message("tenant-a", "OrderPlaced"))
            .collect();
        t.publish("window", batch)
    });
    let results = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
        .await
        .expect("a publish call is stuck");
    for r in results {
        r.expect("publish");
    }
    let stream = format!("{}_T_window", cleanup.prefix);
    assert_eq!(stored(&cleanup.url, &stream).await, 240);
}

//! RabbitMQ-specific behaviour beyond the conformance suite: connecting to an absent broker,
//! filters applied natively vs in the client, settings shared between processes, foreign
//! messages, and delivery counting across a lost connection.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{AmqpFactory, TEST_PREFIX, depth, test_config};
use eventyard_core::properties::names;
use eventyard_core::{Filter, SubQueue, SubscriptionSpec, Transport, TransportError};
use eventyard_rabbitmq::{AmqpConfig, AmqpTransport};
use eventyard_testkit::conformance::TransportFactory;
use eventyard_testkit::helpers::{
    ack_all, assert_nothing, event_id_of, message, outgoing_event_id, receive_exactly,
};
use eventyard_testkit::services::{Service, require};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const PATIENCE: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn factory() -> Option<AmqpFactory> {
    require(Service::Amqp).map(AmqpFactory::new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_closed_port_fails_with_unavailable_after_the_timeout() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let cfg = AmqpConfig::from_url(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .expect("valid URL");
    assert_eq!(cfg.connect_timeout, Duration::from_secs(5), "default");
    let start = Instant::now();
    let err = AmqpTransport::connect(cfg)
        .await
        .expect_err("nothing listens there");
    let elapsed = start.elapsed();
    assert!(
        matches!(err, TransportError::Unavailable { .. }),
        "expected Unavailable, got {err:?}"
    );
    assert!(err.is_transient());
    assert!(
        elapsed >= Duration::from_secs(4) && elapsed < Duration::from_secs(10),
        "gave up after {elapsed:?}, expected about 5 s"
    );
    assert!(!err.to_string().contains("guest:guest"), "{err}");
}

/// The same filters, once applied natively (bindings) and once in the client, select the same
/// messages on the real broker; native ones keep non-matching messages out of the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_client_side_filters_agree_on_the_broker() {
    let Some(factory) = factory() else { return };
    let url = std::env::var("EVENTYARD_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| Service::Amqp.default_url().to_owned());
    let native = factory.connect_with(|_| {}).await;
    let client = factory.connect_with(|c| c.native_filters = false).await;
    let sql = |s: &str| Filter::sql(s).expect("parses");
    let filters = [
        sql("[cs-tenant-id] = 'tenant-a'"),
        sql("[cs-tenant-id] = 'tenant-a' AND [cs-event-type] = 'OrderPlaced'"),
        sql("n = 1"),
        sql("n = 1.5"),
        sql("flag = TRUE AND n = 2.0"),
        sql("[x-region] = 'eu'"),
    ];
    let topic = factory.unique("equiv");
    let mut subs = Vec::new();
    for (i, filter) in filters.iter().enumerate() {
        for (transport, kind) in [(&native, "native"), (&client, "client")] {
            let spec = SubscriptionSpec::new(&topic, format!("{kind}-{i}")).filter(filter.clone());
            transport.ensure_subscription(&spec).await.expect("ensure");
            subs.push((i, kind, spec.name));
        }
    }
    let mut batch = Vec::new();
    for tenant in ["tenant-a", "tenant-b"] {
        for event in ["OrderPlaced", "OrderShipped"] {
            for (n, flag) in [
                (None, None),
                (Some(1_i64), Some(true)),
                (Some(2), Some(true)),
            ] {
                let mut m = message(tenant, event);
                if let Some(n) = n {
                    m.message.properties.insert("n", n);
                }
                if let Some(f) = flag {
                    m.message.properties.insert("flag", f);
                }
                batch.push(m);
            }
            let mut m = message(tenant, event);
            m.message.properties.insert("n", 1.0_f64);
            m.message.properties.insert("x-region", "eu");
            batch.push(m);
            let mut m = message(tenant, event);
            m.message.properties.insert("n", 1.5_f64);
            m.message.properties.insert("flag", true);
            batch.push(m);
        }
    }
    native
        .publish(&topic, batch.clone())
        .await
        .expect("publish");

    for (i, filter) in filters.iter().enumerate() {
        let expected: BTreeSet<String> = batch
            .iter()
            .filter(|m| filter.matches(&m.message.properties))
            .map(outgoing_event_id)
            .collect();
        assert!(!expected.is_empty(), "filter `{filter}` selects nothing");
        for (_, kind, name) in subs.iter().filter(|(j, _, _)| *j == i) {
            let transport = if *kind == "native" { &native } else { &client };
            let mut rx = transport
                .receiver(&topic, name, SubQueue::Main)
                .await
                .expect("receiver");
            let got = receive_exactly(&mut *rx, expected.len(), PATIENCE).await;
            let ids: BTreeSet<String> = got.iter().map(event_id_of).collect();
            assert_eq!(ids, expected, "{kind} filter `{filter}`");
            ack_all(got).await;
            assert_nothing(&mut *rx, QUIET).await;
        }
    }
    // Where the plan is native, the broker kept the other messages out of the queue.
    let published_more = message("tenant-b", "OrderShipped");
    native
        .publish(&topic, vec![published_more])
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queue = format!("{TEST_PREFIX}.{topic}:native-0");
    assert_eq!(depth(&url, &queue).await, 0, "tenant-b reached {queue}");
    let queue = format!("{TEST_PREFIX}.{topic}:client-0");
    assert_eq!(
        depth(&url, &queue).await,
        1,
        "client-side queues get everything"
    );
}

/// A receiver opened by another transport (another process) without declaring the
/// subscription applies its filter and lock duration, read from the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_shared_through_the_broker() {
    let Some(factory) = factory() else { return };
    let a = factory.connect().await;
    let topic = factory.unique("shared");
    let spec = SubscriptionSpec::new(&topic, factory.unique("shared-s"))
        .filter(Filter::sql("[cs-tenant-id] IN ('tenant-b')").expect("parses"))
        .lock_duration(Duration::from_millis(300));
    a.ensure_subscription(&spec).await.expect("ensure");
    let b = factory.connect().await;
    let wanted = message("tenant-b", "OrderPlaced");
    b.publish(
        &topic,
        vec![message("tenant-a", "OrderPlaced"), wanted.clone()],
    )
    .await
    .expect("publish");
    let mut rx = b
        .receiver(&topic, &spec.name, SubQueue::Main)
        .await
        .expect("receiver");
    let first = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    assert_eq!(event_id_of(&first), outgoing_event_id(&wanted));
    // The 300 ms lock applies: the held message comes back.
    let again = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
    assert_eq!(again.delivery_count, 2);
    again.ack().await.expect("ack");
    drop(first);
    assert_nothing(&mut *rx, QUIET).await;
}

/// A message published by someone else, without our headers (or with foreign ones), is
/// delivered with the properties it has (none here) rather than breaking the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_are_delivered_with_what_they_have() {
    let Some(factory) = factory() else { return };
    let url = std::env::var("EVENTYARD_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| Service::Amqp.default_url().to_owned());
    let transport = factory.connect().await;
    let topic = factory.unique("foreign");
    let spec = SubscriptionSpec::new(&topic, factory.unique("foreign-s"));
    transport.ensure_subscription(&spec).await.expect("ensure");
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("raw connection");
    let ch = conn.create_channel().await.expect("channel");
    let exchange = format!("{TEST_PREFIX}.{topic}");
    for body in [&b"not json at all"[..], &b"{}"[..]] {
        ch.basic_publish(
            exchange.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("sent");
    }
    let _ = conn.close(200, "bye".into()).await;
    let mut rx = transport
        .receiver(&topic, &spec.name, SubQueue::Main)
        .await
        .expect("receiver");
    let got = receive_exactly(&mut *rx, 2, PATIENCE).await;
    assert_eq!(&got[0].message.body[..], b"not json at all");
    assert!(got.iter().all(|d| d.message.properties.is_empty()));
    assert!(got.iter().all(|d| d.delivery_count == 1));
    ack_all(got).await;
}

/// A message whose consumer went away without settling it (its connection closed) comes back
/// with the delivery counted, so a message that keeps crashing consumers is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_lost_with_the_connection_are_counted() {
    let Some(factory) = factory() else { return };
    let topic = factory.unique("crashes");
    let spec = SubscriptionSpec::new(&topic, factory.unique("crashes-s")).max_delivery_count(2);
    let sent = message("tenant-a", "OrderPlaced");
    {
        let t = factory.connect().await;
        t.ensure_subscription(&spec).await.expect("ensure");
        t.publish(&topic, vec![sent.clone()])
            .await
            .expect("publish");
    }
    for attempt in 1..=2 {
        // A consumer that "crashes": its connection closes with the delivery unsettled.
        let t = factory.connect().await;
        let mut rx = t
            .receiver(&topic, &spec.name, SubQueue::Main)
            .await
            .expect("receiver");
        let d = receive_exactly(&mut *rx, 1, PATIENCE).await.remove(0);
        assert_eq!(event_id_of(&d), outgoing_event_id(&sent));
        assert_eq!(d.delivery_count, attempt);
        std::mem::forget(d); // no release on drop: a crash
        t.close().await.expect("close");
    }
    let t = factory.connect().await;
    let mut rx = t
        .receiver(&topic, &spec.name, SubQueue::Main)
        .await
        .expect("receiver");
    assert_nothing(&mut *rx, Duration::from_millis(500)).await;
    let mut dlq = t
        .receiver(&topic, &spec.name, SubQueue::DeadLetter)
        .await
        .expect("dead-letter receiver");
    let dead = receive_exactly(&mut *dlq, 1, PATIENCE).await.remove(0);
    assert_eq!(event_id_of(&dead), outgoing_event_id(&sent));
    assert_eq!(
        dead.message.properties.get_str(names::DEAD_LETTER_REASON),
        Some("MaxDeliveryCountExceeded")
    );
    dead.ack().await.expect("ack");
}

/// Configuration errors surface before any connection attempt.
#[tokio::test]
async fn invalid_configuration_is_refused() {
    let mut cfg = test_config("amqp://127.0.0.1:1/%2f");
    cfg.prefix = "bad prefix".into();
    assert!(matches!(
        AmqpTransport::connect(cfg).await,
        Err(TransportError::Config(_))
    ));
}

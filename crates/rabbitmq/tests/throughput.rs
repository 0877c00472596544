//! Throughput against raw lapin in the same run (publish with confirms, window 256; consume with
//! prefetch 256 and acks batched 64 at a time), same messages, same durable topology.
//! Informative, not a pass/fail gate:
//! `cargo test --release -p eventyard-rabbitmq --test throughput -- --ignored --nocapture`.

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::AmqpFactory;
use eventyard_core::{OutgoingMessage, PropertyValue, SubQueue, SubscriptionSpec, Transport};
use eventyard_testkit::conformance::TransportFactory;
use eventyard_testkit::helpers::message;
use eventyard_testkit::services::{Service, require};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const MESSAGES: usize = 20_000;
const WINDOW: usize = 256;

fn headers(m: &OutgoingMessage) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in m.message.properties.iter() {
        let v = match v {
            PropertyValue::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
            PropertyValue::Int(i) => AMQPValue::LongLongInt(*i),
            PropertyValue::Float(x) => AMQPValue::Double(*x),
            PropertyValue::Bool(b) => AMQPValue::Boolean(*b),
        };
        t.insert(k.into(), v);
    }
    t
}

/// CPU time of this process so far (user + system), from `/proc/self/stat` (Linux; zero
/// elsewhere), in clock ticks of 10 ms.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of the line; 12 and 13 after the command name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn rate(n: usize, d: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n / d.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn throughput_against_raw_lapin() {
    let Some(url) = require(Service::Amqp) else {
        return;
    };
    let factory = AmqpFactory::new(url.clone());
    let transport = factory.connect_with(|_| {}).await;
    let topic = factory.unique("bench");
    let ours = SubscriptionSpec::new(&topic, "ours");
    let raw = SubscriptionSpec::new(&topic, "raw");
    let messages: Vec<OutgoingMessage> = (0..MESSAGES)
        .map(|_| message("tenant-a", "OrderPlaced"))
        .collect();
    let body_len = messages[0].message.body.len();

    // Raw publish into the raw subscription's queue (declared by the transport: same kind of
    // durable classic queue), straight to the queue.
    transport.ensure_subscription(&raw).await.expect("ensure");
    let raw_queue = format!("{}.{topic}:raw", common::TEST_PREFIX);
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let (start, cpu0) = (Instant::now(), cpu());
    let mut inflight = VecDeque::new();
    for m in &messages {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers(m));
        let c = ch
            .basic_publish(
                "".into(),
                raw_queue.as_str().into(),
                BasicPublishOptions::default(),
                &m.message.body,
                props,
            )
            .await
            .expect("publish");
        inflight.push_back(c);
        if inflight.len() >= WINDOW {
            assert!(
                inflight
                    .pop_front()
                    .expect("some")
                    .await
                    .expect("confirm")
                    .is_ack()
            );
        }
    }
    for c in inflight {
        assert!(c.await.expect("confirm").is_ack());
    }
    let raw_publish = start.elapsed();
    let raw_publish_cpu = cpu() - cpu0;

    // Raw consume: prefetch 256, ack (multiple) every 64.
    let consume_ch = conn.create_channel().await.expect("channel");
    consume_ch
        .basic_qos(256, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consume_ch
        .basic_consume(
            raw_queue.as_str().into(),
            "raw-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let (start, cpu0) = (Instant::now(), cpu());
    let mut n = 0;
    while n < MESSAGES {
        let d = consumer.next().await.expect("open").expect("delivery");
        n += 1;
        if n % 64 == 0 || n == MESSAGES {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .expect("ack");
        }
    }
    let raw_consume = start.elapsed();
    let raw_consume_cpu = cpu() - cpu0;
    let _ = conn.close(200, "done".into()).await;

    // The transport: the subscription's own queue gets the messages through the topic exchange.
    transport
        .delete_subscription(&topic, "raw")
        .await
        .expect("delete");
    transport.ensure_subscription(&ours).await.expect("ensure");
    let (start, cpu0) = (Instant::now(), cpu());
    for chunk in messages.chunks(WINDOW) {
        transport
            .publish(&topic, chunk.to_vec())
            .await
            .expect("publish");
    }
    let our_publish = start.elapsed();
    let our_publish_cpu = cpu() - cpu0;
    let mut rx = transport
        .receiver(&topic, "ours", SubQueue::Main)
        .await
        .expect("receiver");
    let (start, cpu0) = (Instant::now(), cpu());
    let mut n = 0;
    let mut calls = 0;
    let mut in_receive = Duration::ZERO;
    while n < MESSAGES {
        calls += 1;
        let t = Instant::now();
        let batch = rx
            .receive(256, Duration::from_secs(5))
            .await
            .expect("receive");
        in_receive += t.elapsed();
        for d in batch {
            d.ack().await.expect("ack");
            n += 1;
        }
    }
    let our_consume = start.elapsed();
    let our_consume_cpu = cpu() - cpu0;
    println!(
        "time in receive: {in_receive:?}; client CPU: publish raw {raw_publish_cpu:?} / \
         transport {our_publish_cpu:?}, consume raw {raw_consume_cpu:?} / transport \
         {our_consume_cpu:?}"
    );
    transport.close().await.expect("close");

    println!(
        "{MESSAGES} persistent messages of {body_len} bytes, classic durable queue, confirms \
         window {WINDOW}, prefetch 256\n\
         publish: raw {:.0}/s, transport {:.0}/s, ratio {:.2}\n\
         consume: raw {:.0}/s, transport {:.0}/s, ratio {:.2} ({calls} receive calls)",
        rate(MESSAGES, raw_publish),
        rate(MESSAGES, our_publish),
        raw_publish.as_secs_f64() / our_publish.as_secs_f64(),
        rate(MESSAGES, raw_consume),
        rate(MESSAGES, our_consume),
        raw_consume.as_secs_f64() / our_consume.as_secs_f64(),
    );
}

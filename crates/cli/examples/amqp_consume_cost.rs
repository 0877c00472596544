//! Instruction-count harness for the consume phase of `yard bench transport` (R2) on RabbitMQ:
//! a backlog published through the bus is consumed either by the bus consumer or by a raw lapin
//! consumer on the same queue. Not a test.
//!
//! Run it under callgrind with `--toggle-collect='*amqp_consume_cost::measure*'` (the runtime is
//! single-threaded, so the consumer's tasks run inside `measure`; lapin's own I/O thread does
//! not, on either side):
//!
//! ```text
//! amqp_consume_cost <amqp-url> <messages> <bus|raw>
//! ```
//!
//! - `bus`: a bus consumer with a no-op shared-envelope handler, concurrency 256 (the bench's R2).
//! - `raw`: `basic.consume` with prefetch 256 and `basic.ack(multiple)` every 64 deliveries and
//!   whenever none is ready (the bench's raw R2 consumer).

use std::time::Duration;

use eventyard::{Bus, Envelope};
use eventyard_cli::bench::transport::{consume_acking, noop, set_query};
use eventyard_cli::bench::workload::{self, SUBSCRIPTION};
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

/// In flight: the bench's default `--window`.
const WINDOW: u16 = 256;

/// Consumes `n` messages with the bus consumer.
async fn bus_side(bus: &Bus, topic: &str, n: u64) {
    let consumer = bus
        .subscription(SUBSCRIPTION)
        .topic(topic)
        .concurrency(usize::from(WINDOW))
        .handle_shared_envelopes(noop)
        .await
        .expect("consumer");
    while consumer.counts().acked < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Consumes `n` messages from `queue` with a raw lapin consumer.
async fn raw_side(url: &str, queue: &str, n: u64) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(WINDOW, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "amqp-consume-cost".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    consume_acking(&ch, &mut consumer, n, |body| {
        std::hint::black_box(body);
    })
    .await
    .expect("raw consume");
    let _ = ch.close(200, "consumed".into()).await;
    let _ = conn.close(200, "consumed".into()).await;
}

#[inline(never)]
fn measure(rt: &tokio::runtime::Runtime, f: impl std::future::Future<Output = ()>) -> Duration {
    let start = std::time::Instant::now();
    rt.block_on(f);
    start.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(
        args.len() == 4,
        "usage: amqp_consume_cost <amqp-url> <messages> <bus|raw>"
    );
    let url = &args[1];
    let n: u64 = args[2].parse().expect("messages");
    // `EVENTYARD_MT=1`: the multi-threaded runtime `yard` runs on, for wall-clock comparisons
    // (callgrind then sees only the part of the work done on the main thread).
    let rt = if std::env::var_os("EVENTYARD_MT").is_some() {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .expect("runtime");
    let template = workload::template(256).expect("template");
    let prefix = format!("acc{}", std::process::id());
    let (transport, bus, topic) = rt.block_on(async {
        let url = set_query(url, &[("prefix", prefix.clone())]);
        let transport = eventyard::connect(&url).await.expect("connect");
        let bus = Bus::new(transport.clone());
        let topic = bus.topic_for(&template).expect("topic");
        bus.subscription(SUBSCRIPTION)
            .topic(topic.as_str())
            .declare()
            .await
            .expect("declare");
        let mut left = n;
        while left > 0 {
            let k = left.min(u64::from(WINDOW));
            let batch: Vec<Envelope> = (0..k).map(|_| workload::next(&template)).collect();
            bus.publish_batch(batch).await.expect("publish");
            left -= k;
        }
        (transport, bus, topic)
    });
    let took = match args[3].as_str() {
        "bus" => measure(&rt, bus_side(&bus, &topic, n)),
        "raw" => {
            let queue = format!("{prefix}.{topic}:{SUBSCRIPTION}");
            measure(&rt, raw_side(url, &queue, n))
        }
        other => panic!("unknown side {other}"),
    };
    println!(
        "{}: {n} consumed in {:.3} s, {:.0} msg/s",
        args[3],
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    rt.block_on(async {
        bus.shutdown().await.expect("shutdown");
        let _ = transport.delete_subscription(&topic, SUBSCRIPTION).await;
    });
}

//! Instruction-count harness for the streaming path of `yard bench transport`'s latency runs
//! (R5): every message is published alone and consumed alone, the next one published only
//! once the previous one reached the consumer. Not a test.
//!
//! Run it under callgrind with `--toggle-collect='*stream_cost::measure*'`:
//!
//! ```text
//! stream_cost <nats-url> <messages> <bus|raw>
//! ```
//!
//! - `bus`: `Bus::publish_envelope` and a bus consumer with a no-op shared-envelope handler (the
//!   transport's defaults, so confirmed acks), as the bus side of the latency run.
//! - `raw`: async-nats `send_publish` + PubAck and a pull consumer with double acks, as the
//!   raw side of the latency run (same envelope serialization, same headers).
//!
//! Both warm up with a few unmeasured messages first.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, message::PublishMessage};
use eventyard::{Bus, Envelope, HandlerError, Message, MessageContext};
use eventyard_cli::bench::transport::{
    nats_headers, raw_consumer_request, raw_stream_config, set_query,
};
use eventyard_cli::bench::workload::{self, INTENDED_HEADER, SUBSCRIPTION};
use futures::StreamExt;
use tokio::sync::mpsc;

/// Unmeasured messages before the measured ones.
const WARM_UP: usize = 20;
/// In flight: the bench's default `--window`.
const WINDOW: usize = 256;

/// A latency message: a fresh envelope carrying an intended-time header, as the bench's.
fn envelope(template: &Envelope, i: usize) -> Envelope {
    let mut env = workload::next(template);
    env.headers
        .insert(INTENDED_HEADER.into(), (i * 1000).to_string());
    env
}

/// What the measured loop drives: publish one message, wait until it was consumed.
enum Side {
    Bus {
        bus: Bus,
        seen: mpsc::UnboundedReceiver<()>,
    },
    Raw {
        /// Boxed: much larger than the bus side's fields.
        js: Box<jetstream::Context>,
        subject: async_nats::Subject,
        seen: mpsc::UnboundedReceiver<()>,
    },
}

impl Side {
    async fn one(&mut self, template: &Envelope, i: usize) {
        let env = envelope(template, i);
        match self {
            Side::Bus { bus, seen } => {
                bus.publish_envelope(env).await.expect("bus publish");
                seen.recv().await.expect("bus consumer ended");
            }
            Side::Raw { js, subject, seen } => {
                let m = Message::from_envelope(&env);
                let h = nats_headers(&m.properties);
                let msg = PublishMessage::build().payload(m.body).headers(h);
                let ack = js
                    .send_publish(subject.clone(), msg)
                    .await
                    .expect("raw publish");
                let ack = ack.await.expect("raw PubAck");
                assert!(!ack.duplicate, "raw publish dropped as a duplicate");
                seen.recv().await.expect("raw consumer ended");
            }
        }
    }
}

#[inline(never)]
fn measure(rt: &tokio::runtime::Runtime, side: &mut Side, template: &Envelope, n: usize) {
    rt.block_on(async {
        for i in 0..n {
            side.one(template, WARM_UP + i).await;
        }
    });
}

/// The raw side's stream (configured as the transport's topic streams) and pull consumer.
async fn raw_consumer(js: &jetstream::Context, name: &str) -> PullConsumer {
    let config = raw_stream_config(name);
    let v: serde_json::Value = js
        .request(format!("STREAM.CREATE.{name}"), &config)
        .await
        .expect("create stream");
    assert!(v.get("error").is_none(), "create stream: {v}");
    let body = raw_consumer_request(name, "latency");
    let v: serde_json::Value = js
        .request(format!("CONSUMER.DURABLE.CREATE.{name}.latency"), &body)
        .await
        .expect("create consumer");
    assert!(v.get("error").is_none(), "create consumer: {v}");
    js.get_stream(name)
        .await
        .expect("stream")
        .get_consumer("latency")
        .await
        .expect("consumer")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(
        args.len() == 4,
        "usage: stream_cost <nats-url> <messages> <bus|raw>"
    );
    let url = &args[1];
    let n: usize = args[2].parse().expect("messages");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let template = workload::template(256).expect("template");
    let tag = format!("sc{}", std::process::id());
    match args[3].as_str() {
        "bus" => {
            let (transport, mut side) = rt.block_on(async {
                let url = set_query(
                    url,
                    &[
                        ("prefix", tag.clone()),
                        ("publish_window", WINDOW.to_string()),
                    ],
                );
                let transport = eventyard::connect(&url).await.expect("connect");
                let bus = Bus::new(transport.clone());
                let topic = bus.topic_for(&template).expect("topic");
                let (tx, seen) = mpsc::unbounded_channel();
                bus.subscription(SUBSCRIPTION)
                    .topic(topic.as_str())
                    .concurrency(WINDOW)
                    .handle_shared_envelopes(move |env: Arc<Envelope>, _ctx: MessageContext| {
                        assert!(env.headers.contains_key(INTENDED_HEADER));
                        let _ = tx.send(());
                        async { Ok::<(), HandlerError>(()) }
                    })
                    .await
                    .expect("consumer");
                (transport, Side::Bus { bus, seen })
            });
            run(&rt, &mut side, &template, n);
            rt.block_on(async {
                let Side::Bus { bus, .. } = side else {
                    unreachable!()
                };
                let topic = bus.topic_for(&template).expect("topic");
                bus.shutdown().await.expect("shutdown");
                let _ = transport.delete_subscription(&topic, SUBSCRIPTION).await;
            });
            // The transport's topic stream: removed through a raw client.
            rt.block_on(async {
                let cfg = eventyard::nats::NatsConfig::from_url(url).expect("url");
                let client = async_nats::connect(cfg.servers.as_str())
                    .await
                    .expect("connect");
                let js = jetstream::new(client);
                let names: Vec<String> = js
                    .stream_names()
                    .filter_map(|n| async move { n.ok() })
                    .collect()
                    .await;
                for name in names.iter().filter(|n| n.starts_with(&format!("{tag}_"))) {
                    let _ = js.delete_stream(name).await;
                }
            });
        }
        "raw" => {
            let (js, name, mut side) = rt.block_on(async {
                let cfg = eventyard::nats::NatsConfig::from_url(url).expect("url");
                let client = async_nats::connect(cfg.servers.as_str())
                    .await
                    .expect("connect");
                let js = jetstream::ContextBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build(client);
                let name = format!("{tag}-raw");
                let consumer = raw_consumer(&js, &name).await;
                let (tx, seen) = mpsc::unbounded_channel();
                tokio::spawn(async move {
                    let mut messages = consumer
                        .stream()
                        .max_messages_per_batch(WINDOW)
                        .messages()
                        .await
                        .expect("pull consumer");
                    let mut acks = futures::stream::FuturesUnordered::new();
                    loop {
                        tokio::select! {
                            Some(done) = acks.next(), if !acks.is_empty() => {
                                let _: () = done;
                            }
                            next = messages.next() => {
                                let Some(Ok(msg)) = next else { return };
                                let _ = tx.send(());
                                acks.push(async move {
                                    msg.double_ack().await.expect("raw ack");
                                });
                            }
                        }
                    }
                });
                let subject = async_nats::Subject::from(format!(
                    "{name}.t.{0}.bench.{0}",
                    workload::EVENT_TYPE
                ));
                (
                    js.clone(),
                    name,
                    Side::Raw {
                        js: Box::new(js),
                        subject,
                        seen,
                    },
                )
            });
            run(&rt, &mut side, &template, n);
            rt.block_on(async {
                let _ = js.delete_stream(&name).await;
            });
        }
        other => panic!("mode must be bus or raw, not {other}"),
    }
}

/// Warm-up, then the measured messages.
fn run(rt: &tokio::runtime::Runtime, side: &mut Side, template: &Envelope, n: usize) {
    rt.block_on(async {
        for i in 0..WARM_UP {
            side.one(template, i).await;
        }
    });
    measure(rt, side, template, n);
    eprintln!("{n} messages measured");
}

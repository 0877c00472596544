//! `yard bench transport --url amqp://…|nats://…` (R1, R2 and R5 of
//! `/work/shared/perf/TARGETS.md`): the bus over RabbitMQ or NATS JetStream against the raw client
//! (lapin, async-nats) measured in the same process and run, with the same durability, the same
//! in-flight window and the same bytes on the wire.
//!
//! Every figure is a ratio against the raw client. Each of `--runs` rounds uses fresh, uniquely
//! named queues/exchanges or streams (deleted afterwards) and runs both sides; the raw side goes
//! first on odd rounds and the bus first on even ones, so drift of a shared machine hits both.
//! The report gives medians.
//!
//! - **R1, publish rate.** Raw: N messages with `window` confirms (RabbitMQ: persistent
//!   messages, publisher confirms, durable headers exchange → durable classic queue) or PubAcks
//!   (NATS: file-storage stream) in flight — a sliding window, the next publish as soon as the
//!   oldest is confirmed. The raw messages carry what the transport sends: the envelope JSON as
//!   body and the same headers (the `cs-*` properties, typed as the transport types them, the
//!   message id; RabbitMQ: content type, timestamp and the enqueue-time header too). The same
//!   publish without any header is reported for reference. Bus: N real envelopes, `--batch`
//!   (default: the window / `--pipeline`) per batch, through the pipelined publisher
//!   (`Bus::publisher`) with `--pipeline` (default 4) batches on their way: the next batch is
//!   validated, converted and sent while earlier ones await their confirmations, and the caller awaits the oldest
//!   receipt once more are pending — the bus's counterpart of the raw sliding window. All
//!   batches share the transport's window, so the bus, like the raw side, never has more than
//!   the window in flight. Sequential `Bus::publish_batch` calls of `window` envelopes from one
//!   caller are measured too (on a bus of their own) and reported for reference: each call returns only once its
//!   messages are confirmed, so the window empties at the end of every call (send, wait for the
//!   last confirm, then prepare the next batch while the broker idles).
//! - **R2, consume rate.** The backlog each side just published is consumed, the clock running
//!   from the start of the consumer until all N are acknowledged. Raw, RabbitMQ: `basic.consume`
//!   with prefetch = window, `basic.ack(multiple)` every 64 deliveries (and whenever no delivery
//!   is ready). Raw, NATS: durable pull consumer (explicit acks, same settings as the
//!   transport's), pull batches of the window, up to the window of acks in flight — confirmed
//!   ("double") acks when the transport confirms its settlements (its default), with plain acks
//!   reported for reference. Bus: the runtime consumer (`handle_shared_envelopes`, no-op handler,
//!   concurrency = window, ack after the handler); the clock stops when its `acked` counter
//!   reaches N.
//! - **R5, latency.** Open loop at `--latency-share` (50 %) of the raw maximum rate (capped by
//!   `--latency-max-rate`, 20k/s) for `--seconds`, the same rate for both sides, in
//!   `--latency-runs` (3) pairs of one raw and one bus run, the raw side first in odd pairs and
//!   the bus first in even ones; R5 compares the medians of each side's p50 and p99. The raw
//!   maximum end-to-end rate is measured in every round: the raw consumer runs while the raw
//!   publisher publishes N messages (same window, headers and ack policy), the clock stopping
//!   when the last one is acknowledged; R5 takes the median. (Earlier versions estimated it as
//!   1 / (1/P + 1/C) of the publish and consume rates measured apart, still reported for
//!   reference; half the publish rate alone would saturate the pipeline and measure queueing,
//!   not latency.) A dedicated thread keeps the schedule and hands each publish to the runtime
//!   as its own task, each side with at most `window` publishes awaiting their confirmation
//!   (the bus: the transport's window; raw: a semaphore of the same size), so a slow
//!   confirmation delays later sends alike; the *intended* send time travels in the payload
//!   (an envelope header), and the consumer (raw: on receipt; bus: at handler start) records
//!   `now − intended` in an HDR histogram — no coordinated omission.
//! - **Light-load reference** (not part of R5's verdict). One more pair, raw first, at
//!   `--latency-light-rate` (1,000 msg/s), far below saturation: the path's own latency without
//!   queueing. Its raw p50 beside R5's gives `raw_queueing_factor`; above 3 the report notes
//!   that the raw side itself queues at R5's rate, so that R5 compares queueing (on a 2-core
//!   machine shared with the broker, a message sent alone costs several times its CPU in a
//!   saturated batch, so half the saturated maximum can already be near saturation).

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;

use anyhow::{Context as _, anyhow, bail, ensure};
use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use bytes::Bytes;
use eventyard::properties::names as prop_names;
use eventyard::{
    Bus, Capabilities, Envelope, EventId, HandlerError, Message, MessageContext, OutgoingMessage,
    Properties, PropertyValue, Receiver, SubQueue, SubscriptionSpec, Transport, TransportError,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, ExchangeKind};
use serde::Serialize;

use super::broker::{parse_schedstat, schedstat_timeslices};
use super::embedded::thousands;
use super::latency::LatencyRun;
use super::workload::{self, EVENT_TYPE, INTENDED_HEADER, SUBSCRIPTION, median};

/// R1 and R2 bar: bus rate / raw rate.
pub const TARGET_RATIO: f64 = 0.8;
/// R5 bar: bus p99 / raw p99.
pub const TARGET_P99_RATIO: f64 = 1.5;
/// R5 bar: bus p50 − raw p50, milliseconds.
pub const TARGET_P50_DELTA_MS: f64 = 0.3;

/// Raw RabbitMQ consumer: deliveries per `basic.ack(multiple)`.
const ACK_EVERY: u64 = 64;
/// A phase with no progress for this long fails instead of hanging.
const STALL: Duration = Duration::from_secs(30);
/// Latency runs: messages sent through the whole path before the schedule starts.
const WARMUP: u64 = 20;
/// How long the transport keeps a lock (default of `SubscriptionSpec`), mirrored by the raw
/// NATS consumer's ack wait.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// What a raw consumer does with each body on receipt.
type OnBody = Arc<dyn Fn(&[u8]) + Send + Sync>;
/// One latency publish, run as its own task.
type SendFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'static>>;

/// Arguments of `yard bench transport`.
#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// Broker URL: `amqp://user:pass@host:port/vhost` (RabbitMQ) or `nats://host:port` (NATS
    /// JetStream). Transport options in the query are kept, except `prefix` and the publish
    /// window, which the benchmark sets (unique names per run; `--window`).
    #[arg(long)]
    pub url: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Messages per throughput run, each side (default: 100,000 on NATS, 30,000 on RabbitMQ).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: Option<u64>,
    /// Throughput rounds (raw and bus each); the report gives medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// In flight, on both sides: publish confirms / PubAcks, consumer prefetch and concurrency.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_535))]
    pub window: u64,
    /// Envelopes per batch the bus publishes (default: the window divided by `--pipeline`, so
    /// that the batches on their way fill the window without waiting for each other's slots).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// Bus publish (R1): batches on their way at once through the pipelined publisher
    /// (`Bus::publisher`), which sends the next batch while earlier ones await their
    /// confirmations, as the raw client's sliding window does. They share the transport's window
    /// (`--window` messages in flight in all, as on the raw side). Sequential
    /// `Bus::publish_batch` calls from one caller are measured too and reported for reference.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub pipeline: u64,
    /// Size of the envelope's JSON payload, in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Latency run: its rate as a share of the raw maximum rate, i.e. of what the raw client
    /// sustains publishing and consuming at once (measured in every round; the median).
    #[arg(long, default_value_t = 0.5)]
    pub latency_share: f64,
    /// Latency run: this rate (msg/s) instead of the share of the raw maximum.
    #[arg(long)]
    pub latency_rate: Option<f64>,
    /// Latency run: upper bound of its rate, msg/s.
    #[arg(long, default_value_t = 20_000.0)]
    pub latency_max_rate: f64,
    /// Latency runs per side (R5 is the median of them): pairs of one raw and one bus run, the
    /// raw side first in odd pairs and the bus first in even ones.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub latency_runs: u32,
    /// Latency run: how long to publish, each side (`5s`, `500ms`, or seconds).
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub seconds: Duration,
    /// Light-load reference: one more pair (raw, then bus) at this rate, msg/s, reported beside
    /// R5 (not part of its verdict): the path's latency without queueing, and how much of R5's
    /// raw latency is queueing. Skipped when it is not below R5's rate; 0 skips it.
    #[arg(long, default_value_t = 1_000.0)]
    pub latency_light_rate: f64,
}

/// The broker a URL designates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Broker {
    /// RabbitMQ (`amqp://`, `amqps://`).
    Amqp,
    /// NATS JetStream (`nats://`, `tls://`).
    Nats,
}

impl Broker {
    /// The broker of `url`, by scheme.
    pub fn of(url: &str) -> anyhow::Result<Self> {
        match url.split_once("://").map(|(s, _)| s) {
            Some("amqp" | "amqps") => Ok(Broker::Amqp),
            Some("nats" | "tls") => Ok(Broker::Nats),
            _ => bail!("`{url}`: yard bench transport needs an amqp:// or nats:// URL"),
        }
    }

    /// Human name.
    pub fn name(self) -> &'static str {
        match self {
            Broker::Amqp => "RabbitMQ",
            Broker::Nats => "NATS JetStream",
        }
    }

    fn default_messages(self) -> u64 {
        match self {
            Broker::Amqp => 30_000,
            Broker::Nats => 100_000,
        }
    }
}

/// One timed phase of one side.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Messages published (or consumed and acknowledged).
    pub messages: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// messages / elapsed.
    pub rate: f64,
    /// CPU time of this whole process (every thread) per message, µs: the client-side cost.
    pub cpu_us_per_msg: f64,
    /// CPU time of the broker's process per message, µs, when the broker runs on this machine
    /// (`nats-server` / `beam.smp`, found by name for a loopback URL); `None` otherwise.
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Times one of this process's threads was put on a CPU, per message (`schedstat`
    /// timeslices: wake-ups and returns from preemption): what batching saves.
    pub slices_per_msg: f64,
    /// The same for the broker's process, when found.
    pub broker_slices_per_msg: Option<f64>,
    /// Share of all CPUs of the machine busy during the phase, % (everything, other processes
    /// included; from `/proc/stat`): near 100 means the phase was CPU-bound.
    pub machine_busy_pct: f64,
}

/// The raw phases of one round (see [`Round`]).
struct RawPhases {
    publish_bare: Phase,
    publish: Phase,
    consume: Phase,
    consume_plain_acks: Option<Phase>,
    end_to_end: Phase,
}

/// Everything measured in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: u32,
    /// `raw-first` or `bus-first`.
    pub order: &'static str,
    /// Raw publish without headers (reference).
    pub raw_publish_bare: Phase,
    /// Raw publish with the transport's headers (the R1 baseline).
    pub raw_publish: Phase,
    /// Raw consume with the transport's ack policy (the R2 baseline).
    pub raw_consume: Phase,
    /// Raw consume with plain (unconfirmed) acks, when the transport confirms its acks.
    pub raw_consume_plain_acks: Option<Phase>,
    /// Raw publish and consume at once: the consumer runs while the backlog is published, the
    /// clock stopping when the last message is acknowledged (R5's raw maximum rate).
    pub raw_end_to_end: Phase,
    /// The pipelined publisher, `pipeline` batches on their way.
    pub bus_publish: Phase,
    /// Sequential `Bus::publish_batch` calls from one caller (reference).
    pub bus_publish_sequential: Phase,
    /// Runtime consumer.
    pub bus_consume: Phase,
    /// Bus consumer settle errors, retries and dead-letters (all should be 0).
    pub bus_anomalies: u64,
}

/// A figure next to its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Median raw rate, msg/s (the baseline).
    pub raw: f64,
    /// Median bus rate, msg/s.
    pub bus: f64,
    /// `bus / raw`.
    pub ratio: f64,
    /// The bar for `ratio`.
    pub target: f64,
    /// `ratio >= target`.
    pub meets_target: bool,
    /// What the raw side did.
    pub raw_path: String,
    /// What the bus side did.
    pub bus_path: String,
    /// Raw rates per round.
    pub raw_runs: Vec<f64>,
    /// Bus rates per round.
    pub bus_runs: Vec<f64>,
    /// Where the time went, raw side (medians).
    pub raw_costs: Costs,
    /// Where the time went, bus side (medians).
    pub bus_costs: Costs,
    /// Another raw variant, for reference (not the baseline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// Another bus variant, for reference (not the one measured against the target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_reference: Option<BusReference>,
}

/// A bus variant shown for reference.
#[derive(Debug, Clone, Serialize)]
pub struct BusReference {
    /// What differs from the measured bus side.
    pub what: String,
    /// Median rate, msg/s.
    pub rate: f64,
    /// `rate / raw` (the raw baseline).
    pub ratio: f64,
    /// Rates per round.
    pub runs: Vec<f64>,
    /// Where the time went (medians).
    pub costs: Costs,
}

/// A raw variant shown for reference.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    /// What differs from the baseline.
    pub what: String,
    /// Median rate, msg/s.
    pub rate: f64,
    /// `bus / rate`.
    pub bus_ratio: f64,
    /// Rates per round.
    pub runs: Vec<f64>,
    /// Where the time went (medians).
    pub costs: Costs,
}

/// Medians over rounds of what a phase cost.
#[derive(Debug, Clone, Serialize)]
pub struct Costs {
    /// CPU µs per message of this process (the client side).
    pub client_cpu_us_per_msg: f64,
    /// CPU µs per message of the local broker process, when found.
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Times a client thread was put on a CPU, per message.
    pub slices_per_msg: f64,
    /// The same for the broker's threads, when found.
    pub broker_slices_per_msg: Option<f64>,
    /// Share of the machine's CPUs busy, %.
    pub machine_busy_pct: f64,
}

impl Costs {
    /// What `phase` cost.
    fn of(phase: &Phase) -> Self {
        Costs {
            client_cpu_us_per_msg: phase.cpu_us_per_msg,
            broker_cpu_us_per_msg: phase.broker_cpu_us_per_msg,
            slices_per_msg: phase.slices_per_msg,
            broker_slices_per_msg: phase.broker_slices_per_msg,
            machine_busy_pct: phase.machine_busy_pct,
        }
    }

    /// Field-wise medians (the broker's over the runs that measured it).
    fn median<'a>(all: impl IntoIterator<Item = &'a Costs>) -> Costs {
        let all: Vec<&Costs> = all.into_iter().collect();
        let of = |f: fn(&Costs) -> f64| median_by(&all, |c| Some(f(c))).unwrap_or(0.0);
        let some = |f: fn(&Costs) -> Option<f64>| median_by(&all, f);
        Costs {
            client_cpu_us_per_msg: of(|c| c.client_cpu_us_per_msg),
            broker_cpu_us_per_msg: some(|c| c.broker_cpu_us_per_msg),
            slices_per_msg: of(|c| c.slices_per_msg),
            broker_slices_per_msg: some(|c| c.broker_slices_per_msg),
            machine_busy_pct: of(|c| c.machine_busy_pct),
        }
    }
}

/// One R5 pair: a raw and a bus latency run at the same rate, one right after the other.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyPair {
    /// 1-based.
    pub pair: u32,
    /// `raw-first` or `bus-first`.
    pub order: &'static str,
    /// Raw publish → raw consumer receipt.
    pub raw: LatencyRun,
    /// Bus publish → handler start.
    pub bus: LatencyRun,
    /// What the raw run cost.
    pub raw_costs: Costs,
    /// What the bus run cost.
    pub bus_costs: Costs,
    /// `bus.p50_ms − raw.p50_ms` of this pair.
    pub p50_delta_ms: f64,
    /// `bus.p99_ms / raw.p99_ms` of this pair.
    pub p99_ratio: f64,
}

/// R5's raw p50 above this many times the light-load raw p50 is reported as queueing.
const QUEUEING_FACTOR: f64 = 3.0;

/// The light-load reference beside R5: one raw and one bus latency run at a rate far below
/// saturation, so that their latencies are the path's own rather than queueing.
#[derive(Debug, Clone, Serialize)]
pub struct LightLoad {
    /// Messages per second, both sides (`--latency-light-rate`).
    pub rate: f64,
    /// The pair, raw first.
    pub pair: LatencyPair,
    /// R5's raw p50 / this raw p50: 1 when R5's rate adds no queueing to the raw path; far
    /// above 1 when the raw side itself queues at R5's rate (R5 then compares queueing).
    pub raw_queueing_factor: f64,
}

/// The median of `f` over the items that have it; `None` when none has.
fn median_by<T>(items: &[&T], f: impl Fn(&T) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = items.iter().filter_map(|x| f(x)).collect();
    (!v.is_empty()).then(|| median(&v))
}

/// Field-wise medians of latency runs (`sent`, `received` and `publish_errors`: totals).
fn median_run<'a>(runs: impl IntoIterator<Item = &'a LatencyRun>) -> LatencyRun {
    let runs: Vec<&LatencyRun> = runs.into_iter().collect();
    let of = |f: fn(&LatencyRun) -> f64| median_by(&runs, |r| Some(f(r))).unwrap_or(0.0);
    LatencyRun {
        sent: runs.iter().map(|r| r.sent).sum(),
        received: runs.iter().map(|r| r.received).sum(),
        publish_errors: runs.iter().map(|r| r.publish_errors).sum(),
        p50_ms: of(|r| r.p50_ms),
        p99_ms: of(|r| r.p99_ms),
        p999_ms: of(|r| r.p999_ms),
        max_ms: of(|r| r.max_ms),
        mean_ms: of(|r| r.mean_ms),
        max_schedule_lag_ms: of(|r| r.max_schedule_lag_ms),
        confirm_p50_ms: median_by(&runs, |r| r.confirm_p50_ms),
        confirm_p99_ms: median_by(&runs, |r| r.confirm_p99_ms),
    }
}

/// R5: latency of both sides at the same fixed rate, the median of `pairs`.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyComparison {
    /// Messages per second, both sides.
    pub rate: f64,
    /// The raw maximum rate the latency rate derives from: the median rate of the rounds' raw
    /// end-to-end phases (publishing and consuming at once, the same window, until the last
    /// message is acknowledged).
    pub raw_max_rate: f64,
    /// The raw end-to-end rate of each round.
    pub raw_end_to_end_runs: Vec<f64>,
    /// What the raw end-to-end phases cost (medians).
    pub raw_end_to_end_costs: Costs,
    /// For reference, the estimate earlier versions used instead of measuring: the median raw
    /// publish rate P and consume rate C combined as 1 / (1/P + 1/C).
    pub raw_max_rate_estimate: f64,
    /// How the rate was chosen.
    pub rate_basis: String,
    /// Seconds of publishing, each side and run.
    pub seconds: f64,
    /// Raw publish → raw consumer receipt: field-wise medians over the pairs (`sent`,
    /// `received`, `publish_errors`: totals).
    pub raw: LatencyRun,
    /// Bus publish → handler start, the same way.
    pub bus: LatencyRun,
    /// What the raw runs cost, each from its first scheduled send until its last message was
    /// consumed (how close to saturation the rate is): medians over the pairs.
    pub raw_costs: Costs,
    /// The same for the bus runs.
    pub bus_costs: Costs,
    /// `bus.p50_ms − raw.p50_ms` (of the medians).
    pub p50_delta_ms: f64,
    /// `bus.p99_ms / raw.p99_ms` (of the medians).
    pub p99_ratio: f64,
    /// Bar for `p50_delta_ms`.
    pub target_p50_delta_ms: f64,
    /// Bar for `p99_ratio`.
    pub target_p99_ratio: f64,
    /// Both bars met.
    pub meets_target: bool,
    /// Every pair, in the order run.
    pub pairs: Vec<LatencyPair>,
    /// The light-load reference (not part of the verdict); absent when skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub light: Option<LightLoad>,
}

/// What the benchmark held fixed, recorded beside every number.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Durability of both sides, in words.
    pub durability: String,
    /// When the broker acknowledges relative to fsync.
    pub ack_vs_fsync: String,
    /// Confirms / PubAcks in flight, consumer prefetch and concurrency.
    pub window: u64,
    /// Envelopes per batch the bus publishes.
    pub batch: u64,
    /// Batches on their way at once through the pipelined publisher (sharing the transport's
    /// window).
    pub pipeline: u64,
    /// Messages per throughput phase.
    pub messages: u64,
    /// Rounds.
    pub runs: u32,
    /// Envelope payload size, bytes.
    pub payload_bytes: usize,
    /// Message body (envelope JSON), bytes, both sides.
    pub body_bytes: usize,
    /// Properties carried as headers, both sides.
    pub header_properties: usize,
    /// Header bytes per message as the raw side encodes them (NATS: wire bytes of the header
    /// block; RabbitMQ: names and values of the header table).
    pub header_bytes: usize,
    /// How the transport acknowledges deliveries.
    pub ack_policy: String,
    /// Latency run: share of the raw rate.
    pub latency_share: f64,
    /// Latency run: rate cap, msg/s.
    pub latency_max_rate: f64,
    /// Latency runs per side.
    pub latency_runs: u32,
    /// Rate of the light-load reference pair, msg/s (0: skipped).
    pub latency_light_rate: f64,
    /// The URL (password hidden), before the benchmark's own options.
    pub url: String,
    /// Worker threads of the async runtime.
    pub runtime_workers: usize,
    /// Logical CPUs seen by the process.
    pub cpus: usize,
    /// `/proc/loadavg` (1, 5, 15 min) at the start; empty where unavailable.
    pub loadavg_start: String,
    /// The same at the end.
    pub loadavg_end: String,
}

/// The report, printed as a table or (with `--json`) as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct TransportReport {
    /// `transport`.
    pub benchmark: &'static str,
    /// Which broker.
    pub broker: Broker,
    /// R1.
    pub publish: Comparison,
    /// R2.
    pub consume: Comparison,
    /// R5.
    pub latency: LatencyComparison,
    /// R1, R2 and R5 all met.
    pub meets_targets: bool,
    /// What was held fixed.
    pub settings: Settings,
    /// Caveats to print beside the figures.
    pub notes: Vec<String>,
    /// Every round.
    pub rounds: Vec<Round>,
}

impl TransportReport {
    /// Human notes on missed targets (empty when all are met).
    pub fn shortfalls(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (id, c) in [("R1 publish", &self.publish), ("R2 consume", &self.consume)] {
            if !c.meets_target {
                v.push(format!(
                    "{id} ratio {:.3} is below {:.2}",
                    c.ratio, c.target
                ));
            }
        }
        let l = &self.latency;
        if l.p50_delta_ms > l.target_p50_delta_ms {
            v.push(format!(
                "R5 p50 is raw + {:.2} ms (bar: + {:.1} ms)",
                l.p50_delta_ms, l.target_p50_delta_ms
            ));
        }
        if l.p99_ratio > l.target_p99_ratio {
            v.push(format!(
                "R5 p99 is {:.2}x raw (bar: {:.1}x)",
                l.p99_ratio, l.target_p99_ratio
            ));
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn ratio(x: f64, base: f64) -> f64 {
    if base > 0.0 { x / base } else { 0.0 }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Where CPU time is read from besides this process.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    /// The local broker process, if found.
    broker_pid: Option<u32>,
}

impl Probe {
    /// Finds the broker's process on this machine: exactly one process named `nats-server`
    /// (NATS) or `beam.smp` (RabbitMQ), and only for a loopback URL.
    fn find(broker: Broker, url: &str) -> Self {
        let host = url
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or("")
            .split(['/', '?', ','])
            .next()
            .unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let loopback = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .any(|l| host == *l || host.starts_with(&format!("{l}:")));
        let name = match broker {
            Broker::Nats => "nats-server",
            Broker::Amqp => "beam.smp",
        };
        let mut found = Vec::new();
        if loopback && let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                if comm.trim() == name {
                    found.push(pid);
                }
            }
        }
        Probe {
            broker_pid: (found.len() == 1).then(|| found[0]),
        }
    }

    fn broker_sched(self) -> Option<Sched> {
        self.broker_pid
            .map(|pid| Sched::of_threads(&format!("/proc/{pid}/task")))
    }
}

/// Scheduler totals of a process's threads so far (Linux; zeros elsewhere).
#[derive(Debug, Clone, Copy, Default)]
struct Sched {
    /// ns on a CPU.
    cpu_ns: u64,
    /// Times a thread was put on a CPU (each a wake-up or a return from preemption).
    slices: u64,
}

impl Sched {
    /// Sums `schedstat` (ns on CPU, ns waiting, timeslices) of every thread under
    /// `/proc/…/task`.
    fn of_threads(tasks: &str) -> Self {
        let Ok(dir) = std::fs::read_dir(tasks) else {
            return Sched::default();
        };
        dir.flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .fold(Sched::default(), |acc, line| Sched {
                cpu_ns: acc.cpu_ns + parse_schedstat(&line).map_or(0, |(run, _)| run),
                slices: acc.slices + schedstat_timeslices(&line).unwrap_or(0),
            })
    }

    fn since(self, before: Sched) -> Sched {
        Sched {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            slices: self.slices.saturating_sub(before.slices),
        }
    }
}

/// `(busy, total)` jiffies of all CPUs from `/proc/stat`; `(0, 0)` elsewhere.
fn machine_jiffies() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().next().filter(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Times a phase of `n` messages: wall clock, this process's CPU, the broker's CPU, and how
/// busy the machine was.
struct Timer {
    probe: Probe,
    start: Instant,
    sched: Sched,
    broker_sched: Option<Sched>,
    jiffies: (u64, u64),
}

impl Timer {
    fn start(probe: Probe) -> Self {
        Timer {
            probe,
            sched: Sched::of_threads("/proc/self/task"),
            broker_sched: probe.broker_sched(),
            jiffies: machine_jiffies(),
            start: Instant::now(),
        }
    }

    fn stop(self, n: u64) -> Phase {
        let elapsed = self.start.elapsed().as_secs_f64();
        let own = Sched::of_threads("/proc/self/task").since(self.sched);
        let broker = self
            .probe
            .broker_sched()
            .zip(self.broker_sched)
            .map(|(after, before)| after.since(before));
        let (busy, total) = machine_jiffies();
        let per_msg = |x: u64| x as f64 / n.max(1) as f64;
        Phase {
            messages: n,
            elapsed_s: elapsed,
            rate: n as f64 / elapsed.max(1e-9),
            cpu_us_per_msg: per_msg(own.cpu_ns) / 1_000.0,
            broker_cpu_us_per_msg: broker.map(|b| per_msg(b.cpu_ns) / 1_000.0),
            slices_per_msg: per_msg(own.slices),
            broker_slices_per_msg: broker.map(|b| per_msg(b.slices)),
            machine_busy_pct: 100.0
                * ratio(
                    busy.saturating_sub(self.jiffies.0) as f64,
                    total.saturating_sub(self.jiffies.1) as f64,
                ),
        }
    }
}

/// `url` with the query parameters `params` set (replacing any of the same name).
pub fn set_query(url: &str, params: &[(&str, String)]) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let key = p.split_once('=').map_or(*p, |(k, _)| k);
            !params.iter().any(|(k, _)| *k == key)
        })
        .map(str::to_owned)
        .collect();
    pairs.extend(params.iter().map(|(k, v)| format!("{k}={v}")));
    format!("{base}?{}", pairs.join("&"))
}

/// `scheme://user:***@host…`: the URL with its password hidden.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Eight hex digits that differ between benchmark processes.
fn unique_tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = nanos ^ u64::from(std::process::id()).rotate_left(29);
    format!("{:08x}", mixed & 0xffff_ffff)
}

/// The intended send time (ns since the run's origin) a latency message carries in its body:
/// the envelope header [`INTENDED_HEADER`], found without parsing the JSON.
pub fn intended_in(body: &[u8]) -> Option<u64> {
    let key = format!("\"{INTENDED_HEADER}\":\"");
    let key = key.as_bytes();
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// What both sides send.

/// The benchmark's messages: the envelope template the bus clones, and one serialized
/// envelope with its properties for the raw side.
struct Material {
    template: Envelope,
    body: Bytes,
    props: Properties,
}

impl Material {
    fn new(payload_bytes: usize) -> anyhow::Result<Self> {
        let template = workload::template(payload_bytes)?;
        let m = Message::from_envelope(&workload::next(&template));
        Ok(Material {
            template,
            body: m.body,
            props: m.properties,
        })
    }
}

/// A latency message: a fresh envelope carrying its intended send time (none for warm-up).
fn latency_envelope(template: &Envelope, intended_ns: Option<u64>) -> Envelope {
    let mut env = workload::next(template);
    if let Some(ns) = intended_ns {
        env.headers.insert(INTENDED_HEADER.into(), ns.to_string());
    }
    env
}

/// NATS: `Eventyard-Type` lists the typed (non-string) properties, as the transport does.
const NATS_TYPE_HEADER: &str = "Eventyard-Type";

/// The headers the NATS transport sends for `props` (plain headers, types listed in
/// `Eventyard-Type`, `Nats-Msg-Id` = the event id).
pub fn nats_headers(props: &Properties) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (name, value) in props.iter() {
        let (code, text) = match value {
            PropertyValue::String(s) => (None, s.clone()),
            PropertyValue::Int(i) => (Some("i"), i.to_string()),
            PropertyValue::Float(x) => (Some("f"), format!("{x:?}")),
            PropertyValue::Bool(b) => (Some("b"), b.to_string()),
        };
        if let Some(code) = code {
            h.append(NATS_TYPE_HEADER, format!("{code}:{name}"));
        }
        h.insert(name, text);
    }
    if let Some(id) = props.get_str(prop_names::EVENT_ID) {
        h.insert(async_nats::header::NATS_MESSAGE_ID, id);
    }
    h
}

/// Wire bytes of a NATS header block.
fn nats_header_bytes(h: &async_nats::HeaderMap) -> usize {
    let mut len = b"NATS/1.0\r\n\r\n".len();
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        for v in values {
            len += name.len() + 2 + v.as_str().len() + 2;
        }
    }
    len
}

/// RabbitMQ: the transport's enqueue-time header.
const AMQP_ENQUEUED_AT: &str = "x-eventyard-enqueued-at";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The header table the RabbitMQ transport sends for `props` (typed values, enqueue time).
fn amqp_headers(props: &Properties, enqueued_ms: i64) -> FieldTable {
    let mut t = FieldTable::default();
    for (name, value) in props.iter() {
        let v = match value {
            PropertyValue::Bool(b) => AMQPValue::Boolean(*b),
            PropertyValue::Int(i) => AMQPValue::LongLongInt(*i),
            PropertyValue::Float(x) => AMQPValue::Double(*x),
            PropertyValue::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        };
        t.insert(ShortString::from(name), v);
    }
    t.insert(AMQP_ENQUEUED_AT.into(), AMQPValue::LongLongInt(enqueued_ms));
    t
}

/// Approximate bytes of a header table (names and values).
fn amqp_header_bytes(t: &FieldTable) -> usize {
    t.inner()
        .iter()
        .map(|(k, v)| {
            k.as_str().len()
                + match v {
                    AMQPValue::LongString(s) => s.as_bytes().len() + 5,
                    _ => 9,
                }
        })
        .sum()
}

/// The AMQP properties the RabbitMQ transport sets on a message.
fn amqp_properties(headers: FieldTable, message_id: &str, now_ms: i64) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_timestamp(u64::try_from(now_ms / 1000).unwrap_or(0))
        .with_message_id(message_id.into())
        .with_headers(headers)
}

// ---------------------------------------------------------------------------------------------
// Raw NATS JetStream (async-nats).

struct RawNats {
    client: async_nats::Client,
    js: jetstream::Context,
    probe: Probe,
}

/// The raw side's stream `name` on subjects `name.>` (`STREAM.CREATE.<name>`), configured as
/// the transport's topic streams (limits retention, one replica, two-minute duplicate window).
pub fn raw_stream_config(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "subjects": [format!("{name}.>")],
        "retention": "limits",
        "storage": "file",
        "discard": "old",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": -1,
        "max_msg_size": -1,
        "num_replicas": 1,
        "duplicate_window": 120_000_000_000_u64,
    })
}

/// The raw side's durable pull consumer `durable` on `stream`
/// (`CONSUMER.DURABLE.CREATE.<stream>.<durable>`, the 2.9 API), configured as the transport's:
/// explicit acks, 30 s ack wait, unlimited deliveries and pending acks.
pub fn raw_consumer_request(stream: &str, durable: &str) -> serde_json::Value {
    serde_json::json!({
        "stream_name": stream,
        "config": {
            "durable_name": durable,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": u64::try_from(ACK_WAIT.as_nanos()).unwrap_or(u64::MAX),
            "max_deliver": -1,
            "replay_policy": "instant",
            "max_ack_pending": -1,
        }
    })
}

/// A JetStream API answer that is an error.
fn api_error(v: &serde_json::Value) -> Option<String> {
    v.get("error").map(|e| e.to_string())
}

impl RawNats {
    async fn connect(servers: &str, probe: Probe) -> anyhow::Result<Self> {
        let addrs: Vec<async_nats::ServerAddr> = servers
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("bad NATS address in `{servers}`: {e}"))?;
        let client = async_nats::ConnectOptions::new()
            .name("yard-bench-raw")
            .connect(addrs)
            .await
            .with_context(|| format!("raw async-nats client: cannot connect to {servers}"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        Ok(RawNats { client, js, probe })
    }

    /// A file-storage stream `name` on subjects `name.>`, configured as the transport's topic
    /// streams (limits retention, one replica, two-minute duplicate window).
    async fn create_stream(&self, name: &str) -> anyhow::Result<()> {
        let config = raw_stream_config(name);
        let v: serde_json::Value = self
            .js
            .request(format!("STREAM.CREATE.{name}"), &config)
            .await
            .with_context(|| format!("creating stream {name}"))?;
        if let Some(e) = api_error(&v) {
            bail!("creating stream {name}: {e}");
        }
        Ok(())
    }

    async fn delete_stream(&self, name: &str) {
        if let Err(e) = self.js.delete_stream(name).await {
            tracing::warn!("bench: deleting stream {name} failed: {e}");
        }
    }

    /// Deletes the streams of a transport prefix (`<prefix>_…`).
    async fn delete_prefix(&self, prefix: &str) {
        let start = format!("{prefix}_");
        let names: Vec<String> = self
            .js
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await;
        for name in names.iter().filter(|n| n.starts_with(&start)) {
            self.delete_stream(name).await;
        }
    }

    /// A durable pull consumer configured as the transport's (explicit acks, 30 s ack wait,
    /// unlimited deliveries and pending acks), created through the 2.9 API.
    async fn create_consumer(&self, stream: &str, durable: &str) -> anyhow::Result<PullConsumer> {
        let body = raw_consumer_request(stream, durable);
        let v: serde_json::Value = self
            .js
            .request(format!("CONSUMER.DURABLE.CREATE.{stream}.{durable}"), &body)
            .await
            .with_context(|| format!("creating consumer {durable} on {stream}"))?;
        if let Some(e) = api_error(&v) {
            bail!("creating consumer {durable} on {stream}: {e}");
        }
        let stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| anyhow!("stream {stream}: {e}"))?;
        stream
            .get_consumer(durable)
            .await
            .map_err(|e| anyhow!("consumer {durable}: {e}"))
    }

    /// Publishes `n` messages with up to `window` PubAcks in flight (sliding window).
    async fn publish(
        &self,
        subject: &str,
        n: u64,
        window: usize,
        mut make: impl FnMut() -> PublishMessage,
    ) -> anyhow::Result<Phase> {
        let subject = async_nats::Subject::from(subject);
        let timer = Timer::start(self.probe);
        let mut in_flight = VecDeque::with_capacity(window);
        for _ in 0..n {
            if in_flight.len() >= window
                && let Some(ack) = in_flight.pop_front()
            {
                check_pub_ack(ack).await?;
            }
            let ack = self
                .js
                .send_publish(subject.clone(), make())
                .await
                .map_err(|e| anyhow!("raw publish: {e}"))?;
            in_flight.push_back(ack);
        }
        while let Some(ack) = in_flight.pop_front() {
            check_pub_ack(ack).await?;
        }
        Ok(timer.stop(n))
    }
}

async fn check_pub_ack(ack: jetstream::context::PublishAckFuture) -> anyhow::Result<()> {
    let ack = ack
        .into_future()
        .await
        .map_err(|e| anyhow!("raw PubAck: {e}"))?;
    ensure!(
        !ack.duplicate,
        "raw publish was dropped as a duplicate (sequence {})",
        ack.sequence
    );
    Ok(())
}

/// Consumes `n` messages (or forever, for `u64::MAX`) from a pull consumer: pull batches of up
/// to `window`, at most `window` messages between receipt and completed ack; `confirm`: double
/// acks (server-confirmed), else plain acks. `on_body` sees every body on receipt.
async fn nats_consume(
    client: async_nats::Client,
    consumer: PullConsumer,
    n: u64,
    window: usize,
    confirm: bool,
    on_body: OnBody,
    probe: Probe,
) -> anyhow::Result<Phase> {
    let timer = Timer::start(probe);
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(window)
        .messages()
        .await
        .map_err(|e| anyhow!("raw pull consumer: {e}"))?;
    let mut acks = FuturesUnordered::new();
    let (mut received, mut acked) = (0u64, 0u64);
    while acked < n {
        let can_take = received < n && acks.len() < window;
        tokio::select! {
            biased;
            Some(done) = acks.next(), if !acks.is_empty() => {
                done?;
                acked += 1;
            }
            next = tokio::time::timeout(STALL, messages.next()), if can_take => {
                let msg = next
                    .map_err(|_| anyhow!("raw consumer: nothing for {STALL:?} after {received} of {n}"))?
                    .ok_or_else(|| anyhow!("raw consumer: the message stream ended"))?
                    .map_err(|e| anyhow!("raw consumer: {e}"))?;
                received += 1;
                on_body(&msg.payload);
                acks.push(async move {
                    let r = if confirm { msg.double_ack().await } else { msg.ack().await };
                    r.map_err(|e| anyhow!("raw ack: {e}"))
                });
            }
        }
    }
    client
        .flush()
        .await
        .map_err(|e| anyhow!("raw flush: {e}"))?;
    Ok(timer.stop(n))
}

// ---------------------------------------------------------------------------------------------
// Raw RabbitMQ (lapin).

struct RawAmqp {
    conn: lapin::Connection,
    probe: Probe,
}

impl RawAmqp {
    async fn connect(uri: &str, probe: Probe) -> anyhow::Result<Self> {
        let props =
            lapin::ConnectionProperties::default().with_connection_name("yard-bench-raw".into());
        let conn = lapin::Connection::connect(uri, props)
            .await
            .with_context(|| format!("raw lapin client: cannot connect to {}", redact(uri)))?;
        Ok(RawAmqp { conn, probe })
    }

    /// A durable headers exchange `name` and a durable classic queue `name` bound to it with a
    /// match-everything binding: the transport's topic → subscription topology.
    async fn declare(&self, name: &str) -> anyhow::Result<()> {
        let ch = self.conn.create_channel().await?;
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Headers,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
        let mut all = FieldTable::default();
        all.insert("x-match".into(), AMQPValue::LongString("all".into()));
        ch.queue_bind(
            name.into(),
            name.into(),
            "".into(),
            QueueBindOptions::default(),
            all,
        )
        .await?;
        let _ = ch.close(200, "declared".into()).await;
        Ok(())
    }

    /// Deletes queues then exchanges (missing ones are fine).
    async fn delete(&self, queues: &[String], exchanges: &[String]) {
        for q in queues {
            if let Err(e) = self
                .on_channel(|ch| async move {
                    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .map(|_| ())
                })
                .await
            {
                tracing::warn!("bench: deleting queue {q} failed: {e}");
            }
        }
        for x in exchanges {
            if let Err(e) = self
                .on_channel(|ch| async move {
                    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                        .await
                })
                .await
            {
                tracing::warn!("bench: deleting exchange {x} failed: {e}");
            }
        }
    }

    /// Runs `f` on a fresh channel (a failed operation closes it; the next gets a new one).
    async fn on_channel<F, Fut>(&self, f: F) -> Result<(), lapin::Error>
    where
        F: FnOnce(lapin::Channel) -> Fut,
        Fut: Future<Output = Result<(), lapin::Error>>,
    {
        let ch = self.conn.create_channel().await?;
        let r = f(ch.clone()).await;
        if ch.status().connected() {
            let _ = ch.close(200, "done".into()).await;
        }
        r
    }

    async fn publisher(&self) -> anyhow::Result<lapin::Channel> {
        let ch = self.conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(ch)
    }

    /// Publishes `n` persistent messages to exchange `name` with up to `window` confirms in
    /// flight (sliding window).
    async fn publish(
        &self,
        name: &str,
        n: u64,
        window: usize,
        body: &[u8],
        mut make: impl FnMut() -> BasicProperties,
    ) -> anyhow::Result<Phase> {
        let ch = self.publisher().await?;
        let exchange = ShortString::from(name);
        let routing_key = ShortString::from("");
        let timer = Timer::start(self.probe);
        let mut in_flight = VecDeque::with_capacity(window);
        for _ in 0..n {
            if in_flight.len() >= window
                && let Some(confirm) = in_flight.pop_front()
            {
                check_confirm(confirm.await?)?;
            }
            let confirm = ch
                .basic_publish(
                    exchange.clone(),
                    routing_key.clone(),
                    BasicPublishOptions::default(),
                    body,
                    make(),
                )
                .await?;
            in_flight.push_back(confirm);
        }
        while let Some(confirm) = in_flight.pop_front() {
            check_confirm(confirm.await?)?;
        }
        let phase = timer.stop(n);
        let _ = ch.close(200, "published".into()).await;
        Ok(phase)
    }
}

fn check_confirm(c: Confirmation) -> anyhow::Result<()> {
    match c {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => bail!("raw publish returned unroutable"),
        Confirmation::Nack(_) => bail!("raw publish nacked by the broker"),
        Confirmation::NotRequested => bail!("raw publish: confirms not enabled"),
    }
}

/// Consumes `n` messages (or forever, for `u64::MAX`) from queue `name`: prefetch `window`,
/// `basic.ack(multiple)` every [`ACK_EVERY`] deliveries and whenever no delivery is ready.
async fn amqp_consume(
    ch: lapin::Channel,
    name: String,
    n: u64,
    window: u16,
    on_body: OnBody,
    probe: Probe,
) -> anyhow::Result<Phase> {
    let timer = Timer::start(probe);
    ch.basic_qos(window, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            name.as_str().into(),
            "yard-bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    consume_acking(&ch, &mut consumer, n, &*on_body).await?;
    let phase = timer.stop(n);
    let _ = ch.close(200, "consumed".into()).await;
    Ok(phase)
}

/// The raw RabbitMQ consumer's loop: takes `n` deliveries from `consumer` (on `ch`), passing
/// each body to `on_body`, with `basic.ack(multiple)` every [`ACK_EVERY`] deliveries and
/// whenever none is ready. Fails after [`STALL`] without a delivery.
pub async fn consume_acking(
    ch: &lapin::Channel,
    consumer: &mut lapin::Consumer,
    n: u64,
    on_body: impl Fn(&[u8]),
) -> anyhow::Result<()> {
    use futures::FutureExt as _;
    let ack = |tag: u64| ch.basic_ack(tag, BasicAckOptions { multiple: true });
    let (mut got, mut unacked, mut last) = (0u64, 0u64, 0u64);
    while got < n {
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None => {
                if unacked > 0 {
                    ack(last).await?;
                    unacked = 0;
                }
                tokio::time::timeout(STALL, consumer.next())
                    .await
                    .map_err(|_| {
                        anyhow!("raw consumer: nothing for {STALL:?} after {got} of {n}")
                    })?
            }
        };
        let delivery = next.ok_or_else(|| anyhow!("raw consumer ended"))??;
        on_body(&delivery.data);
        got += 1;
        unacked += 1;
        last = delivery.delivery_tag;
        if unacked >= ACK_EVERY || got == n {
            ack(last).await?;
            unacked = 0;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The bus side.

/// A transport handle whose `close` does nothing, so that after `Bus::shutdown` (which closes
/// its transport) the benchmark can still delete what it created, then close for real.
struct KeepOpen(Arc<dyn Transport>);

#[async_trait]
impl Transport for KeepOpen {
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }

    async fn ensure_subscription(&self, spec: &SubscriptionSpec) -> Result<(), TransportError> {
        self.0.ensure_subscription(spec).await
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), TransportError> {
        self.0.delete_subscription(topic, name).await
    }

    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), TransportError> {
        self.0.publish(topic, messages).await
    }

    async fn receiver(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Box<dyn Receiver>, TransportError> {
        self.0.receiver(topic, subscription, queue).await
    }

    async fn close(&self) -> Result<(), TransportError> {
        Ok(())
    }
}

/// One bus over a fresh transport whose names all start with `prefix`.
struct BusSide {
    bus: Bus,
    inner: Arc<dyn Transport>,
    prefix: String,
    topic: String,
}

/// The bus side's no-op handler (R2): takes the shared envelope, does nothing.
pub async fn noop(_env: Arc<Envelope>, _ctx: MessageContext) -> Result<(), HandlerError> {
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

/// Everything a round needs.
struct Bench {
    broker: Broker,
    url: String,
    window: u64,
    batch: u64,
    pipeline: u64,
    messages: u64,
    material: Material,
    raw: Raw,
    tag: String,
    /// NATS: the transport confirms its acks (`confirm_settlement`).
    confirm_acks: bool,
    /// Where CPU time is read from.
    probe: Probe,
}

enum Raw {
    Nats(RawNats),
    Amqp(RawAmqp),
}

impl Bench {
    fn window(&self) -> usize {
        usize::try_from(self.window).unwrap_or(usize::MAX)
    }

    /// The transport URL for a bus whose names start with `prefix`, with the window set.
    fn bus_url(&self, prefix: &str) -> String {
        let window = match self.broker {
            Broker::Nats => "publish_window",
            Broker::Amqp => "confirm_window",
        };
        set_query(
            &self.url,
            &[
                ("prefix", prefix.to_owned()),
                (window, self.window.to_string()),
            ],
        )
    }

    async fn open_bus(&self, prefix: &str) -> anyhow::Result<BusSide> {
        let inner = eventyard::connect(&self.bus_url(prefix)).await?;
        let bus = Bus::new(Arc::new(KeepOpen(inner.clone())));
        let topic = bus.topic_for(&self.material.template)?;
        Ok(BusSide {
            bus,
            inner,
            prefix: prefix.to_owned(),
            topic,
        })
    }

    /// Stops the bus, deletes everything under its prefix, closes the transport.
    async fn close_bus(&self, side: BusSide) -> anyhow::Result<()> {
        let shut = side.bus.shutdown().await;
        if let Err(e) = side
            .inner
            .delete_subscription(&side.topic, SUBSCRIPTION)
            .await
        {
            tracing::warn!("bench: deleting the bus subscription failed: {e}");
        }
        let closed = side.inner.close().await;
        match &self.raw {
            Raw::Nats(n) => n.delete_prefix(&side.prefix).await,
            Raw::Amqp(a) => {
                let p = &side.prefix;
                a.delete(
                    &[],
                    &[
                        format!("{p}.{}", side.topic),
                        format!("{p}:route"),
                        format!("{p}:delay"),
                    ],
                )
                .await;
            }
        }
        shut?;
        closed?;
        Ok(())
    }

    /// The raw phases of one round: publish without headers, publish with them, consume.
    async fn raw_round(&self, name: &str) -> anyhow::Result<RawPhases> {
        let n = self.messages;
        let window = self.window();
        let body = self.material.body.clone();
        let noop: OnBody = Arc::new(|_| {});
        let e2e = format!("{name}-e2e");
        match &self.raw {
            Raw::Nats(raw) => {
                let bare = format!("{name}-bare");
                raw.create_stream(&bare).await?;
                let subject = format!("{bare}.t.{EVENT_TYPE}.bench.{EVENT_TYPE}");
                let b = body.clone();
                let bare_phase = raw
                    .publish(&subject, n, window, || {
                        PublishMessage::build().payload(b.clone())
                    })
                    .await;
                raw.delete_stream(&bare).await;
                let bare_phase = bare_phase?;

                let base = nats_headers(&self.material.props);
                let make = || {
                    let id = EventId::generate();
                    let mut h = base.clone();
                    h.insert(prop_names::EVENT_ID, id.as_str());
                    h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                    PublishMessage::build().payload(body.clone()).headers(h)
                };

                // End to end: the consumer runs while the backlog is published.
                raw.create_stream(&e2e).await?;
                let end_to_end = async {
                    let c = raw.create_consumer(&e2e, "e2e").await?;
                    let consume = nats_consume(
                        raw.client.clone(),
                        c,
                        n,
                        window,
                        self.confirm_acks,
                        noop.clone(),
                        raw.probe,
                    );
                    let subject = format!("{e2e}.t.{EVENT_TYPE}.bench.{EVENT_TYPE}");
                    let publish = raw.publish(&subject, n, window, make);
                    end_to_end(raw.probe, n, consume, publish).await
                }
                .await;
                raw.delete_stream(&e2e).await;
                let end_to_end = end_to_end?;

                raw.create_stream(name).await?;
                let result = async {
                    let subject = format!("{name}.t.{EVENT_TYPE}.bench.{EVENT_TYPE}");
                    let publish = raw.publish(&subject, n, window, make).await?;
                    let c = raw.create_consumer(name, "policy").await?;
                    let consume = nats_consume(
                        raw.client.clone(),
                        c,
                        n,
                        window,
                        self.confirm_acks,
                        noop.clone(),
                        raw.probe,
                    )
                    .await?;
                    let plain = if self.confirm_acks {
                        let c = raw.create_consumer(name, "plain").await?;
                        Some(
                            nats_consume(raw.client.clone(), c, n, window, false, noop, raw.probe)
                                .await?,
                        )
                    } else {
                        None
                    };
                    anyhow::Ok(RawPhases {
                        publish_bare: bare_phase,
                        publish,
                        consume,
                        consume_plain_acks: plain,
                        end_to_end,
                    })
                }
                .await;
                raw.delete_stream(name).await;
                result
            }
            Raw::Amqp(raw) => {
                let bare = format!("{name}-bare");
                raw.declare(&bare).await?;
                let bare_phase = raw
                    .publish(&bare, n, window, &body, || {
                        BasicProperties::default().with_delivery_mode(2)
                    })
                    .await;
                raw.delete(std::slice::from_ref(&bare), std::slice::from_ref(&bare))
                    .await;
                let bare_phase = bare_phase?;

                let base = amqp_headers(&self.material.props, now_ms());
                let make = || {
                    let id = EventId::generate();
                    let now = now_ms();
                    let mut t = base.clone();
                    t.insert(
                        prop_names::EVENT_ID.into(),
                        AMQPValue::LongString(LongString::from(id.as_str().as_bytes())),
                    );
                    t.insert(AMQP_ENQUEUED_AT.into(), AMQPValue::LongLongInt(now));
                    amqp_properties(t, id.as_str(), now)
                };
                let prefetch = u16::try_from(self.window).unwrap_or(u16::MAX);

                // End to end: the consumer runs while the backlog is published.
                raw.declare(&e2e).await?;
                let end_to_end = async {
                    let ch = raw.conn.create_channel().await?;
                    let consume =
                        amqp_consume(ch, e2e.clone(), n, prefetch, noop.clone(), raw.probe);
                    let publish = raw.publish(&e2e, n, window, &body, make);
                    end_to_end(raw.probe, n, consume, publish).await
                }
                .await;
                raw.delete(std::slice::from_ref(&e2e), std::slice::from_ref(&e2e))
                    .await;
                let end_to_end = end_to_end?;

                raw.declare(name).await?;
                let result = async {
                    let publish = raw.publish(name, n, window, &body, make).await?;
                    let ch = raw.conn.create_channel().await?;
                    let consume =
                        amqp_consume(ch, name.to_owned(), n, prefetch, noop, raw.probe).await?;
                    anyhow::Ok(RawPhases {
                        publish_bare: bare_phase,
                        publish,
                        consume,
                        consume_plain_acks: None,
                        end_to_end,
                    })
                }
                .await;
                let owned = name.to_owned();
                raw.delete(std::slice::from_ref(&owned), std::slice::from_ref(&owned))
                    .await;
                result
            }
        }
    }

    /// The bus phases of one round: publish the backlog (pipelined), consume it; then the
    /// sequential publish on a bus of its own (reference).
    async fn bus_round(&self, prefix: &str) -> anyhow::Result<(Phase, Phase, u64, Phase)> {
        let side = self.open_bus(prefix).await?;
        let result = self.bus_phases(&side).await;
        let closed = self.close_bus(side).await;
        let (publish, consume, anomalies) = result?;
        closed?;
        let side = self.open_bus(&format!("{prefix}-seq")).await?;
        let result = async {
            self.declare_bus_subscription(&side).await?;
            self.bus_publish(&side, None).await
        }
        .await;
        let closed = self.close_bus(side).await;
        let sequential = result?;
        closed?;
        Ok((publish, consume, anomalies, sequential))
    }

    async fn declare_bus_subscription(&self, side: &BusSide) -> anyhow::Result<()> {
        side.bus
            .subscription(SUBSCRIPTION)
            .topic(side.topic.as_str())
            .concurrency(self.window())
            .declare()
            .await?;
        Ok(())
    }

    /// Publishes the N envelopes of a phase: through the pipelined publisher, `--batch` per
    /// batch, with `pipeline` batches on their way (the caller awaits the oldest receipt once
    /// more are pending), or, with `None`, by sequential `Bus::publish_batch` calls of `window`
    /// envelopes.
    async fn bus_publish(&self, side: &BusSide, pipeline: Option<u64>) -> anyhow::Result<Phase> {
        let n = self.messages;
        let template = &self.material.template;
        let size = if pipeline.is_some() {
            self.batch
        } else {
            self.window
        };
        let batches = (0..n.div_ceil(size)).map(|b| {
            let k = size.min(n - b * size);
            (0..k)
                .map(|_| workload::next(template))
                .collect::<Vec<Envelope>>()
        });
        let timer = Timer::start(self.probe);
        match pipeline {
            None => {
                for envs in batches {
                    side.bus.publish_batch(envs).await?;
                }
            }
            Some(depth) => {
                let depth = usize::try_from(depth).unwrap_or(usize::MAX);
                let publisher = side.bus.publisher(depth);
                let mut receipts = VecDeque::with_capacity(depth + 1);
                for envs in batches {
                    receipts.push_back(publisher.send(envs).await?);
                    while receipts.len() > depth {
                        if let Some(oldest) = receipts.pop_front() {
                            oldest.await?;
                        }
                    }
                }
                for receipt in receipts {
                    receipt.await?;
                }
            }
        }
        Ok(timer.stop(n))
    }

    async fn bus_phases(&self, side: &BusSide) -> anyhow::Result<(Phase, Phase, u64)> {
        let n = self.messages;
        let concurrency = self.window();
        self.declare_bus_subscription(side).await?;
        let publish = self.bus_publish(side, Some(self.pipeline)).await?;

        let timer = Timer::start(self.probe);
        let consumer = side
            .bus
            .subscription(SUBSCRIPTION)
            .topic(side.topic.as_str())
            .concurrency(concurrency)
            .handle_shared_envelopes(noop)
            .await?;
        let (mut last, mut progress) = (0u64, Instant::now());
        loop {
            let c = consumer.counts();
            if c.acked >= n {
                let consume = timer.stop(n);
                let anomalies = c.settle_errors + c.retried + c.dead_lettered;
                return Ok((publish, consume, anomalies));
            }
            if c.acked != last {
                (last, progress) = (c.acked, Instant::now());
            } else if progress.elapsed() > STALL {
                bail!(
                    "bus consumer stuck: {} of {n} acknowledged, no progress for {STALL:?} \
                     ({} settle errors, {} retries, {} dead-letters)",
                    c.acked,
                    c.settle_errors,
                    c.retried,
                    c.dead_lettered
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn round(&self, round: u32) -> anyhow::Result<Round> {
        let raw_name = format!("yb-{}-{round}-raw", self.tag);
        let bus_prefix = format!("yb-{}-{round}-bus", self.tag);
        let raw_first = round % 2 == 1;
        let (raw, bus) = if raw_first {
            let raw = self.raw_round(&raw_name).await?;
            (raw, self.bus_round(&bus_prefix).await?)
        } else {
            let bus = self.bus_round(&bus_prefix).await?;
            (self.raw_round(&raw_name).await?, bus)
        };
        let (bus_publish, bus_consume, bus_anomalies, bus_publish_sequential) = bus;
        Ok(Round {
            round,
            order: if raw_first { "raw-first" } else { "bus-first" },
            raw_publish_bare: raw.publish_bare,
            raw_publish: raw.publish,
            raw_consume: raw.consume,
            raw_consume_plain_acks: raw.consume_plain_acks,
            raw_end_to_end: raw.end_to_end,
            bus_publish,
            bus_publish_sequential,
            bus_consume,
            bus_anomalies,
        })
    }

    // -- latency --------------------------------------------------------------------------------

    /// One latency pair at `rate`: a raw and a bus run, one right after the other.
    async fn latency_pair(
        &self,
        pair: u32,
        raw_first: bool,
        rate: f64,
        seconds: Duration,
    ) -> anyhow::Result<LatencyPair> {
        let ((raw, raw_costs), (bus, bus_costs)) = if raw_first {
            let raw = self.raw_latency(rate, seconds).await?;
            (raw, self.bus_latency(rate, seconds).await?)
        } else {
            let bus = self.bus_latency(rate, seconds).await?;
            (self.raw_latency(rate, seconds).await?, bus)
        };
        Ok(LatencyPair {
            pair,
            order: if raw_first { "raw-first" } else { "bus-first" },
            p50_delta_ms: bus.p50_ms - raw.p50_ms,
            p99_ratio: ratio(bus.p99_ms, raw.p99_ms),
            raw,
            bus,
            raw_costs,
            bus_costs,
        })
    }

    async fn raw_latency(
        &self,
        rate: f64,
        seconds: Duration,
    ) -> anyhow::Result<(LatencyRun, Costs)> {
        let name = format!("yb-{}-lat-raw", self.tag);
        let rec = Recorder::new()?;
        let on_body: OnBody = {
            let rec = rec.clone();
            Arc::new(move |body: &[u8]| rec.record(intended_in(body)))
        };
        let window = self.window();
        let template = self.material.template.clone();
        // The transport's publish/confirm window, on the raw side too.
        let in_flight = Arc::new(Semaphore::new(window));
        match &self.raw {
            Raw::Nats(raw) => {
                raw.create_stream(&name).await?;
                let result = async {
                    let consumer = raw.create_consumer(&name, "latency").await?;
                    let task = tokio::spawn(nats_consume(
                        raw.client.clone(),
                        consumer,
                        u64::MAX,
                        window,
                        self.confirm_acks,
                        on_body,
                        raw.probe,
                    ));
                    let subject = async_nats::Subject::from(format!(
                        "{name}.t.{EVENT_TYPE}.bench.{EVENT_TYPE}"
                    ));
                    let js = raw.js.clone();
                    let send = move |intended: Option<u64>| -> SendFuture {
                        let env = latency_envelope(&template, intended);
                        let (js, subject) = (js.clone(), subject.clone());
                        let in_flight = in_flight.clone();
                        Box::pin(async move {
                            let _slot = in_flight.acquire_owned().await?;
                            let m = Message::from_envelope(&env);
                            let h = nats_headers(&m.properties);
                            let msg = PublishMessage::build().payload(m.body).headers(h);
                            let ack = js.send_publish(subject, msg).await?;
                            check_pub_ack(ack).await
                        })
                    };
                    let run =
                        drive_latency(rate, seconds, &rec, send, || task.is_finished(), raw.probe)
                            .await;
                    consumer_outcome(task, run).await
                }
                .await;
                raw.delete_stream(&name).await;
                result
            }
            Raw::Amqp(raw) => {
                raw.declare(&name).await?;
                let result = async {
                    let ch = raw.conn.create_channel().await?;
                    let prefetch = u16::try_from(self.window).unwrap_or(u16::MAX);
                    let task = tokio::spawn(amqp_consume(
                        ch,
                        name.clone(),
                        u64::MAX,
                        prefetch,
                        on_body,
                        raw.probe,
                    ));
                    let publisher = raw.publisher().await?;
                    let exchange = ShortString::from(name.as_str());
                    let send = move |intended: Option<u64>| -> SendFuture {
                        let env = latency_envelope(&template, intended);
                        let (ch, exchange) = (publisher.clone(), exchange.clone());
                        let in_flight = in_flight.clone();
                        Box::pin(async move {
                            let _slot = in_flight.acquire_owned().await?;
                            let m = Message::from_envelope(&env);
                            let now = now_ms();
                            let props = amqp_properties(
                                amqp_headers(&m.properties, now),
                                env.event_id.as_str(),
                                now,
                            );
                            let confirm = ch
                                .basic_publish(
                                    exchange,
                                    "".into(),
                                    BasicPublishOptions::default(),
                                    &m.body,
                                    props,
                                )
                                .await?;
                            check_confirm(confirm.await?)
                        })
                    };
                    let run =
                        drive_latency(rate, seconds, &rec, send, || task.is_finished(), raw.probe)
                            .await;
                    consumer_outcome(task, run).await
                }
                .await;
                let owned = name.clone();
                raw.delete(std::slice::from_ref(&owned), std::slice::from_ref(&owned))
                    .await;
                result
            }
        }
    }

    async fn bus_latency(
        &self,
        rate: f64,
        seconds: Duration,
    ) -> anyhow::Result<(LatencyRun, Costs)> {
        let side = self.open_bus(&format!("yb-{}-lat-bus", self.tag)).await?;
        let result = async {
            let rec = Recorder::new()?;
            let handler_rec = rec.clone();
            let consumer = side
                .bus
                .subscription(SUBSCRIPTION)
                .topic(side.topic.as_str())
                .concurrency(self.window())
                .handle_shared_envelopes(move |env: Arc<Envelope>, _ctx: MessageContext| {
                    handler_rec.record(
                        env.headers
                            .get(INTENDED_HEADER)
                            .and_then(|v| v.parse::<u64>().ok()),
                    );
                    async { Ok::<(), HandlerError>(()) }
                })
                .await?;
            let bus = side.bus.clone();
            let template = self.material.template.clone();
            let send = move |intended: Option<u64>| -> SendFuture {
                let env = latency_envelope(&template, intended);
                let bus = bus.clone();
                Box::pin(async move {
                    bus.publish_envelope(env).await?;
                    Ok(())
                })
            };
            let run = drive_latency(rate, seconds, &rec, send, || false, self.probe).await;
            let anomalies = {
                let c = consumer.counts();
                c.settle_errors + c.retried + c.dead_lettered
            };
            if anomalies > 0 {
                tracing::warn!(
                    "bench: {anomalies} settle errors / retries / dead-letters in the latency run"
                );
            }
            run
        }
        .await;
        let closed = self.close_bus(side).await;
        let run = result?;
        closed?;
        Ok(run)
    }
}

// ---------------------------------------------------------------------------------------------
// Latency: open loop, HDR histogram.

/// Records `now − intended` of every latency message (µs, 1 µs .. 10 min, 3 digits).
struct Recorder {
    origin: Instant,
    hist: Mutex<Histogram<u64>>,
    /// Messages seen (warm-up included).
    seen: AtomicU64,
    /// Messages recorded (those carrying an intended time).
    recorded: AtomicU64,
}

impl Recorder {
    fn new() -> anyhow::Result<Arc<Self>> {
        Self::new_at(Instant::now())
    }

    /// A recorder whose times count from `origin`.
    fn new_at(origin: Instant) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Recorder {
            origin,
            hist: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            seen: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
        }))
    }

    /// A copy of the histogram so far.
    fn histogram(&self) -> anyhow::Result<Histogram<u64>> {
        Ok(self
            .hist
            .lock()
            .map_err(|_| anyhow!("latency histogram lock poisoned"))?
            .clone())
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&self, intended_ns: Option<u64>) {
        if let Some(intended) = intended_ns {
            let micros = self.now_ns().saturating_sub(intended) / 1_000;
            if let Ok(mut h) = self.hist.lock() {
                h.saturating_record(micros.max(1));
            }
            self.recorded.fetch_add(1, Ordering::Release);
        }
        self.seen.fetch_add(1, Ordering::Release);
    }
}

/// Warms up, then sends `rate × seconds` messages on a fixed schedule from a dedicated thread
/// (each send a task of its own) and waits until all were recorded. `consumer_ended` tells
/// whether the consuming side gave up (then the run stops waiting).
async fn drive_latency<S>(
    rate: f64,
    seconds: Duration,
    rec: &Arc<Recorder>,
    mut send: S,
    consumer_ended: impl Fn() -> bool,
    probe: Probe,
) -> anyhow::Result<(LatencyRun, Costs)>
where
    S: FnMut(Option<u64>) -> SendFuture + Send + 'static,
{
    ensure!(
        rate.is_finite() && rate > 0.0,
        "latency rate must be positive"
    );
    for _ in 0..WARMUP {
        send(None).await?;
    }
    let deadline = Instant::now() + STALL;
    while rec.seen.load(Ordering::Acquire) < WARMUP {
        ensure!(!consumer_ended(), "latency consumer ended during warm-up");
        ensure!(
            Instant::now() < deadline,
            "latency warm-up: messages not consumed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let total = (rate * seconds.as_secs_f64()).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let errors = Arc::new(AtomicU64::new(0));
    let timer = Timer::start(probe);
    let handle = tokio::runtime::Handle::current();
    let (origin, thread_errors) = (rec.origin, errors.clone());
    // Intended send → confirmed by the broker, to tell publish-side queueing from the consumer's.
    let confirms = Recorder::new_at(rec.origin)?;
    let thread_confirms = confirms.clone();
    let schedule = std::thread::Builder::new()
        .name("yard-bench-schedule".into())
        .spawn(move || {
            // Start a little ahead, so the first sends are not late.
            let first = origin.elapsed() + Duration::from_millis(5);
            let mut max_lag = Duration::ZERO;
            for i in 0..total {
                let due = first + period.mul_f64(i as f64);
                let now = origin.elapsed();
                if due > now {
                    std::thread::sleep(due - now);
                } else {
                    max_lag = max_lag.max(now - due);
                }
                let intended = u64::try_from(due.as_nanos()).unwrap_or(u64::MAX);
                let fut = send(Some(intended));
                let (errors, confirms) = (thread_errors.clone(), thread_confirms.clone());
                handle.spawn(async move {
                    match fut.await {
                        Ok(()) => confirms.record(Some(intended)),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                tracing::warn!("bench: latency publish failed: {e:#}");
                            }
                        }
                    }
                });
            }
            max_lag
        })?;
    let max_lag = tokio::task::spawn_blocking(move || schedule.join())
        .await?
        .map_err(|_| anyhow!("latency schedule thread panicked"))?;
    let deadline = Instant::now() + STALL;
    loop {
        let got = rec.recorded.load(Ordering::Acquire);
        let failed = errors.load(Ordering::Relaxed);
        if got + failed >= total || Instant::now() > deadline || consumer_ended() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let phase = timer.stop(total);
    let h = rec.histogram()?;
    let confirmed = confirms.histogram()?;
    let received = rec.recorded.load(Ordering::Acquire);
    ensure!(
        received > 0,
        "latency run: none of {total} messages was consumed"
    );
    let ms = |us: u64| us as f64 / 1_000.0;
    let costs = Costs::of(&phase);
    let run = LatencyRun {
        sent: total,
        received,
        publish_errors: errors.load(Ordering::Relaxed),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1_000.0,
        max_schedule_lag_ms: max_lag.as_secs_f64() * 1_000.0,
        confirm_p50_ms: (!confirmed.is_empty()).then(|| ms(confirmed.value_at_quantile(0.50))),
        confirm_p99_ms: (!confirmed.is_empty()).then(|| ms(confirmed.value_at_quantile(0.99))),
    };
    Ok((run, costs))
}

/// A raw end-to-end phase of `n` messages: `consume` runs as a task of its own while `publish`
/// runs here; the clock stops once both are done. A failed publish stops the consumer at once
/// (it would otherwise wait for messages that never come, until its stall error).
async fn end_to_end(
    probe: Probe,
    n: u64,
    consume: impl Future<Output = anyhow::Result<Phase>> + Send + 'static,
    publish: impl Future<Output = anyhow::Result<Phase>>,
) -> anyhow::Result<Phase> {
    let timer = Timer::start(probe);
    let consume = tokio::spawn(consume);
    if let Err(e) = publish.await {
        consume.abort();
        return Err(e);
    }
    consume.await??;
    Ok(timer.stop(n))
}

/// The latency run's result, or the raw consumer's error if it gave up; stops the consumer.
async fn consumer_outcome(
    task: tokio::task::JoinHandle<anyhow::Result<Phase>>,
    run: anyhow::Result<(LatencyRun, Costs)>,
) -> anyhow::Result<(LatencyRun, Costs)> {
    if task.is_finished() {
        match task.await {
            Ok(Err(e)) => return Err(e.context("raw latency consumer")),
            Err(e) => return Err(anyhow!("raw latency consumer: {e}")),
            Ok(Ok(_)) => {}
        }
    } else {
        task.abort();
    }
    run
}

// ---------------------------------------------------------------------------------------------
// Putting it together.

fn medians(rounds: &[Round], pick: fn(&Round) -> Option<&Phase>) -> (f64, Vec<f64>, Costs) {
    let phases: Vec<&Phase> = rounds.iter().filter_map(pick).collect();
    let rates: Vec<f64> = phases.iter().map(|p| p.rate).collect();
    let costs: Vec<Costs> = phases.iter().map(|p| Costs::of(p)).collect();
    (median(&rates), rates, Costs::median(&costs))
}

fn compare(
    rounds: &[Round],
    raw: fn(&Round) -> Option<&Phase>,
    bus: fn(&Round) -> Option<&Phase>,
    raw_path: String,
    bus_path: String,
) -> Comparison {
    let (raw_rate, raw_runs, raw_costs) = medians(rounds, raw);
    let (bus_rate, bus_runs, bus_costs) = medians(rounds, bus);
    let r = ratio(bus_rate, raw_rate);
    Comparison {
        raw: raw_rate,
        bus: bus_rate,
        ratio: r,
        target: TARGET_RATIO,
        meets_target: r >= TARGET_RATIO,
        raw_path,
        bus_path,
        raw_runs,
        bus_runs,
        raw_costs,
        bus_costs,
        reference: None,
        bus_reference: None,
    }
}

fn bus_reference(
    rounds: &[Round],
    pick: fn(&Round) -> Option<&Phase>,
    raw: f64,
    what: &str,
) -> Option<BusReference> {
    reference(rounds, pick, raw, what).map(|r| BusReference {
        ratio: ratio(r.rate, raw),
        what: r.what,
        rate: r.rate,
        runs: r.runs,
        costs: r.costs,
    })
}

fn reference(
    rounds: &[Round],
    pick: fn(&Round) -> Option<&Phase>,
    bus: f64,
    what: &str,
) -> Option<Reference> {
    let (rate, runs, costs) = medians(rounds, pick);
    (!runs.is_empty()).then(|| Reference {
        what: what.to_owned(),
        rate,
        bus_ratio: ratio(bus, rate),
        runs,
        costs,
    })
}

/// Runs the whole benchmark and returns the report (progress on stderr unless `--json`).
pub async fn run_transport(a: &TransportArgs) -> anyhow::Result<TransportReport> {
    let broker = Broker::of(&a.url)?;
    let loadavg_start = loadavg();
    let messages = a.messages.unwrap_or(broker.default_messages());
    ensure!(
        a.latency_share.is_finite() && a.latency_share > 0.0,
        "--latency-share must be positive"
    );
    ensure!(
        a.latency_max_rate.is_finite() && a.latency_max_rate > 0.0,
        "--latency-max-rate must be positive"
    );
    ensure!(
        a.latency_light_rate.is_finite() && a.latency_light_rate >= 0.0,
        "--latency-light-rate must be 0 (skip) or positive"
    );
    let material = Material::new(a.payload_bytes)?;
    let probe = Probe::find(broker, &a.url);
    let (raw, confirm_acks, header_bytes, ack_policy, durability, ack_vs_fsync) = match broker {
        Broker::Nats => {
            let cfg = eventyard::nats::NatsConfig::from_url(&a.url)?;
            let raw = RawNats::connect(&cfg.servers, probe).await?;
            let confirm = cfg.confirm_settlement;
            (
                Raw::Nats(raw),
                confirm,
                nats_header_bytes(&nats_headers(&material.props)),
                if confirm {
                    "server-confirmed (double) acks, one request per delivery (transport default \
                     confirm_settlement=true); raw: the same, plain acks for reference"
                        .to_owned()
                } else {
                    "plain acks (confirm_settlement=false), both sides".to_owned()
                },
                "JetStream file storage, limits retention, 1 replica, both sides".to_owned(),
                "NATS sends the PubAck once the message is stored, BEFORE fsync: the server \
                 syncs its files periodically (nats-server 2.9: about every minute), so these \
                 figures are not fsync'd ones — do not set them beside fsync'd figures"
                    .to_owned(),
            )
        }
        Broker::Amqp => {
            let cfg = eventyard::rabbitmq::AmqpConfig::from_url(&a.url)?;
            let raw = RawAmqp::connect(&cfg.uri, probe).await?;
            (
                Raw::Amqp(raw),
                false,
                amqp_header_bytes(&amqp_headers(&material.props, now_ms())),
                "basic.ack, batched (transport: acker task, `multiple` for the acked prefix; raw: \
                 multiple every 64 and when idle)"
                    .to_owned(),
                "durable classic queue behind a durable headers exchange, persistent messages \
                 (delivery_mode 2), publisher confirms, both sides"
                    .to_owned(),
                "RabbitMQ confirms a persistent message on a durable classic queue once it is \
                 written to disk (fsync, batched by the broker)"
                    .to_owned(),
            )
        }
    };
    let bench = Bench {
        broker,
        url: a.url.clone(),
        window: a.window,
        batch: a.batch.unwrap_or((a.window / a.pipeline).max(1)),
        pipeline: a.pipeline,
        messages,
        raw,
        tag: unique_tag(),
        confirm_acks,
        probe,
        material,
    };
    let mut rounds = Vec::new();
    for round in 1..=a.runs {
        if !a.json {
            eprintln!(
                "round {round} of {}: {} messages each way, raw and bus…",
                a.runs,
                thousands(messages as f64)
            );
        }
        rounds.push(bench.round(round).await?);
    }

    let raw_publish = median(
        &rounds
            .iter()
            .map(|r| r.raw_publish.rate)
            .collect::<Vec<_>>(),
    );
    let raw_consume = median(
        &rounds
            .iter()
            .map(|r| r.raw_consume.rate)
            .collect::<Vec<_>>(),
    );
    let raw_max_rate_estimate = 1.0 / (1.0 / raw_publish.max(1e-9) + 1.0 / raw_consume.max(1e-9));
    let (raw_max_rate, raw_end_to_end_runs, raw_end_to_end_costs) =
        medians(&rounds, |r| Some(&r.raw_end_to_end));
    let (rate, rate_basis) = match a.latency_rate {
        Some(r) => {
            ensure!(r.is_finite() && r > 0.0, "--latency-rate must be positive");
            (r, "--latency-rate".to_owned())
        }
        None => {
            let wanted = raw_max_rate * a.latency_share;
            let rate = wanted.min(a.latency_max_rate).max(1.0);
            let basis = format!(
                "{:.0} % of the raw maximum {} msg/s (raw publish and consume at once, \
                 measured; estimate from publish {} and consume {} alone, 1/(1/P + 1/C): {}){}",
                a.latency_share * 100.0,
                thousands(raw_max_rate),
                thousands(raw_publish),
                thousands(raw_consume),
                thousands(raw_max_rate_estimate),
                if wanted > a.latency_max_rate {
                    format!(", capped at {}", thousands(a.latency_max_rate))
                } else {
                    String::new()
                }
            );
            (rate, basis)
        }
    };
    let mut pairs = Vec::new();
    for pair in 1..=a.latency_runs {
        let raw_first = pair % 2 == 1;
        if !a.json {
            eprintln!(
                "latency pair {pair} of {}: {} msg/s for {} s, {}…",
                a.latency_runs,
                thousands(rate),
                a.seconds.as_secs_f64(),
                if raw_first {
                    "raw then bus"
                } else {
                    "bus then raw"
                }
            );
        }
        pairs.push(bench.latency_pair(pair, raw_first, rate, a.seconds).await?);
    }

    let (raw_pub_path, raw_con_path, bus_con_path) = match broker {
        Broker::Nats => (
            format!(
                "async-nats JetStream send_publish, {} PubAcks in flight (sliding window), same \
                 body, headers and Nats-Msg-Id as the transport",
                a.window
            ),
            format!(
                "async-nats durable pull consumer, batches of {w}, at most {w} messages between \
                 receipt and completed ack",
                w = a.window
            ),
            format!(
                "runtime consumer (handle_shared_envelopes: parse + validate, no-op handler, ack after \
                 it), concurrency {}",
                a.window
            ),
        ),
        Broker::Amqp => (
            format!(
                "lapin basic_publish on a confirm channel, {} confirms in flight (sliding \
                 window), same body, headers and properties as the transport",
                a.window
            ),
            format!(
                "lapin basic_consume, prefetch {}, basic.ack(multiple) every {ACK_EVERY} and \
                 when idle",
                a.window
            ),
            format!(
                "runtime consumer (handle_shared_envelopes: parse + validate, no-op handler, ack after \
                 it), concurrency {}",
                a.window
            ),
        ),
    };
    let bus_pub_path = format!(
        "Bus::publisher (pipelined), {} envelopes per batch, {} batches on their way sharing the \
         transport window {} (the caller awaits the oldest receipt once more are pending)",
        bench.batch, bench.pipeline, a.window
    );
    let mut publish = compare(
        &rounds,
        |r| Some(&r.raw_publish),
        |r| Some(&r.bus_publish),
        raw_pub_path,
        bus_pub_path,
    );
    publish.reference = reference(
        &rounds,
        |r| Some(&r.raw_publish_bare),
        publish.bus,
        "raw publish of the same body without any header",
    );
    publish.bus_reference = bus_reference(
        &rounds,
        |r| Some(&r.bus_publish_sequential),
        publish.raw,
        "bus publish by sequential Bus::publish_batch calls of the window's size from one caller \
         (each returns once its messages are confirmed)",
    );
    let mut consume = compare(
        &rounds,
        |r| Some(&r.raw_consume),
        |r| Some(&r.bus_consume),
        raw_con_path,
        bus_con_path,
    );
    consume.reference = reference(
        &rounds,
        |r| r.raw_consume_plain_acks.as_ref(),
        consume.bus,
        "raw consume with plain (unconfirmed) acks",
    );
    let raw_lat = median_run(pairs.iter().map(|p| &p.raw));
    let light = if a.latency_light_rate > 0.0 && a.latency_light_rate < rate {
        if !a.json {
            eprintln!(
                "light-load reference: {} msg/s for {} s, raw then bus…",
                thousands(a.latency_light_rate),
                a.seconds.as_secs_f64()
            );
        }
        let pair = bench
            .latency_pair(1, true, a.latency_light_rate, a.seconds)
            .await?;
        Some(LightLoad {
            rate: a.latency_light_rate,
            raw_queueing_factor: ratio(raw_lat.p50_ms, pair.raw.p50_ms),
            pair,
        })
    } else {
        None
    };
    let bus_lat = median_run(pairs.iter().map(|p| &p.bus));
    let p50_delta_ms = bus_lat.p50_ms - raw_lat.p50_ms;
    let p99_ratio = ratio(bus_lat.p99_ms, raw_lat.p99_ms);
    let latency = LatencyComparison {
        rate,
        raw_max_rate,
        raw_end_to_end_runs,
        raw_end_to_end_costs,
        raw_max_rate_estimate,
        rate_basis,
        seconds: a.seconds.as_secs_f64(),
        meets_target: p50_delta_ms <= TARGET_P50_DELTA_MS && p99_ratio <= TARGET_P99_RATIO,
        raw: raw_lat,
        bus: bus_lat,
        raw_costs: Costs::median(pairs.iter().map(|p| &p.raw_costs)),
        bus_costs: Costs::median(pairs.iter().map(|p| &p.bus_costs)),
        p50_delta_ms,
        p99_ratio,
        target_p50_delta_ms: TARGET_P50_DELTA_MS,
        target_p99_ratio: TARGET_P99_RATIO,
        pairs,
        light,
    };
    let mut notes = vec![ack_vs_fsync.clone()];
    let anomalies: u64 = rounds.iter().map(|r| r.bus_anomalies).sum();
    if anomalies > 0 {
        notes.push(format!(
            "{anomalies} settle errors / retries / dead-letters in the bus consumer"
        ));
    }
    if let Some(light) = &latency.light
        && light.raw_queueing_factor > QUEUEING_FACTOR
    {
        notes.push(format!(
            "at R5's rate the raw side queues: its p50 is {:.1}x its p50 at {} msg/s ({:.3} vs \
             {:.3} ms), so R5 compares queueing more than the path's latency (light-load \
             reference: bus − raw p50 {:+.3} ms, p99 {:.2}x)",
            light.raw_queueing_factor,
            thousands(light.rate),
            latency.raw.p50_ms,
            light.pair.raw.p50_ms,
            light.pair.p50_delta_ms,
            light.pair.p99_ratio
        ));
    }
    let errors = latency.raw.publish_errors
        + latency.bus.publish_errors
        + latency
            .light
            .as_ref()
            .map_or(0, |l| l.pair.raw.publish_errors + l.pair.bus.publish_errors);
    if errors > 0 {
        notes.push(format!("{errors} publish errors during the latency runs"));
    }
    Ok(TransportReport {
        benchmark: "transport",
        broker,
        meets_targets: publish.meets_target && consume.meets_target && latency.meets_target,
        settings: Settings {
            durability,
            ack_vs_fsync,
            window: a.window,
            batch: bench.batch,
            pipeline: bench.pipeline,
            messages,
            runs: a.runs,
            payload_bytes: a.payload_bytes,
            body_bytes: bench.material.body.len(),
            header_properties: bench.material.props.len(),
            header_bytes,
            ack_policy,
            latency_share: a.latency_share,
            latency_max_rate: a.latency_max_rate,
            latency_runs: a.latency_runs,
            latency_light_rate: a.latency_light_rate,
            url: redact(&a.url),
            runtime_workers: tokio::runtime::Handle::current().metrics().num_workers(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            loadavg_start,
            loadavg_end: loadavg(),
        },
        publish,
        consume,
        latency,
        notes,
        rounds,
    })
}

/// Milliseconds with three decimals, `-` when not measured.
fn opt_ms(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

/// Header of [`cost_columns`].
const COST_HEADER: &str =
    "   CPU µs/msg: client  broker   on CPU/msg: client  broker   machine busy";

/// A phase's costs as table columns.
fn cost_columns(c: &Costs) -> String {
    let opt = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |b| format!("{b:.1}"));
    format!(
        "{:>20.1}{:>8}{:>20.1}{:>8}{:>14.0} %",
        c.client_cpu_us_per_msg,
        opt(c.broker_cpu_us_per_msg),
        c.slices_per_msg,
        opt(c.broker_slices_per_msg),
        c.machine_busy_pct
    )
}

/// The human table.
pub fn table(r: &TransportReport) -> String {
    use std::fmt::Write as _;
    let s = &r.settings;
    let mut o = String::new();
    let client = match r.broker {
        Broker::Nats => "async-nats",
        Broker::Amqp => "lapin",
    };
    let _ = writeln!(
        o,
        "yard bench transport (R1, R2, R5): the bus over {} vs the raw {client} client, same run",
        r.broker.name()
    );
    let _ = writeln!(o, "durability: {}", s.durability);
    let _ = writeln!(o, "NOTE: {}", s.ack_vs_fsync);
    let _ = writeln!(
        o,
        "window {} in flight (confirms, prefetch, consumer concurrency); bus batch {}; {} messages \
         per phase; payload {} B → body {} B (envelope JSON) + {} properties as headers (~{} B), \
         both sides; {} rounds, medians; raw/bus order alternates by round; bus pipeline {} batches",
        s.window,
        s.batch,
        thousands(s.messages as f64),
        s.payload_bytes,
        s.body_bytes,
        s.header_properties,
        s.header_bytes,
        s.runs,
        s.pipeline
    );
    let _ = writeln!(o, "acks: {}", s.ack_policy);
    let _ = writeln!(o);
    let width = 40;
    let _ = write!(o, "{:<width$}", "msg/s");
    for i in 1..=s.runs {
        let _ = write!(o, "{:>10}", format!("round {i}"));
    }
    let _ = writeln!(o, "{:>10}{COST_HEADER}", "median");
    let row = |o: &mut String, name: &str, xs: &[f64], med: f64, c: &Costs| {
        let _ = write!(o, "{name:<width$}");
        for x in xs {
            let _ = write!(o, "{:>10}", thousands(*x));
        }
        let _ = writeln!(o, "{:>10}{}", thousands(med), cost_columns(c));
    };
    let p = &r.publish;
    row(
        &mut o,
        "R1 publish, raw (same bytes)",
        &p.raw_runs,
        p.raw,
        &p.raw_costs,
    );
    if let Some(x) = &p.reference {
        row(
            &mut o,
            "   raw, no headers (reference)",
            &x.runs,
            x.rate,
            &x.costs,
        );
    }
    row(
        &mut o,
        "   bus (Bus::publisher, pipelined)",
        &p.bus_runs,
        p.bus,
        &p.bus_costs,
    );
    if let Some(x) = &p.bus_reference {
        row(
            &mut o,
            "   bus, sequential publish_batch (ref.)",
            &x.runs,
            x.rate,
            &x.costs,
        );
    }
    let c = &r.consume;
    row(
        &mut o,
        "R2 consume, raw (same ack policy)",
        &c.raw_runs,
        c.raw,
        &c.raw_costs,
    );
    if let Some(x) = &c.reference {
        row(
            &mut o,
            "   raw, plain acks (reference)",
            &x.runs,
            x.rate,
            &x.costs,
        );
    }
    row(
        &mut o,
        "   bus (consumer, no-op handler)",
        &c.bus_runs,
        c.bus,
        &c.bus_costs,
    );
    let l = &r.latency;
    row(
        &mut o,
        "R5 basis: raw publish + consume at once",
        &l.raw_end_to_end_runs,
        l.raw_max_rate,
        &l.raw_end_to_end_costs,
    );
    let _ = writeln!(o);
    let mark = |ok: bool| if ok { "ok" } else { "BELOW TARGET" };
    let _ = writeln!(
        o,
        "{:<14}{:>10}{:>10}{:>9}{:>12}",
        "", "raw", "bus", "ratio", "target"
    );
    for (id, x) in [("R1 publish", p), ("R2 consume", c)] {
        let _ = writeln!(
            o,
            "{id:<14}{:>10}{:>10}{:>9.3}{:>12}   {}",
            thousands(x.raw),
            thousands(x.bus),
            x.ratio,
            format!(">= {:.2}", x.target),
            mark(x.meets_target)
        );
    }
    if let Some(x) = &p.reference {
        let _ = writeln!(o, "  (bus publish / {}: {:.3})", x.what, x.bus_ratio);
    }
    if let Some(x) = &p.bus_reference {
        let _ = writeln!(o, "  ({} / raw publish: {:.3})", x.what, x.ratio);
    }
    if let Some(x) = &c.reference {
        let _ = writeln!(o, "  (bus consume / {}: {:.3})", x.what, x.bus_ratio);
    }
    let _ = writeln!(
        o,
        "R5 latency: open loop at {} msg/s ({}) for {} s each, intended send → consumer (raw) \
         / handler start (bus); medians of {} pairs",
        thousands(l.rate),
        l.rate_basis,
        l.seconds,
        l.pairs.len()
    );
    let _ = writeln!(
        o,
        "{:<8}{:>10}{:>10}{:>10}{:>10}   {:>14}  schedule lag{COST_HEADER}",
        "ms", "p50", "p99", "p99.9", "max", "handled"
    );
    for (name, x, c) in [("raw", &l.raw, &l.raw_costs), ("bus", &l.bus, &l.bus_costs)] {
        let _ = writeln!(
            o,
            "{name:<8}{:>10.3}{:>10.3}{:>10.3}{:>10.3}   {:>14}  {:>9.2} ms{}{}",
            x.p50_ms,
            x.p99_ms,
            x.p999_ms,
            x.max_ms,
            format!("{}/{}", x.received, x.sent),
            x.max_schedule_lag_ms,
            cost_columns(c),
            if x.publish_errors > 0 {
                format!(", {} publish errors", x.publish_errors)
            } else {
                String::new()
            }
        );
    }
    for x in &l.pairs {
        let _ = writeln!(
            o,
            "  pair {} ({}): p50 raw {:.3} / bus {:.3} ms ({:+.3}), p99 raw {:.3} / bus {:.3} ms \
             ({:.2}x), machine busy {:.0} / {:.0} %; publish confirmed p50 raw {} / bus {}, p99 \
             raw {} / bus {} ms",
            x.pair,
            x.order,
            x.raw.p50_ms,
            x.bus.p50_ms,
            x.p50_delta_ms,
            x.raw.p99_ms,
            x.bus.p99_ms,
            x.p99_ratio,
            x.raw_costs.machine_busy_pct,
            x.bus_costs.machine_busy_pct,
            opt_ms(x.raw.confirm_p50_ms),
            opt_ms(x.bus.confirm_p50_ms),
            opt_ms(x.raw.confirm_p99_ms),
            opt_ms(x.bus.confirm_p99_ms)
        );
    }
    if let Some(x) = &l.light {
        let (raw, bus) = (&x.pair.raw, &x.pair.bus);
        let _ = writeln!(
            o,
            "  light-load reference at {} msg/s (not part of R5): p50 raw {:.3} / bus {:.3} ms \
             ({:+.3}), p99 raw {:.3} / bus {:.3} ms ({:.2}x), client CPU raw {:.1} / bus {:.1} \
             µs/msg; R5's raw p50 is {:.1}x this one{}",
            thousands(x.rate),
            raw.p50_ms,
            bus.p50_ms,
            x.pair.p50_delta_ms,
            raw.p99_ms,
            bus.p99_ms,
            x.pair.p99_ratio,
            x.pair.raw_costs.client_cpu_us_per_msg,
            x.pair.bus_costs.client_cpu_us_per_msg,
            x.raw_queueing_factor,
            if x.raw_queueing_factor > QUEUEING_FACTOR {
                " (the raw side queues at R5's rate)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        o,
        "R5 p50 bus − raw {:+.3} ms (target <= +{:.1})  {};  p99 bus / raw {:.2}x (target <= {:.1}x)  {}",
        l.p50_delta_ms,
        l.target_p50_delta_ms,
        mark(l.p50_delta_ms <= l.target_p50_delta_ms),
        l.p99_ratio,
        l.target_p99_ratio,
        mark(l.p99_ratio <= l.target_p99_ratio)
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "raw publish: {}", p.raw_path);
    let _ = writeln!(o, "bus publish: {}", p.bus_path);
    let _ = writeln!(o, "raw consume: {}", c.raw_path);
    let _ = writeln!(o, "bus consume: {}", c.bus_path);
    let _ = writeln!(
        o,
        "machine: {} runtime workers on {} CPUs; load average {} at start, {} at end",
        s.runtime_workers, s.cpus, s.loadavg_start, s.loadavg_end
    );
    for n in &r.notes[1..] {
        let _ = writeln!(o, "note: {n}");
    }
    let short = r.shortfalls();
    if short.is_empty() {
        let _ = writeln!(o, "R1, R2, R5 targets met.");
    } else {
        let _ = writeln!(o, "below target: {}.", short.join("; "));
    }
    o
}

/// `yard bench transport`: runs, prints, exits 0 whether or not the targets are met.
pub async fn run(args: TransportArgs) -> anyhow::Result<ExitCode> {
    let report = run_transport(&args).await?;
    super::emit("transport", args.json, &report, table, &report.shortfalls())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_set_and_replaced() {
        assert_eq!(
            set_query("nats://h:4222", &[("prefix", "p".into())]),
            "nats://h:4222?prefix=p"
        );
        assert_eq!(
            set_query(
                "amqp://u:p@h/%2f?prefix=old&heartbeat=10",
                &[("prefix", "new".into()), ("confirm_window", "64".into())]
            ),
            "amqp://u:p@h/%2f?heartbeat=10&prefix=new&confirm_window=64"
        );
    }

    #[test]
    fn intended_time_is_found_in_the_envelope_json() {
        let m = Material::new(256).unwrap();
        let env = latency_envelope(&m.template, Some(123_456_789));
        assert_eq!(intended_in(&env.to_json()), Some(123_456_789));
        assert_eq!(
            intended_in(&latency_envelope(&m.template, None).to_json()),
            None
        );
    }

    #[test]
    fn raw_headers_carry_every_property_and_the_message_id() {
        let m = Material::new(256).unwrap();
        let h = nats_headers(&m.props);
        let id = m.props.get_str(prop_names::EVENT_ID).unwrap();
        assert_eq!(
            h.get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some(id)
        );
        assert_eq!(
            h.get(NATS_TYPE_HEADER).map(|v| v.as_str()),
            Some("i:cs-schema-version")
        );
        assert!(nats_header_bytes(&h) > 200);
        let t = amqp_headers(&m.props, 1);
        assert_eq!(t.inner().len(), m.props.len() + 1);
    }

    /// A failed raw publish ends the end-to-end phase at once and stops its consumer, which
    /// would otherwise wait for messages that never come.
    #[tokio::test]
    async fn a_failed_publish_stops_the_end_to_end_consumer() {
        struct Dropped(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        let consume = async move {
            let _guard = guard;
            std::future::pending::<anyhow::Result<Phase>>().await
        };
        let publish = async { Err::<Phase, _>(anyhow!("broker refused the publish")) };
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            end_to_end(Probe::default(), 10, consume, publish),
        )
        .await
        .expect("the phase waited for its consumer");
        let e = r.expect_err("a failed publish fails the phase");
        assert!(e.to_string().contains("refused"), "{e}");
        // The aborted task drops its future on the runtime shortly after.
        for _ in 0..100 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the consumer task was not stopped");
    }

    #[test]
    fn brokers_and_redaction() {
        assert_eq!(Broker::of("nats://h:1").unwrap(), Broker::Nats);
        assert_eq!(Broker::of("amqp://h").unwrap(), Broker::Amqp);
        assert!(Broker::of("sqlite://x").is_err());
        assert_eq!(redact("amqp://u:secret@h:1/v"), "amqp://u:***@h:1/v");
    }
}

//! `yard bench outbox --store sqlite|postgres [--json]`: R4 and R6 of
//! `/work/shared/perf/TARGETS.md`.
//!
//! - **R4, drain rate.** Baseline: a batched INSERT (`--batch` records per transaction, durable)
//!   of N outbox records into the outbox tables of a fresh store — on SQLite the same two rows
//!   `outbox::add` writes (payload and queue entry) through a bare rusqlite connection with the
//!   broker's pragmas (WAL, `synchronous=FULL`); on PostgreSQL the same `INSERT … SELECT
//!   unnest(…)` statement `add_batch` runs, with `synchronous_commit=on`. Then those very rows
//!   are the backlog: a [`Relay`] drains them into an embedded broker (one subscription on the
//!   topic, so each publish writes a durable message) — claimed, published, broker-confirmed,
//!   marked dispatched. On SQLite the broker lives in the outbox's own file (one group commit);
//!   on PostgreSQL it is a separate SQLite file. The figure is drain rate / insert rate, median
//!   of the runs, each on a fresh store.
//! - **R6, commit → handler latency.** One event per application transaction at a fixed rate
//!   (open loop: each commit runs on its own task at its tick; on PostgreSQL over 8 application
//!   connections), a relay running (woken by the commit: in-process signal on SQLite,
//!   LISTEN/NOTIFY on PostgreSQL), one consumer; the time from the commit's return to the
//!   delivery reaching the consumer, in an HDR histogram (p50/p99/p999).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventyard::outbox::PendingEvent;
use eventyard::sqlite::outbox::{self, SqliteOutbox};
use eventyard::sqlite::{SqliteBroker, SqliteConfig};
use eventyard::{
    Envelope, EventType, Relay, RelayConfig, SubQueue, SubscriptionSpec, TenantId, Transport,
};
use eventyard_postgres::{PgOutbox, PgOutboxConfig};
use serde::Serialize;

use crate::store::StoreKind;

/// PostgreSQL URL used when neither `--url` nor `EVENTYARD_PG_URL` is given (the testkit's
/// loopback default).
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// R4 bar: drain rate / baseline rate.
pub const TARGET_RATIO: f64 = 0.5;
/// R4 bar on PostgreSQL: events/s.
pub const TARGET_RATE_PG: f64 = 10_000.0;
/// R6 bars, ms.
pub const TARGET_P50_MS: f64 = 5.0;
/// R6 p99 bar, ms.
pub const TARGET_P99_MS: f64 = 25.0;

/// Application connections committing the latency run's transactions on PostgreSQL.
const PG_PRODUCERS: usize = 8;

/// Arguments of `yard bench outbox`.
#[derive(Debug, Clone, clap::Args)]
pub struct OutboxBenchArgs {
    /// Outbox store to measure.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// PostgreSQL URL (with `--store postgres`); benchmark schemas are created and dropped.
    #[arg(long, env = "EVENTYARD_PG_URL", default_value = DEFAULT_PG_URL)]
    pub url: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Backlog size of each drain run.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Drain runs (fresh store each, baseline then relay); the report gives medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Rows per baseline transaction and records per relay batch.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Distinct partition keys, used in turn. With fewer keys than a batch holds, every key of
    /// the backlog is in each batch and the relay's claims and publishes cannot overlap
    /// (per-key order).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Size of the envelope's JSON payload padding, bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Latency run: events per second, committed open-loop on a fixed schedule.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Latency run: how long to commit (`5s`, `500ms`, or seconds).
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub seconds: Duration,
    /// PostgreSQL: the relay's own bookkeeping (claims, marks) commits with
    /// `synchronous_commit=on` (default off: a lost claim or mark only republishes).
    #[arg(long)]
    pub pg_synchronous_commit: bool,
    /// SQLite: drain with the leased relay path (claim, publish, mark: `RelayConfig::direct`
    /// off) instead of direct dispatch (claim, publish and mark in one transaction of the data
    /// file, the default where the outbox and the broker share it). PostgreSQL always leases.
    #[arg(long)]
    pub leased: bool,
}

impl Default for OutboxBenchArgs {
    fn default() -> Self {
        OutboxBenchArgs {
            store: StoreKind::Sqlite,
            url: DEFAULT_PG_URL.into(),
            json: false,
            events: 100_000,
            runs: 3,
            batch: 512,
            keys: 1_000,
            payload_bytes: 256,
            rate: 1000.0,
            seconds: Duration::from_secs(5),
            pg_synchronous_commit: false,
            leased: false,
        }
    }
}

/// One drain run.
#[derive(Debug, Clone, Serialize)]
pub struct DrainRun {
    /// Baseline: rows inserted per second (batched INSERT).
    pub baseline_rate: f64,
    /// Relay: records claimed, published (broker-confirmed) and marked per second.
    pub rate: f64,
    /// rate / baseline_rate.
    pub ratio: f64,
}

/// Commit → consumer latency at a fixed rate, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Target rate, events/s.
    pub rate: f64,
    /// Events measured.
    pub events: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// What the benchmark held fixed, recorded beside every number.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Backlog per drain run.
    pub events: u64,
    /// Drain runs.
    pub runs: u32,
    /// Baseline rows per transaction = relay batch.
    pub batch: u64,
    /// Distinct partition keys.
    pub keys: u64,
    /// Envelope payload padding, bytes.
    pub payload_bytes: usize,
    /// Stored body per event (the envelope JSON), bytes.
    pub body_bytes: usize,
    /// Latency run: events per second.
    pub latency_rate: f64,
    /// Latency run: seconds of committing.
    pub latency_seconds: f64,
    /// Durability of every side.
    pub durability: String,
    /// Where the relay publishes.
    pub transport: String,
    /// How the relay drains: `direct` (one transaction per batch, SQLite's own broker) or
    /// `leased` (claim, publish, mark).
    pub relay: &'static str,
    /// `/proc/loadavg` when the benchmark started.
    pub loadavg_start: String,
    /// `/proc/loadavg` when it ended.
    pub loadavg_end: String,
    /// Logical CPUs.
    pub cpus: usize,
}

/// The whole report (`--json` prints it as one object).
#[derive(Debug, Clone, Serialize)]
pub struct OutboxReport {
    /// `outbox` (R4, R6).
    pub benchmark: &'static str,
    /// Store measured.
    pub store: StoreKind,
    /// Median baseline insert rate, rows/s.
    pub baseline_rate: f64,
    /// Median relay drain rate, events/s.
    pub rate: f64,
    /// rate / baseline_rate (the median run's; R4 wants >= 0.5).
    pub ratio: f64,
    /// Commit → consumer p50, ms (R6 wants <= 5).
    pub p50_ms: f64,
    /// p99, ms (R6 wants <= 25).
    pub p99_ms: f64,
    /// p99.9, ms.
    pub p999_ms: f64,
    /// R4 ratio bar.
    pub target_ratio: f64,
    /// R4 rate bar (10k/s on PostgreSQL; 0: none).
    pub target_rate: f64,
    /// R4 met.
    pub meets_r4: bool,
    /// R6 met.
    pub meets_r6: bool,
    /// What was held fixed.
    pub settings: Settings,
    /// Every drain run.
    pub runs: Vec<DrainRun>,
    /// The latency run.
    pub latency: LatencyReport,
}

const TOPIC: &str = "BenchOutbox";

fn envelope(n: u64, pad: &str) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        EventType::event("OrderPlaced")?,
        TenantId::parse("connectsoft")?,
        serde_json::json!({ "n": n, "pad": pad }),
    ))
}

fn events(n: u64, payload: usize, keys: u64) -> anyhow::Result<Vec<PendingEvent>> {
    let pad = "x".repeat(payload);
    (0..n)
        .map(|i| {
            Ok(PendingEvent::new(TOPIC, &envelope(i, &pad)?)?
                .partition_key(format!("k{}", i % keys.max(1))))
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Baseline on SQLite: batched INSERTs of `evs` into the outbox table of `path`; rows/s.
fn sqlite_baseline(
    path: &std::path::Path,
    evs: &[PendingEvent],
    batch: usize,
) -> anyhow::Result<f64> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    conn.pragma_update(None, "synchronous", "FULL")?;
    let rows: Vec<(String, String, Vec<u8>, String)> = evs
        .iter()
        .map(|e| {
            Ok((
                e.topic.clone(),
                e.partition_key.clone(),
                e.message.body.to_vec(),
                serde_json::to_string(&e.message.properties)?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    for chunk in rows.chunks(batch.max(1)) {
        let tx = conn.transaction()?;
        {
            // The same two rows `outbox::add` writes: the payload and its queue entry.
            let mut s = tx.prepare_cached(
                "INSERT INTO outbox (topic, partition_key, body, props, deliver_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut q =
                tx.prepare_cached("INSERT INTO outbox_queue (id, partition_key) VALUES (?1, ?2)")?;
            let now = now_us();
            for (topic, key, body, props) in chunk {
                let id = s.insert(rusqlite::params![topic, key, body, props, None::<i64>, now])?;
                q.execute(rusqlite::params![id, key])?;
            }
        }
        tx.commit()?;
    }
    Ok(rows.len() as f64 / t0.elapsed().as_secs_f64())
}

/// A broker on `path` with the benchmark's subscription.
async fn bench_broker(path: &std::path::Path) -> anyhow::Result<SqliteBroker> {
    let broker = SqliteBroker::open(SqliteConfig::new(path))?;
    broker
        .ensure_subscription(&SubscriptionSpec::new(TOPIC, "bench"))
        .await?;
    Ok(broker)
}

fn pg_config(a: &OutboxBenchArgs, schema: String) -> PgOutboxConfig {
    PgOutboxConfig {
        synchronous_commit: a.pg_synchronous_commit,
        application_name: schema.clone(),
        ..PgOutboxConfig::with_schema(schema)
    }
}

/// How the drain runs relay: see [`Settings::relay`].
fn relay_mode(a: &OutboxBenchArgs) -> &'static str {
    if a.leased || a.store == StoreKind::Postgres {
        "leased"
    } else {
        "direct"
    }
}

/// Runs the relay from `store` into `broker` until `n` records are dispatched; events/s.
async fn drain(
    store: Arc<dyn eventyard::outbox::OutboxStore>,
    broker: &SqliteBroker,
    n: u64,
    batch: usize,
    leased: bool,
) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let relay = Relay::spawn(
        store,
        Arc::new(broker.clone()),
        RelayConfig {
            name: "bench".into(),
            batch_size: batch,
            cleaner: None,
            direct: !leased,
            ..RelayConfig::default()
        },
    );
    let metrics = relay.metrics();
    while metrics.dispatched.load(Ordering::Relaxed) < n {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("the relay did not drain {n} records in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    relay.shutdown().await;
    let stats = broker.stats().await?;
    let published: u64 = stats.iter().map(|s| s.available + s.pending).sum();
    anyhow::ensure!(
        published == n,
        "{published} messages published, {n} expected"
    );
    Ok(rate)
}

async fn drain_run(a: &OutboxBenchArgs, evs: Arc<Vec<PendingEvent>>) -> anyhow::Result<DrainRun> {
    let dir = tempfile::Builder::new()
        .prefix("yard-bench-outbox-")
        .tempdir()?;
    let path = dir.path().join("outbox.db");
    let batch = usize::try_from(a.batch).unwrap_or(512);
    let n = evs.len() as u64;
    match a.store {
        StoreKind::Sqlite => {
            // Creates the schema, and the subscription the relay publishes into.
            bench_broker(&path).await?.close().await?;
            let (p, e) = (path.clone(), evs.clone());
            let baseline_rate =
                tokio::task::spawn_blocking(move || sqlite_baseline(&p, &e, batch)).await??;
            let broker = SqliteBroker::open(SqliteConfig::new(&path))?;
            let store = Arc::new(SqliteOutbox::new(broker.clone()));
            let rate = drain(store, &broker, n, batch, a.leased).await;
            broker.close().await?;
            let rate = rate?;
            Ok(DrainRun {
                baseline_rate,
                rate,
                ratio: rate / baseline_rate,
            })
        }
        StoreKind::Postgres => {
            let schema = eventyard_postgres::bench::bench_schema();
            let store = PgOutbox::connect(&a.url, pg_config(a, schema))
                .await
                .with_context(|| format!("connecting to {}", a.url))?;
            let result = async {
                let secs = eventyard_postgres::bench::insert_backlog(&store, &evs, batch).await?;
                let baseline_rate = n as f64 / secs.as_secs_f64();
                let broker = bench_broker(&path).await?;
                let rate = drain(Arc::new(store.clone()), &broker, n, batch, true).await;
                broker.close().await?;
                let rate = rate?;
                Ok::<_, anyhow::Error>(DrainRun {
                    baseline_rate,
                    rate,
                    ratio: rate / baseline_rate,
                })
            }
            .await;
            store.drop_schema().await?;
            result
        }
    }
}

/// Commits one event per transaction for the latency run.
enum Producer {
    Sqlite(SqliteBroker),
    Postgres {
        store: PgOutbox,
        conns: Vec<Arc<tokio::sync::Mutex<tokio_postgres::Client>>>,
    },
}

impl Producer {
    async fn commit(&self, n: u64, ev: PendingEvent) -> anyhow::Result<()> {
        match self {
            Producer::Sqlite(broker) => {
                broker
                    .transaction(move |tx| outbox::add(tx, &ev))
                    .await
                    .map_err(anyhow::Error::from)?
                    .map_err(anyhow::Error::from)?;
            }
            Producer::Postgres { store, conns } => {
                let mut client = conns[n as usize % conns.len()].lock().await;
                let tx = client.transaction().await?;
                store.add(&tx, &ev).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

async fn pg_client(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn latency_run(a: &OutboxBenchArgs) -> anyhow::Result<LatencyReport> {
    let dir = tempfile::Builder::new()
        .prefix("yard-bench-outbox-")
        .tempdir()?;
    let broker = bench_broker(&dir.path().join("latency.db")).await?;
    let (store, producer, pg): (Arc<dyn eventyard::outbox::OutboxStore>, Producer, _) =
        match a.store {
            StoreKind::Sqlite => (
                Arc::new(SqliteOutbox::new(broker.clone())),
                Producer::Sqlite(broker.clone()),
                None,
            ),
            StoreKind::Postgres => {
                let schema = eventyard_postgres::bench::bench_schema();
                let store = PgOutbox::connect(&a.url, pg_config(a, schema)).await?;
                let mut conns = Vec::with_capacity(PG_PRODUCERS);
                for _ in 0..PG_PRODUCERS {
                    conns.push(Arc::new(tokio::sync::Mutex::new(pg_client(&a.url).await?)));
                }
                (
                    Arc::new(store.clone()),
                    Producer::Postgres {
                        store: store.clone(),
                        conns,
                    },
                    Some(store),
                )
            }
        };
    let result = latency_measure(a, store, Arc::new(producer), &broker).await;
    broker.close().await?;
    if let Some(pg) = pg {
        pg.drop_schema().await?;
    }
    result
}

async fn latency_measure(
    a: &OutboxBenchArgs,
    store: Arc<dyn eventyard::outbox::OutboxStore>,
    producer: Arc<Producer>,
    broker: &SqliteBroker,
) -> anyhow::Result<LatencyReport> {
    let relay = Relay::spawn(
        store,
        Arc::new(broker.clone()),
        RelayConfig {
            name: "bench-latency".into(),
            cleaner: None,
            direct: !a.leased,
            ..RelayConfig::default()
        },
    );
    let total = (a.rate * a.seconds.as_secs_f64()).round().max(1.0) as u64;
    let committed: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut rx = broker.receiver(TOPIC, "bench", SubQueue::Main).await?;
    let consumer = {
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut early: Vec<(u64, Instant)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while hist.len() < total && Instant::now() < deadline {
                let batch = rx.receive(256, Duration::from_millis(100)).await?;
                let now = Instant::now();
                for d in &batch {
                    let env = d.message.envelope()?;
                    early.push((env.payload["n"].as_u64().unwrap_or(0), now));
                }
                // Settled together (one group commit), as a consumer with concurrency does.
                for r in futures::future::join_all(batch.into_iter().map(|d| d.ack())).await {
                    r?;
                }
                // A delivery may beat the producer task recording its commit time.
                let c = committed.lock().unwrap_or_else(|p| p.into_inner());
                early.retain(|(n, at)| match c.get(n) {
                    Some(t) => {
                        let us = at.saturating_duration_since(*t).as_micros().max(1);
                        let _ = hist.record(u64::try_from(us).unwrap_or(u64::MAX));
                        false
                    }
                    None => true,
                });
            }
            Ok::<_, anyhow::Error>(hist)
        })
    };
    let pad = "x".repeat(a.payload_bytes);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        tick.tick().await;
        let ev = PendingEvent::new(TOPIC, &envelope(n, &pad)?)?
            .partition_key(format!("k{}", n % a.keys.max(1)));
        let (producer, committed) = (producer.clone(), committed.clone());
        tasks.push(tokio::spawn(async move {
            producer.commit(n, ev).await?;
            committed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n, Instant::now());
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let hist = consumer.await??;
    relay.shutdown().await;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(LatencyReport {
        rate: a.rate,
        events: hist.len(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
    })
}

async fn durability(a: &OutboxBenchArgs) -> anyhow::Result<String> {
    Ok(match a.store {
        StoreKind::Sqlite => {
            "SQLite WAL, synchronous=FULL, both sides; broker publish = durable commit".into()
        }
        StoreKind::Postgres => {
            format!(
                "PostgreSQL {}; baseline and application commits synchronous_commit=on; relay \
                 bookkeeping (claims, marks) synchronous_commit={}; transport: embedded SQLite \
                 broker, WAL, synchronous=FULL (publish = durable commit)",
                eventyard_postgres::bench::server_settings(&a.url)
                    .await
                    .with_context(|| format!("connecting to {}", a.url))?,
                if a.pg_synchronous_commit { "on" } else { "off" }
            )
        }
    })
}

/// Measures with `a` (no printing).
pub async fn measure(a: &OutboxBenchArgs) -> anyhow::Result<OutboxReport> {
    let loadavg_start = loadavg();
    let durability = durability(a).await?;
    let evs = Arc::new(events(a.events, a.payload_bytes, a.keys)?);
    let body_bytes = evs.first().map_or(0, |e| e.message.body.len());
    let mut runs = Vec::with_capacity(a.runs as usize);
    for _ in 0..a.runs.max(1) {
        runs.push(drain_run(a, evs.clone()).await.context("drain run")?);
    }
    drop(evs);
    let latency = latency_run(a).await.context("latency run")?;
    // The median run by ratio: its rates and ratio belong together.
    let mut by_ratio = runs.clone();
    by_ratio.sort_by(|x, y| x.ratio.total_cmp(&y.ratio));
    let mid = by_ratio[by_ratio.len() / 2].clone();
    let baseline_rate = median(&runs.iter().map(|r| r.baseline_rate).collect::<Vec<_>>());
    let rate = median(&runs.iter().map(|r| r.rate).collect::<Vec<_>>());
    let target_rate = match a.store {
        StoreKind::Sqlite => 0.0,
        StoreKind::Postgres => TARGET_RATE_PG,
    };
    Ok(OutboxReport {
        benchmark: "outbox",
        store: a.store,
        baseline_rate,
        rate,
        ratio: mid.ratio,
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        p999_ms: latency.p999_ms,
        target_ratio: TARGET_RATIO,
        target_rate,
        meets_r4: mid.ratio >= TARGET_RATIO && rate >= target_rate,
        meets_r6: latency.p50_ms <= TARGET_P50_MS && latency.p99_ms <= TARGET_P99_MS,
        settings: Settings {
            events: a.events,
            runs: a.runs,
            batch: a.batch,
            keys: a.keys,
            payload_bytes: a.payload_bytes,
            body_bytes,
            latency_rate: a.rate,
            latency_seconds: a.seconds.as_secs_f64(),
            durability,
            transport: "embedded SQLite broker (one subscription on the topic)".into(),
            relay: relay_mode(a),
            loadavg_start,
            loadavg_end: loadavg(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        runs,
        latency,
    })
}

/// Prints the report as a table.
pub fn print(r: &OutboxReport) {
    let s = &r.settings;
    println!(
        "outbox relay drain (R4) on {} — {}",
        r.store.name(),
        s.durability
    );
    println!(
        "  backlog {} events ({} B bodies) over {} keys, batch {}, relay {}, {} runs; load {} → {}",
        s.events,
        s.body_bytes,
        s.keys,
        s.batch,
        s.relay,
        r.runs.len(),
        s.loadavg_start,
        s.loadavg_end
    );
    for (i, run) in r.runs.iter().enumerate() {
        println!(
            "  run {}: baseline INSERT {:>9.0} rows/s   relay drain {:>9.0} ev/s   ratio {:.2}",
            i + 1,
            run.baseline_rate,
            run.rate,
            run.ratio
        );
    }
    let rate_bar = if r.target_rate > 0.0 {
        format!(", and >= {:.0} ev/s", r.target_rate)
    } else {
        String::new()
    };
    println!(
        "  median: baseline {:.0} rows/s, drain {:.0} ev/s, ratio {:.2} (target >= {}{rate_bar}): {}",
        r.baseline_rate,
        r.rate,
        r.ratio,
        r.target_ratio,
        if r.meets_r4 { "met" } else { "NOT met" }
    );
    let l = &r.latency;
    println!(
        "commit -> consumer latency (R6) at {}/s, {} events: p50 {:.2} ms, p99 {:.2} ms, \
         p999 {:.2} ms, max {:.2} ms (target p50 <= 5, p99 <= 25): {}",
        l.rate,
        l.events,
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        if r.meets_r6 { "met" } else { "NOT met" }
    );
}

/// Runs `yard bench outbox`.
pub async fn run(a: OutboxBenchArgs) -> anyhow::Result<ExitCode> {
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    let r = measure(&a).await?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print(&r);
    }
    Ok(ExitCode::SUCCESS)
}

//! `yard bench outbox --store sqlite|postgres [--json]`: R4 and R6 of
//! `/work/shared/perf/TARGETS.md`.
//!
//! - **R4, drain rate.** Baseline: a batched INSERT (512 records per transaction) of N outbox
//!   records — the same two rows `outbox::add` writes, payload and queue entry — into the outbox
//!   tables of a fresh data file, through a bare rusqlite connection with the broker's pragmas
//!   (WAL, `synchronous=FULL`). Then those very rows are the backlog: a
//!   [`Relay`] drains them into the embedded broker of the same file (one subscription on the
//!   topic, so each publish writes a message) — claimed, published with the broker's durable
//!   commit, marked dispatched. The figure is drain rate / insert rate, median of the runs.
//! - **R6, commit → handler latency.** One event per application transaction at a fixed rate
//!   (open loop: each commit runs on its own task at its tick), a relay running, one consumer;
//!   the time from the commit's return to the delivery reaching the consumer, in an HDR
//!   histogram (p50/p99/p999).
//!
//! Written to be wired into `bench/mod.rs` as `Which::Outbox`; only `eventyard` and external
//! crates are used, so the CLI's tests can also include the file directly.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventyard::outbox::PendingEvent;
use eventyard::sqlite::outbox::{self, SqliteOutbox};
use eventyard::sqlite::{SqliteBroker, SqliteConfig};
use eventyard::{
    Envelope, EventType, Relay, RelayConfig, SubQueue, SubscriptionSpec, TenantId, Transport,
};
use serde::Serialize;

/// Settings of one benchmark run (`run` uses the defaults).
#[derive(Debug, Clone)]
pub struct OutboxBenchOptions {
    /// Backlog size of each drain run. Default 100,000.
    pub events: usize,
    /// Drain runs (fresh file each); the report gives medians. Default 3.
    pub runs: usize,
    /// Rows per baseline transaction and records per relay batch. Default 512.
    pub batch: usize,
    /// Payload padding, bytes (the envelope adds its headers). Default 256.
    pub payload: usize,
    /// Distinct partition keys, used in turn. Default 1,000. With fewer keys than a batch
    /// holds, every key of the backlog is in each batch, and the relay's claims and publishes
    /// cannot overlap (per-key order): one more transaction per batch.
    pub keys: usize,
    /// Events per second of the latency run. Default 1,000.
    pub latency_rate: u32,
    /// Length of the latency run. Default 5 s.
    pub latency_for: Duration,
}

impl Default for OutboxBenchOptions {
    fn default() -> Self {
        OutboxBenchOptions {
            events: 100_000,
            runs: 3,
            batch: 512,
            payload: 256,
            keys: 1_000,
            latency_rate: 1_000,
            latency_for: Duration::from_secs(5),
        }
    }
}

/// One drain run.
#[derive(Debug, Clone, Serialize)]
pub struct DrainRun {
    /// Baseline: rows inserted per second (batched INSERT).
    pub insert_rate: f64,
    /// Relay: records claimed, published (broker-confirmed) and marked per second.
    pub drain_rate: f64,
    /// drain / insert.
    pub ratio: f64,
}

/// Commit → consumer latency at a fixed rate, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Target rate, events/s.
    pub rate: u32,
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

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxReport {
    /// Store measured.
    pub store: String,
    /// Durability of both sides.
    pub durability: String,
    /// Backlog per run.
    pub events: usize,
    /// Distinct partition keys.
    pub keys: usize,
    /// Baseline rows per transaction = relay batch.
    pub batch: usize,
    /// Median baseline insert rate, rows/s.
    pub insert_rate: f64,
    /// Median relay drain rate, events/s.
    pub drain_rate: f64,
    /// Median ratio (target ≥ 0.5).
    pub ratio: f64,
    /// Every drain run.
    pub runs: Vec<DrainRun>,
    /// Commit → consumer latency (target p50 ≤ 5 ms, p99 ≤ 25 ms at 1k/s).
    pub latency: LatencyReport,
}

const TOPIC: &str = "BenchOutbox";

fn events(n: usize, payload: usize, keys: usize) -> anyhow::Result<Vec<PendingEvent>> {
    let tenant = TenantId::parse("connectsoft")?;
    let et = EventType::event("OrderPlaced")?;
    let pad = "x".repeat(payload);
    (0..n)
        .map(|i| {
            let env = Envelope::new(
                et.clone(),
                tenant.clone(),
                serde_json::json!({ "n": i, "pad": pad }),
            );
            Ok(PendingEvent::new(TOPIC, &env)?.partition_key(format!("k{}", i % keys.max(1))))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Baseline: batched INSERTs of `evs` into the outbox table of `path`; rows/s.
fn baseline(path: &std::path::Path, evs: &[PendingEvent], batch: usize) -> anyhow::Result<f64> {
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

async fn drain_run(
    o: &OutboxBenchOptions,
    evs: Arc<Vec<PendingEvent>>,
) -> anyhow::Result<DrainRun> {
    let dir = tempfile::Builder::new()
        .prefix("yard-bench-outbox-")
        .tempdir()?;
    let path = dir.path().join("outbox.db");
    // Creates the schema, and the subscription the relay publishes into.
    let broker = SqliteBroker::open(SqliteConfig::new(&path))?;
    broker
        .ensure_subscription(&SubscriptionSpec::new(TOPIC, "bench"))
        .await?;
    broker.close().await?;

    let (p, e, batch) = (path.clone(), evs.clone(), o.batch);
    let insert_rate = tokio::task::spawn_blocking(move || baseline(&p, &e, batch)).await??;

    let broker = SqliteBroker::open(SqliteConfig::new(&path))?;
    let n = evs.len() as u64;
    let t0 = Instant::now();
    let relay = Relay::spawn(
        Arc::new(SqliteOutbox::new(broker.clone())),
        Arc::new(broker.clone()),
        RelayConfig {
            name: "bench".into(),
            batch_size: o.batch,
            cleaner: None,
            ..RelayConfig::default()
        },
    );
    let metrics = relay.metrics();
    while metrics
        .dispatched
        .load(std::sync::atomic::Ordering::Relaxed)
        < n
    {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("the relay did not drain {n} records in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let drain_rate = n as f64 / t0.elapsed().as_secs_f64();
    relay.shutdown().await;
    let stats = broker.stats().await?;
    let published: u64 = stats.iter().map(|s| s.available + s.pending).sum();
    anyhow::ensure!(
        published == n,
        "{published} messages published, {n} expected"
    );
    broker.close().await?;
    Ok(DrainRun {
        insert_rate,
        drain_rate,
        ratio: drain_rate / insert_rate,
    })
}

async fn latency_run(o: &OutboxBenchOptions) -> anyhow::Result<LatencyReport> {
    let dir = tempfile::Builder::new()
        .prefix("yard-bench-outbox-")
        .tempdir()?;
    let broker = SqliteBroker::open(SqliteConfig::new(dir.path().join("latency.db")))?;
    broker
        .ensure_subscription(&SubscriptionSpec::new(TOPIC, "bench"))
        .await?;
    let relay = Relay::spawn(
        Arc::new(SqliteOutbox::new(broker.clone())),
        Arc::new(broker.clone()),
        RelayConfig {
            name: "bench-latency".into(),
            cleaner: None,
            ..RelayConfig::default()
        },
    );
    let total = (f64::from(o.latency_rate) * o.latency_for.as_secs_f64()).round() as u64;
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
    let tenant = TenantId::parse("connectsoft")?;
    let et = EventType::event("OrderPlaced")?;
    let pad = "x".repeat(o.payload);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(o.latency_rate)));
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        tick.tick().await;
        let env = Envelope::new(
            et.clone(),
            tenant.clone(),
            serde_json::json!({ "n": n, "pad": pad }),
        );
        let ev =
            PendingEvent::new(TOPIC, &env)?.partition_key(format!("k{}", n % o.keys.max(1) as u64));
        let (broker, committed) = (broker.clone(), committed.clone());
        tasks.push(tokio::spawn(async move {
            broker
                .transaction(move |tx| outbox::add(tx, &ev))
                .await
                .map_err(anyhow::Error::from)?
                .map_err(anyhow::Error::from)?;
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
    broker.close().await?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(LatencyReport {
        rate: o.latency_rate,
        events: hist.len(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
    })
}

/// Measures with `o` on the embedded store.
pub async fn measure(o: &OutboxBenchOptions) -> anyhow::Result<OutboxReport> {
    let evs = Arc::new(events(o.events, o.payload, o.keys)?);
    let mut runs = Vec::with_capacity(o.runs);
    for _ in 0..o.runs.max(1) {
        runs.push(drain_run(o, evs.clone()).await.context("drain run")?);
    }
    let latency = latency_run(o).await.context("latency run")?;
    Ok(OutboxReport {
        store: "sqlite".into(),
        durability: "SQLite WAL, synchronous=FULL, both sides; broker publish = durable commit"
            .into(),
        events: o.events,
        keys: o.keys,
        batch: o.batch,
        insert_rate: median(runs.iter().map(|r| r.insert_rate).collect()),
        drain_rate: median(runs.iter().map(|r| r.drain_rate).collect()),
        ratio: median(runs.iter().map(|r| r.ratio).collect()),
        runs,
        latency,
    })
}

/// Prints the report as a table.
pub fn print(r: &OutboxReport) {
    println!("outbox relay drain (R4) on {} — {}", r.store, r.durability);
    println!(
        "  backlog {} events over {} keys, batch {}, {} runs",
        r.events,
        r.keys,
        r.batch,
        r.runs.len()
    );
    for (i, run) in r.runs.iter().enumerate() {
        println!(
            "  run {}: baseline INSERT {:>9.0} rows/s   relay drain {:>9.0} ev/s   ratio {:.2}",
            i + 1,
            run.insert_rate,
            run.drain_rate,
            run.ratio
        );
    }
    println!(
        "  median: baseline {:.0} rows/s, drain {:.0} ev/s, ratio {:.2} (target >= 0.5)",
        r.insert_rate, r.drain_rate, r.ratio
    );
    let l = &r.latency;
    println!(
        "commit -> consumer latency (R6) at {}/s, {} events: p50 {:.2} ms, p99 {:.2} ms, \
         p999 {:.2} ms, max {:.2} ms (target p50 <= 5, p99 <= 25)",
        l.rate, l.events, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
}

/// Runs `yard bench outbox --store STORE [--json]` with the default options.
pub async fn run(store: &str, json: bool) -> anyhow::Result<ExitCode> {
    match store {
        "sqlite" => {}
        "postgres" => bail!(
            "the PostgreSQL outbox store is not wired into this benchmark yet (use --store sqlite)"
        ),
        other => bail!("unknown store `{other}` (sqlite or postgres)"),
    }
    let r = measure(&OutboxBenchOptions::default()).await?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print(&r);
    }
    Ok(ExitCode::SUCCESS)
}

//! Relay drain benchmark (TARGETS R4): drain rate of the outbox versus a batched INSERT of the
//! same rows into the same table, in the same run.
//!
//! - **baseline**: `n` rows (256-byte body, 6 properties, 1,000 partition keys) inserted with
//!   `INSERT … SELECT unnest(…)`, 500 rows per statement, each statement its own transaction
//!   (durable: whatever `synchronous_commit` the server has, reported in the figures).
//! - **measured**: `relays` tasks loop `claim(batch)` → no-op publish → `mark_dispatched` until
//!   that backlog is drained.
//! - **cleanup**: afterwards, `cleanup(0 s, 5,000)` until nothing is left (reported apart).
//!
//! Runs in a schema of its own (`eventyard_bench_<pid>_<time>`), dropped at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventyard_core::outbox::{OutboxError, OutboxStore, PendingEvent};
use eventyard_core::{Properties, properties::names};
use serde::Serialize;
use tokio_postgres::types::Json;

use crate::config::PgOutboxConfig;
use crate::store::PgOutbox;
use crate::{error, pool};

/// Rows per INSERT statement of the baseline.
pub const BASELINE_BATCH: usize = 500;

/// Figures of one drain run.
#[derive(Debug, Clone, Serialize)]
pub struct DrainFigures {
    /// Rows inserted and drained.
    pub n: usize,
    /// Claim batch size.
    pub batch: usize,
    /// Concurrent relay loops.
    pub relays: usize,
    /// Body size, bytes.
    pub payload_bytes: usize,
    /// Seconds for the baseline inserts.
    pub baseline_secs: f64,
    /// Baseline rows per second.
    pub baseline_rate: f64,
    /// Seconds to drain the backlog.
    pub drain_secs: f64,
    /// Drained rows per second.
    pub rate: f64,
    /// `rate / baseline_rate` (R4 wants >= 0.5).
    pub ratio: f64,
    /// Of the drain, seconds spent in `claim` (summed over relays).
    pub claim_secs: f64,
    /// Of the drain, seconds spent in `mark_dispatched` (summed over relays).
    pub mark_secs: f64,
    /// Seconds for the cleanup of the dispatched rows.
    pub cleanup_secs: f64,
    /// Cleaned rows per second.
    pub cleanup_rate: f64,
    /// Durability settings: `fsync`, and `synchronous_commit` of the baseline and of the
    /// relay's bookkeeping.
    pub durability: String,
    /// CPU seconds of the baseline's server backend (`None` when the server is not on this
    /// machine or `/proc` is unreadable). With the machine shared, wall-clock rates move with
    /// the load; CPU per row much less. Background work (WAL writer, autovacuum) is not counted.
    pub backend_cpu_baseline_secs: Option<f64>,
    /// CPU seconds of the store's server backends (claims, marks) over the drain.
    pub backend_cpu_drain_secs: Option<f64>,
    /// CPU seconds of this process (the relay loop: decoding, encoding) during the drain.
    pub client_cpu_drain_secs: Option<f64>,
    /// 1-minute load average when the run ended.
    pub load_average: Option<f64>,
}

/// CPU seconds of the given processes.
fn pids_cpu_secs(pids: &[i32]) -> Option<f64> {
    let mut ticks = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ticks += stat_ticks(&stat, Some("postgres"))?;
    }
    Some(ticks as f64 / 100.0)
}

/// CPU seconds of this process.
fn self_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    stat_ticks(&stat, None).map(|t| t as f64 / 100.0)
}

/// utime + stime of a `/proc/<pid>/stat` line, if its command is `comm` (any when `None`).
fn stat_ticks(stat: &str, comm: Option<&str>) -> Option<u64> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    if comm.is_some_and(|c| &stat[open + 1..close] != c) {
        return None;
    }
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the command: state(0) ... utime(11) stime(12).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// Options of [`bench_drain_with`].
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Rows to insert and drain.
    pub n: usize,
    /// Claim batch size.
    pub batch: usize,
    /// Concurrent relay loops.
    pub relays: usize,
    /// Body size, bytes (256 in TARGETS).
    pub payload_bytes: usize,
    /// The store's [`PgOutboxConfig::synchronous_commit`] (the baseline inserts are always
    /// durable: `synchronous_commit=on`).
    pub synchronous_commit: bool,
}

/// [`bench_drain_with`] with one relay, 256-byte bodies and the store's default
/// (asynchronous) commit of its bookkeeping.
pub async fn bench_drain(url: &str, n: usize, batch: usize) -> Result<DrainFigures, OutboxError> {
    bench_drain_with(
        url,
        DrainOptions {
            n,
            batch,
            relays: 1,
            payload_bytes: 256,
            synchronous_commit: false,
        },
    )
    .await
}

/// A fresh schema name for one benchmark run (`eventyard_bench_<pid>_<time>`).
pub fn bench_schema() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "eventyard_bench_{}_{}",
        std::process::id(),
        t.as_micros() % 1_000_000_000_000
    )
}

fn properties(i: usize) -> Properties {
    [
        (names::EVENT_TYPE, "orders.order-placed.v1".to_owned()),
        (names::TENANT_ID, "tenant-a".to_owned()),
        (names::TRACE_ID, format!("{:032x}", i)),
        (names::CORRELATION_ID, format!("agg-{}", i % 1000)),
        (names::EVENT_ID, format!("evt-{i}")),
        (names::MESSAGE_KIND, "event".to_owned()),
    ]
    .into_iter()
    .collect()
}

/// Version, `fsync` and `wal_sync_method` of the server at `url`, for the durability notes of
/// benchmark reports.
pub async fn server_settings(url: &str) -> Result<String, OutboxError> {
    let conn = pool::connect(&crate::config::pg_config(url, &PgOutboxConfig::default())?).await?;
    let row = conn
        .query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
             current_setting('wal_sync_method')",
            &[],
        )
        .await
        .map_err(|e| error::map("bench", e))?;
    Ok(format!(
        "{} (fsync={}, wal_sync_method={})",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        row.get::<_, String>(2)
    ))
}

/// The R4 baseline: inserts `events` into the outbox of `store` with the statement
/// [`add_batch`](crate::outbox::add_batch) runs (`INSERT … SELECT unnest(…)`), `batch` rows per
/// statement, each statement its own durable transaction (`synchronous_commit=on`), on a
/// connection of its own. Parameters are built before the clock starts. Returns the time the
/// inserts took; the rows stay (they are the backlog the relay then drains).
pub async fn insert_backlog(
    store: &PgOutbox,
    events: &[PendingEvent],
    batch: usize,
) -> Result<Duration, OutboxError> {
    let (secs, _) = Baseline::open(store).await?.insert(events, batch).await?;
    Ok(secs)
}

/// The baseline's own durable connection and prepared batch INSERT.
struct Baseline {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    pid: i32,
}

impl Baseline {
    async fn open(store: &PgOutbox) -> Result<Self, OutboxError> {
        let client = pool::connect(store.pg_config()).await?;
        let e = |e| error::map("bench", e);
        // The baseline is durable whatever the store's setting.
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(e)?;
        let insert = client
            .prepare(&crate::sql::Sql::new(store.schema()).insert_many)
            .await
            .map_err(e)?;
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(e)?
            .get(0);
        Ok(Baseline {
            client,
            insert,
            pid,
        })
    }

    /// Inserts `events`, `batch` per statement; returns the time taken and the server backend's
    /// CPU seconds over it (when readable).
    async fn insert(
        &self,
        events: &[PendingEvent],
        batch: usize,
    ) -> Result<(Duration, Option<f64>), OutboxError> {
        type Row<'a> = (
            Vec<&'a str>,
            Vec<&'a str>,
            Vec<&'a [u8]>,
            Vec<Json<&'a Properties>>,
            Vec<Option<chrono::DateTime<chrono::Utc>>>,
        );
        // Build all parameters first so that only the database work is timed.
        let chunks: Vec<Row<'_>> = events
            .chunks(batch.max(1))
            .map(|c| {
                (
                    c.iter().map(|e| e.topic.as_str()).collect(),
                    c.iter().map(|e| e.partition_key.as_str()).collect(),
                    c.iter().map(|e| &e.message.body[..]).collect(),
                    c.iter().map(|e| Json(&e.message.properties)).collect(),
                    c.iter().map(|e| e.deliver_at).collect(),
                )
            })
            .collect();
        let cpu0 = pids_cpu_secs(&[self.pid]);
        let started = Instant::now();
        for (topics, keys, bodies, props, deliver) in &chunks {
            self.client
                .execute(&self.insert, &[topics, keys, bodies, props, deliver])
                .await
                .map_err(|e| error::map("bench", e))?;
        }
        let took = started.elapsed();
        Ok((took, delta(cpu0, pids_cpu_secs(&[self.pid]))))
    }
}

/// Inserts the backlog, drains it, cleans it up; see the module doc.
pub async fn bench_drain_with(url: &str, o: DrainOptions) -> Result<DrainFigures, OutboxError> {
    let schema = bench_schema();
    let config = PgOutboxConfig {
        listen: false,
        pool_size: o.relays.max(1) + 1,
        synchronous_commit: o.synchronous_commit,
        application_name: schema.clone(),
        ..PgOutboxConfig::with_schema(schema)
    };
    let store = PgOutbox::connect(url, config).await?;
    let result = run(&store, &o).await;
    let dropped = store.drop_schema().await;
    let figures = result?;
    dropped?;
    Ok(figures)
}

async fn run(store: &PgOutbox, o: &DrainOptions) -> Result<DrainFigures, OutboxError> {
    let baseline = Baseline::open(store).await?;
    let client = &baseline.client;
    let e = |e| error::map("bench", e);
    let durability = {
        let fsync: String = client.query_one("SHOW fsync", &[]).await.map_err(e)?.get(0);
        format!(
            "fsync={fsync}; baseline synchronous_commit=on; relay bookkeeping synchronous_commit={}",
            if o.synchronous_commit { "on" } else { "off" }
        )
    };
    let body = bytes::Bytes::from(vec![b'x'; o.payload_bytes]);
    let events: Vec<PendingEvent> = (0..o.n)
        .map(|i| PendingEvent {
            topic: "bench.orders".into(),
            partition_key: format!("agg-{}", i % 1000),
            message: eventyard_core::Message {
                body: body.clone(),
                properties: properties(i),
            },
            deliver_at: None,
        })
        .collect();
    let own_pid = baseline.pid;
    let (took, baseline_cpu) = baseline.insert(&events, BASELINE_BATCH).await?;
    let baseline_secs = took.as_secs_f64();
    let client0 = self_cpu_secs();

    let drained = Arc::new(AtomicU64::new(0));
    let claim_ns = Arc::new(AtomicU64::new(0));
    let mark_ns = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..o.relays.max(1) {
        let store = store.clone();
        let (drained, claim_ns, mark_ns) = (drained.clone(), claim_ns.clone(), mark_ns.clone());
        let (n, batch) = (o.n as u64, o.batch);
        tasks.push(tokio::spawn(async move {
            let relay = format!("bench-relay-{r}");
            while drained.load(Ordering::Relaxed) < n {
                let t = Instant::now();
                let records = store.claim(&relay, batch, Duration::from_secs(60)).await?;
                claim_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                if records.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
                let t = Instant::now();
                store.mark_dispatched(&relay, &ids).await?;
                mark_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                drained.fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, OutboxError>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| OutboxError::Store(format!("bench relay task: {e}")))??;
    }
    let drain_secs = started.elapsed().as_secs_f64();
    let client1 = self_cpu_secs();
    // The store's backends carry the bench schema as application name; they were opened for
    // the drain (one before it, to prepare statements), so their whole CPU time is the drain's.
    let store_pids: Vec<i32> = client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> $2",
            &[&store.schema(), &own_pid],
        )
        .await
        .map_err(e)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let store_cpu = pids_cpu_secs(&store_pids);

    let started = Instant::now();
    let mut cleaned = 0u64;
    loop {
        let n = store.cleanup(Duration::ZERO, 5_000).await?;
        if n == 0 {
            break;
        }
        cleaned += n;
    }
    let cleanup_secs = started.elapsed().as_secs_f64();

    let baseline_rate = o.n as f64 / baseline_secs;
    let rate = o.n as f64 / drain_secs;
    Ok(DrainFigures {
        n: o.n,
        batch: o.batch,
        relays: o.relays.max(1),
        payload_bytes: o.payload_bytes,
        baseline_secs,
        baseline_rate,
        drain_secs,
        rate,
        ratio: rate / baseline_rate,
        claim_secs: claim_ns.load(Ordering::Relaxed) as f64 / 1e9,
        mark_secs: mark_ns.load(Ordering::Relaxed) as f64 / 1e9,
        cleanup_secs,
        cleanup_rate: cleaned as f64 / cleanup_secs.max(1e-9),
        durability,
        backend_cpu_baseline_secs: baseline_cpu,
        backend_cpu_drain_secs: store_cpu,
        client_cpu_drain_secs: delta(client0, client1),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok()),
    })
}

/// Producer connections of [`bench_wake`].
const WAKE_PRODUCERS: usize = 4;

/// Figures of [`bench_wake`].
#[derive(Debug, Clone, Serialize)]
pub struct WakeFigures {
    /// Events committed (one per transaction).
    pub n: usize,
    /// Commit rate, per second.
    pub rate: f64,
    /// Median latency from the start of the commit to the claim that returns the record, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
    /// Median latency from the return of the commit to the claim, ms: the wake-up path alone,
    /// without the time the producers lagged behind their schedule.
    pub wake_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub wake_p99_ms: f64,
    /// How late the producers started their last transaction, ms (high when the database
    /// cannot commit `rate` durable transactions per second).
    pub producer_lag_ms: f64,
}

/// Commit → claim latency through LISTEN/NOTIFY (the store's part of TARGETS R6): `n`
/// durable single-event transactions at `rate` per second from 4 connections, open loop (each
/// is due at its own time whether or not the previous ones were committed or claimed); one
/// relay loop waits (timeout 1 s), claims and marks. Latency runs from the moment a transaction is due to the return of the claim
/// that hands its record out.
pub async fn bench_wake(url: &str, rate: f64, n: usize) -> Result<WakeFigures, OutboxError> {
    let schema = bench_schema();
    let store = PgOutbox::connect(url, PgOutboxConfig::with_schema(schema)).await?;
    let result = wake_run(url, &store, rate, n).await;
    let dropped = store.drop_schema().await;
    let figures = result?;
    dropped?;
    Ok(figures)
}

async fn wake_run(
    url: &str,
    store: &PgOutbox,
    rate: f64,
    n: usize,
) -> Result<WakeFigures, OutboxError> {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let due = move |i: usize| start + interval * i as u32;
    // Nanoseconds after `start` at which each commit returned (0: not yet).
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let relay = {
        let store = store.clone();
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            let mut wakes = Vec::with_capacity(n);
            while latencies.len() < n {
                store.wait(Duration::from_secs(1)).await;
                loop {
                    let got = store.claim("wake", 500, Duration::from_secs(30)).await?;
                    if got.is_empty() {
                        break;
                    }
                    let now = Instant::now();
                    for r in &got {
                        let i: usize = std::str::from_utf8(&r.message.body)
                            .ok()
                            .and_then(|b| b.parse().ok())
                            .unwrap_or_default();
                        latencies.push(now.saturating_duration_since(due(i)).as_secs_f64() * 1e3);
                        // The record can be claimed before its producer saw the commit return.
                        let done = committed[i].load(Ordering::Relaxed);
                        let since = now.duration_since(start).as_nanos() as u64;
                        wakes.push(if done == 0 {
                            0.0
                        } else {
                            since.saturating_sub(done) as f64 / 1e6
                        });
                    }
                    let ids: Vec<i64> = got.iter().map(|r| r.id).collect();
                    store.mark_dispatched("wake", &ids).await?;
                }
            }
            Ok::<_, OutboxError>((latencies, wakes))
        })
    };
    // Durable single-event transactions from WAKE_PRODUCERS connections (one connection
    // cannot commit 1,000 durable transactions per second on a loaded 2-core machine).
    let mut pg = crate::config::pg_config(url, &PgOutboxConfig::default())?;
    pg.options("-c synchronous_commit=on");
    let mut producers = Vec::new();
    let lag = Arc::new(AtomicU64::new(0));
    for p in 0..WAKE_PRODUCERS {
        let mut app = pool::connect(&pg).await?;
        let writer = store.writer().clone();
        let (committed, lag) = (committed.clone(), lag.clone());
        producers.push(tokio::spawn(async move {
            for i in (p..n).step_by(WAKE_PRODUCERS) {
                tokio::time::sleep_until(due(i).into()).await;
                let late = Instant::now().saturating_duration_since(due(i)).as_nanos() as u64;
                lag.fetch_max(late, Ordering::Relaxed);
                let e = |e| error::map("bench", e);
                let tx = app.transaction().await.map_err(e)?;
                let event = eventyard_core::outbox::PendingEvent {
                    topic: "bench.wake".into(),
                    partition_key: format!("k{}", i % 16),
                    message: eventyard_core::Message {
                        body: bytes::Bytes::from(i.to_string()),
                        properties: properties(i),
                    },
                    deliver_at: None,
                };
                writer.add(&tx, &event).await?;
                tx.commit().await.map_err(e)?;
                let at = start.elapsed().as_nanos() as u64;
                committed[i].store(at.max(1), Ordering::Relaxed);
            }
            Ok::<_, OutboxError>(())
        }));
    }
    for p in producers {
        p.await
            .map_err(|e| OutboxError::Store(format!("bench producer task: {e}")))??;
    }
    let (mut latencies, mut wakes) = relay
        .await
        .map_err(|e| OutboxError::Store(format!("bench relay task: {e}")))??;
    latencies.sort_by(f64::total_cmp);
    wakes.sort_by(f64::total_cmp);
    let at = |v: &[f64], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    Ok(WakeFigures {
        n,
        rate,
        p50_ms: at(&latencies, 0.5),
        p99_ms: at(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or_default(),
        wake_p50_ms: at(&wakes, 0.5),
        wake_p99_ms: at(&wakes, 0.99),
        producer_lag_ms: lag.load(Ordering::Relaxed) as f64 / 1e6,
    })
}

//! The broker run: the embedded SQLite broker through the public API, at saturation.
//!
//! One subscription, consumed by the runtime's consumer (`Bus::subscription(..).topic(..)
//! .handle_envelopes(..)`: parse and validate the envelope, run a no-op handler, ack after it)
//! while `publishers` tasks publish real envelopes with `Bus::publish_batch`, `batch` per call,
//! concurrently. The clock runs from the first publish until the consumer has acknowledged
//! every message (its `acked` counter, incremented after each ack commits).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventyard::sqlite::{SqliteBroker, SqliteConfig};
use eventyard::{Bus, Envelope, EnvelopeHandler, HandlerError, MessageContext};
use serde::Serialize;

use super::SyncMode;
use super::workload::{self, EVENT_TYPE, SUBSCRIPTION};

/// Shape of one broker run.
#[derive(Debug, Clone)]
pub struct BrokerParams {
    /// Messages to publish and consume.
    pub messages: u64,
    /// Messages per publish call.
    pub batch: u64,
    /// Concurrent publisher tasks.
    pub publishers: u64,
    /// Consumer concurrency.
    pub concurrency: u64,
    /// `PRAGMA synchronous`.
    pub synchronous: SyncMode,
    /// Publishers pause while more than this many messages are published but not yet
    /// acknowledged; 0: unbounded (pure saturation, the backlog grows as fast as it likes).
    pub max_backlog: u64,
}

/// One broker run.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerRun {
    /// Messages published and acknowledged.
    pub messages: u64,
    /// First publish → last ack, seconds.
    pub elapsed_s: f64,
    /// messages / elapsed: the publish → consume → ack rate.
    pub rate: f64,
    /// First publish → last publish acknowledged (durable), seconds.
    pub publish_elapsed_s: f64,
    /// messages / publish_elapsed: the rate publishers saw while the consumer ran.
    pub publish_rate: f64,
    /// Settlements that failed, retries and dead-letters (all should be 0).
    pub anomalies: u64,
    /// Largest backlog seen: publishes acknowledged to publishers minus messages acknowledged by
    /// the consumer (sampled every millisecond).
    pub max_backlog_seen: u64,
    /// CPU time per message by thread group (`sqlite_writer`: the broker's writer thread;
    /// `tokio_workers`: publishers, consumer and handlers; `main`), µs; empty without `/proc`.
    pub cpu_us_per_msg: BTreeMap<String, f64>,
    /// Time per message the same threads were runnable but waiting for a CPU, µs: how much
    /// the 2 cores were contended (by each other or by other processes).
    pub runq_wait_us_per_msg: BTreeMap<String, f64>,
    /// Transactions the broker's writer committed during the run (group commit: fewer is better).
    pub writer_transactions: u64,
    /// Commands (publish batches, claims, settlements) per committed transaction.
    pub commands_per_transaction: f64,
    /// Flushes of the write-ahead log by the broker's syncer thread during the run (each covers
    /// every transaction committed before it; 0 unless `synchronous=FULL`).
    pub wal_syncs: u64,
}

/// How long the run may go without any ack progress before it is declared stuck.
const STALL: Duration = Duration::from_secs(30);

/// Opens a broker on a fresh data file at `path` with the run's `synchronous`.
pub fn open(path: &Path, sync: SyncMode) -> anyhow::Result<SqliteBroker> {
    let mut cfg = SqliteConfig::new(path);
    cfg.synchronous = sync.to_broker();
    Ok(SqliteBroker::open(cfg)?)
}

/// Runs once on a fresh data file at `path` with a no-op handler.
pub async fn run(path: &Path, p: &BrokerParams, template: &Envelope) -> anyhow::Result<BrokerRun> {
    let broker = open(path, p.synchronous)?;
    run_on(
        broker,
        p,
        template,
        |_env: Envelope, _ctx: MessageContext| async { Ok::<(), HandlerError>(()) },
    )
    .await
}

/// Runs once on `broker` (opened with [`open`]) with `handler` as the consumer's handler; the
/// broker is closed at the end.
pub async fn run_on<H: EnvelopeHandler>(
    broker: SqliteBroker,
    p: &BrokerParams,
    template: &Envelope,
    handler: H,
) -> anyhow::Result<BrokerRun> {
    let broker = Arc::new(broker);
    let bus = Bus::new(broker.clone());
    let consumer = bus
        .subscription(SUBSCRIPTION)
        .topic(EVENT_TYPE)
        .concurrency(usize::try_from(p.concurrency)?)
        .handle_envelopes(handler)
        .await?;
    let before = sched_by_thread();
    let writer_before = broker.writer_stats();
    let mut result = drive(&bus, &consumer, p, template).await;
    let writer_after = broker.writer_stats();
    let after = sched_by_thread();
    if let Ok(r) = &mut result {
        r.writer_transactions = writer_after.transactions - writer_before.transactions;
        r.commands_per_transaction = (writer_after.commands - writer_before.commands) as f64
            / r.writer_transactions.max(1) as f64;
        r.wal_syncs = writer_after.wal_syncs - writer_before.wal_syncs;
        let per_msg = |pick: fn(&(u64, u64)) -> u64| -> BTreeMap<String, f64> {
            after
                .iter()
                .map(|(name, v)| {
                    let d = pick(v).saturating_sub(before.get(name).map_or(0, pick));
                    (name.clone(), d as f64 / 1_000.0 / p.messages as f64)
                })
                .filter(|(_, us)| *us >= 0.01)
                .collect()
        };
        r.cpu_us_per_msg = per_msg(|v| v.0);
        r.runq_wait_us_per_msg = per_msg(|v| v.1);
    }
    let shut = bus.shutdown().await;
    let run = result?;
    shut?;
    Ok(run)
}

async fn drive(
    bus: &Bus,
    consumer: &eventyard::Consumer,
    p: &BrokerParams,
    template: &Envelope,
) -> anyhow::Result<BrokerRun> {
    let start = Instant::now();
    // `reserved`: messages publishers have started publishing; `published`: acknowledged.
    let reserved = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let mut publishers = tokio::task::JoinSet::new();
    for i in 0..p.publishers {
        // Spread the messages evenly; the first ones take the remainder.
        let share = p.messages / p.publishers + u64::from(i < p.messages % p.publishers);
        let (bus, template, batch) = (bus.clone(), template.clone(), p.batch);
        let (reserved, published, consumer, max_backlog) = (
            reserved.clone(),
            published.clone(),
            consumer.clone(),
            p.max_backlog,
        );
        publishers.spawn(async move {
            let mut left = share;
            while left > 0 {
                let k = batch.min(left);
                if max_backlog > 0 {
                    // Start a batch only while the messages in flight (including it) stay
                    // within the bound (a batch larger than the bound goes alone).
                    loop {
                        let cur = reserved.load(Ordering::Acquire);
                        let in_flight = cur.saturating_sub(consumer.counts().acked);
                        if (in_flight == 0 || in_flight + k <= max_backlog)
                            && reserved
                                .compare_exchange(cur, cur + k, Ordering::AcqRel, Ordering::Acquire)
                                .is_ok()
                        {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let envs: Vec<Envelope> = (0..k).map(|_| workload::next(&template)).collect();
                bus.publish_batch(envs).await?;
                published.fetch_add(k, Ordering::AcqRel);
                left -= k;
            }
            anyhow::Ok(())
        });
    }
    let mut max_backlog_seen = 0u64;
    let mut publish_elapsed = None;
    let (mut last_acked, mut last_progress) = (0u64, Instant::now());
    loop {
        let c = consumer.counts();
        let anomalies = c.settle_errors + c.retried + c.dead_lettered;
        max_backlog_seen =
            max_backlog_seen.max(published.load(Ordering::Acquire).saturating_sub(c.acked));
        if c.acked >= p.messages {
            let elapsed = start.elapsed().as_secs_f64();
            while let Some(r) = publishers.join_next().await {
                r??;
            }
            let publish_elapsed = publish_elapsed.unwrap_or(elapsed);
            return Ok(BrokerRun {
                messages: p.messages,
                elapsed_s: elapsed,
                rate: p.messages as f64 / elapsed,
                publish_elapsed_s: publish_elapsed,
                publish_rate: p.messages as f64 / publish_elapsed,
                anomalies,
                max_backlog_seen,
                cpu_us_per_msg: BTreeMap::new(),
                runq_wait_us_per_msg: BTreeMap::new(),
                writer_transactions: 0,
                commands_per_transaction: 0.0,
                wal_syncs: 0,
            });
        }
        if c.acked != last_acked {
            (last_acked, last_progress) = (c.acked, Instant::now());
        } else if last_progress.elapsed() > STALL {
            anyhow::bail!(
                "broker run stuck: {} of {} messages acknowledged, no progress for {STALL:?} \
                 ({anomalies} settle errors/retries/dead-letters)",
                c.acked,
                p.messages
            );
        }
        // Reap finished publishers (surfacing their errors) without blocking.
        while let Some(r) = publishers.try_join_next() {
            r??;
            if publishers.is_empty() {
                publish_elapsed = Some(start.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Scheduler figures of this process's threads, summed by thread label (Linux
/// `/proc/self/task/*/schedstat`: ns on CPU, ns runnable but waiting for a CPU); empty elsewhere.
fn sched_by_thread() -> BTreeMap<String, (u64, u64)> {
    let mut m = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return m;
    };
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if let Some((run, wait)) = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s))
        {
            let e = m.entry(thread_label(comm.trim())).or_insert((0, 0));
            e.0 += run;
            e.1 += wait;
        }
    }
    m
}

/// `(ns on CPU, ns waiting on a run queue)` from a `schedstat` line.
pub fn parse_schedstat(s: &str) -> Option<(u64, u64)> {
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// Timeslices (times put on a CPU) from a `schedstat` line, its third field.
pub fn schedstat_timeslices(s: &str) -> Option<u64> {
    s.split_whitespace().nth(2)?.parse().ok()
}

/// Scheduler figures of the calling thread (Linux; `None` elsewhere).
pub fn sched_of_this_thread() -> Option<(u64, u64)> {
    parse_schedstat(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
}

/// Readable names for the threads that matter.
fn thread_label(comm: &str) -> String {
    match comm {
        "eventyard-sqlit" | "eventyard-sqlite" => "sqlite_writer".into(),
        // Thread names as the kernel keeps them: at most 15 bytes ("eventyard-walsync").
        "eventyard-walsy" => "wal_syncer".into(),
        c if c.starts_with("tokio-r") => "tokio_workers".into(),
        "yard" => "main".into(),
        other => other.into(),
    }
}

//! The latency run: open loop at a fixed rate, so queueing is not hidden.
//!
//! A dedicated thread keeps the schedule: message `i` is due at `origin + i / rate`; the thread
//! sleeps until then and hands the publish to the runtime as its own task, so a slow publish
//! (an fsync) never delays the next send. The *intended* send time travels in a header, and the
//! handler records `now − intended` into an HDR histogram: a stalled publisher or a late thread
//! shows up as latency instead of silently thinning the load (no coordinated omission).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventyard::sqlite::{SqliteBroker, SqliteConfig};
use eventyard::{Bus, Envelope, ErrorKind, HandlerError, MessageContext};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::SyncMode;
use super::workload::{self, EVENT_TYPE, INTENDED_HEADER, SUBSCRIPTION};

/// Shape of the latency run.
#[derive(Debug, Clone)]
pub struct LatencyParams {
    /// Messages per second.
    pub rate: f64,
    /// How long to publish.
    pub duration: Duration,
    /// Consumer concurrency.
    pub concurrency: u64,
    /// `PRAGMA synchronous`.
    pub synchronous: SyncMode,
}

/// Result of the latency run (intended send → handler start), in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// Messages scheduled.
    pub sent: u64,
    /// Messages handled (recorded).
    pub received: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// How late the schedule thread was, at worst (its own lag, included in the latencies).
    pub max_schedule_lag_ms: f64,
    /// Intended send → publish confirmed by the broker, median, where measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_p50_ms: Option<f64>,
    /// The same, 99th percentile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_p99_ms: Option<f64>,
}

struct Recorder {
    origin: Instant,
    hist: Mutex<Histogram<u64>>,
    received: AtomicU64,
}

impl Recorder {
    fn record(&self, env: &Envelope) -> Result<(), HandlerError> {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let Some(intended) = env
            .headers
            .get(INTENDED_HEADER)
            .and_then(|v| v.parse::<u64>().ok())
        else {
            // Warm-up messages carry no schedule.
            return Ok(());
        };
        let micros = now.saturating_sub(intended) / 1_000;
        let mut h = self.hist.lock().map_err(|_| {
            HandlerError::new(ErrorKind::Permanent, "latency histogram lock poisoned")
        })?;
        h.saturating_record(micros.max(1));
        drop(h);
        self.received.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

/// Work a handler does before its receipt is recorded (e.g. an inbox transaction).
pub type Work = Arc<
    dyn Fn(Envelope) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>
        + Send
        + Sync,
>;

/// Runs once on a fresh data file at `path`, with a no-op handler.
pub async fn run(
    path: &Path,
    p: &LatencyParams,
    template: &Envelope,
) -> anyhow::Result<LatencyRun> {
    run_with(path, p, template, |_| async { Ok(None) }).await
}

/// Runs once on a fresh data file at `path`; `setup` prepares the broker and returns the work
/// each handler does before recording (intended send → work done).
pub async fn run_with<S, F>(
    path: &Path,
    p: &LatencyParams,
    template: &Envelope,
    setup: S,
) -> anyhow::Result<LatencyRun>
where
    S: FnOnce(SqliteBroker) -> F,
    F: Future<Output = anyhow::Result<Option<Work>>>,
{
    anyhow::ensure!(
        p.rate.is_finite() && p.rate > 0.0,
        "--rate must be positive"
    );
    let mut cfg = SqliteConfig::new(path);
    cfg.synchronous = p.synchronous.to_broker();
    let broker = SqliteBroker::open(cfg)?;
    let work = setup(broker.clone()).await?;
    let bus = Bus::new(Arc::new(broker));
    let rec = Arc::new(Recorder {
        origin: Instant::now(),
        // 1 µs .. 10 min, 3 significant digits.
        hist: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        received: AtomicU64::new(0),
    });
    let handler_rec = rec.clone();
    let consumer = bus
        .subscription(SUBSCRIPTION)
        .topic(EVENT_TYPE)
        .concurrency(usize::try_from(p.concurrency)?)
        .handle_envelopes(move |env: Envelope, _ctx: MessageContext| {
            let (rec, work) = (handler_rec.clone(), work.clone());
            async move {
                if let Some(work) = work {
                    work(env.clone()).await?;
                }
                rec.record(&env)
            }
        })
        .await?;
    let result = drive(&bus, &consumer, p, template, &rec).await;
    let shut = bus.shutdown().await;
    let run = result?;
    shut?;
    Ok(run)
}

async fn drive(
    bus: &Bus,
    consumer: &eventyard::Consumer,
    p: &LatencyParams,
    template: &Envelope,
    rec: &Arc<Recorder>,
) -> anyhow::Result<LatencyRun> {
    // Warm-up: a few messages through the whole path before the schedule starts.
    const WARMUP: u64 = 20;
    for _ in 0..WARMUP {
        bus.publish_envelope(workload::next(template)).await?;
    }
    let warm_deadline = Instant::now() + Duration::from_secs(10);
    while consumer.counts().acked < WARMUP {
        anyhow::ensure!(
            Instant::now() < warm_deadline,
            "latency warm-up: messages not consumed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let total = (p.rate * p.duration.as_secs_f64()).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / p.rate);
    let errors = Arc::new(AtomicU64::new(0));
    let handle = tokio::runtime::Handle::current();
    let (bus2, template2, rec2, errors2) =
        (bus.clone(), template.clone(), rec.clone(), errors.clone());
    let schedule = std::thread::Builder::new()
        .name("yard-bench-schedule".into())
        .spawn(move || {
            // Start on a whole millisecond boundary a little ahead, so the first sends are not late.
            let first = rec2.origin.elapsed() + Duration::from_millis(5);
            let mut max_lag = Duration::ZERO;
            for i in 0..total {
                let due = first + period.mul_f64(i as f64);
                let now = rec2.origin.elapsed();
                if due > now {
                    std::thread::sleep(due - now);
                } else {
                    max_lag = max_lag.max(now - due);
                }
                let mut env = workload::next(&template2);
                env.headers
                    .insert(INTENDED_HEADER.into(), due.as_nanos().to_string());
                let (bus, errors) = (bus2.clone(), errors2.clone());
                handle.spawn(async move {
                    if bus.publish_envelope(env).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            max_lag
        })?;
    // Wait for the schedule to finish, then for every message to be handled.
    let max_lag = tokio::task::spawn_blocking(move || schedule.join())
        .await?
        .map_err(|_| anyhow::anyhow!("latency schedule thread panicked"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = rec.received.load(Ordering::Acquire);
        let failed = errors.load(Ordering::Relaxed);
        if got + failed >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let h = rec
        .hist
        .lock()
        .map_err(|_| anyhow::anyhow!("latency histogram lock poisoned"))?
        .clone();
    let ms = |us: u64| us as f64 / 1_000.0;
    let received = rec.received.load(Ordering::Acquire);
    anyhow::ensure!(
        received > 0,
        "latency run: none of {total} messages was handled"
    );
    Ok(LatencyRun {
        sent: total,
        received,
        publish_errors: errors.load(Ordering::Relaxed),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1_000.0,
        max_schedule_lag_ms: max_lag.as_secs_f64() * 1_000.0,
        confirm_p50_ms: None,
        confirm_p99_ms: None,
    })
}

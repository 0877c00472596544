//! `yard bench inbox` (R3): the consume rate with the idempotent inbox on the embedded store, as
//! a ratio of the same consumer without it, measured in the same process with the same settings.
//!
//! Both sides consume the same published messages through the runtime consumer
//! ([`broker::run_on`]); per message the handler makes the same state change — an upsert of one
//! row of an application table (`bench_state`) — inside the store's transaction (one group
//! commit for many handlers):
//! - **baseline** (`baseline_rate`): `SqliteBroker::transaction(|tx| upsert)`;
//! - **inbox** (`rate`): `Inbox::run(envelope, handler, aggregate, |tx| upsert)`: the same upsert,
//!   plus the idempotency key lookup and insert in the same transaction.
//!
//! Each of `--runs` rounds runs the baseline then the inbox, each on a fresh data file; the
//! report gives medians. After each run the data file is checked: every message changed the state
//! once, and (inbox side) left exactly one key.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use eventyard::sqlite::rusqlite::{self, params};
use eventyard::sqlite::{Inbox, SqliteBroker};
use eventyard::{Envelope, ErrorKind, HandlerError, MessageContext};
use serde::Serialize;

use super::LoadArgs;
use super::broker::{self, BrokerParams, BrokerRun};
use super::embedded::{by_thread, loadavg, ratio, thousands};
use super::latency::{self, LatencyParams, LatencyRun};
use super::workload::{self, median};

/// R3 bar on SQLite: inbox rate / rate without the inbox.
pub const TARGET_RATIO: f64 = 0.5;

/// Handler name in the idempotency key.
const HANDLER: &str = "bench.inbox";

/// The application table both sides change.
const STATE_DDL: &str = "CREATE TABLE IF NOT EXISTS bench_state (
    aggregate  TEXT PRIMARY KEY,
    handled    INTEGER NOT NULL,
    last_event TEXT NOT NULL
) WITHOUT ROWID";

/// The handler's state change (one row per aggregate, upserted).
const UPSERT: &str = "INSERT INTO bench_state (aggregate, handled, last_event) VALUES (?1, 1, ?2)
     ON CONFLICT (aggregate) DO UPDATE SET handled = handled + 1, last_event = excluded.last_event";

/// Arguments of `yard bench inbox`.
#[derive(Debug, Clone, clap::Args)]
pub struct InboxArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Messages per run (each side).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Rounds (each: the baseline, then the inbox); the report gives medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Distinct aggregates (rows of the state table) the messages are spread over.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub aggregates: u64,
    /// The load, as `yard bench embedded` takes it.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Everything the benchmark held fixed.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Durability, load shape, machine.
    #[serde(flatten)]
    pub load: super::LoadSettings,
    /// Rows of the state table.
    pub aggregates: u64,
    /// What the baseline handler does.
    pub baseline_handler: &'static str,
    /// What the inbox handler does.
    pub inbox_handler: &'static str,
}

/// The report (same field names as `yard bench embedded` where they mean the same thing).
#[derive(Debug, Clone, Serialize)]
pub struct InboxReport {
    /// `inbox` (R3).
    pub benchmark: &'static str,
    /// Median consume rate without the inbox, msg/s.
    pub baseline_rate: f64,
    /// Median consume rate with the inbox, msg/s.
    pub rate: f64,
    /// `rate / baseline_rate`: the R3 figure.
    pub ratio: f64,
    /// Messages per run.
    pub messages: u64,
    /// Envelope payload size, bytes.
    pub payload_bytes: usize,
    /// Runs of each side.
    pub runs: u32,
    /// The ratio bar (0.5 on SQLite).
    pub target_ratio: f64,
    /// `ratio >= target_ratio`.
    pub meets_target: bool,
    /// Latency through the inbox (intended send → inbox transaction committed), median, ms.
    pub p50_ms: f64,
    /// 99th percentile of that latency, ms.
    pub p99_ms: f64,
    /// 99.9th percentile of that latency, ms.
    pub p999_ms: f64,
    /// The whole latency run (open loop at `settings.latency_rate`).
    pub latency: LatencyRun,
    /// Inbox runs: CPU µs per message by thread group (median of runs).
    pub cpu_us_per_msg: BTreeMap<String, f64>,
    /// Baseline runs: CPU µs per message by thread group (median of runs).
    pub baseline_cpu_us_per_msg: BTreeMap<String, f64>,
    /// What was held fixed.
    pub settings: Settings,
    /// Every baseline run.
    pub baseline_runs: Vec<BrokerRun>,
    /// Every inbox run.
    pub inbox_runs: Vec<BrokerRun>,
}

/// Which side a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Baseline,
    Inbox,
}

fn aggregate_of(env: &Envelope, aggregates: u64) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env.event_id.to_string().hash(&mut h);
    format!("agg-{}", h.finish() % aggregates)
}

fn handler_error(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(ErrorKind::Transient, e.to_string())
}

/// One run of `side` on a fresh file under `dir`.
async fn run_side(
    a: &InboxArgs,
    side: Side,
    bp: &BrokerParams,
    template: &Envelope,
) -> anyhow::Result<BrokerRun> {
    let tmp = workload::tempdir(a.load.dir.as_deref())?;
    let path = tmp.path().join("inbox.db");
    let store = broker::open(&path, a.load.synchronous)?;
    store
        .transaction(|tx| tx.execute_batch(STATE_DDL))
        .await??;
    let aggregates = a.aggregates;
    let run = match side {
        Side::Baseline => {
            let b = store.clone();
            let handler = move |env: Envelope, _ctx: MessageContext| {
                let b: SqliteBroker = b.clone();
                async move {
                    let agg = aggregate_of(&env, aggregates);
                    let id = env.event_id.to_string();
                    b.transaction(move |tx| {
                        tx.prepare_cached(UPSERT)?.execute(params![agg, id])?;
                        Ok::<(), rusqlite::Error>(())
                    })
                    .await
                    .map_err(handler_error)?
                    .map_err(handler_error)
                }
            };
            broker::run_on(store, bp, template, handler).await?
        }
        Side::Inbox => {
            let inbox = store.inbox();
            let handler = move |env: Envelope, _ctx: MessageContext| {
                apply_with_inbox(inbox.clone(), env, aggregates)
            };
            broker::run_on(store, bp, template, handler).await?
        }
    };
    check(&path, side, a.messages)?;
    drop(tmp);
    Ok(run)
}

/// The inbox side's handler: the upsert through `Inbox::run`.
async fn apply_with_inbox(
    inbox: Inbox,
    env: Envelope,
    aggregates: u64,
) -> Result<(), HandlerError> {
    let agg = aggregate_of(&env, aggregates);
    let id = env.event_id.to_string();
    let (agg2, id2) = (agg.clone(), id);
    inbox
        .run(&env, HANDLER, &agg, move |tx| {
            tx.prepare_cached(UPSERT)?.execute(params![agg2, id2])?;
            Ok::<(), rusqlite::Error>(())
        })
        .await
        .map_err(handler_error)?;
    Ok(())
}

/// Open-loop latency through the inbox on a fresh data file.
async fn inbox_latency(a: &InboxArgs, template: &Envelope) -> anyhow::Result<LatencyRun> {
    let tmp = workload::tempdir(a.load.dir.as_deref())?;
    let lp = LatencyParams {
        rate: a.load.rate,
        duration: a.load.seconds,
        concurrency: a.load.concurrency,
        synchronous: a.load.synchronous,
    };
    let aggregates = a.aggregates;
    let run = latency::run_with(
        &tmp.path().join("latency.db"),
        &lp,
        template,
        |b| async move {
            b.transaction(|tx| tx.execute_batch(STATE_DDL)).await??;
            let inbox = b.inbox();
            let work: latency::Work =
                Arc::new(move |env| Box::pin(apply_with_inbox(inbox.clone(), env, aggregates)));
            Ok(Some(work))
        },
    )
    .await?;
    drop(tmp);
    Ok(run)
}

/// Every message changed the state exactly once; with the inbox, each left one key.
fn check(path: &Path, side: Side, messages: u64) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    let handled: i64 = conn.query_row(
        "SELECT coalesce(sum(handled), 0) FROM bench_state",
        [],
        |r| r.get(0),
    )?;
    let keys: i64 = conn.query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))?;
    let expected_keys = if side == Side::Inbox { messages } else { 0 };
    anyhow::ensure!(
        u64::try_from(handled)? == messages && u64::try_from(keys)? == expected_keys,
        "{side:?} run: state changed {handled} times and {keys} inbox keys for {messages} messages"
    );
    Ok(())
}

/// Runs the whole benchmark and returns the report (no printing).
pub async fn run_inbox(a: &InboxArgs) -> anyhow::Result<InboxReport> {
    let loadavg_start = loadavg();
    let template = workload::template(a.load.payload_bytes)?;
    let bp = BrokerParams {
        messages: a.messages,
        batch: a.load.batch,
        publishers: a.load.publishers,
        concurrency: a.load.concurrency,
        synchronous: a.load.synchronous,
        max_backlog: a.load.backlog_bound(),
    };
    let mut baseline_runs = Vec::new();
    let mut inbox_runs = Vec::new();
    for _ in 0..a.runs {
        baseline_runs.push(run_side(a, Side::Baseline, &bp, &template).await?);
        inbox_runs.push(run_side(a, Side::Inbox, &bp, &template).await?);
    }
    let med = |runs: &[BrokerRun]| median(&runs.iter().map(|r| r.rate).collect::<Vec<_>>());
    let (baseline_rate, rate) = (med(&baseline_runs), med(&inbox_runs));
    let ratio = ratio(rate, baseline_rate);
    let lat = inbox_latency(a, &template).await?;
    Ok(InboxReport {
        benchmark: "inbox",
        baseline_rate,
        rate,
        ratio,
        messages: a.messages,
        payload_bytes: a.load.payload_bytes,
        runs: a.runs,
        target_ratio: TARGET_RATIO,
        meets_target: ratio >= TARGET_RATIO,
        p50_ms: lat.p50_ms,
        p99_ms: lat.p99_ms,
        p999_ms: lat.p999_ms,
        latency: lat,
        cpu_us_per_msg: by_thread(&inbox_runs, |r| &r.cpu_us_per_msg),
        baseline_cpu_us_per_msg: by_thread(&baseline_runs, |r| &r.cpu_us_per_msg),
        settings: Settings {
            load: a.load.settings(loadavg_start),
            aggregates: a.aggregates,
            baseline_handler: "SqliteBroker::transaction: upsert one bench_state row (prepared), \
                               in the store's group-commit transaction; ack after the handler",
            inbox_handler: "Inbox::run(envelope, handler, aggregate): key lookup, the same \
                            upsert, key insert, in the same transaction; ack after the handler",
        },
        baseline_runs,
        inbox_runs,
    })
}

/// The human table.
pub fn table(r: &InboxReport) -> String {
    use std::fmt::Write as _;
    let s = &r.settings;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "yard bench inbox (R3): consume rate with the idempotent inbox vs the same handler without it"
    );
    let _ = writeln!(
        o,
        "durability: journal_mode={} synchronous={}; {} messages per run, payload {} B, {} runs, medians",
        s.load.journal_mode,
        s.load.synchronous,
        thousands(r.messages as f64),
        r.payload_bytes,
        r.runs
    );
    let _ = write!(o, "{:<28}", "msg/s");
    for i in 1..=r.runs {
        let _ = write!(o, "{:>10}", format!("run {i}"));
    }
    let _ = writeln!(o, "{:>10}", "median");
    for (name, runs, med) in [
        (
            "without inbox (baseline)",
            &r.baseline_runs,
            r.baseline_rate,
        ),
        ("with inbox", &r.inbox_runs, r.rate),
    ] {
        let _ = write!(o, "{name:<28}");
        for x in runs {
            let _ = write!(o, "{:>10}", thousands(x.rate));
        }
        let _ = writeln!(o, "{:>10}", thousands(med));
    }
    let _ = writeln!(
        o,
        "ratio (R3)  {:.3}   target >= {:.2}   {}",
        r.ratio,
        r.target_ratio,
        if r.meets_target { "ok" } else { "BELOW TARGET" }
    );
    let l = &r.latency;
    let _ = writeln!(
        o,
        "latency through the inbox (open loop, {} msg/s, intended send → inbox committed): p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  ({} of {} handled)",
        r.settings.load.latency_rate, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.received, l.sent
    );
    let _ = writeln!(
        o,
        "settings: publishers {} × batch {}, consumer concurrency {}, {} aggregates; load average {} at start, {} at end",
        s.load.publishers,
        s.load.batch,
        s.load.consumer_concurrency,
        s.aggregates,
        s.load.loadavg_start,
        s.load.loadavg_end
    );
    let _ = writeln!(o, "baseline: {}", s.baseline_handler);
    let _ = writeln!(o, "inbox:    {}", s.inbox_handler);
    o
}

/// `yard bench inbox`: runs, prints, exits 0 whether or not the target is met.
pub async fn run(a: InboxArgs) -> anyhow::Result<ExitCode> {
    let report = run_inbox(&a).await?;
    super::emit("inbox", a.json, &report, table, &[])
}

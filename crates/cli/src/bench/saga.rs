//! `yard bench saga` (R8): the saga step rate — load the instance, decide the transition, commit
//! the new state with its history entry and its emitted event (outbox) in one transaction —
//! as a ratio of a raw rusqlite transaction writing the same rows, measured in the same run.
//!
//! - **Baseline** (`baseline_rate`): one thread, one connection with the same pragmas, on a
//!   data file with the same tables and indexes (created by the real stores). Per step: read
//!   the instance, version-checked `UPDATE`, history `INSERT`, outbox `INSERT` (payload row and
//!   queue row, the same bytes the engine's emitted event stores). `concurrency` steps per
//!   transaction: the engine's in-flight window, which its group commit may fold into one fsync.
//! - **Saga** (`rate`): [`SagaEngine::handle`] on prebuilt input envelopes, `concurrency` tasks
//!   each stepping its own instance (no conflicts: the figure is the step cost, not contention),
//!   over the embedded store ([`SqliteSagaStore`]).
//!
//! Each of `--runs` rounds runs the baseline then the saga, each on a fresh file; medians are
//! reported.
//!
//! With `--store postgres` (`--url`), both sides run on the server, each on a fresh schema
//! (`yard_bench_saga_<pid>_<n>`, dropped afterwards, also on failure), with
//! `synchronous_commit=on` (a saga transition is the application's state):
//!
//! - **Baseline**: [`bench_raw_steps`] — `--pg-connections` tasks, each on a plain connection of
//!   its own, one hand-written transaction per step (`SELECT`, versioned `UPDATE`, history
//!   `INSERT`, outbox `INSERT`: the rows a saga commit writes) over `concurrency` instances.
//! - **Saga**: [`SagaEngine::handle`] over [`PgSagaStore`] (pool of `--pg-connections`),
//!   `concurrency` tasks each stepping its own instance, as on SQLite.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use eventyard::saga::SagaStore;
use eventyard::sqlite::{SqliteBroker, SqliteConfig, SqliteSagaStore};
use eventyard::{Envelope, Event, Message, TenantId, Transport};
use eventyard_postgres::saga::{RawStepBench, bench_raw_steps};
use eventyard_postgres::{PgSagaConfig, PgSagaStore};
use eventyard_saga::{Handled, SagaDefinition, SagaEngine};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::SyncMode;
use super::outbox::DEFAULT_PG_URL;
use super::workload::{self, median};

use crate::store::StoreKind;

/// R8 bar: saga step rate / raw transaction rate.
pub const TARGET_RATIO: f64 = 0.6;

/// The saga's name in the data file.
const SAGA: &str = "bench-saga";

/// Arguments of `yard bench saga`.
#[derive(Debug, Clone, clap::Args)]
pub struct SagaArgs {
    /// The saga store.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// PostgreSQL URL (with `--store postgres`); benchmark schemas are created and dropped.
    #[arg(long, env = "EVENTYARD_PG_URL", default_value = DEFAULT_PG_URL)]
    pub url: String,
    /// PostgreSQL: connections on each side (raw tasks; saga store pool), at most
    /// `--concurrency`.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub pg_connections: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Saga steps per run (each side).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: u64,
    /// Rounds (baseline then saga); the report gives medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Steps in flight: engine tasks (one instance each), and baseline steps per transaction.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
    /// SQLite: `PRAGMA synchronous` on both sides (journal_mode is always WAL).
    #[arg(long, value_enum, default_value_t = SyncMode::Full)]
    pub synchronous: SyncMode,
    /// Size of the emitted event's JSON payload, in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Directory for the temporary data files (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// SQLite: gathers concurrent saga commits into one writer command in the store (off by
    /// default; for comparison, see `SqliteSagaStore::batch_commits`).
    #[arg(long)]
    pub commit_batching: bool,
}

/// Starts a bench instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchSagaStarted {}
impl Event for BenchSagaStarted {
    const EVENT_TYPE: &'static str = "BenchSagaStarted";
}

/// Moves a bench instance one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchSagaStepped {
    n: u64,
}
impl Event for BenchSagaStepped {
    const EVENT_TYPE: &'static str = "BenchSagaStepped";
}

/// Emitted by every step (one outbox row).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchSagaProgressed {
    data: String,
}
impl Event for BenchSagaProgressed {
    const EVENT_TYPE: &'static str = "BenchSagaProgressed";
}

/// The bench saga's data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counter {
    count: u64,
}

fn definition(payload_bytes: usize) -> anyhow::Result<SagaDefinition<Counter>> {
    let data = progressed(payload_bytes);
    Ok(SagaDefinition::<Counter>::new(SAGA)
        .states(["Running"])
        .start_on::<BenchSagaStarted>()
        .go_to("Running")
        .on::<BenchSagaStepped>(["Running"])
        .then(move |_, counter, step| {
            counter.count += 1;
            step.publish(&data)
        })
        .stay()
        .build()?)
}

/// The emitted event, its payload `payload_bytes` long (`{"data":"xx…"}`).
fn progressed(payload_bytes: usize) -> BenchSagaProgressed {
    let overhead = r#"{"data":""}"#.len();
    BenchSagaProgressed {
        data: "x".repeat(payload_bytes.saturating_sub(overhead)),
    }
}

/// Everything held fixed, recorded beside the numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// SQLite: always `WAL` (null on PostgreSQL).
    pub journal_mode: Option<&'static str>,
    /// SQLite: `FULL`, `NORMAL` or `OFF`, both sides (null on PostgreSQL).
    pub synchronous: Option<&'static str>,
    /// What commits wait for, both sides (`journal_mode=WAL, synchronous=FULL`,
    /// `synchronous_commit=on`).
    pub durability: String,
    /// Engine tasks (= instances); SQLite: baseline steps per transaction; PostgreSQL: baseline
    /// instances.
    pub concurrency: u64,
    /// PostgreSQL: connections of each side (null on SQLite).
    pub connections: Option<u64>,
    /// Rows each step writes on both sides: instance update, history, outbox (SQLite: payload
    /// and queue rows; PostgreSQL: one row).
    pub rows_per_step: u64,
    /// Emitted event payload, bytes.
    pub payload_bytes: usize,
    /// Stored outbox body per step (the emitted envelope JSON), bytes.
    pub body_bytes: usize,
    /// The store.
    pub store: &'static str,
    /// Concurrent commits gathered into one writer command.
    pub commit_batching: bool,
}

/// The report, printed as a table or (with `--json`) as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct SagaReport {
    /// `saga` (R8).
    pub benchmark: &'static str,
    /// Median raw-transaction rate, steps/s.
    pub baseline_rate: f64,
    /// Median saga engine step rate, steps/s.
    pub rate: f64,
    /// `rate / baseline_rate`: the R8 figure.
    pub ratio: f64,
    /// The bar (0.6).
    pub target_ratio: f64,
    /// `ratio >= target_ratio`.
    pub meets_target: bool,
    /// Steps per run.
    pub steps: u64,
    /// Rounds.
    pub runs: u32,
    /// Version conflicts met by the engine over all runs (expected 0: one task per instance).
    pub conflicts: u64,
    /// What was held fixed.
    pub settings: Settings,
    /// Every baseline run's rate, steps/s.
    pub baseline_runs: Vec<f64>,
    /// Every saga run's rate, steps/s.
    pub saga_runs: Vec<f64>,
}

/// Opens `path` with the store's pragmas.
fn open_raw(path: &Path, sync: SyncMode) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    conn.pragma_update(None, "synchronous", sync.as_str())?;
    Ok(conn)
}

fn broker_config(path: &Path, sync: SyncMode) -> SqliteConfig {
    let mut cfg = SqliteConfig::new(path);
    cfg.synchronous = sync.to_broker();
    cfg
}

/// Creates the broker's, outbox's and saga tables on `path` with the real stores.
async fn create_schema(path: &Path, sync: SyncMode) -> anyhow::Result<()> {
    let broker = SqliteBroker::open(broker_config(path, sync))?;
    SqliteSagaStore::open(broker.clone()).await?;
    broker.close().await?;
    Ok(())
}

/// The raw loop: `steps` steps over `instances` instances, `per_tx` steps per transaction.
fn baseline_loop(
    conn: &mut Connection,
    steps: u64,
    instances: u64,
    per_tx: u64,
    body: &[u8],
    props: &str,
) -> anyhow::Result<f64> {
    let now = || chrono::Utc::now().timestamp_micros();
    let key = |i: u64| format!("corr-bench-{i}");
    {
        let tx = conn.transaction()?;
        for i in 0..instances {
            tx.execute(
                "INSERT INTO saga_instances
                   (saga, key, tenant, state, data, version, created_at, updated_at, completed)
                 VALUES (?1, ?2, 'bench', 'Running', '{\"count\":0}', 1, ?3, ?3, 0)",
                params![SAGA, key(i), now()],
            )?;
        }
        tx.commit()?;
    }
    let mut versions = vec![1i64; usize::try_from(instances)?];
    let started = Instant::now();
    let mut done = 0u64;
    while done < steps {
        let tx = conn.transaction()?;
        let n = per_tx.min(steps - done);
        for s in done..done + n {
            let i = s % instances;
            let k = key(i);
            let v = &mut versions[usize::try_from(i)?];
            let (_state, _data, stored): (String, String, i64) = tx
                .prepare_cached(
                    "SELECT state, data, version FROM saga_instances WHERE saga = ?1 AND key = ?2",
                )?
                .query_row(params![SAGA, k], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            anyhow::ensure!(stored == *v, "baseline: version moved");
            let data = format!("{{\"count\":{}}}", *v);
            let t = now();
            let changed = tx
                .prepare_cached(
                    "UPDATE saga_instances
                     SET state = 'Running', data = ?3, version = ?4, updated_at = ?5, completed = 0
                     WHERE saga = ?1 AND key = ?2 AND version = ?6",
                )?
                .execute(params![SAGA, k, data, *v + 1, t, *v])?;
            anyhow::ensure!(changed == 1, "baseline: conflict");
            tx.prepare_cached(
                "INSERT INTO saga_history
                   (saga, key, version, event_id, event_type, from_state, to_state, at)
                 VALUES (?1, ?2, ?3, ?4, 'BenchSagaStepped', 'Running', 'Running', ?5)",
            )?
            .execute(params![SAGA, k, *v + 1, format!("evt-bench-{s}"), t])?;
            let id = tx
                .prepare_cached(
                    "INSERT INTO outbox (topic, partition_key, body, props, deliver_at, created_at)
                     VALUES ('BenchSagaProgressed', ?1, ?2, ?3, NULL, ?4)",
                )?
                .insert(params![k, body, props, t])?;
            tx.prepare_cached("INSERT INTO outbox_queue (id, partition_key) VALUES (?1, ?2)")?
                .execute(params![id, k])?;
            *v += 1;
        }
        tx.commit()?;
        done += n;
    }
    Ok(steps as f64 / started.elapsed().as_secs_f64())
}

/// One baseline run on a fresh file.
async fn baseline_once(a: &SagaArgs, body: Vec<u8>, props: String) -> anyhow::Result<f64> {
    let tmp = workload::tempdir(a.dir.as_deref())?;
    let path = tmp.path().join("baseline.db");
    create_schema(&path, a.synchronous).await?;
    let (sync, steps, c) = (a.synchronous, a.steps, a.concurrency);
    let rate = tokio::task::spawn_blocking(move || {
        let mut conn = open_raw(&path, sync)?;
        baseline_loop(&mut conn, steps, c, c, &body, &props)
    })
    .await??;
    drop(tmp);
    Ok(rate)
}

/// One saga run on a fresh file: (rate, conflicts).
async fn saga_once(a: &SagaArgs) -> anyhow::Result<(f64, u64)> {
    let tmp = workload::tempdir(a.dir.as_deref())?;
    let broker = SqliteBroker::open(broker_config(&tmp.path().join("saga.db"), a.synchronous))?;
    let store = Arc::new(
        SqliteSagaStore::open(broker.clone())
            .await?
            .batch_commits(a.commit_batching),
    );
    let result = saga_steps(a, store).await;
    broker.close().await?;
    drop(tmp);
    result
}

/// The saga side on `store` (fresh): `concurrency` instances started, then `steps` steps by
/// `concurrency` tasks, one instance each: (rate, conflicts).
async fn saga_steps(a: &SagaArgs, store: Arc<dyn SagaStore>) -> anyhow::Result<(f64, u64)> {
    let engine = SagaEngine::new(definition(a.payload_bytes)?, store);
    let tenant = TenantId::parse("bench")?;
    let c = a.concurrency;
    let mut roots = Vec::new();
    for _ in 0..c {
        let root = Envelope::for_event(&BenchSagaStarted {}, tenant.clone())?;
        engine.handle(&root).await?;
        roots.push(root);
    }
    // Inputs prebuilt: they come from the bus in real life.
    let mut inputs: Vec<Vec<Envelope>> = roots.iter().map(|_| Vec::new()).collect();
    for s in 0..a.steps {
        let i = usize::try_from(s % c)?;
        let mut env = Envelope::for_event(&BenchSagaStepped { n: s }, tenant.clone())?;
        env.inherit_from(&roots[i]);
        inputs[i].push(env);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for list in inputs {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for env in &list {
                match engine.handle(env).await? {
                    Handled::Moved { .. } => {}
                    other => anyhow::bail!("unexpected step outcome {other:?}"),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = a.steps as f64 / started.elapsed().as_secs_f64();
    Ok((rate, engine.counts().conflicts))
}

/// The message of one emitted event (as the engine stores it in the outbox).
fn progressed_message(payload_bytes: usize) -> anyhow::Result<Message> {
    let root = Envelope::for_event(&BenchSagaStarted {}, TenantId::parse("bench")?)?;
    let mut env = Envelope::for_event(&progressed(payload_bytes), TenantId::parse("bench")?)?;
    env.inherit_from(&root);
    Ok(Message::from_envelope(&env))
}

/// The outbox row contents of one emitted event (as the engine stores it).
fn row_bytes(payload_bytes: usize) -> anyhow::Result<(Vec<u8>, String)> {
    let m = progressed_message(payload_bytes)?;
    Ok((m.body.to_vec(), serde_json::to_string(&m.properties)?))
}

/// Schemas made by this process so far (names stay unique within a run).
static PG_SCHEMAS: AtomicU64 = AtomicU64::new(0);

/// A fresh schema name: `yard_bench_saga_<pid>_<n>`.
pub fn pg_schema() -> String {
    format!(
        "yard_bench_saga_{}_{}",
        std::process::id(),
        PG_SCHEMAS.fetch_add(1, Ordering::Relaxed)
    )
}

/// PostgreSQL connections of each side: `--pg-connections`, at most one per instance.
fn pg_connections(a: &SagaArgs) -> u64 {
    a.pg_connections.min(a.concurrency)
}

/// A saga store on a fresh schema (`synchronous_commit=on`).
async fn pg_store(a: &SagaArgs) -> anyhow::Result<PgSagaStore> {
    let schema = pg_schema();
    let config = PgSagaConfig {
        pool_size: usize::try_from(pg_connections(a))?,
        application_name: schema.clone(),
        synchronous_commit: true,
        ..PgSagaConfig::with_schema(schema)
    };
    PgSagaStore::connect(&a.url, config)
        .await
        .with_context(|| format!("connecting to {}", a.url))
}

/// Runs `f` on a store on a fresh schema, then drops the schema (whatever `f` returned).
async fn on_fresh_schema<T, F, Fut>(a: &SagaArgs, f: F) -> anyhow::Result<T>
where
    F: FnOnce(PgSagaStore) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let store = pg_store(a).await?;
    let result = f(store.clone()).await;
    let dropped = store
        .drop_schema()
        .await
        .with_context(|| format!("dropping schema {}", store.schema()));
    let value = result?;
    dropped?;
    Ok(value)
}

/// One PostgreSQL baseline run on a fresh schema.
async fn pg_baseline_once(a: &SagaArgs, message: &Message) -> anyhow::Result<f64> {
    let bench = RawStepBench {
        saga: SAGA.to_owned(),
        steps: a.steps,
        instances: a.concurrency,
        connections: usize::try_from(pg_connections(a))?,
        topic: BenchSagaProgressed::EVENT_TYPE.to_owned(),
        message: message.clone(),
    };
    on_fresh_schema(a, |store| async move {
        Ok(bench_raw_steps(&store, &bench).await?)
    })
    .await
}

/// One PostgreSQL saga run on a fresh schema: (rate, conflicts).
async fn pg_saga_once(a: &SagaArgs) -> anyhow::Result<(f64, u64)> {
    on_fresh_schema(a, |store| saga_steps(a, Arc::new(store))).await
}

/// Runs the benchmark and builds the report.
pub async fn run_saga(a: &SagaArgs) -> anyhow::Result<SagaReport> {
    let message = progressed_message(a.payload_bytes)?;
    let (body, props) = row_bytes(a.payload_bytes)?;
    let (mut baseline_runs, mut saga_runs, mut conflicts) = (Vec::new(), Vec::new(), 0);
    for _ in 0..a.runs {
        let (baseline, (rate, c)) = match a.store {
            StoreKind::Sqlite => (
                baseline_once(a, body.clone(), props.clone()).await?,
                saga_once(a).await?,
            ),
            StoreKind::Postgres => (pg_baseline_once(a, &message).await?, pg_saga_once(a).await?),
        };
        baseline_runs.push(baseline);
        saga_runs.push(rate);
        conflicts += c;
    }
    let (baseline_rate, rate) = (median(&baseline_runs), median(&saga_runs));
    let ratio = if baseline_rate > 0.0 {
        rate / baseline_rate
    } else {
        0.0
    };
    Ok(SagaReport {
        benchmark: "saga",
        baseline_rate,
        rate,
        ratio,
        target_ratio: TARGET_RATIO,
        meets_target: ratio >= TARGET_RATIO,
        steps: a.steps,
        runs: a.runs,
        conflicts,
        settings: match a.store {
            StoreKind::Sqlite => Settings {
                journal_mode: Some("WAL"),
                synchronous: Some(a.synchronous.as_str()),
                durability: format!("journal_mode=WAL, synchronous={}", a.synchronous.as_str()),
                concurrency: a.concurrency,
                connections: None,
                rows_per_step: 4,
                payload_bytes: a.payload_bytes,
                body_bytes: body.len(),
                store: a.store.name(),
                commit_batching: a.commit_batching,
            },
            StoreKind::Postgres => Settings {
                journal_mode: None,
                synchronous: None,
                durability: "synchronous_commit=on".to_owned(),
                concurrency: a.concurrency,
                connections: Some(pg_connections(a)),
                rows_per_step: 3,
                payload_bytes: a.payload_bytes,
                body_bytes: message.body.len(),
                store: a.store.name(),
                commit_batching: false,
            },
        },
        baseline_runs,
        saga_runs,
    })
}

/// The human-readable report.
pub fn table(r: &SagaReport) -> String {
    let s = &r.settings;
    let connections = s
        .connections
        .map(|c| format!(", {c} connections"))
        .unwrap_or_default();
    format!(
        "yard bench saga (R8) — store {}, {}, {} in flight{}, {} steps x {} runs\n\
         baseline (raw transaction, same rows)  {:>12.0} steps/s\n\
         saga engine + store                    {:>12.0} steps/s\n\
         ratio                                  {:>12.3}   (target >= {:.2}: {})\n\
         conflicts                              {:>12}\n",
        s.store,
        s.durability,
        s.concurrency,
        connections,
        r.steps,
        r.runs,
        r.baseline_rate,
        r.rate,
        r.ratio,
        r.target_ratio,
        if r.meets_target { "met" } else { "NOT met" },
        r.conflicts
    )
}

/// `yard bench saga`: runs, prints, exits 0 whether or not the target is met.
pub async fn run(a: SagaArgs) -> anyhow::Result<ExitCode> {
    let report = run_saga(&a).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
        if !report.meets_target {
            eprintln!(
                "yard bench saga: ratio {:.3} is below the target {:.2}",
                report.ratio, report.target_ratio
            );
        }
    } else {
        write!(out, "{}", table(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

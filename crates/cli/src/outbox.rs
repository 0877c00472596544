//! `yard outbox`: the transactional outbox of a data file.
//!
//! ```text
//! yard outbox status  [--data PATH | --store postgres --url URL [--schema S]]
//!                     [--json | --prometheus]      backlog, oldest pending age, relay lag, parked
//! yard outbox relay   [--data PATH] [--transport URL] [--batch N] [--lease 30s] ...
//!                                                  publish the outbox until interrupted
//! yard outbox parked  [--data PATH] [--limit N] [--json]   records refused by the transport
//! yard outbox requeue ID / discard ID              act on a parked record
//! ```
//!
//! `relay` publishes to the embedded broker of the same data file unless `--transport` names
//! another (`sqlite://OTHER.db`, later `amqp://`, `nats://`). It runs until SIGINT/SIGTERM, then
//! finishes its batch in hand and exits; killed harder, its leased records are published again
//! by the next relay once the lease expires (at least once).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use eventyard::outbox::{OutboxError, OutboxStatus, OutboxStore, PendingEvent};
use eventyard::sqlite::outbox::{self, SqliteOutbox};
use eventyard::sqlite::{SqliteBroker, SqliteConfig};
use eventyard::{
    CleanerConfig, Envelope, EventType, Relay, RelayConfig, RelayMetrics, TenantId, Transport,
};
use eventyard_postgres::{PgOutbox, PgOutboxConfig};

use crate::store::StoreKind;

/// Arguments of `yard outbox`.
#[derive(Debug, clap::Args)]
pub struct OutboxArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: OutboxCommand,
}

/// The `yard outbox` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum OutboxCommand {
    /// Show the backlog: pending, in flight, parked, oldest pending age, relay lag.
    Status(StatusArgs),
    /// Run a relay: publish the outbox's records to a transport until interrupted.
    Relay(RelayArgs),
    /// List parked records (refused by the transport), oldest first.
    Parked(ParkedArgs),
    /// Put a parked record back in line (after fixing the cause, e.g. a size limit).
    Requeue(RecordArgs),
    /// Delete a parked record for good (unblocks the later records of its key).
    Discard(RecordArgs),
    /// Test helper: commit application rows and outbox records together, one JSON line per
    /// committed event.
    #[command(hide = true)]
    Produce(ProduceArgs),
}

/// The data file holding the outbox.
#[derive(Debug, Clone, clap::Args)]
pub struct DataFile {
    /// Embedded data file (SQLite).
    #[arg(long, env = "EVENTYARD_DATA", default_value = "eventyard.db")]
    pub data: PathBuf,
}

impl DataFile {
    /// Opens the existing data file.
    pub fn open(&self) -> anyhow::Result<SqliteBroker> {
        if !self.data.exists() {
            bail!("data file {} does not exist", self.data.display());
        }
        SqliteBroker::open(SqliteConfig::new(&self.data))
            .with_context(|| format!("opening {}", self.data.display()))
    }
}

/// Arguments of `yard outbox status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Where the outbox is (with `--store sqlite`).
    #[command(flatten)]
    pub file: DataFile,
    /// Outbox store.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// PostgreSQL URL (with `--store postgres`).
    #[arg(long, env = "EVENTYARD_PG_URL")]
    pub url: Option<String>,
    /// PostgreSQL schema holding the outbox (with `--store postgres`).
    #[arg(long, default_value = eventyard_postgres::DEFAULT_SCHEMA)]
    pub schema: String,
    /// One JSON object instead of a table.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// The figures as Prometheus gauges (text exposition format), the same the relay records
    /// through the `metrics` facade.
    #[arg(long)]
    pub prometheus: bool,
}

/// Arguments of `yard outbox relay`.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Where the outbox is (created if absent).
    #[arg(long, env = "EVENTYARD_DATA", default_value = "eventyard.db")]
    pub data: PathBuf,
    /// Transport to publish to. Default: the embedded broker of the data file itself.
    #[arg(long, env = "EVENTYARD_TRANSPORT")]
    pub transport: Option<String>,
    /// Relay name (prefix of its lease owner id).
    #[arg(long, default_value = "relay")]
    pub name: String,
    /// Records per batch.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Lease of a claimed batch: a killed relay's records are published again after this.
    /// (Without `--transport`, batches move into the data file's own queues in one transaction
    /// each — direct dispatch — and take no lease, unless `--leased`.)
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub lease: Duration,
    /// Claim, publish and mark with leases even where the outbox could dispatch directly into
    /// the data file's own broker (no `--transport`).
    #[arg(long)]
    pub leased: bool,
    /// Longest wait between claims when no commit wakes the relay.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub poll: Duration,
    /// Do not run the cleaner beside the relay.
    #[arg(long)]
    pub no_cleaner: bool,
    /// Time between cleaning rounds.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub cleanup_interval: Duration,
    /// Keep dispatched records this long before deleting them.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    pub retention: Duration,
    /// Print the relay's counters as a JSON line this often (and once at exit).
    #[arg(long, value_parser = crate::parse_duration)]
    pub report_every: Option<Duration>,
}

/// Arguments of `yard outbox parked`.
#[derive(Debug, clap::Args)]
pub struct ParkedArgs {
    /// Where the outbox is.
    #[command(flatten)]
    pub file: DataFile,
    /// At most N records.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `yard outbox requeue` / `discard`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Where the outbox is.
    #[command(flatten)]
    pub file: DataFile,
    /// The parked record's id (see `yard outbox parked`).
    pub id: i64,
}

/// Arguments of the hidden `yard outbox produce`.
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Where the outbox is (created if absent).
    #[arg(long, env = "EVENTYARD_DATA", default_value = "eventyard.db")]
    pub data: PathBuf,
    /// Events to commit in all.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Partition keys (order-0 … order-N-1), used in turn.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Events per transaction.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub per_tx: u64,
    /// Topic of the events.
    #[arg(long, default_value = "OrderPlaced")]
    pub topic: String,
    /// Transactions per second at most (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
}

/// Runs `yard outbox`.
pub async fn run(a: OutboxArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        OutboxCommand::Status(a) => status(a).await,
        OutboxCommand::Relay(a) => relay(a).await,
        OutboxCommand::Parked(a) => parked(a).await,
        OutboxCommand::Requeue(a) => act(a, true).await,
        OutboxCommand::Discard(a) => act(a, false).await,
        OutboxCommand::Produce(a) => produce(a).await,
    }
}

fn secs(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) if s < 120.0 => format!("{s:.1} s"),
        Some(s) if s < 7200.0 => format!("{:.1} min", s / 60.0),
        Some(s) => format!("{:.1} h", s / 3600.0),
    }
}

/// The status table.
pub fn render_status(path: &str, s: &OutboxStatus) -> String {
    format!(
        "outbox of {path}\n  \
         pending              {}  ({} in flight)\n  \
         parked               {}\n  \
         dispatched           {}  (awaiting cleanup)\n  \
         oldest pending age   {}\n  \
         last relay lag       {}\n",
        s.pending,
        s.in_flight,
        s.parked,
        s.dispatched,
        secs(s.oldest_pending_age_secs),
        secs(s.last_relay_lag_secs)
    )
}

async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let (s, store, place) = match a.store {
        StoreKind::Sqlite => {
            let broker = a.file.open()?;
            let s = broker.outbox().status().await;
            broker.close().await?;
            (s?, "sqlite", a.file.data.display().to_string())
        }
        StoreKind::Postgres => {
            let Some(url) = a.url.as_deref() else {
                bail!("--store postgres needs --url (or EVENTYARD_PG_URL)");
            };
            let store = PgOutbox::connect(
                url,
                PgOutboxConfig {
                    migrate: false,
                    listen: false,
                    pool_size: 1,
                    connect_attempts: 1,
                    application_name: "yard-outbox-status".into(),
                    ..PgOutboxConfig::with_schema(a.schema.clone())
                },
            )
            .await
            .context("connecting to the PostgreSQL outbox")?;
            let s = store.status().await?;
            (s, "postgres", format!("schema {}", a.schema))
        }
    };
    if a.prometheus {
        print!("{}", RelayMetrics::prometheus(store, &s));
    } else if a.json {
        let mut v = serde_json::to_value(&s)?;
        v["store"] = store.into();
        match a.store {
            StoreKind::Sqlite => v["data"] = place.into(),
            StoreKind::Postgres => v["schema"] = a.schema.clone().into(),
        }
        println!("{v}");
    } else {
        print!("{}", render_status(&place, &s));
    }
    Ok(ExitCode::SUCCESS)
}

async fn parked(a: ParkedArgs) -> anyhow::Result<ExitCode> {
    let broker = a.file.open()?;
    let list = broker.outbox().parked(a.limit).await?;
    for p in &list {
        let r = &p.record;
        if a.json {
            let v = serde_json::json!({
                "id": r.id,
                "topic": r.topic,
                "partitionKey": r.partition_key,
                "createdAt": r.created_at.to_rfc3339(),
                "parkedAt": p.parked_at.to_rfc3339(),
                "attempts": r.attempts,
                "reason": p.reason,
                "bytes": r.message.body.len(),
                "properties": r.message.properties,
            });
            println!("{v}");
        } else {
            println!(
                "{:>8}  {}  {:<24} key={:<20} {}",
                r.id,
                p.parked_at.format("%Y-%m-%d %H:%M:%S"),
                r.topic,
                r.partition_key,
                p.reason
            );
        }
    }
    if !a.json && list.is_empty() {
        println!("no parked records");
    }
    broker.close().await?;
    Ok(ExitCode::SUCCESS)
}

async fn act(a: RecordArgs, requeue: bool) -> anyhow::Result<ExitCode> {
    let broker = a.file.open()?;
    let ob = broker.outbox();
    let done = if requeue {
        ob.requeue(a.id).await?
    } else {
        ob.discard(a.id).await?
    };
    broker.close().await?;
    if !done {
        eprintln!("yard: record {} is not parked", a.id);
        return Ok(ExitCode::from(2));
    }
    println!(
        "record {} {}",
        a.id,
        if requeue { "requeued" } else { "discarded" }
    );
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn relay(a: RelayArgs) -> anyhow::Result<ExitCode> {
    let broker = SqliteBroker::open(SqliteConfig::new(&a.data))
        .with_context(|| format!("opening {}", a.data.display()))?;
    let transport: Arc<dyn Transport> = match &a.transport {
        None => Arc::new(broker.clone()),
        Some(url) => eventyard::connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?,
    };
    let store: Arc<dyn OutboxStore> = Arc::new(SqliteOutbox::new(broker.clone()));
    let config = RelayConfig {
        name: a.name.clone(),
        batch_size: usize::try_from(a.batch).unwrap_or(512),
        lease: a.lease,
        poll_interval: a.poll,
        cleaner: (!a.no_cleaner).then(|| CleanerConfig {
            interval: a.cleanup_interval,
            retention: a.retention,
            ..CleanerConfig::default()
        }),
        direct: !a.leased,
        ..RelayConfig::default()
    };
    let handle = Relay::spawn(store, transport.clone(), config);
    println!(
        "{}",
        serde_json::json!({
            "relay": handle.id(),
            "state": "running",
            "data": a.data.display().to_string(),
            "transport": a.transport.clone().unwrap_or_else(|| "embedded".into()),
        })
    );
    let report = |state: &str| {
        let mut v = serde_json::to_value(handle.counts()).unwrap_or_default();
        v["relay"] = handle.id().into();
        v["state"] = state.into();
        println!("{v}");
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    match a.report_every {
        Some(every) => {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => report("running"),
                }
            }
        }
        None => stop.await,
    }
    let counts = handle.counts();
    let id = handle.id().to_owned();
    handle.shutdown().await;
    let mut v = serde_json::to_value(counts)?;
    v["relay"] = id.into();
    v["state"] = "stopped".into();
    println!("{v}");
    transport.close().await?;
    broker.close().await?;
    Ok(ExitCode::SUCCESS)
}

enum ProduceError {
    Db(rusqlite::Error),
    Outbox(OutboxError),
}

async fn produce(a: ProduceArgs) -> anyhow::Result<ExitCode> {
    let broker = SqliteBroker::open(SqliteConfig::new(&a.data))
        .with_context(|| format!("opening {}", a.data.display()))?;
    broker
        .transaction(|tx| {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS yard_orders (
                    event_id   TEXT PRIMARY KEY,
                    key        TEXT NOT NULL,
                    seq        INTEGER NOT NULL,
                    outbox_id  INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS yard_orders_key ON yard_orders (key, seq);",
            )
        })
        .await??;
    let tenant = TenantId::parse("connectsoft")?;
    let event_type = EventType::event("OrderPlaced")?;
    let mut tick = a
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
    let mut n = 0u64;
    let mut out = std::io::stdout().lock();
    while n < a.count {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let take = a.per_tx.min(a.count - n);
        let keys: Vec<String> = (n..n + take)
            .map(|i| format!("order-{}", i % a.keys))
            .collect();
        let (tenant, event_type, topic) = (tenant.clone(), event_type.clone(), a.topic.clone());
        let committed = broker
            .transaction(move |tx| -> Result<Vec<serde_json::Value>, ProduceError> {
                let mut lines = Vec::new();
                for key in keys {
                    let seq: i64 = tx
                        .query_row(
                            "SELECT coalesce(max(seq), 0) + 1 FROM yard_orders WHERE key = ?1",
                            [&key],
                            |r| r.get(0),
                        )
                        .map_err(ProduceError::Db)?;
                    let env = Envelope::new(
                        event_type.clone(),
                        tenant.clone(),
                        serde_json::json!({ "orderId": key, "seq": seq }),
                    );
                    let ev = PendingEvent::new(topic.clone(), &env)
                        .map_err(ProduceError::Outbox)?
                        .partition_key(key.clone());
                    let id = outbox::add(tx, &ev).map_err(ProduceError::Outbox)?;
                    tx.execute(
                        "INSERT INTO yard_orders (event_id, key, seq, outbox_id)
                         VALUES (?1, ?2, ?3, ?4)",
                        rusqlite::params![env.event_id.to_string(), key, seq, id],
                    )
                    .map_err(ProduceError::Db)?;
                    lines.push(serde_json::json!({
                        "eventId": env.event_id.to_string(),
                        "key": key,
                        "seq": seq,
                        "outboxId": id,
                    }));
                }
                Ok(lines)
            })
            .await?;
        let lines = match committed {
            Ok(l) => l,
            Err(ProduceError::Db(e)) => bail!("application write failed: {e}"),
            Err(ProduceError::Outbox(e)) => bail!("outbox add failed: {e}"),
        };
        for l in lines {
            use std::io::Write;
            writeln!(out, "{l}")?;
        }
        {
            use std::io::Write;
            out.flush()?;
        }
        n += take;
    }
    drop(out);
    broker.close().await?;
    Ok(ExitCode::SUCCESS)
}

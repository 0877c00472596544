//! `yard bench`: benchmarks that print ratios against a raw baseline measured in the same run.
//!
//! See `/work/shared/perf/TARGETS.md` (R7) for the method: every figure is a ratio against a
//! raw baseline measured in the same process, with the same pragmas and row contents.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub mod baseline;
pub mod broker;
pub mod embedded;
pub mod inbox;
pub mod latency;
pub mod outbox;
pub mod saga;
pub mod transport;
pub mod workload;

pub use embedded::{EmbeddedReport, run_embedded};

/// Arguments of `yard bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub which: Which,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// R7: embedded SQLite broker publish → consume → ack vs a bare SQLite loop, plus latency.
    Embedded(EmbeddedArgs),
    /// R1/R2/R5: the bus on RabbitMQ or NATS JetStream vs the raw lapin / async-nats client.
    Transport(transport::TransportArgs),
    /// R8: saga step rate (engine + store) vs a raw transaction writing the same rows.
    Saga(saga::SagaArgs),
    /// R3: consume rate with the idempotent inbox vs the same handler without it (embedded store).
    Inbox(inbox::InboxArgs),
    /// R4/R6: outbox relay drain rate vs a batched INSERT, and commit → handler latency
    /// (`--store sqlite|postgres`).
    Outbox(outbox::OutboxBenchArgs),
}

/// `PRAGMA synchronous` for both the baseline and the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// `synchronous=FULL`: every commit is fsync'd (the broker's default).
    Full,
    /// `synchronous=NORMAL`: WAL synced at checkpoints only.
    Normal,
    /// `synchronous=OFF`: syncing left to the OS.
    Off,
}

impl SyncMode {
    /// The broker setting.
    pub fn to_broker(self) -> eventyard::sqlite::Synchronous {
        match self {
            SyncMode::Full => eventyard::sqlite::Synchronous::Full,
            SyncMode::Normal => eventyard::sqlite::Synchronous::Normal,
            SyncMode::Off => eventyard::sqlite::Synchronous::Off,
        }
    }

    /// The pragma value (`FULL`, `NORMAL`, `OFF`).
    pub fn as_str(self) -> &'static str {
        self.to_broker().as_str()
    }
}

/// Arguments of `yard bench embedded`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbeddedArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Messages per throughput run (baselines and broker alike).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Throughput rounds (each: both baselines, then the broker); the report gives medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// The load shared with `yard bench inbox`.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// The load of the embedded-store benchmarks (`embedded`, `inbox`): durability, publishers,
/// consumer, payload, latency run, data directory.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// `PRAGMA synchronous` for every side (journal_mode is always WAL).
    #[arg(long, value_enum, default_value_t = SyncMode::Full)]
    pub synchronous: SyncMode,
    /// Messages per publish call of the broker runs (and rows per cycle of the bare baseline loop).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Concurrent publisher tasks in the broker run.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub publishers: u64,
    /// Consumer concurrency (handlers running at once; see `ConsumerOptions::concurrency`).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
    /// Publishers pause while more than this many messages are published but not yet
    /// acknowledged. Default: publishers × batch (enough to keep the consumer saturated, and a
    /// table of the same order as the baseline loop's `batch` rows). 0: unbounded — the
    /// publishers, faster than the consumer, pile up most of the run, so the figure becomes the
    /// drain of a table that grows to the whole run.
    #[arg(long)]
    pub max_backlog: Option<u64>,
    /// Size of the envelope's JSON payload, in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Latency run: messages per second, published open-loop on a fixed schedule.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Latency run: how long to publish (`5s`, `500ms`, or seconds).
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub seconds: Duration,
    /// Directory for the temporary data files (default: the system temp directory). Use a
    /// directory on the disk you care about: a tmpfs makes fsync free.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl LoadArgs {
    /// The backlog bound in effect: `--max-backlog`, or publishers × batch.
    pub fn backlog_bound(&self) -> u64 {
        self.max_backlog
            .unwrap_or_else(|| self.publishers.saturating_mul(self.batch))
    }

    /// The settings to record beside the figures; call at the end of the run
    /// (`loadavg_start`: `/proc/loadavg` when it began).
    pub fn settings(&self, loadavg_start: String) -> LoadSettings {
        LoadSettings {
            journal_mode: "WAL",
            synchronous: self.synchronous.as_str(),
            batch: self.batch,
            publishers: self.publishers,
            consumer_concurrency: self.concurrency,
            max_backlog: self.backlog_bound(),
            payload_bytes: self.payload_bytes,
            latency_rate: self.rate,
            latency_seconds: self.seconds.as_secs_f64(),
            data_dir: self
                .dir
                .clone()
                .unwrap_or_else(std::env::temp_dir)
                .display()
                .to_string(),
            loadavg_start,
            loadavg_end: embedded::loadavg(),
            runtime_workers: tokio::runtime::Handle::current().metrics().num_workers(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The load settings of the embedded-store benchmarks, recorded beside every figure (flattened
/// into each report's `settings`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadSettings {
    /// Always `WAL`.
    pub journal_mode: &'static str,
    /// `FULL`, `NORMAL` or `OFF`, every side.
    pub synchronous: &'static str,
    /// Messages per publish call (and, for `embedded`, baseline rows per cycle).
    pub batch: u64,
    /// Concurrent publisher tasks.
    pub publishers: u64,
    /// Consumer concurrency.
    pub consumer_concurrency: u64,
    /// Publishers' backlog bound in effect (0: unbounded).
    pub max_backlog: u64,
    /// Size of the envelope's JSON payload.
    pub payload_bytes: usize,
    /// Latency run: messages per second.
    pub latency_rate: f64,
    /// Latency run: seconds of publishing.
    pub latency_seconds: f64,
    /// Where the data files were created.
    pub data_dir: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the benchmark started; empty where unavailable.
    pub loadavg_start: String,
    /// `/proc/loadavg` when it ended.
    pub loadavg_end: String,
    /// Worker threads of the async runtime.
    pub runtime_workers: usize,
    /// Logical CPUs seen by the process.
    pub cpus: usize,
}

/// Prints a report: one JSON line (`--json`, with the missed targets on stderr) or the table.
/// Exits 0 whether or not the targets are met: the figures are the result.
pub fn emit<R: serde::Serialize>(
    name: &str,
    json: bool,
    report: &R,
    table: impl FnOnce(&R) -> String,
    shortfalls: &[String],
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
        if !shortfalls.is_empty() {
            eprintln!("yard bench {name}: below target: {}", shortfalls.join("; "));
        }
    } else {
        write!(out, "{}", table(report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.which {
        Which::Embedded(a) => embedded::run(a).await,
        Which::Transport(a) => transport::run(a).await,
        Which::Saga(a) => saga::run(a).await,
        Which::Inbox(a) => inbox::run(a).await,
        Which::Outbox(a) => outbox::run(a).await,
    }
}

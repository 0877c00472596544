//! The `yard` command-line tool: argument parsing and the subcommands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod demo;
pub mod dlq;
pub mod duration;
pub mod outbox;
pub mod publish;
pub mod saga;
pub mod store;
pub mod tail;

/// yard — operate eventyard: run the reference demo, publish and tail events, benchmark.
#[derive(Debug, Parser)]
#[command(name = "yard", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the events live: the embedded data file, or a transport URL.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Embedded data file (SQLite). Created if absent.
    #[arg(long, env = "EVENTYARD_DATA", default_value = "eventyard.db")]
    pub data: PathBuf,
    /// Transport URL instead of the data file (e.g. sqlite:///path/file.db?synchronous=normal).
    #[arg(long, env = "EVENTYARD_TRANSPORT")]
    pub transport: Option<String>,
}

impl Target {
    /// The transport URL this target designates.
    pub fn url(&self) -> String {
        match &self.transport {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data.display()),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reference factory scenario (SPEC §7) on the embedded broker (or --transport URL)
    /// and print its causal chain.
    Demo(demo::DemoArgs),
    /// Publish one envelope (fields as flags, or JSON envelopes on stdin, one per line).
    Publish(Box<publish::PublishArgs>),
    /// Print what a subscription receives as JSON lines, settling each message.
    Tail(tail::TailArgs),
    /// Inspect and operate dead-letter queues: list, groups, show, replay, purge.
    Dlq(dlq::DlqArgs),
    /// Benchmarks that print ratios against a raw baseline measured in the same run.
    Bench(bench::BenchArgs),
    /// The transactional outbox: status (backlog, lag, parked) and the relay.
    Outbox(outbox::OutboxArgs),
    /// Saga instances: list them, show one with its history and pending timeouts.
    Saga(saga::SagaArgs),
}

/// Parses a human duration: `250ms`, `5s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("YARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("yard: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("yard: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(a) => demo::run(a).await,
        Command::Publish(a) => publish::run(*a).await,
        Command::Tail(a) => tail::run(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Dlq(a) => dlq::run(a).await,
        Command::Outbox(a) => outbox::run(a).await,
        Command::Saga(a) => saga::run(a).await,
    }
}

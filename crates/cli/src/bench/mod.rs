//! `yard bench`: benchmarks that print ratios against a raw baseline measured in the same run.

use std::process::ExitCode;

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
}

/// Arguments of `yard bench embedded`.
#[derive(Debug, clap::Args)]
pub struct EmbeddedArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.which {
        Which::Embedded(_a) => anyhow::bail!("not implemented yet"),
    }
}

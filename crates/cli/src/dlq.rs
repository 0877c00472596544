//! `yard dlq`: inspect and operate dead-letter queues (being implemented).

use std::process::ExitCode;

/// Arguments of `yard dlq`.
#[derive(Debug, clap::Args)]
pub struct DlqArgs {}

/// Runs `yard dlq`.
pub async fn run(_a: DlqArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

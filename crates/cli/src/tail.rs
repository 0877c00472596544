//! `yard tail`: print what a subscription receives as JSON lines, settling each message.
//!
//! Without `--subscription`, an ephemeral subscription `tail-<pid>` is created on the topic and
//! deleted on exit (like `nats sub`): it sees messages published from then on. With
//! `--subscription NAME`, that durable subscription is consumed (created if absent), competing
//! with any other consumer of it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use eventyard::{DeadLetterInfo, Delivery, Filter, SubQueue, SubscriptionSpec, Transport};

use crate::Target;

/// How `yard tail` settles each message it prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SettleMode {
    /// Acknowledge (remove). Default.
    Ack,
    /// Release for redelivery.
    Abandon,
    /// Move to the dead-letter sub-queue.
    DeadLetter,
    /// Leave it locked; it is redelivered when the lock expires or yard exits.
    None,
}

/// Arguments of `yard tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Where to read.
    #[command(flatten)]
    pub target: Target,
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Durable subscription to consume (created if absent). Default: an ephemeral one.
    #[arg(long)]
    pub subscription: Option<String>,
    /// Service Bus SQL filter over the application properties, e.g.
    /// "[cs-tenant-id] = 'connectsoft' AND [cs-event-type] LIKE 'Artifact%'".
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// Read the subscription's dead-letter sub-queue instead.
    #[arg(long, requires = "subscription")]
    pub dead_letter: bool,
    /// Stop after N messages (exit 3 if the timeout comes first).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long in total (e.g. 10s). Default: run until interrupted.
    #[arg(long, value_parser = crate::parse_duration)]
    pub timeout: Option<Duration>,
    /// How to settle each printed message.
    #[arg(long, value_enum, default_value_t = SettleMode::Ack)]
    pub settle: SettleMode,
}

/// One printed line.
fn line(d: &Delivery) -> serde_json::Value {
    let mut v = serde_json::json!({
        "subscription": d.subscription,
        "sequence": d.sequence,
        "deliveryCount": d.delivery_count,
        "enqueuedAt": d.enqueued_at.to_rfc3339(),
        "properties": d.message.properties,
    });
    match serde_json::from_slice::<serde_json::Value>(&d.message.body) {
        Ok(env) => v["envelope"] = env,
        Err(_) => v["body"] = String::from_utf8_lossy(&d.message.body).into_owned().into(),
    }
    if let Err(e) = d.message.envelope() {
        v["invalid"] = e.to_string().into();
    }
    v
}

/// Runs `yard tail`.
pub async fn run(a: TailArgs) -> anyhow::Result<ExitCode> {
    let filter = match &a.filter {
        Some(f) => Filter::sql(f).with_context(|| format!("--filter `{f}`"))?,
        None => Filter::all(),
    };
    let transport = eventyard::connect(&a.target.url()).await?;
    let (name, ephemeral) = match &a.subscription {
        Some(s) => (s.clone(), false),
        None => (format!("tail-{}", std::process::id()), true),
    };
    if !a.dead_letter {
        let spec = SubscriptionSpec::new(a.topic.clone(), name.clone()).filter(filter);
        transport.ensure_subscription(&spec).await?;
    }
    let result = consume(&*transport, &a, &name).await;
    if ephemeral {
        let _ = transport.delete_subscription(&a.topic, &name).await;
    }
    transport.close().await?;
    result
}

async fn consume(t: &dyn Transport, a: &TailArgs, name: &str) -> anyhow::Result<ExitCode> {
    let queue = if a.dead_letter {
        SubQueue::DeadLetter
    } else {
        SubQueue::Main
    };
    let mut rx = t.receiver(&a.topic, name, queue).await?;
    let deadline = a.timeout.map(|d| tokio::time::Instant::now() + d);
    let mut seen: u64 = 0;
    let mut out = std::io::stdout().lock();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if a.count.is_some_and(|c| seen >= c) {
            return Ok(ExitCode::SUCCESS);
        }
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
            None => Duration::from_secs(1),
        };
        if deadline.is_some() && wait.is_zero() {
            eprintln!("yard tail: timeout after {seen} message(s)");
            return Ok(if a.count.is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            });
        }
        let want = a.count.map(|c| c - seen).unwrap_or(64).min(64) as usize;
        let batch = tokio::select! {
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
            b = rx.receive(want, wait.min(Duration::from_secs(1))) => b?,
        };
        for d in batch {
            writeln!(out, "{}", line(&d))?;
            out.flush()?;
            seen += 1;
            match a.settle {
                SettleMode::Ack => d.ack().await?,
                SettleMode::Abandon => d.abandon(Duration::ZERO).await?,
                SettleMode::DeadLetter => {
                    d.dead_letter(DeadLetterInfo::new(
                        "ManualDeadLetter",
                        "dead-lettered by yard tail",
                    ))
                    .await?
                }
                SettleMode::None => std::mem::forget(d),
            }
        }
    }
}

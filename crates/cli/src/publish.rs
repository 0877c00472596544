//! `yard publish`: publish an envelope from the command line — built from flags, or read as JSON
//! from stdin (one envelope per line). Prints one JSON line per acknowledged (durable) publish.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use eventyard::{
    CorrelationId, Envelope, EventId, EventType, Message, MessageKind, ModuleId, OutgoingMessage,
    ProjectId, Properties, PropertyValue, TenantId, TraceId,
};

use crate::Target;

/// Arguments of `yard publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Where to publish.
    #[command(flatten)]
    pub target: Target,
    /// Topic; default: the event type (topic-per-event-type).
    #[arg(long)]
    pub topic: Option<String>,
    /// Read JSON envelopes from stdin, one per line, instead of building one from flags.
    #[arg(long, conflicts_with_all = ["event_type", "payload"])]
    pub stdin: bool,
    /// With --stdin: publish each line's bytes as-is, without validating them as an envelope
    /// (to inject malformed messages for testing). Properties come from --prop.
    #[arg(long, requires = "stdin")]
    pub raw: bool,
    /// Event type, e.g. ProjectCreated.
    #[arg(long = "type", required_unless_present = "stdin")]
    pub event_type: Option<String>,
    /// This is a command (VerbNoun), not an event.
    #[arg(long)]
    pub command: bool,
    /// Tenant slug.
    #[arg(long, required_unless_present = "stdin")]
    pub tenant: Option<String>,
    /// Payload, a JSON object.
    #[arg(long, default_value = "{}")]
    pub payload: Option<String>,
    /// Project id (proj-*).
    #[arg(long)]
    pub project: Option<String>,
    /// Module id (module-*).
    #[arg(long)]
    pub module: Option<String>,
    /// Trace id (trace-*); default: a new one.
    #[arg(long)]
    pub trace: Option<String>,
    /// Correlation id (corr-*); default: a new one.
    #[arg(long)]
    pub correlation: Option<String>,
    /// Causation id (an eventId); default: none (a root event).
    #[arg(long)]
    pub causation: Option<String>,
    /// Event id; default: a new UUIDv7 id. Not allowed with --repeat.
    #[arg(long, conflicts_with = "repeat")]
    pub event_id: Option<String>,
    /// Schema version.
    #[arg(long, default_value_t = 1)]
    pub schema_version: u32,
    /// Extra header NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// With --raw: application property NAME=VALUE (repeatable).
    #[arg(long = "prop", value_name = "NAME=VALUE")]
    pub props: Vec<String>,
    /// Deliver not before this time (RFC 3339).
    #[arg(long, conflicts_with = "delay")]
    pub deliver_at: Option<DateTime<Utc>>,
    /// Deliver after this delay (e.g. 5s).
    #[arg(long, value_parser = crate::parse_duration)]
    pub delay: Option<Duration>,
    /// Publish N copies, each with a fresh eventId, one durable publish at a time; prints each
    /// acknowledged eventId (useful for load and crash tests).
    #[arg(long, default_value_t = 1)]
    pub repeat: u64,
}

fn kv(s: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .with_context(|| format!("`{s}` is not NAME=VALUE"))
}

fn build(a: &PublishArgs) -> anyhow::Result<Envelope> {
    let kind = if a.command {
        MessageKind::Command
    } else {
        MessageKind::Event
    };
    let ty = EventType::parse(a.event_type.clone().unwrap_or_default(), kind)?;
    let tenant = TenantId::parse(a.tenant.clone().unwrap_or_default())?;
    let payload: serde_json::Value = serde_json::from_str(a.payload.as_deref().unwrap_or("{}"))
        .context("--payload is not JSON")?;
    let mut env = Envelope::new(ty, tenant, payload);
    if a.command {
        env.headers
            .insert(eventyard::envelope::KIND_HEADER.into(), "command".into());
    }
    if let Some(v) = &a.project {
        env.project_id = Some(ProjectId::parse(v.clone())?);
    }
    if let Some(v) = &a.module {
        env.module_id = Some(ModuleId::parse(v.clone())?);
    }
    if let Some(v) = &a.trace {
        env.trace_id = TraceId::parse(v.clone())?;
    }
    if let Some(v) = &a.correlation {
        env.correlation_id = CorrelationId::parse(v.clone())?;
    }
    if let Some(v) = &a.causation {
        env.causation_id = Some(EventId::parse(v.clone())?);
    }
    if let Some(v) = &a.event_id {
        env.event_id = EventId::parse(v.clone())?;
    }
    env.schema_version = a.schema_version;
    for h in &a.headers {
        let (k, v) = kv(h)?;
        env.headers.insert(k, v);
    }
    env.validate()?;
    Ok(env)
}

/// Runs `yard publish`.
pub async fn run(a: PublishArgs) -> anyhow::Result<ExitCode> {
    let deliver_at = match (a.deliver_at, a.delay) {
        (Some(t), _) => Some(t),
        (None, Some(d)) => Some(Utc::now() + chrono::Duration::from_std(d)?),
        _ => None,
    };
    let mut out = std::io::stdout().lock();
    let mut envelopes: Vec<(Option<Envelope>, Message)> = Vec::new();
    if a.stdin {
        for (i, line) in std::io::stdin().lock().split(b'\n').enumerate() {
            let line = line.context("reading stdin")?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if a.raw {
                let mut props = Properties::new();
                for p in &a.props {
                    let (k, v) = kv(p)?;
                    props.insert(k, PropertyValue::String(v));
                }
                envelopes.push((
                    None,
                    Message {
                        body: line.into(),
                        properties: props,
                    },
                ));
            } else {
                let env = Envelope::from_json(&line)
                    .with_context(|| format!("stdin line {}: not a valid envelope", i + 1))?;
                let msg = Message::from_envelope(&env);
                envelopes.push((Some(env), msg));
            }
        }
        if envelopes.is_empty() {
            bail!("no envelope on stdin");
        }
    } else {
        let env = build(&a)?;
        let msg = Message::from_envelope(&env);
        envelopes.push((Some(env), msg));
    }
    let transport = eventyard::connect(&a.target.url()).await?;
    for (env, msg) in envelopes {
        let topic = match (&a.topic, &env) {
            (Some(t), _) => t.clone(),
            (None, Some(e)) => e.event_type.to_string(),
            (None, None) => bail!("--raw needs --topic"),
        };
        for n in 0..a.repeat.max(1) {
            let (mut env, mut msg) = (env.clone(), msg.clone());
            if n > 0
                && let Some(e) = env.as_mut()
            {
                e.event_id = EventId::generate();
                msg = Message::from_envelope(e);
            }
            transport
                .publish(
                    &topic,
                    vec![OutgoingMessage {
                        message: msg,
                        deliver_at,
                    }],
                )
                .await?;
            let line = serde_json::json!({
                "topic": topic,
                "eventId": env.as_ref().map(|e| e.event_id.to_string()),
                "eventType": env.as_ref().map(|e| e.event_type.to_string()),
            });
            writeln!(out, "{line}")?;
            out.flush()?;
        }
    }
    transport.close().await?;
    Ok(ExitCode::SUCCESS)
}

//! `yard dlq`: inspect and operate dead-letter queues of the embedded store.
//!
//! ```text
//! yard dlq list    [filters] [--json]            dead letters, newest first
//! yard dlq groups  [filters] [--json]            counts by fault fingerprint
//! yard dlq show    SEQ [--json]                  one dead letter, with envelope and error chain
//! yard dlq replay  [filters] [--to SUB] [--dry-run] [--rate N/s] [--yes] [--all]
//! yard dlq purge   [filters] [--dry-run] [--yes] [--all]
//! yard dlq audit   [--limit N] [--json]          who replayed or purged what, and when
//! ```
//!
//! Filters: `--topic --subscription --type --tenant --fingerprint --reason --since --until
//! --limit`; times are RFC 3339 (`2026-11-27T10:00:00Z`), a date (`2026-11-27`), or relative
//! (`30m`, `2h`, `3d`, optionally followed by `ago`). Replay and purge refuse to run without a
//! filter unless `--all`, and ask for confirmation unless `--yes` (or `--dry-run`).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use eventyard::Transport;
use eventyard::sqlite::dlq::{
    self, AuditRecord, DeadLetterEntry, DlqGroup, DlqQuery, PurgeOptions, ReplayOptions,
    ReplayReport,
};
use eventyard::sqlite::{SqliteBroker, SqliteConfig};

use crate::Target;

/// Arguments of `yard dlq`.
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The `yard dlq` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, most recently dead-lettered first (default: at most 100).
    List(ListArgs),
    /// Count dead letters by fault fingerprint and subscription, largest group first.
    Groups(GroupsArgs),
    /// Show one dead letter: fault context, error chain, properties and envelope.
    Show(ShowArgs),
    /// Move dead letters back to their subscription (or another one of the same topic).
    Replay(ReplayArgs),
    /// Delete dead letters.
    Purge(PurgeArgs),
    /// Show the audit trail of replays and purges, newest first.
    Audit(AuditArgs),
}

/// Which dead letters (all filters combine).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filters {
    /// Topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Subscription.
    #[arg(long)]
    pub subscription: Option<String>,
    /// Event type (the envelope's eventType).
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    pub event_type: Option<String>,
    /// Tenant (the envelope's tenantId).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Fault fingerprint (12 hex digits, as `list` and `groups` print it).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Dead-letter reason, e.g. HandlerFailed or MaxDeliveryCountExceeded.
    #[arg(long)]
    pub reason: Option<String>,
    /// Dead-lettered at or after: RFC 3339, a date, or relative (30m, 2h, 3d = that long ago).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered at or before: RFC 3339, a date, or relative (30m, 2h, 3d = that long ago).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub until: Option<DateTime<Utc>>,
    /// At most N dead letters (the most recent ones); for `groups`, at most N groups.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

impl Filters {
    /// The library query.
    pub fn query(&self) -> DlqQuery {
        DlqQuery {
            topic: self.topic.clone(),
            subscription: self.subscription.clone(),
            event_type: self.event_type.clone(),
            tenant: self.tenant.clone(),
            fingerprint: self.fingerprint.clone(),
            reason: self.reason.clone(),
            since: self.since,
            until: self.until,
            limit: self.limit,
        }
    }
}

/// Arguments of `yard dlq list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Where the dead letters are.
    #[command(flatten)]
    pub target: Target,
    /// Which.
    #[command(flatten)]
    pub filters: Filters,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `yard dlq groups`.
#[derive(Debug, clap::Args)]
pub struct GroupsArgs {
    /// Where the dead letters are.
    #[command(flatten)]
    pub target: Target,
    /// Which.
    #[command(flatten)]
    pub filters: Filters,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `yard dlq show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Where the dead letters are.
    #[command(flatten)]
    pub target: Target,
    /// Sequence number of the dead letter (first column of `list`).
    pub seq: u64,
    /// The entry as pretty JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `yard dlq replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Where the dead letters are.
    #[command(flatten)]
    pub target: Target,
    /// Which.
    #[command(flatten)]
    pub filters: Filters,
    /// Deliver to this subscription of the same topic instead of the original one (messages
    /// its filter rejects are skipped).
    #[arg(long, value_name = "SUBSCRIPTION")]
    pub to: Option<String>,
    /// Print what would move; change nothing (still audited, flagged as a dry run).
    #[arg(long)]
    pub dry_run: bool,
    /// At most N messages per second, e.g. 50/s.
    #[arg(long, value_parser = parse_rate, value_name = "N/s")]
    pub rate: Option<u32>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Allow running without any filter (every dead letter of the file).
    #[arg(long)]
    pub all: bool,
    /// Who replays, for the audit trail. Default: $USER@hostname.
    #[arg(long)]
    pub actor: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `yard dlq purge`.
#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    /// Where the dead letters are.
    #[command(flatten)]
    pub target: Target,
    /// Which.
    #[command(flatten)]
    pub filters: Filters,
    /// Print how many would be deleted; delete nothing (still audited, flagged as a dry run).
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Allow running without any filter (every dead letter of the file).
    #[arg(long)]
    pub all: bool,
    /// Who purges, for the audit trail. Default: $USER@hostname.
    #[arg(long)]
    pub actor: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `yard dlq audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Where the dead letters are.
    #[command(flatten)]
    pub target: Target,
    /// The N most recent records.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Default `--limit` of `yard dlq list`.
const LIST_DEFAULT_LIMIT: usize = 100;

/// Parses `--since`/`--until`: RFC 3339, a date (midnight UTC), or a duration ago (`30m`, `2h`,
/// `3d`, `90s ago`).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d")
        && let Some(dt) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(dt.and_utc());
    }
    let rel = t.strip_suffix("ago").unwrap_or(t).trim();
    let ago = match rel.strip_suffix('d') {
        Some(days) => days
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map(|d| std::time::Duration::from_secs_f64(d * 86_400.0)),
        None => crate::duration::parse(rel).ok(),
    }
    .ok_or_else(|| {
        format!(
            "`{s}` is not a time: use RFC 3339 (2026-11-27T10:00:00Z), a date, or 30m/2h/3d ago"
        )
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| format!("`{s}`: too far back"))?;
    Utc::now()
        .checked_sub_signed(ago)
        .ok_or_else(|| format!("`{s}`: too far back"))
}

/// Parses `--rate`: `N` or `N/s`, N ≥ 1.
pub fn parse_rate(s: &str) -> Result<u32, String> {
    let n = s.trim();
    let n = n
        .strip_suffix("/s")
        .or_else(|| n.strip_suffix("/sec"))
        .unwrap_or(n);
    match n.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{s}` is not a rate: use a number of messages per second ≥ 1, e.g. 50/s"
        )),
    }
}

/// Opens the embedded store of `target`; other transports do not support DLQ operations yet.
fn open(target: &Target) -> anyhow::Result<SqliteBroker> {
    let url = target.url();
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("sqlite");
    if scheme != "sqlite" {
        bail!(
            "`{url}`: DLQ operations are only available on the embedded store for now \
             (use --data FILE or --transport sqlite://FILE)"
        );
    }
    let cfg = SqliteConfig::from_url(&url)?;
    if !cfg.path.exists() {
        bail!("data file {} does not exist", cfg.path.display());
    }
    let path = cfg.path.display().to_string();
    SqliteBroker::open(cfg).with_context(|| format!("opening {path}"))
}

/// Runs `yard dlq`.
pub async fn run(a: DlqArgs) -> anyhow::Result<ExitCode> {
    let target = match &a.command {
        DlqCommand::List(x) => &x.target,
        DlqCommand::Groups(x) => &x.target,
        DlqCommand::Show(x) => &x.target,
        DlqCommand::Replay(x) => &x.target,
        DlqCommand::Purge(x) => &x.target,
        DlqCommand::Audit(x) => &x.target,
    };
    let broker = open(target)?;
    let result = match &a.command {
        DlqCommand::List(x) => list(&broker, x).await,
        DlqCommand::Groups(x) => groups(&broker, x).await,
        DlqCommand::Show(x) => show(&broker, x).await,
        DlqCommand::Replay(x) => replay(&broker, x).await,
        DlqCommand::Purge(x) => purge(&broker, x).await,
        DlqCommand::Audit(x) => audit(&broker, x).await,
    };
    broker.close().await?;
    result
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt_ts(t: Option<DateTime<Utc>>) -> String {
    t.map(ts).unwrap_or_else(|| "-".into())
}

/// At most `max` characters of the first line of `s`, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() <= max && line.len() == s.len() {
        return line.to_owned();
    }
    let mut out: String = line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Prints rows as columns separated by two spaces (the last column is not padded).
fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            s.push_str(c);
            if i + 1 < n {
                s.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

async fn list(b: &SqliteBroker, a: &ListArgs) -> anyhow::Result<ExitCode> {
    let mut q = a.filters.query();
    let limit = *q.limit.get_or_insert(LIST_DEFAULT_LIMIT);
    let entries = dlq::list(b, &q).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        for e in &entries {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
    } else if entries.is_empty() {
        writeln!(out, "no dead letters match")?;
    } else {
        let rows: Vec<Vec<String>> = entries.iter().map(list_row).collect();
        table(
            &mut out,
            &[
                "SEQ",
                "DEAD-LETTERED",
                "SUBSCRIPTION",
                "EVENT TYPE",
                "TENANT",
                "REASON",
                "FINGERPRINT",
                "ATTEMPTS",
                "DESCRIPTION",
            ],
            &rows,
        )?;
    }
    if entries.len() == limit && a.filters.limit.is_none() {
        eprintln!("(showing the {limit} most recent; more may match: use --limit N)");
    }
    Ok(ExitCode::SUCCESS)
}

fn list_row(e: &DeadLetterEntry) -> Vec<String> {
    let replayed = if e.replay_count > 0 {
        format!(" (replayed ×{})", e.replay_count)
    } else {
        String::new()
    };
    vec![
        e.seq.to_string(),
        ts(e.dead_lettered_at),
        format!("{}/{}", e.topic, e.subscription),
        dash(&e.event_type),
        dash(&e.tenant),
        e.reason.clone(),
        e.fingerprint.clone(),
        e.attempts
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
        format!("{}{replayed}", shorten(&e.description, 60)),
    ]
}

async fn groups(b: &SqliteBroker, a: &GroupsArgs) -> anyhow::Result<ExitCode> {
    let groups = dlq::groups(b, &a.filters.query()).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        for g in &groups {
            writeln!(out, "{}", serde_json::to_string(g)?)?;
        }
    } else if groups.is_empty() {
        writeln!(out, "no dead letters match")?;
    } else {
        let rows: Vec<Vec<String>> = groups.iter().map(group_row).collect();
        table(
            &mut out,
            &[
                "COUNT",
                "FINGERPRINT",
                "SUBSCRIPTION",
                "REASON",
                "KIND",
                "HANDLER",
                "FIRST",
                "LAST",
                "SAMPLE",
            ],
            &rows,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn group_row(g: &DlqGroup) -> Vec<String> {
    vec![
        g.count.to_string(),
        g.fingerprint.clone(),
        format!("{}/{}", g.topic, g.subscription),
        g.reason.clone(),
        dash(&g.error_kind),
        dash(&g.handler),
        opt_ts(g.first_at),
        opt_ts(g.last_at),
        shorten(&g.sample_description, 60),
    ]
}

async fn show(b: &SqliteBroker, a: &ShowArgs) -> anyhow::Result<ExitCode> {
    let Some(e) = dlq::show(b, a.seq).await? else {
        bail!(
            "no dead letter with seq {} (see `yard dlq list`; it may have been replayed or purged)",
            a.seq
        );
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&e)?)?;
    } else {
        write_entry(&mut out, &e)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_entry(out: &mut impl Write, e: &DeadLetterEntry) -> anyhow::Result<()> {
    let field = |out: &mut dyn Write, k: &str, v: &str| writeln!(out, "{k:<15}{v}");
    field(out, "seq", &e.seq.to_string())?;
    field(out, "topic", &e.topic)?;
    field(out, "subscription", &e.subscription)?;
    field(out, "event id", &dash(&e.event_id))?;
    field(out, "event type", &dash(&e.event_type))?;
    field(out, "tenant", &dash(&e.tenant))?;
    field(out, "reason", &e.reason)?;
    field(out, "fingerprint", &e.fingerprint)?;
    field(out, "error kind", &dash(&e.error_kind))?;
    field(out, "handler", &dash(&e.handler))?;
    let attempts = e.attempts.map(|n| n.to_string());
    field(out, "attempts", &dash(&attempts))?;
    field(out, "enqueued", &ts(e.enqueued_at))?;
    field(out, "first failure", &opt_ts(e.first_failure_at))?;
    field(out, "last failure", &opt_ts(e.last_failure_at))?;
    field(out, "dead-lettered", &ts(e.dead_lettered_at))?;
    let host = match (&e.host, e.pid) {
        (Some(h), Some(p)) => format!("{h} (pid {p})"),
        (Some(h), None) => h.clone(),
        (None, Some(p)) => format!("? (pid {p})"),
        (None, None) => "-".into(),
    };
    field(out, "host", &host)?;
    field(out, "replays", &e.replay_count.to_string())?;
    if let Some(p) = &e.previous {
        writeln!(out, "previous fault (before the last replay)")?;
        writeln!(out, "  reason       {}", p.reason)?;
        writeln!(out, "  fingerprint  {}", dash(&p.fingerprint))?;
        writeln!(out, "  description  {}", dash(&p.description))?;
        writeln!(out, "  source       {}", dash(&p.source))?;
        writeln!(out, "  at           {}", opt_ts(p.dead_lettered_at))?;
        writeln!(
            out,
            "  replayed     {} by {}",
            opt_ts(p.replayed_at),
            dash(&p.replayed_by)
        )?;
    }
    writeln!(out, "description")?;
    writeln!(out, "  {}", e.description)?;
    writeln!(out, "error chain")?;
    if e.errors.is_empty() {
        writeln!(out, "  -")?;
    }
    for (i, err) in e.errors.iter().enumerate() {
        writeln!(out, "  {}. {err}", i + 1)?;
    }
    writeln!(out, "properties")?;
    for (k, v) in e.properties.iter() {
        writeln!(out, "  {k} = {v}")?;
    }
    if let Some(env) = &e.envelope {
        writeln!(out, "envelope")?;
        for l in serde_json::to_string_pretty(env)?.lines() {
            writeln!(out, "  {l}")?;
        }
    } else if let Some(body) = &e.body {
        writeln!(out, "body ({} bytes, not JSON)", e.body_size)?;
        writeln!(out, "  {body}")?;
    }
    if let Some(ctx) = &e.context {
        writeln!(out, "fault context")?;
        for l in serde_json::to_string_pretty(ctx)?.lines() {
            writeln!(out, "  {l}")?;
        }
    }
    for w in &e.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}

/// Asks on the terminal; without one, refuses (pass `--yes`).
fn confirm(action: &str, n: u64) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "refusing to {action} {n} dead letter(s) without confirmation: pass --yes (or --dry-run to preview)"
        );
    }
    eprint!("{action} {n} dead letter(s)? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn require_filter(action: &str, f: &Filters, all: bool) -> anyhow::Result<()> {
    if !all && !f.query().has_filter() {
        bail!(
            "refusing to {action} every dead letter: give a filter (--subscription, --fingerprint, \
             --since, …) or --all"
        );
    }
    Ok(())
}

async fn replay(b: &SqliteBroker, a: &ReplayArgs) -> anyhow::Result<ExitCode> {
    require_filter("replay", &a.filters, a.all)?;
    let q = a.filters.query();
    if !a.dry_run && !a.yes {
        let n = dlq::count(b, &q).await?;
        if n == 0 {
            println!("no dead letters match; nothing to replay");
            return Ok(ExitCode::SUCCESS);
        }
        if !confirm("replay", n)? {
            eprintln!("cancelled");
            return Ok(ExitCode::from(1));
        }
    }
    let opts = ReplayOptions {
        target_subscription: a.to.clone(),
        dry_run: a.dry_run,
        rate_per_sec: a.rate,
        actor: a.actor.clone(),
    };
    let report = dlq::replay(b, &q, opts).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write_replay(&mut out, &report, a.to.as_deref())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_replay(out: &mut impl Write, r: &ReplayReport, to: Option<&str>) -> anyhow::Result<()> {
    if r.dry_run {
        writeln!(
            out,
            "dry run: would replay {} of {} matched dead letter(s); nothing changed (audit #{})",
            r.replayed, r.matched, r.audit_id
        )?;
    } else {
        writeln!(
            out,
            "replayed {} of {} matched dead letter(s) (audit #{})",
            r.replayed, r.matched, r.audit_id
        )?;
    }
    for s in &r.per_subscription {
        writeln!(out, "  {}: {} -> {}  {}", s.topic, s.from, s.to, s.count)?;
    }
    if r.skipped > 0 {
        writeln!(
            out,
            "  {} skipped: the filter of {} does not accept them",
            r.skipped,
            to.unwrap_or("the target subscription")
        )?;
    }
    if r.vanished > 0 {
        writeln!(
            out,
            "  {} were no longer dead-lettered when their turn came",
            r.vanished
        )?;
    }
    Ok(())
}

async fn purge(b: &SqliteBroker, a: &PurgeArgs) -> anyhow::Result<ExitCode> {
    require_filter("purge", &a.filters, a.all)?;
    let q = a.filters.query();
    if !a.dry_run && !a.yes {
        let n = dlq::count(b, &q).await?;
        if n == 0 {
            println!("no dead letters match; nothing to purge");
            return Ok(ExitCode::SUCCESS);
        }
        if !confirm("purge", n)? {
            eprintln!("cancelled");
            return Ok(ExitCode::from(1));
        }
    }
    let opts = PurgeOptions {
        dry_run: a.dry_run,
        actor: a.actor.clone(),
    };
    let n = dlq::purge(b, &q, opts).await?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "purged": n, "dryRun": a.dry_run })
        );
    } else if a.dry_run {
        println!("dry run: would purge {n} dead letter(s); nothing changed");
    } else {
        println!("purged {n} dead letter(s)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit(b: &SqliteBroker, a: &AuditArgs) -> anyhow::Result<ExitCode> {
    let records = dlq::audit(b, a.limit).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        for r in &records {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
    } else if records.is_empty() {
        writeln!(out, "no replays or purges recorded")?;
    } else {
        let rows: Vec<Vec<String>> = records.iter().map(audit_row).collect();
        table(
            &mut out,
            &["ID", "AT", "ACTOR", "ACTION", "AFFECTED", "QUERY"],
            &rows,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn audit_row(r: &AuditRecord) -> Vec<String> {
    let action = if r.dry_run {
        format!("{} (dry run)", r.action)
    } else {
        r.action.clone()
    };
    // Only the options that were set.
    let query = match &r.query {
        serde_json::Value::Object(m) => {
            let set: serde_json::Map<String, serde_json::Value> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            serde_json::Value::Object(set).to_string()
        }
        other => other.to_string(),
    };
    vec![
        r.id.to_string(),
        ts(r.at),
        r.actor.clone(),
        action,
        r.affected.to_string(),
        query,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let t = parse_time("2026-11-27T10:00:00Z").unwrap();
        assert_eq!(ts(t), "2026-11-27T10:00:00Z");
        assert_eq!(
            ts(parse_time("2026-11-27T11:00:00+01:00").unwrap()),
            "2026-11-27T10:00:00Z"
        );
        assert_eq!(
            ts(parse_time("2026-11-27").unwrap()),
            "2026-11-27T00:00:00Z"
        );
        for (s, secs) in [
            ("30m", 1800),
            ("2h", 7200),
            ("3d", 259_200),
            ("90s ago", 90),
        ] {
            let t = parse_time(s).unwrap();
            let ago = (Utc::now() - t).num_seconds();
            assert!((secs..secs + 5).contains(&ago), "{s}: {ago}");
        }
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("-2h").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50/s"), Ok(50));
        assert_eq!(parse_rate("7"), Ok(7));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn shortening() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("0123456789abc", 10), "012345678…");
        assert_eq!(shorten("line one\nline two", 60), "line one…");
        assert_eq!(shorten("éééé", 3), "éé…");
    }
}

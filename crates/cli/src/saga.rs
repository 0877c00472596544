//! `yard saga`: the saga instances of a store, for operators.
//!
//! ```text
//! yard saga list [STORE] [--saga NAME] [--state S] [--completed|--active] [--tenant T]
//!                [--limit N] [--json]          instances, most recently updated first
//! yard saga show KEY [STORE] [--saga NAME] [--json]
//!                                              instance, data, history, pending timeouts
//! STORE: --data PATH (SQLite data file, the default) | --store postgres --url URL [--schema S]
//! ```
//!
//! Both only read: a PostgreSQL schema without saga tables is an error, not created. `show`
//! takes the instance key (the correlationId); when several sagas have an instance with that key
//! it shows each (narrow with `--saga`). A key no saga has is [`SagaCliError::NotFound`], exit
//! code 2; `--json` prints one JSON object per instance.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use eventyard::saga::{
    SagaDetails, SagaError, SagaFilter, SagaHistoryEntry, SagaInstance, SagaStore, ScheduledTimeout,
};
use eventyard::sqlite::{SqliteBroker, SqliteConfig, SqliteSagaStore};
use eventyard::{Transport, TransportError};
use eventyard_postgres::{PgSagaConfig, PgSagaStore};
use serde_json::{Value, json};

use crate::store::StoreKind;

/// Arguments of `yard saga`.
#[derive(Debug, clap::Args)]
pub struct SagaArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SagaCommand,
}

/// The `yard saga` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SagaCommand {
    /// List saga instances, most recently updated first.
    List(ListArgs),
    /// Show one instance (by its key, the correlationId): data, history, pending timeouts.
    Show(ShowArgs),
}

/// Where the sagas are.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The saga store.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Embedded data file (SQLite), with `--store sqlite`.
    #[arg(long, env = "EVENTYARD_DATA", default_value = "eventyard.db")]
    pub data: PathBuf,
    /// PostgreSQL URL (`postgres://user@host:port/db`), with `--store postgres`.
    #[arg(long, env = "EVENTYARD_PG_URL")]
    pub url: Option<String>,
    /// PostgreSQL schema holding the saga tables.
    #[arg(long, env = "EVENTYARD_PG_SCHEMA", default_value = eventyard_postgres::DEFAULT_SCHEMA)]
    pub schema: String,
}

/// Arguments of `yard saga list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Where the sagas are.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only instances of this saga definition.
    #[arg(long)]
    pub saga: Option<String>,
    /// Only instances in this state.
    #[arg(long)]
    pub state: Option<String>,
    /// Only completed instances.
    #[arg(long, conflicts_with = "active")]
    pub completed: bool,
    /// Only running (not completed) instances.
    #[arg(long)]
    pub active: bool,
    /// Only instances of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// At most N instances (0: all).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `yard saga show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The instance key (its correlationId).
    pub key: String,
    /// Where the sagas are.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only the instance of this saga definition.
    #[arg(long)]
    pub saga: Option<String>,
    /// One JSON object per instance instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why `yard saga` failed.
#[derive(Debug)]
pub enum SagaCliError {
    /// The data file does not exist.
    NoDataFile(PathBuf),
    /// The file is not an eventyard data file (or is unreadable as one).
    BadDataFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `--store postgres` without `--url`.
    MissingUrl,
    /// No instance has the key (of the saga, when one was named).
    NotFound {
        /// The key asked for.
        key: String,
        /// The saga asked for.
        saga: Option<String>,
    },
    /// The store failed.
    Store(SagaError),
}

impl fmt::Display for SagaCliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SagaCliError::NoDataFile(p) => write!(f, "data file {} does not exist", p.display()),
            SagaCliError::BadDataFile { path, reason } => write!(
                f,
                "{} is not a readable eventyard data file: {reason}",
                path.display()
            ),
            SagaCliError::MissingUrl => {
                f.write_str("--store postgres needs --url (or EVENTYARD_PG_URL)")
            }
            SagaCliError::NotFound { key, saga: None } => {
                write!(f, "no saga instance has the key `{key}`")
            }
            SagaCliError::NotFound { key, saga: Some(s) } => {
                write!(f, "saga `{s}` has no instance with the key `{key}`")
            }
            SagaCliError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SagaCliError {}

impl From<SagaError> for SagaCliError {
    fn from(e: SagaError) -> Self {
        SagaCliError::Store(e)
    }
}

/// An opened saga store.
enum Store {
    Sqlite(SqliteSagaStore),
    Postgres(PgSagaStore),
}

impl StoreArgs {
    /// Opens the store for reading (creates no PostgreSQL table).
    async fn open(&self) -> Result<Store, SagaCliError> {
        match self.store {
            StoreKind::Sqlite => {
                if !self.data.exists() {
                    return Err(SagaCliError::NoDataFile(self.data.clone()));
                }
                let bad = |reason: String| SagaCliError::BadDataFile {
                    path: self.data.clone(),
                    reason,
                };
                let broker = SqliteBroker::open(SqliteConfig::new(&self.data)).map_err(|e| {
                    bad(match e {
                        TransportError::InvalidDataFile { reason, .. } => reason,
                        other => other.to_string(),
                    })
                })?;
                let store = SqliteSagaStore::open(broker)
                    .await
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Store::Sqlite(store))
            }
            StoreKind::Postgres => {
                let url = self.url.as_deref().ok_or(SagaCliError::MissingUrl)?;
                let config = PgSagaConfig {
                    migrate: false,
                    pool_size: 2,
                    connect_attempts: 1,
                    application_name: "yard-saga".into(),
                    ..PgSagaConfig::with_schema(&self.schema)
                };
                Ok(Store::Postgres(PgSagaStore::connect(url, config).await?))
            }
        }
    }
}

impl Store {
    fn sagas(&self) -> &dyn SagaStore {
        match self {
            Store::Sqlite(s) => s,
            Store::Postgres(s) => s,
        }
    }

    /// The sagas having an instance `key`, sorted.
    async fn sagas_with_key(&self, key: &str) -> Result<Vec<String>, SagaCliError> {
        match self {
            Store::Postgres(s) => Ok(s.sagas_with_key(key).await?),
            Store::Sqlite(s) => {
                let key = key.to_owned();
                let found = s
                    .broker()
                    .transaction(move |tx| {
                        let mut st = tx.prepare(
                            "SELECT saga FROM saga_instances WHERE key = ?1 ORDER BY saga",
                        )?;
                        let rows = st.query_map([&key], |r| r.get::<_, String>(0))?;
                        rows.collect::<Result<Vec<_>, rusqlite::Error>>()
                    })
                    .await
                    .map_err(|e| SagaError::Unavailable(e.to_string()))?;
                found.map_err(|e| SagaError::Storage(e.to_string()).into())
            }
        }
    }

    async fn close(self) {
        if let Store::Sqlite(s) = self {
            let _ = s.broker().close().await;
        }
    }
}

/// Runs `yard saga`.
pub async fn run(args: SagaArgs) -> anyhow::Result<ExitCode> {
    let result = match args.command {
        SagaCommand::List(a) => list(a).await,
        SagaCommand::Show(a) => show(a).await,
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ SagaCliError::NotFound { .. }) => {
            eprintln!("yard: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

/// The filter `list` asks for.
pub fn filter(a: &ListArgs) -> SagaFilter {
    SagaFilter {
        saga: a.saga.clone(),
        state: a.state.clone(),
        completed: if a.completed {
            Some(true)
        } else if a.active {
            Some(false)
        } else {
            None
        },
        tenant: a.tenant.clone(),
        limit: a.limit,
    }
}

async fn list(a: ListArgs) -> Result<(), SagaCliError> {
    let store = a.store.open().await?;
    let found = store.sagas().list(&filter(&a)).await;
    store.close().await;
    let found = found?;
    let mut out = std::io::stdout().lock();
    let w = if a.json {
        found
            .iter()
            .try_for_each(|i| writeln!(out, "{}", instance_json(i)))
    } else {
        write_list(&mut out, &found)
    };
    w.map_err(io_error)?;
    if !a.json && a.limit > 0 && found.len() == a.limit as usize {
        eprintln!(
            "(the first {} instances; --limit 0 lists them all)",
            a.limit
        );
    }
    Ok(())
}

async fn show(a: ShowArgs) -> Result<(), SagaCliError> {
    let store = a.store.open().await?;
    let result = details_of(&store, &a).await;
    store.close().await;
    let all = result?;
    let mut out = std::io::stdout().lock();
    let now = Utc::now();
    for (n, d) in all.iter().enumerate() {
        let w = if a.json {
            writeln!(out, "{}", details_json(d))
        } else {
            if n > 0 {
                let _ = writeln!(out);
            }
            write_details(&mut out, d, now)
        };
        w.map_err(io_error)?;
    }
    Ok(())
}

/// The details of every instance with the key (of the named saga).
async fn details_of(store: &Store, a: &ShowArgs) -> Result<Vec<SagaDetails>, SagaCliError> {
    let sagas = match &a.saga {
        Some(s) => vec![s.clone()],
        None => store.sagas_with_key(&a.key).await?,
    };
    let mut all = Vec::new();
    for saga in sagas {
        if let Some(d) = store.sagas().details(&saga, &a.key).await? {
            all.push(d);
        }
    }
    if all.is_empty() {
        return Err(SagaCliError::NotFound {
            key: a.key.clone(),
            saga: a.saga.clone(),
        });
    }
    Ok(all)
}

fn io_error(e: std::io::Error) -> SagaCliError {
    SagaCliError::Store(SagaError::Storage(format!("writing the output: {e}")))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// One instance as JSON (camelCase, like the envelope).
pub fn instance_json(i: &SagaInstance) -> Value {
    json!({
        "saga": i.saga,
        "key": i.key,
        "tenant": i.tenant,
        "state": i.state,
        "version": i.version,
        "createdAt": time(i.created_at),
        "updatedAt": time(i.updated_at),
        "completed": i.completed,
        "data": i.data,
    })
}

fn history_json(h: &SagaHistoryEntry) -> Value {
    json!({
        "version": h.version,
        "eventId": h.event_id,
        "eventType": h.event_type,
        "from": h.from_state,
        "to": h.to_state,
        "at": time(h.at),
    })
}

fn timeout_json(t: &ScheduledTimeout) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "dueAt": time(t.due_at),
        "eventType": t.envelope.event_type.to_string(),
    })
}

/// An instance with its history and timeouts as JSON.
pub fn details_json(d: &SagaDetails) -> Value {
    let mut v = instance_json(&d.instance);
    v["history"] = d.history.iter().map(history_json).collect();
    v["timeouts"] = d.timeouts.iter().map(timeout_json).collect();
    v
}

/// Writes rows as left-aligned columns, two spaces apart, each line prefixed by `indent`.
fn write_table(
    out: &mut impl Write,
    indent: &str,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::from(indent);
        for (n, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(cell);
            if n < last {
                s.push_str(&" ".repeat(w - cell.chars().count() + 2));
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

fn write_list(out: &mut impl Write, found: &[SagaInstance]) -> std::io::Result<()> {
    if found.is_empty() {
        return writeln!(out, "no saga instances match");
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|i| {
            vec![
                i.saga.clone(),
                i.key.clone(),
                i.tenant.clone(),
                i.state.clone(),
                i.version.to_string(),
                time(i.updated_at),
                yes_no(i.completed).to_owned(),
            ]
        })
        .collect();
    write_table(
        out,
        "",
        &[
            "SAGA",
            "KEY",
            "TENANT",
            "STATE",
            "VERSION",
            "UPDATED",
            "COMPLETED",
        ],
        &rows,
    )
}

/// `in 5m03s` / `3s ago (overdue)`, to read due times at a glance.
fn relative(due: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (due - now).num_seconds();
    let human = |s: i64| match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    };
    if secs >= 0 {
        format!("in {}", human(secs))
    } else {
        format!("{} ago (overdue)", human(-secs))
    }
}

fn write_details(out: &mut impl Write, d: &SagaDetails, now: DateTime<Utc>) -> std::io::Result<()> {
    let i = &d.instance;
    for (label, value) in [
        ("saga", i.saga.clone()),
        ("key", i.key.clone()),
        ("tenant", i.tenant.clone()),
        ("state", i.state.clone()),
        ("version", i.version.to_string()),
        ("created", time(i.created_at)),
        ("updated", time(i.updated_at)),
        ("completed", yes_no(i.completed).to_owned()),
    ] {
        writeln!(out, "{label:<10} {value}")?;
    }
    writeln!(out, "data")?;
    let data = serde_json::to_string_pretty(&i.data).unwrap_or_else(|_| i.data.to_string());
    for line in data.lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "history ({})", d.history.len())?;
    let rows: Vec<Vec<String>> = d
        .history
        .iter()
        .map(|h| {
            vec![
                h.version.to_string(),
                h.event_type.clone(),
                format!(
                    "{} → {}",
                    h.from_state.as_deref().unwrap_or("(start)"),
                    h.to_state
                ),
                time(h.at),
                h.event_id.clone(),
            ]
        })
        .collect();
    write_table(
        out,
        "  ",
        &["VERSION", "EVENT TYPE", "FROM → TO", "AT", "EVENT ID"],
        &rows,
    )?;
    writeln!(out, "pending timeouts ({})", d.timeouts.len())?;
    if !d.timeouts.is_empty() {
        let rows: Vec<Vec<String>> = d
            .timeouts
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    time(t.due_at),
                    relative(t.due_at, now),
                    t.id.clone(),
                ]
            })
            .collect();
        write_table(out, "  ", &["NAME", "DUE", "WHEN", "ID"], &rows)?;
    }
    Ok(())
}

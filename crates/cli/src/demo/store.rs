//! The platforms' own state in the data file, and how they produce events: each producing
//! service writes its state change and its outgoing events in *one* transaction — behind the
//! idempotent inbox (key, state row and outbox records commit together or not at all) — and the
//! demo's relay publishes the outbox to the chosen transport afterwards (SPEC §3: transactional
//! outbox + idempotent consumer). A redelivery or duplicate of a handled event finds its inbox
//! key and commits nothing again, so no event is produced twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use eventyard::outbox::PendingEvent;
use eventyard::sqlite::outbox;
use eventyard::sqlite::rusqlite::{Transaction, params};
use eventyard::sqlite::{InboxOutcome, SqliteBroker};
use eventyard::{Bus, Envelope, HandlerError, MessageContext};

/// Each producing platform's table (one row per aggregate: its latest state) and the prefix of
/// its aggregate ids.
pub const TABLES: &[(&str, &str, &str)] = &[
    ("api", "demo_projects", "proj"),
    // The Control Plane's policy and approval steps (its workflows are saga instances).
    ("control-plane", "demo_approvals", "apr"),
    ("agent-mesh", "demo_agent_tasks", "task"),
    ("knowledge", "demo_knowledge_items", "kn"),
    ("devops", "demo_pipelines", "pipe"),
    ("runtime", "demo_runtime_deployments", "dep"),
    ("observability", "demo_signals", "obs"),
];

fn table_of(platform: &str) -> (&'static str, &'static str) {
    TABLES
        .iter()
        .find(|(p, _, _)| *p == platform)
        .map(|(_, t, a)| (*t, *a))
        .unwrap_or(("demo_other", "agg"))
}

/// The aggregate a platform changes for one workflow run: `<prefix>-<end of the correlationId>`.
pub fn aggregate_id(platform: &str, env: &Envelope) -> String {
    let corr = env.correlation_id.as_str();
    format!("{}-{}", table_of(platform).1, &corr[corr.len() - 8..])
}

/// What one platform step committed (stored with its inbox key, returned again for duplicates).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Committed {
    /// The aggregate changed.
    pub aggregate: String,
    /// Its new state.
    pub state: String,
    /// Events recorded in the outbox with the change.
    pub events: usize,
}

/// [`Committed`], and whether the inbox answered a duplicate instead of committing.
#[derive(Debug, Clone)]
pub struct Applied {
    /// What was committed (the first time).
    pub committed: Committed,
    /// True: this delivery was a duplicate; nothing was committed now.
    pub duplicate: bool,
}

impl Applied {
    /// For progress lines.
    pub fn describe(&self) -> String {
        let c = &self.committed;
        if self.duplicate {
            format!(
                "duplicate: the inbox returned {}={}, nothing committed again",
                c.aggregate, c.state
            )
        } else {
            format!(
                "tx: {}={} + {} event(s) to the outbox",
                c.aggregate, c.state, c.events
            )
        }
    }
}

/// The demo's state that handlers share: the data file (state, inbox, outbox) and the "bug fix"
/// switch.
pub struct Shared {
    /// The embedded store holding the platforms' tables, the inbox and the outbox.
    pub broker: SqliteBroker,
    /// False until the demo "deploys the fix" of the alerting handler.
    pub alerting_fixed: AtomicBool,
    /// Events committed to the outbox by this run.
    pub committed: AtomicU64,
}

impl Shared {
    /// Shared state over `broker`.
    pub fn new(broker: SqliteBroker) -> Arc<Self> {
        Arc::new(Shared {
            broker,
            alerting_fixed: AtomicBool::new(false),
            committed: AtomicU64::new(0),
        })
    }

    /// Creates the platforms' tables.
    pub async fn create_tables(&self) -> anyhow::Result<()> {
        let sql: String = TABLES
            .iter()
            .map(|(_, t, _)| {
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                         tenant TEXT NOT NULL, aggregate_id TEXT NOT NULL, state TEXT NOT NULL,
                         version INTEGER NOT NULL, last_event_id TEXT NOT NULL,
                         updated_at TEXT NOT NULL, PRIMARY KEY (tenant, aggregate_id));"
                )
            })
            .collect();
        self.broker
            .transaction(move |tx| tx.execute_batch(&sql))
            .await??;
        Ok(())
    }

    /// The root producer (the API creating a project): its project row and the event, in one
    /// transaction.
    pub async fn commit_root(&self, bus: &Bus, env: &Envelope) -> anyhow::Result<Committed> {
        let pending = vec![PendingEvent::new(bus.topic_for(env)?, env)?];
        let c = Committed {
            aggregate: aggregate_id("api", env),
            state: "created".into(),
            events: 1,
        };
        let (tenant, event_id) = (env.tenant_id.to_string(), env.event_id.to_string());
        let row = c.clone();
        self.broker
            .transaction(move |tx| write(tx, "api", &tenant, &row, &event_id, &pending))
            .await?
            .map_err(anyhow::Error::msg)?;
        self.committed.fetch_add(1, Ordering::Relaxed);
        Ok(c)
    }

    /// A platform step: its state change (`state` of its aggregate for this run) and the events
    /// it produces, committed in one transaction behind the inbox. The events inherit tenant,
    /// trace and correlation from the handled event and get it as their causation (the bus does
    /// that for direct publishes; here they go through the outbox).
    pub async fn apply(
        &self,
        ctx: &MessageContext,
        platform: &'static str,
        state: &str,
        out: Vec<Envelope>,
    ) -> Result<Applied, HandlerError> {
        let cause = ctx.envelope();
        let mut pending = Vec::with_capacity(out.len());
        for mut env in out {
            env.inherit_from(cause);
            let topic = ctx
                .bus()
                .topic_for(&env)
                .map_err(|e| HandlerError::validation(e.to_string()))?;
            pending.push(
                PendingEvent::new(topic, &env)
                    .map_err(|e| HandlerError::validation(e.to_string()))?,
            );
        }
        let committed = Committed {
            aggregate: aggregate_id(platform, cause),
            state: state.to_owned(),
            events: pending.len(),
        };
        let (tenant, event_id) = (cause.tenant_id.to_string(), cause.event_id.to_string());
        let row = committed.clone();
        let outcome = self
            .broker
            .inbox()
            .run(cause, ctx.handler_name(), &committed.aggregate, move |tx| {
                write(tx, platform, &tenant, &row, &event_id, &pending)?;
                Ok::<_, String>(row)
            })
            .await
            .map_err(|e| HandlerError::transient(e.to_string()))?;
        Ok(match outcome {
            InboxOutcome::Applied(c) => {
                self.committed.fetch_add(c.events as u64, Ordering::Relaxed);
                Applied {
                    committed: c,
                    duplicate: false,
                }
            }
            InboxOutcome::Duplicate(c) => Applied {
                committed: c,
                duplicate: true,
            },
        })
    }

    /// Rows of every platform table for `tenant`, as `(table, aggregate, state, version)`.
    pub async fn rows(&self, tenant: &str) -> anyhow::Result<Vec<(String, String, String, i64)>> {
        let tenant = tenant.to_owned();
        let rows = self
            .broker
            .transaction(move |tx| {
                let mut out = Vec::new();
                for (_, t, _) in TABLES {
                    let mut s = tx.prepare(&format!(
                        "SELECT aggregate_id, state, version FROM {t} WHERE tenant = ?1
                         ORDER BY aggregate_id"
                    ))?;
                    let r = s.query_map([&tenant], |r| {
                        Ok(((*t).to_owned(), r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                    for row in r {
                        out.push(row?);
                    }
                }
                Ok::<_, eventyard::sqlite::rusqlite::Error>(out)
            })
            .await??;
        Ok(rows)
    }
}

/// Upserts the aggregate's row and records the events, inside `tx`.
fn write(
    tx: &Transaction<'_>,
    platform: &str,
    tenant: &str,
    c: &Committed,
    event_id: &str,
    pending: &[PendingEvent],
) -> Result<(), String> {
    let (table, _) = table_of(platform);
    tx.execute(
        &format!(
            "INSERT INTO {table} (tenant, aggregate_id, state, version, last_event_id, updated_at)
             VALUES (?1, ?2, ?3, 1, ?4, ?5)
             ON CONFLICT (tenant, aggregate_id) DO UPDATE SET state = excluded.state,
                 version = version + 1, last_event_id = excluded.last_event_id,
                 updated_at = excluded.updated_at"
        ),
        params![
            tenant,
            c.aggregate,
            c.state,
            event_id,
            chrono::Utc::now().to_rfc3339()
        ],
    )
    .map_err(|e| e.to_string())?;
    outbox::add_all(tx, pending).map_err(|e| e.to_string())?;
    Ok(())
}

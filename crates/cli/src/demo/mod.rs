//! `yard demo`: the reference factory scenario (SPEC §7) on the embedded broker.
//!
//! Platform services (Control Plane, Agent Mesh, Knowledge, DevOps, Runtime, Observability) run
//! as handlers exchanging the scenario's events for tenant `connectsoft` (project
//! `proj-booking-saas`, module `module-reservations-api`) while a second tenant runs the same
//! scenario at the same time. Every subscription is filtered on `cs-tenant-id`; an
//! `observability.lineage` subscription per tenant on every topic records what it sees, which
//! gives the causal chain printed at the end and the tenant-isolation check.

mod events;
mod platforms;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventyard::lineage::CausalGraph;
use eventyard::sqlite::dlq::{self, DlqQuery, ReplayOptions};
use eventyard::sqlite::{SqliteBroker, SqliteConfig};
use eventyard::{
    Bus, Envelope, HandlerError, MessageContext, ModuleId, ProjectId, TenantId, TraceId,
};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

pub use events::*;

/// Arguments of `yard demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the data file at PATH for later inspection (default: a temporary file, removed).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The second tenant, running concurrently and invisible to the first.
    #[arg(long, default_value = "acme-robotics")]
    pub other_tenant: String,
    /// Give up if the scenario has not completed within this time.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// Print no per-event progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// What the demo observed.
pub struct Recorder {
    start: Instant,
    quiet: bool,
    /// (subscriber tenant, envelope) for every envelope the lineage subscriptions received.
    seen: Mutex<Vec<(TenantId, Envelope)>>,
    /// Envelopes that reached a subscriber of another tenant (must stay empty).
    violations: Mutex<Vec<(TenantId, Envelope)>>,
    duplicates: std::sync::atomic::AtomicU64,
    changed: Notify,
}

impl Recorder {
    fn new(quiet: bool) -> Self {
        Recorder {
            start: Instant::now(),
            quiet,
            seen: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            duplicates: std::sync::atomic::AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// Prints a progress line with the elapsed time.
    pub fn progress(&self, line: String) {
        if !self.quiet {
            println!(
                "{:>8.1} ms  {line}",
                self.start.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    /// Counts a duplicate delivery answered by the inbox.
    pub fn duplicate(&self) {
        self.duplicates
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Records a tenant-isolation violation.
    pub fn violation(&self, subscriber: &TenantId, env: &Envelope) {
        let mut v = self.violations.lock().unwrap_or_else(|p| p.into_inner());
        v.push((subscriber.clone(), env.clone()));
    }

    fn record(&self, subscriber: &TenantId, env: &Envelope) {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.push((subscriber.clone(), env.clone()));
        drop(s);
        self.changed.notify_waiters();
    }

    fn of_trace(&self, trace: &TraceId) -> Vec<Envelope> {
        let s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.iter()
            .filter(|(_, e)| &e.trace_id == trace)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn complete(&self, trace: &TraceId) -> bool {
        let types: HashSet<String> = self
            .of_trace(trace)
            .iter()
            .map(|e| e.event_type.to_string())
            .collect();
        ALL_TYPES.iter().all(|t| types.contains(*t))
    }
}

/// One lineage subscription per topic for `tenant`: records everything it receives.
async fn lineage(bus: &Bus, rec: &Arc<Recorder>, tenant: &TenantId) -> anyhow::Result<()> {
    for topic in ALL_TYPES {
        let rec = rec.clone();
        let mine = tenant.clone();
        bus.subscription(format!("observability.lineage.{tenant}"))
            .topic(*topic)
            .tenant(tenant.clone())
            .cross_platform()
            .handle_envelopes(move |env: Envelope, _ctx: MessageContext| {
                let rec = rec.clone();
                let mine = mine.clone();
                async move {
                    if env.tenant_id != mine {
                        rec.violation(&mine, &env);
                        return Err(HandlerError::security("cross-tenant envelope"));
                    }
                    rec.record(&mine, &env);
                    Ok(())
                }
            })
            .await?;
    }
    Ok(())
}

/// Runs `yard demo`.
pub async fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let path = a
        .data
        .clone()
        .unwrap_or_else(|| tmp.path().join("eventyard-demo.db"));
    let tenant = TenantId::parse("connectsoft")?;
    let other = TenantId::parse(a.other_tenant.clone()).context("--other-tenant")?;
    if other == tenant {
        bail!("--other-tenant must differ from connectsoft");
    }
    println!("eventyard demo — the reference factory scenario (SPEC §7)");
    println!("data file: {} (WAL, synchronous=FULL)", path.display());
    println!("tenants:   {tenant} (observed) and {other} (concurrent, must stay invisible)\n");

    let broker = SqliteBroker::open(SqliteConfig::new(&path))?;
    platforms::create_tables(&broker).await?;
    let bus = Bus::new(Arc::new(broker.clone()));
    let rec = Arc::new(Recorder::new(a.quiet));
    let shared = Arc::new(platforms::Shared {
        broker: broker.clone(),
        alerting_fixed: AtomicBool::new(false),
    });
    for t in [&tenant, &other] {
        platforms::wire(&bus, &rec, &shared, t).await?;
        lineage(&bus, &rec, t).await?;
    }

    let started = Instant::now();
    let project = ProjectId::parse("proj-booking-saas")?;
    let module = ModuleId::parse("module-reservations-api")?;
    let mut traces = BTreeMap::new();
    for t in [&tenant, &other] {
        let root = Envelope::for_event(
            &ProjectCreated {
                project_name: "booking-saas".into(),
                blueprint: "saas-booking-blueprint".into(),
            },
            t.clone(),
        )?
        .with_project(project.clone())
        .with_module(module.clone());
        traces.insert(t.clone(), root.trace_id.clone());
        rec.progress(format!(
            "[{:<11}] {:<13} publishes ProjectCreated (root, trace {})",
            t.as_str(),
            "api",
            root.trace_id
        ));
        bus.publish_envelope(root).await?;
    }

    let deadline = tokio::time::Instant::now() + a.timeout;
    // Step 6: the poison message. Wait for it in the dead-letter queue, "deploy the fix", replay.
    let poison_sub = format!("observability.alerting.{tenant}");
    let dlq_query = DlqQuery::new().subscription(poison_sub.clone());
    let poisoned = loop {
        let found = dlq::list(&broker, &dlq_query).await?;
        if let Some(entry) = found.into_iter().next() {
            break entry;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = bus.shutdown().await;
            bail!("the poison message never reached the dead-letter queue of {poison_sub}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    rec.progress(format!(
        "[{:<11}] {:<13} dead-letter queue of {poison_sub}: seq {} reason {} fingerprint {} after {} attempt(s): {}",
        tenant.as_str(),
        "operator",
        poisoned.seq,
        poisoned.reason,
        poisoned.fingerprint,
        poisoned.attempts.unwrap_or(0),
        poisoned.description
    ));
    shared.alerting_fixed.store(true, Ordering::SeqCst);
    rec.progress(format!(
        "[{:<11}] {:<13} fix deployed to observability.alerting; replaying its dead letters",
        tenant.as_str(),
        "operator"
    ));
    let report = dlq::replay(
        &broker,
        &dlq_query,
        ReplayOptions {
            actor: Some("yard-demo".into()),
            ..Default::default()
        },
    )
    .await?;
    rec.progress(format!(
        "[{:<11}] {:<13} replayed {} of {} dead letter(s) (same eventId, marked cs-replayed; audit #{})",
        tenant.as_str(),
        "operator",
        report.replayed,
        report.matched,
        report.audit_id
    ));
    loop {
        let notified = rec.changed.notified();
        if traces.values().all(|tr| rec.complete(tr)) {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let _ = bus.shutdown().await;
            bail!(
                "the scenario did not complete within {:?} (see the progress above)",
                a.timeout
            );
        }
    }
    let elapsed = started.elapsed();
    // Let in-flight acknowledgements land before reading counters.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts = bus.consumer_counts();
    bus.shutdown().await?;

    let main_trace = &traces[&tenant];
    let envs = rec.of_trace(main_trace);
    let graph = CausalGraph::from_envelopes(envs.clone());
    println!("\ncausal chain of {tenant}'s run (trace {main_trace}):");
    println!("{}", graph.render_tree(&Default::default()));

    let violations = rec.violations.lock().map(|v| v.len()).unwrap_or(usize::MAX);
    let other_envs = rec.of_trace(&traces[&other]);
    println!("summary");
    let other_graph = CausalGraph::from_envelopes(other_envs);
    println!("  events ({tenant}):      {}", graph.len());
    println!("  events ({other}):  {}", other_graph.len());
    println!(
        "  elapsed:                {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    let rejected: u64 = counts.iter().map(|(_, _, c)| c.tenant_rejected).sum();
    println!(
        "  tenant isolation:       {} cross-tenant deliveries ({} stopped by tenant guards; every subscription filters on cs-tenant-id)",
        violations, rejected
    );
    println!(
        "  duplicate delivery:     DeploymentPromoted published twice with one eventId → applied once per tenant ({} duplicates answered by the inbox)",
        rec.duplicates.load(Ordering::Relaxed)
    );
    println!(
        "  poison message:         TraceRecorded dead-lettered ({}), replayed after the fix, then handled",
        poisoned.reason
    );
    println!("  per subscription (acked / retried / dead-lettered):");
    let mut per: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for (topic, sub, c) in counts {
        let key = if sub.starts_with("observability.lineage.") {
            format!("{sub} (×{} topics)", ALL_TYPES.len())
        } else {
            format!("{sub} ← {topic}")
        };
        let e = per.entry(key).or_default();
        e.0 += c.acked;
        e.1 += c.retried;
        e.2 += c.dead_lettered;
    }
    for (k, (a, r, d)) in per {
        println!("    {k:<72} {a:>3} / {r} / {d}");
    }
    if let Some(p) = &a.data {
        println!(
            "\ndata kept at {} — try: yard tail --data {} --topic ProjectCreated",
            p.display(),
            p.display()
        );
    }
    if violations > 0 {
        bail!("tenant isolation violated {violations} time(s)");
    }
    Ok(ExitCode::SUCCESS)
}

//! `yard demo`: the reference factory scenario (SPEC §7) on the embedded broker, or on RabbitMQ
//! or NATS JetStream with `--transport URL`.
//!
//! Platform services (Control Plane, Agent Mesh, Knowledge, DevOps, Runtime, Observability) run
//! as handlers exchanging the scenario's events for tenant `connectsoft` (project
//! `proj-booking-saas`, module `module-reservations-api`) while a second tenant runs the same
//! scenario at the same time. Every subscription is filtered on `cs-tenant-id`; an
//! `observability.lineage` subscription per tenant on every topic records what it sees, which
//! gives the causal chain printed at the end and the tenant-isolation check.
//!
//! The Control Plane's workflows are instances of the `WorkflowInstance` saga (`workflow`),
//! stored in the data file: besides the reference scenario's (Created → … → AwaitingApproval →
//! Completed), the observed tenant runs one workflow whose step times out and one whose approval
//! is auto-rejected; `yard saga list/show --data PATH` inspects them afterwards.
//!
//! Producers never publish directly: each writes its state change and its events in one
//! transaction of the SQLite data file, behind the inbox (`store`), and a relay started by the
//! demo publishes the outbox to the transport — whichever it is, the data file holds the state,
//! inbox and outbox.

mod backend;
mod dead_letters;
mod events;
mod platforms;
mod store;
mod workflow;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventyard::lineage::CausalGraph;
use eventyard::outbox::{OutboxStatus, OutboxStore};
use eventyard::saga::SagaInstance;
use eventyard::sqlite::{SqliteBroker, SqliteConfig};
use eventyard::{
    Bus, ConsumerCounts, Envelope, HandlerError, MessageContext, ModuleId, ProjectId, Relay,
    RelayConfig, RelayHandle, TenantId, TraceId,
};
use tokio::sync::Notify;

use backend::{Backend, Kind};
use store::Shared;
use workflow::{PLANNED, Planned, Workflows};

pub use events::*;

/// Arguments of `yard demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the data file at PATH for later inspection (default: a temporary file, removed).
    /// It holds the platforms' state, the workflow sagas (`yard saga list --data PATH`), the
    /// inbox and the outbox (and, without --transport, the broker).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run on this transport instead of the data file's embedded broker: amqp://… (RabbitMQ),
    /// nats://… (NATS JetStream) or sqlite://OTHER.db. On RabbitMQ and NATS every name gets a
    /// prefix unique to the run; what the run created is deleted at the end.
    #[arg(long)]
    pub transport: Option<String>,
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

/// What the lineage subscriptions saw.
#[derive(Default)]
struct Seen {
    /// (subscriber tenant, envelope), first sighting of each event only.
    list: Vec<(TenantId, Envelope)>,
    /// (subscriber tenant, eventId) already recorded.
    ids: HashSet<(TenantId, String)>,
    /// Further copies of an event already seen (a duplicate publish, a replay to the topic).
    copies: u64,
}

/// What the demo observed.
pub struct Recorder {
    start: Instant,
    quiet: bool,
    seen: Mutex<Seen>,
    /// Envelopes that reached a subscriber of another tenant (must stay empty).
    violations: Mutex<Vec<(TenantId, Envelope)>>,
    duplicates: AtomicU64,
    changed: Notify,
}

impl Recorder {
    fn new(quiet: bool) -> Self {
        Recorder {
            start: Instant::now(),
            quiet,
            seen: Mutex::new(Seen::default()),
            violations: Mutex::new(Vec::new()),
            duplicates: AtomicU64::new(0),
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
        self.duplicates.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Records a tenant-isolation violation.
    pub fn violation(&self, subscriber: &TenantId, env: &Envelope) {
        let mut v = self.violations.lock().unwrap_or_else(|p| p.into_inner());
        v.push((subscriber.clone(), env.clone()));
    }

    fn record(&self, subscriber: &TenantId, env: &Envelope) {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if s.ids.insert((subscriber.clone(), env.event_id.to_string())) {
            s.list.push((subscriber.clone(), env.clone()));
        } else {
            s.copies += 1;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    fn of_trace(&self, trace: &TraceId) -> Vec<Envelope> {
        let s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.list
            .iter()
            .filter(|(_, e)| &e.trace_id == trace)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// True once the lineage saw every type of `types` in `trace`.
    fn complete(&self, trace: &TraceId, types: &[&str]) -> bool {
        let seen: HashSet<String> = self
            .of_trace(trace)
            .iter()
            .map(|e| e.event_type.to_string())
            .collect();
        types.iter().all(|t| seen.contains(*t))
    }
}

/// One lineage subscription per topic for `tenant`: records everything it receives.
async fn lineage(bus: &Bus, rec: &Arc<Recorder>, tenant: &TenantId) -> anyhow::Result<()> {
    let subs = topics().into_iter().map(|topic| {
        let rec = rec.clone();
        let mine = tenant.clone();
        bus.subscription(format!("observability.lineage.{tenant}"))
            .topic(topic)
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
    });
    futures::future::try_join_all(subs).await?;
    Ok(())
}

/// Everything a run holds.
struct Run {
    tenant: TenantId,
    other: TenantId,
    broker: SqliteBroker,
    backend: Backend,
    bus: Bus,
    rec: Arc<Recorder>,
    shared: Arc<Shared>,
    /// The Control Plane's WorkflowInstance saga.
    workflows: Workflows,
    timeout: Duration,
}

/// One workflow the run started.
struct Started {
    tenant: TenantId,
    plan: &'static Planned,
    key: String,
    trace: TraceId,
}

/// What the scenario produced, for the summary.
struct Outcome {
    traces: BTreeMap<TenantId, TraceId>,
    /// Every workflow with its saga instance at the end.
    workflows: Vec<(Started, Option<SagaInstance>)>,
    elapsed: Duration,
    poison_reason: String,
    counts: Vec<(String, String, ConsumerCounts)>,
    /// The outbox at the end.
    outbox: OutboxStatus,
    /// The observed tenant's platform rows: (table, aggregate, state, version).
    rows: Vec<(String, String, String, i64)>,
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
    // The platforms' state, the inbox and the outbox.
    let store = SqliteBroker::open(SqliteConfig::new(&path))?;
    let backend = backend::open(a.transport.as_deref(), &store).await?;
    println!("transport: {}", backend.describe());
    println!(
        "data file: {} (WAL, synchronous=FULL; platform state, workflow sagas, inbox and outbox{})",
        path.display(),
        if backend.kind == Kind::Embedded {
            ", and the broker"
        } else {
            ""
        }
    );
    println!("tenants:   {tenant} (observed) and {other} (concurrent, must stay invisible)\n");

    let shared = Shared::new(store.clone());
    shared.create_tables().await?;
    let bus = Bus::new(backend.transport.clone());
    let rec = Arc::new(Recorder::new(a.quiet));
    // The saga's instances, history and timeouts live in the data file too (same handle).
    let workflows = Workflows::start(&store, &bus, &rec).await?;
    let run = Run {
        tenant,
        other,
        bus,
        broker: store.clone(),
        backend,
        rec,
        shared,
        workflows,
        timeout: a.timeout,
    };
    // The relay publishes what the platforms commit to the outbox, to the run's transport.
    let relay = Relay::spawn(
        Arc::new(store.outbox()),
        run.backend.transport.clone(),
        RelayConfig {
            name: "yard-demo".into(),
            poll_interval: Duration::from_millis(100),
            cleaner: None,
            ..RelayConfig::default()
        },
    );
    // Interrupted, the run still stops and deletes what it created on the broker.
    let result = tokio::select! {
        r = scenario(&run, &relay) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let subscriptions: Vec<(String, String)> = run
        .bus
        .consumer_counts()
        .into_iter()
        .map(|(topic, sub, _)| (topic, sub))
        .collect();
    run.workflows.stop().await;
    let relayed = relay.counts();
    relay.shutdown().await;
    let shut = run.bus.shutdown().await;
    let cleaning = Instant::now();
    let cleanup = format!(
        "{} ({:.0} ms)",
        run.backend.cleanup(&subscriptions, &topics()).await,
        cleaning.elapsed().as_secs_f64() * 1e3
    );
    if run.backend.kind != Kind::Embedded {
        // The bus closed the transport; the data file's handle is closed here.
        let _ = eventyard::Transport::close(&run.broker).await;
    }
    if result.is_err() && run.backend.url.is_some() {
        eprintln!("cleanup: {cleanup}");
    }
    let outcome = result?;
    shut?;
    summary(&run, &outcome, relayed.dispatched, &cleanup);
    if let Some(p) = &a.data {
        let p = p.display();
        let key = outcome
            .workflows
            .iter()
            .find(|(w, _)| w.plan.expected_state == "TimedOut")
            .map_or("<correlationId>", |(w, _)| w.key.as_str());
        if run.backend.kind == Kind::Embedded {
            println!(
                "\ndata kept at {p} — try: yard tail --data {p} --topic ProjectCreated; yard outbox status --data {p}"
            );
        } else {
            println!(
                "\ndata kept at {p} (state, sagas, inbox, outbox) — try: yard outbox status --data {p}"
            );
        }
        println!("workflow instances: yard saga list --data {p}; yard saga show {key} --data {p}");
    } else {
        println!(
            "\n(run with --data PATH to keep the data file, then: yard saga list --data PATH; yard saga show <correlationId> --data PATH)"
        );
    }
    let violations = run.rec.violations.lock().map(|v| v.len()).unwrap_or(1);
    if violations > 0 {
        bail!("tenant isolation violated {violations} time(s)");
    }
    let off: Vec<String> = outcome
        .workflows
        .iter()
        .filter(|(w, i)| i.as_ref().map(|i| i.state.as_str()) != Some(w.plan.expected_state))
        .map(|(w, i)| {
            format!(
                "{} ({}) is {}, not {}",
                w.plan.label,
                w.key,
                i.as_ref().map_or("absent", |i| i.state.as_str()),
                w.plan.expected_state
            )
        })
        .collect();
    if !off.is_empty() {
        bail!(
            "workflow instances did not end as expected: {}",
            off.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Steps 1–6: publishes both roots, handles the poison message, waits for both runs and for the
/// outbox to drain.
async fn scenario(run: &Run, relay: &RelayHandle) -> anyhow::Result<Outcome> {
    let (bus, rec) = (&run.bus, &run.rec);
    let wiring = Instant::now();
    let mut subs: Vec<futures::future::BoxFuture<'_, anyhow::Result<()>>> = Vec::new();
    for t in [&run.tenant, &run.other] {
        subs.push(Box::pin(platforms::wire(bus, rec, &run.shared, t)));
        subs.push(Box::pin(run.workflows.wire(bus, t)));
        subs.push(Box::pin(lineage(bus, rec, t)));
    }
    futures::future::try_join_all(subs).await?;
    rec.progress(format!(
        "{} subscriptions declared and consuming ({:.0} ms); outbox relay running",
        bus.consumer_counts().len(),
        wiring.elapsed().as_secs_f64() * 1e3
    ));
    let started = Instant::now();
    let mut traces = BTreeMap::new();
    let mut workflows: Vec<Started> = Vec::new();
    // The reference scenario for both tenants, then the observed tenant's two other workflows.
    let roots = [(&run.tenant, &PLANNED[0]), (&run.other, &PLANNED[0])]
        .into_iter()
        .chain(PLANNED[1..].iter().map(|p| (&run.tenant, p)));
    for (t, plan) in roots {
        let root = Envelope::for_event(
            &ProjectCreated {
                project_name: plan.project_name.into(),
                blueprint: plan.blueprint.into(),
            },
            t.clone(),
        )?
        .with_project(ProjectId::parse(plan.project_id)?)
        .with_module(ModuleId::parse(plan.module_id)?);
        let key = root.correlation_id.to_string();
        run.workflows.label(&key, plan.label);
        if std::ptr::eq(plan, &PLANNED[0]) {
            traces.insert(t.clone(), root.trace_id.clone());
        }
        workflows.push(Started {
            tenant: t.clone(),
            plan,
            key: key.clone(),
            trace: root.trace_id.clone(),
        });
        let c = run.shared.commit_root(bus, &root).await?;
        rec.progress(format!(
            "[{:<11}] {:<13} commits ProjectCreated {} (root, blueprint {}, {key}, trace {}; tx: {}={} + 1 event to the outbox)",
            t.as_str(),
            "api",
            plan.project_id,
            plan.blueprint,
            root.trace_id,
            c.aggregate,
            c.state
        ));
    }

    let deadline = tokio::time::Instant::now() + run.timeout;
    // Step 6: the poison message. Wait for it in the dead-letter queue, "deploy the fix", replay.
    let embedded = run.backend.embedded.as_ref();
    let transport = &*run.backend.transport;
    let poison_sub = format!("observability.alerting.{}", run.tenant);
    let found =
        dead_letters::wait(embedded, transport, "TraceRecorded", &poison_sub, deadline).await?;
    let who = |line: String| format!("[{:<11}] {:<13} {line}", run.tenant.as_str(), "operator");
    rec.progress(who(format!(
        "dead-letter queue of {poison_sub}: {}",
        found.line
    )));
    run.shared.alerting_fixed.store(true, Ordering::SeqCst);
    rec.progress(who(
        "fix deployed to observability.alerting; replaying its dead letters".into(),
    ));
    let replayed = found.poisoned.replay(embedded, transport).await?;
    rec.progress(who(replayed));

    loop {
        let notified = rec.changed.notified();
        if workflows
            .iter()
            .all(|w| rec.complete(&w.trace, &w.plan.expected_types()))
        {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            bail!(
                "the scenario did not complete within {:?} (see the progress above)",
                run.timeout
            );
        }
    }
    // Every workflow instance reached a final state (the saga may still be taking the last
    // event of a trace whose other events were all seen).
    let mut instances = Vec::with_capacity(workflows.len());
    for w in workflows {
        let instance = loop {
            let i = run.workflows.load(&w.key).await?;
            if i.as_ref().is_some_and(|i| i.completed) || tokio::time::Instant::now() >= deadline {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        instances.push((w, instance));
    }
    let elapsed = started.elapsed();
    // The duplicate promotions: wait (briefly) until the inbox answered both, unless the broker
    // deduplicated them itself (NATS: Nats-Msg-Id = eventId).
    let wanted = if run.backend.kind == Kind::Nats { 0 } else { 2 };
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while rec.duplicates.load(Ordering::Relaxed) < wanted && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The outbox drains: everything committed was relayed.
    let outbox = run.broker.outbox();
    loop {
        let status = outbox.status().await?;
        let committed = run.shared.committed.load(Ordering::Relaxed) + run.workflows.committed();
        if status.pending == 0 && relay.counts().dispatched >= committed {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the outbox did not drain: {status:?}, {committed} committed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let in-flight acknowledgements land before reading counters.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Outcome {
        traces,
        workflows: instances,
        elapsed,
        poison_reason: found.reason,
        counts: bus.consumer_counts(),
        outbox: outbox.status().await?,
        rows: run.shared.rows(run.tenant.as_str()).await?,
    })
}

/// Prints the causal chain and the summary.
fn summary(run: &Run, o: &Outcome, relayed: u64, cleanup: &str) {
    let (tenant, other, rec) = (&run.tenant, &run.other, &run.rec);
    let main_trace = &o.traces[tenant];
    let graph = CausalGraph::from_envelopes(rec.of_trace(main_trace));
    println!("\ncausal chain of {tenant}'s run (trace {main_trace}):");
    println!("{}", graph.render_tree(&Default::default()));

    // The workflows that did not complete: their chains end at the fired timeout.
    for (w, i) in o
        .workflows
        .iter()
        .filter(|(w, _)| !std::ptr::eq(w.plan, &PLANNED[0]))
    {
        let g = CausalGraph::from_envelopes(rec.of_trace(&w.trace));
        println!(
            "causal chain of {}'s {} workflow ({}, trace {}):",
            w.tenant,
            w.plan.label,
            i.as_ref().map_or("no instance", |i| i.state.as_str()),
            w.trace
        );
        println!("{}", g.render_tree(&Default::default()));
    }

    let violations = rec.violations.lock().map(|v| v.len()).unwrap_or(usize::MAX);
    let other_graph = CausalGraph::from_envelopes(rec.of_trace(&o.traces[other]));
    println!("summary");
    println!("  transport:              {}", run.backend.describe());
    println!("  events ({tenant}):      {}", graph.len());
    println!("  events ({other}):  {}", other_graph.len());
    println!(
        "  elapsed:                {:.1} ms",
        o.elapsed.as_secs_f64() * 1e3
    );
    let rejected: u64 = o.counts.iter().map(|(_, _, c)| c.tenant_rejected).sum();
    println!(
        "  tenant isolation:       {} cross-tenant deliveries ({} stopped by tenant guards; every subscription filters on cs-tenant-id)",
        violations, rejected
    );
    let duplicates = rec.duplicates.load(Ordering::Relaxed);
    if run.backend.kind == Kind::Nats && duplicates == 0 {
        println!(
            "  duplicate delivery:     DeploymentPromoted published twice with one eventId → applied once per tenant (NATS JetStream dropped the second publish itself: Nats-Msg-Id = eventId, so the inbox saw no duplicate)"
        );
    } else {
        println!(
            "  duplicate delivery:     DeploymentPromoted published twice with one eventId → applied once per tenant ({duplicates} duplicates answered by the inbox)"
        );
    }
    println!(
        "  poison message:         TraceRecorded dead-lettered ({}), replayed after the fix, then handled",
        o.poison_reason
    );
    let status = &o.outbox;
    let by_saga = run.workflows.committed();
    println!(
        "  outbox:                 {} events committed with their state changes (one transaction each; {by_saga} by the WorkflowInstance saga) / {} relayed to {} / backlog {} ({} parked)",
        run.shared.committed.load(Ordering::Relaxed) + by_saga,
        relayed,
        run.backend.transport.capabilities().name,
        status.pending,
        status.parked
    );
    println!(
        "  workflow instances (saga {}, in the data file; correlationId = state, version):",
        workflow::SAGA
    );
    for (w, i) in &o.workflows {
        let (state, version, outcome) = i.as_ref().map_or(("(none)".into(), 0, None), |i| {
            (
                i.state.clone(),
                i.version,
                i.data
                    .get("outcome")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
            )
        });
        let ok = if state == w.plan.expected_state {
            ""
        } else {
            "  ✗ UNEXPECTED"
        };
        println!(
            "    {:<15} {:<17} {} = {state} (v{version}){}{ok}",
            format!("[{}]", w.tenant),
            w.plan.label,
            w.key,
            outcome.map_or(String::new(), |o| format!(" — {o}")),
        );
    }
    println!("  platform state of {tenant} (table: aggregate = state, version):");
    for (table, agg, state, v) in &o.rows {
        println!("    {table:<26} {agg} = {state} (v{v})");
    }
    let copies = rec.seen.lock().map(|s| s.copies).unwrap_or(0);
    println!(
        "  lineage observer:       {copies} extra copies of already-seen events ignored (duplicate publish, replay)"
    );
    println!("  cleanup:                {cleanup}");
    println!("  per subscription (acked / retried / dead-lettered):");
    // Per subscription name: its topics and the sums of its consumers' counters.
    let mut per: BTreeMap<&str, (Vec<&str>, u64, u64, u64)> = BTreeMap::new();
    for (topic, sub, c) in &o.counts {
        let e = per.entry(sub.as_str()).or_default();
        e.0.push(topic);
        e.1 += c.acked;
        e.2 += c.retried;
        e.3 += c.dead_lettered;
    }
    for (sub, (topics, a, r, d)) in per {
        let k = match topics.as_slice() {
            [one] => format!("{sub} ← {one}"),
            many => format!("{sub} (×{} topics)", many.len()),
        };
        println!("    {k:<72} {a:>3} / {r} / {d}");
    }
}

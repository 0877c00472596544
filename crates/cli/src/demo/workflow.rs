//! The Control Plane's `WorkflowInstance` saga (SPEC §3), declared with eventyard-saga and stored
//! in the demo's data file (`SqliteSagaStore` on the same broker handle as the platforms' state,
//! inbox and outbox). Every transition commits the instance's new state, its history entry, the
//! events it emits (outbox → relay → transport, like the other producers) and its timeouts in
//! one transaction.
//!
//! The saga moves on the event that reports each step; its own events come back to it through
//! the bus, so a state is entered once its event is really out:
//!
//! ```text
//! ProjectCreated           (start)          → Created           emits WorkflowInstanceStarted
//! WorkflowInstanceStarted  Created          → Running           emits WorkflowStepReady
//! WorkflowStepReady        Running          → AssigningTask     emits AgentTaskAssigned
//! AgentTaskAssigned        AssigningTask    → AwaitingAgent     step timeout armed
//! AgentTaskCompleted       AwaitingAgent    → Running           step timeout cancelled
//! PolicyDecisionRecorded   Running          → Running           emits ApprovalRequested
//! ApprovalRequested        Running          → AwaitingApproval  auto-reject timeout armed
//! ApprovalGranted          AwaitingApproval → Completed
//! ApprovalRejected         AwaitingApproval → Rejected
//! WorkflowStepTimedOut ⏱   AssigningTask|AwaitingAgent → TimedOut   publishes WorkflowStepTimedOut
//! ApprovalTimedOut ⏱       AwaitingApproval → Rejected      publishes ApprovalTimedOut + ApprovalRejected
//! ```
//!
//! A fired timeout is published as it is (same eventId), so the causal chain runs from the event
//! that armed it. Events that overtake their predecessor (an `ApprovalGranted` before the saga
//! handled `ApprovalRequested`) are faulted and redelivered shortly ([`Policy::Fault`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventyard::saga::{SagaInstance, SagaStore, ScheduledTimeout};
use eventyard::sqlite::{SqliteBroker, SqliteSagaStore};
use eventyard::{Bus, Envelope, HandlerError, MessageContext, RetryPolicy, TenantId};
use eventyard_saga::{
    EngineOptions, Handled, Policy, SagaDefinition, SagaEngine, SagaEngineError, SchedulerHandle,
    SchedulerOptions, TimeoutScheduler, TimeoutTarget,
};
use serde::{Deserialize, Serialize};

use super::Recorder;
use super::events::*;

/// The saga's name (the `saga` column of `yard saga list`).
pub const SAGA: &str = "WorkflowInstance";

/// The states, in the order of the happy path, then the other final states.
pub const STATES: &[&str] = &[
    "Created",
    "Running",
    "AssigningTask",
    "AwaitingAgent",
    "AwaitingApproval",
    "Completed",
    "TimedOut",
    "Rejected",
];

/// The short timeouts of the demo's failure paths.
pub const SHORT_TIMEOUT_MS: u64 = 1_500;
/// The timeouts of the happy path: far beyond any run, cancelled when the awaited event comes.
pub const LONG_TIMEOUT_MS: u64 = 60_000;

/// A workflow definition of the Control Plane's catalog, chosen by the project's blueprint.
#[derive(Debug, Clone, Copy)]
pub struct Blueprint {
    /// The blueprint named by ProjectCreated.
    pub blueprint: &'static str,
    /// workflowDefinitionId.
    pub definition_id: &'static str,
    /// workflowDefinitionVersion.
    pub definition_version: &'static str,
    /// The step the workflow runs.
    pub step_id: &'static str,
    /// The agent assigned to it.
    pub agent_id: &'static str,
    /// How long the agent has to complete the step.
    pub step_timeout_ms: u64,
    /// The approval gate the release waits at.
    pub gate: &'static str,
    /// How long the gate waits for a decision before auto-rejecting.
    pub approval_timeout_ms: u64,
}

/// The catalog: the reference scenario's bootstrap, and the two failure paths of the demo.
pub const BLUEPRINTS: &[Blueprint] = &[
    Blueprint {
        blueprint: "saas-booking-blueprint",
        definition_id: "wfd-project-bootstrap",
        definition_version: "4.1.0",
        step_id: "generate-reservations-api",
        agent_id: "agent-backend-developer",
        step_timeout_ms: LONG_TIMEOUT_MS,
        gate: "release",
        approval_timeout_ms: LONG_TIMEOUT_MS,
    },
    // Its agent has no worker online: the step times out.
    Blueprint {
        blueprint: "legacy-port-blueprint",
        definition_id: "wfd-legacy-port",
        definition_version: "2.0.3",
        step_id: "port-billing-batch",
        agent_id: "agent-cobol-migrator",
        step_timeout_ms: SHORT_TIMEOUT_MS,
        gate: "release",
        approval_timeout_ms: LONG_TIMEOUT_MS,
    },
    // Its gate has no approver on duty: the approval auto-rejects.
    Blueprint {
        blueprint: "pci-payments-blueprint",
        definition_id: "wfd-project-bootstrap",
        definition_version: "4.1.0",
        step_id: "generate-payments-api",
        agent_id: "agent-backend-developer",
        step_timeout_ms: LONG_TIMEOUT_MS,
        gate: "pci-release",
        approval_timeout_ms: SHORT_TIMEOUT_MS,
    },
];

/// The blueprint named `name` (the first, the default, when unknown).
pub fn blueprint(name: &str) -> &'static Blueprint {
    BLUEPRINTS
        .iter()
        .find(|b| b.blueprint == name)
        .unwrap_or(&BLUEPRINTS[0])
}

/// A workflow the demo starts: one ProjectCreated root, one correlationId, one instance.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    /// For progress lines and the summary.
    pub label: &'static str,
    /// projectId of the root.
    pub project_id: &'static str,
    /// moduleId of the root.
    pub module_id: &'static str,
    /// ProjectCreated.projectName.
    pub project_name: &'static str,
    /// ProjectCreated.blueprint.
    pub blueprint: &'static str,
    /// The final state the instance must reach.
    pub expected_state: &'static str,
    /// Its trace, once it is over, holds the first `scenario_types` of [`ALL_TYPES`] (in
    /// causal order) …
    pub scenario_types: usize,
    /// … and these.
    pub then_types: &'static [&'static str],
}

impl Planned {
    /// The event types of its trace once it is over.
    pub fn expected_types(&self) -> Vec<&'static str> {
        ALL_TYPES[..self.scenario_types]
            .iter()
            .chain(self.then_types)
            .copied()
            .collect()
    }
}

/// The workflows of the observed tenant: the reference scenario first (the other tenant runs
/// only that one), then a step that times out and an approval that is rejected.
pub static PLANNED: &[Planned] = &[
    Planned {
        label: "booking-saas",
        project_id: "proj-booking-saas",
        module_id: "module-reservations-api",
        project_name: "booking-saas",
        blueprint: "saas-booking-blueprint",
        expected_state: "Completed",
        scenario_types: ALL_TYPES.len(),
        then_types: &[],
    },
    Planned {
        label: "legacy-billing",
        project_id: "proj-legacy-billing",
        module_id: "module-billing-batch",
        project_name: "legacy-billing",
        blueprint: "legacy-port-blueprint",
        expected_state: "TimedOut",
        // Up to AgentTaskAssigned.
        scenario_types: 4,
        then_types: &["WorkflowStepTimedOut"],
    },
    Planned {
        label: "payments-gateway",
        project_id: "proj-payments-gateway",
        module_id: "module-payments-api",
        project_name: "payments-gateway",
        blueprint: "pci-payments-blueprint",
        expected_state: "Rejected",
        // Up to ApprovalRequested.
        scenario_types: 11,
        then_types: &["ApprovalTimedOut", "ApprovalRejected"],
    },
];

/// The saga's data (stored as JSON with the instance; `yard saga show` prints it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowData {
    /// `wfi-…`.
    pub workflow_instance_id: String,
    /// The workflow definition run.
    pub workflow_definition_id: String,
    /// Its version.
    pub workflow_definition_version: String,
    /// The project's blueprint.
    pub blueprint: String,
    /// The current step.
    pub step_id: String,
    /// The agent assigned to it.
    pub agent_id: String,
    /// The agent task.
    pub task_id: String,
    /// Step timeout.
    pub step_timeout_ms: u64,
    /// Steps the agents completed.
    pub steps_completed: u32,
    /// The approval gate.
    pub gate: String,
    /// The approval asked for at the gate.
    pub approval_id: String,
    /// Auto-reject timeout of the gate.
    pub approval_timeout_ms: u64,
    /// Who approved.
    pub approved_by: Option<String>,
    /// How the workflow ended.
    pub outcome: Option<String>,
}

/// `wfi-<end of the correlationId>`: the workflow instance id of the instance keyed `key`.
pub fn instance_id(key: &str) -> String {
    format!("wfi-{}", &key[key.len().saturating_sub(8)..])
}

/// The `WorkflowInstance` saga.
pub fn definition() -> SagaDefinition<WorkflowData> {
    SagaDefinition::<WorkflowData>::new(SAGA)
        .states(STATES.iter().copied())
        .finals(["Completed", "TimedOut", "Rejected"])
        // An event for a correlation no workflow runs is none of the Control Plane's business.
        .on_unknown(Policy::Ignore)
        // One that overtook its predecessor is redelivered shortly.
        .on_unexpected(Policy::Fault)
        .start_on::<ProjectCreated>()
        .then(|e, d, step| {
            let b = blueprint(&e.blueprint);
            *d = WorkflowData {
                workflow_instance_id: instance_id(step.key()),
                workflow_definition_id: b.definition_id.into(),
                workflow_definition_version: b.definition_version.into(),
                blueprint: b.blueprint.into(),
                step_id: b.step_id.into(),
                agent_id: b.agent_id.into(),
                step_timeout_ms: b.step_timeout_ms,
                gate: b.gate.into(),
                approval_timeout_ms: b.approval_timeout_ms,
                ..WorkflowData::default()
            };
            step.publish(&WorkflowInstanceStarted {
                workflow_instance_id: d.workflow_instance_id.clone(),
                workflow_definition_id: d.workflow_definition_id.clone(),
                workflow_definition_version: d.workflow_definition_version.clone(),
            })
        })
        .go_to("Created")
        .on::<WorkflowInstanceStarted>(["Created"])
        .then(|_, d, step| {
            step.publish(&WorkflowStepReady {
                workflow_instance_id: d.workflow_instance_id.clone(),
                step_id: d.step_id.clone(),
            })
        })
        .go_to("Running")
        .on::<WorkflowStepReady>(["Running"])
        .then(|e, d, step| {
            d.task_id = format!("task-{}", e.step_id);
            step.publish(&AgentTaskAssigned {
                task_id: d.task_id.clone(),
                agent_id: d.agent_id.clone(),
                step_id: e.step_id.clone(),
            })
        })
        .go_to("AssigningTask")
        .on::<AgentTaskAssigned>(["AssigningTask"])
        .then(|e, d, step| {
            step.schedule(
                Duration::from_millis(d.step_timeout_ms),
                &WorkflowStepTimedOut {
                    workflow_instance_id: d.workflow_instance_id.clone(),
                    step_id: e.step_id.clone(),
                    task_id: e.task_id.clone(),
                    agent_id: e.agent_id.clone(),
                    timeout_ms: d.step_timeout_ms,
                },
            )
        })
        .go_to("AwaitingAgent")
        .on::<AgentTaskCompleted>(["AwaitingAgent"])
        .when(|e, d| e.task_id == d.task_id)
        .then(|_, d, step| {
            step.cancel::<WorkflowStepTimedOut>();
            d.steps_completed += 1;
            Ok(())
        })
        .go_to("Running")
        .on_timeout::<WorkflowStepTimedOut>(["AssigningTask", "AwaitingAgent"])
        .then(|e, d, step| {
            d.outcome = Some(format!(
                "step {} timed out: {} did not complete {} within {} ms",
                e.step_id, e.agent_id, e.task_id, e.timeout_ms
            ));
            step.publish_fired::<WorkflowStepTimedOut>()
        })
        .go_to("TimedOut")
        .on::<PolicyDecisionRecorded>(["Running"])
        .when(|e, _| e.decision == "RequiresApproval")
        .then(|_, d, step| {
            d.approval_id = format!("apr-{}-{}", d.gate, &d.workflow_instance_id[4..]);
            step.publish(&ApprovalRequested {
                approval_id: d.approval_id.clone(),
                gate: d.gate.clone(),
            })
        })
        .stay()
        .on::<PolicyDecisionRecorded>(["Running"])
        .then(|e, d, _| {
            d.outcome = Some(format!("policy {} decided {}", e.policy_id, e.decision));
            Ok(())
        })
        .go_to("Completed")
        .on::<ApprovalRequested>(["Running"])
        .when(|e, d| e.approval_id == d.approval_id)
        .then(|e, d, step| {
            step.schedule(
                Duration::from_millis(d.approval_timeout_ms),
                &ApprovalTimedOut {
                    approval_id: e.approval_id.clone(),
                    gate: e.gate.clone(),
                    timeout_ms: d.approval_timeout_ms,
                },
            )
        })
        .go_to("AwaitingApproval")
        .on::<ApprovalGranted>(["AwaitingApproval"])
        .when(|e, d| e.approval_id == d.approval_id)
        .then(|e, d, _| {
            d.approved_by = Some(e.approver.clone());
            d.outcome = Some(format!("approved at gate {} by {}", d.gate, e.approver));
            Ok(())
        })
        .go_to("Completed")
        .on::<ApprovalRejected>(["AwaitingApproval"])
        .when(|e, d| e.approval_id == d.approval_id)
        .then(|e, d, _| {
            d.outcome = Some(format!(
                "rejected at gate {} by {}: {}",
                d.gate, e.rejected_by, e.reason
            ));
            Ok(())
        })
        .go_to("Rejected")
        .on_timeout::<ApprovalTimedOut>(["AwaitingApproval"])
        .then(|e, d, step| {
            let reason = format!("no decision within {} ms: auto-rejected", e.timeout_ms);
            d.outcome = Some(format!("rejected at gate {}: {reason}", e.gate));
            step.publish_fired::<ApprovalTimedOut>()?;
            step.publish(&ApprovalRejected {
                approval_id: e.approval_id.clone(),
                reason,
                rejected_by: "approval-gate".into(),
            })
        })
        .go_to("Rejected")
        .build()
        .expect("the WorkflowInstance saga is a valid definition")
}

/// The events a transition (handling `event_type`, entering `to`) emits, in order — for the
/// progress lines and the count of events committed (the tests check it against the outbox).
pub fn emits(event_type: &str, to: &str) -> &'static [&'static str] {
    match (event_type, to) {
        ("ProjectCreated", _) => &["WorkflowInstanceStarted"],
        ("WorkflowInstanceStarted", _) => &["WorkflowStepReady"],
        ("WorkflowStepReady", _) => &["AgentTaskAssigned"],
        ("PolicyDecisionRecorded", "Running") => &["ApprovalRequested"],
        ("WorkflowStepTimedOut", _) => &["WorkflowStepTimedOut"],
        ("ApprovalTimedOut", _) => &["ApprovalTimedOut", "ApprovalRejected"],
        _ => &[],
    }
}

/// What else a transition does, for progress lines.
fn effect(event_type: &str, to: &str, env: &Envelope) -> String {
    let ms = |field: &str| env.payload.get(field).and_then(serde_json::Value::as_str);
    match event_type {
        "AgentTaskAssigned" => {
            let step = ms("stepId").unwrap_or_default();
            let b = BLUEPRINTS
                .iter()
                .find(|b| b.step_id == step)
                .unwrap_or(&BLUEPRINTS[0]);
            format!("step timeout armed: {}", human(b.step_timeout_ms))
        }
        "AgentTaskCompleted" => "step timeout cancelled".into(),
        "WorkflowStepTimedOut" => "publishes the fired WorkflowStepTimedOut (same eventId)".into(),
        "ApprovalTimedOut" => {
            "publishes the fired ApprovalTimedOut (same eventId) + ApprovalRejected".into()
        }
        "ApprovalRequested" => {
            let gate = ms("gate").unwrap_or_default();
            let t = BLUEPRINTS
                .iter()
                .find(|b| b.gate == gate)
                .map_or(LONG_TIMEOUT_MS, |b| b.approval_timeout_ms);
            format!("approval gate {gate}: auto-reject in {}", human(t))
        }
        _ => {
            let e = emits(event_type, to);
            if e.is_empty() {
                String::new()
            } else {
                format!("emits {}", e.join(" + "))
            }
        }
    }
}

fn human(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1e3)
    }
}

/// The running saga of a demo: engine, timeout scheduler, and what progress lines need.
pub struct Workflows {
    engine: SagaEngine<WorkflowData>,
    store: Arc<dyn SagaStore>,
    scheduler: Mutex<Option<SchedulerHandle>>,
    printer: Printer,
}

/// Prints transitions and counts the events they committed.
#[derive(Clone)]
struct Printer {
    rec: Arc<Recorder>,
    labels: Arc<Mutex<HashMap<String, &'static str>>>,
    /// Events the saga committed to the outbox.
    committed: Arc<AtomicU64>,
}

impl Printer {
    fn handled(&self, env: &Envelope, h: &Handled, timeout: bool) {
        let (key, from, to) = match h {
            Handled::Started { key, state } => (key, "(start)", state.as_str()),
            Handled::Moved { key, from, to, .. } => (key, from.as_str(), to.as_str()),
            _ => return,
        };
        let ty = env.event_type.as_str();
        self.committed
            .fetch_add(emits(ty, to).len() as u64, Ordering::Relaxed);
        let label = self
            .labels
            .lock()
            .map(|l| l.get(key).copied().unwrap_or(""))
            .unwrap_or("");
        let effect = effect(ty, to, env);
        self.rec.progress(format!(
            "[{:<11}] {:<13} {:<26} ⇒ {SAGA} {label} …{}: {from} → {to}{}{}",
            env.tenant_id.as_str(),
            "control-plane",
            if timeout {
                format!("{ty} ⏱")
            } else {
                ty.to_owned()
            },
            &key[key.len().saturating_sub(6)..],
            if effect.is_empty() { "" } else { "; " },
            effect
        ));
    }
}

/// The scheduler's view of the saga: fires through the engine, prints what happened.
#[derive(Clone)]
struct PrintingTarget {
    engine: SagaEngine<WorkflowData>,
    printer: Printer,
}

impl TimeoutTarget for PrintingTarget {
    fn saga(&self) -> &str {
        self.engine.name()
    }

    fn fire<'a>(
        &'a self,
        timeout: &'a ScheduledTimeout,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Handled, SagaEngineError>> + Send + 'a>> {
        Box::pin(async move {
            let r = TimeoutTarget::fire(&self.engine, timeout).await;
            if let Ok(h) = &r {
                self.printer.handled(&timeout.envelope, h, true);
            }
            r
        })
    }

    fn set_wakeup(&self, notify: Arc<tokio::sync::Notify>) {
        TimeoutTarget::set_wakeup(&self.engine, notify);
    }
}

impl Workflows {
    /// The saga over the data file `broker` (same handle as the platforms' state and outbox),
    /// emitting with `bus`'s topology; its timeout scheduler runs until [`Workflows::stop`].
    pub async fn start(
        broker: &SqliteBroker,
        bus: &Bus,
        rec: &Arc<Recorder>,
    ) -> anyhow::Result<Self> {
        let store: Arc<dyn SagaStore> = Arc::new(SqliteSagaStore::open(broker.clone()).await?);
        let engine = SagaEngine::with_options(
            definition(),
            store.clone(),
            EngineOptions {
                bus: Some(bus.clone()),
                ..EngineOptions::default()
            },
        );
        let printer = Printer {
            rec: rec.clone(),
            labels: Arc::default(),
            committed: Arc::default(),
        };
        let scheduler = TimeoutScheduler::new(store.clone())
            .options(SchedulerOptions {
                poll: Duration::from_millis(200),
                ..SchedulerOptions::default()
            })
            .register(&PrintingTarget {
                engine: engine.clone(),
                printer: printer.clone(),
            })
            .start();
        Ok(Workflows {
            engine,
            store,
            scheduler: Mutex::new(Some(scheduler)),
            printer,
        })
    }

    /// Names the workflow keyed `key` in progress lines.
    pub fn label(&self, key: &str, label: &'static str) {
        if let Ok(mut l) = self.printer.labels.lock() {
            l.insert(key.to_owned(), label);
        }
    }

    /// Events the saga committed to the outbox so far.
    pub fn committed(&self) -> u64 {
        self.printer.committed.load(Ordering::Relaxed)
    }

    /// Subscribes the saga for `tenant`: subscription `control-plane.workflow-instance.<tenant>`
    /// on each topic it handles, filtered on the tenant and guarded like every handler.
    pub async fn wire(&self, bus: &Bus, tenant: &TenantId) -> anyhow::Result<()> {
        let name = format!("control-plane.workflow-instance.{tenant}");
        let subs = self
            .engine
            .definition()
            .subscribed_event_types()
            .into_iter()
            .map(|ty| {
                let (engine, printer, mine) =
                    (self.engine.clone(), self.printer.clone(), tenant.clone());
                bus.subscription(name.clone())
                    .topic(ty)
                    .tenant(tenant.clone())
                    .cross_platform()
                    .retry(RetryPolicy::interval(20, Duration::from_millis(100)))
                    .max_delivery_count(25)
                    .handle_envelopes(move |env: Envelope, _ctx: MessageContext| {
                        let (engine, printer, mine) =
                            (engine.clone(), printer.clone(), mine.clone());
                        async move {
                            if env.tenant_id != mine {
                                printer.rec.violation(&mine, &env);
                                return Err(HandlerError::security("cross-tenant envelope"));
                            }
                            match engine.handle(&env).await {
                                Ok(h) => {
                                    printer.handled(&env, &h, false);
                                    Ok(())
                                }
                                Err(e) => {
                                    if let SagaEngineError::Unexpected { state, .. } = &e {
                                        printer.rec.progress(format!(
                                            "[{:<11}] {:<13} {:<26} ⇒ {SAGA} …{}: early (state {state} does not take it yet), redelivered shortly",
                                            mine.as_str(),
                                            "control-plane",
                                            env.event_type.as_str(),
                                            &env.correlation_id.as_str()[env.correlation_id.as_str().len() - 6..],
                                        ));
                                    }
                                    Err(e.into_handler_error())
                                }
                            }
                        }
                    })
            });
        futures::future::try_join_all(subs).await?;
        Ok(())
    }

    /// The instance keyed `key`, if any.
    pub async fn load(&self, key: &str) -> anyhow::Result<Option<SagaInstance>> {
        Ok(self.store.load(SAGA, key).await?)
    }

    /// Stops the timeout scheduler.
    pub async fn stop(&self) {
        let handle = self.scheduler.lock().ok().and_then(|mut s| s.take());
        if let Some(h) = handle {
            h.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The three paths through the engine directly (no bus): states, versions, history, and
    //! the emitted events checked against [`emits`].

    use super::*;
    use eventyard::sqlite::SqliteConfig;

    fn tenant() -> TenantId {
        TenantId::parse("connectsoft").unwrap()
    }

    fn follow<E: eventyard::Event>(cause: &Envelope, e: &E) -> Envelope {
        let mut env = Envelope::for_event(e, tenant()).unwrap();
        env.inherit_from(cause);
        env
    }

    /// Every envelope the outbox holds, in commit order.
    async fn outbox(b: &SqliteBroker) -> Vec<Envelope> {
        let bodies: Vec<Vec<u8>> = b
            .transaction(|tx| {
                let mut s = tx.prepare("SELECT body FROM outbox ORDER BY id")?;
                let rows = s.query_map([], |r| r.get(0))?;
                rows.collect::<Result<Vec<Vec<u8>>, _>>()
            })
            .await
            .unwrap()
            .unwrap();
        bodies
            .iter()
            .map(|b| Envelope::from_json(b).unwrap())
            .collect()
    }

    /// Feeds `env` and returns the emitted events (outbox records added by the transition),
    /// checking them against `emits`.
    async fn feed(
        engine: &SagaEngine<WorkflowData>,
        b: &SqliteBroker,
        seen: &mut usize,
        env: &Envelope,
    ) -> Vec<Envelope> {
        let h = engine.handle(env).await.unwrap();
        let out = outbox(b).await;
        let new: Vec<Envelope> = out[*seen..].to_vec();
        *seen = out.len();
        let to = match &h {
            Handled::Started { state, .. } => state.clone(),
            Handled::Moved { to, .. } => to.clone(),
            other => panic!("{} not applied: {other:?}", env.event_type),
        };
        let types: Vec<&str> = new.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            emits(env.event_type.as_str(), &to),
            "{}",
            env.event_type
        );
        for e in &new {
            assert_eq!(e.correlation_id, env.correlation_id);
            assert_eq!(e.causation_id.as_ref(), Some(&env.event_id));
        }
        new
    }

    async fn open() -> (tempfile::TempDir, SqliteBroker, SagaEngine<WorkflowData>) {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBroker::open(SqliteConfig::new(dir.path().join("w.db"))).unwrap();
        let store: Arc<dyn SagaStore> = Arc::new(SqliteSagaStore::open(b.clone()).await.unwrap());
        (dir, b, SagaEngine::new(definition(), store))
    }

    fn root(blueprint: &str) -> Envelope {
        Envelope::for_event(
            &ProjectCreated {
                project_name: "p".into(),
                blueprint: blueprint.into(),
            },
            tenant(),
        )
        .unwrap()
    }

    /// Walks the start of every path: Created → Running → AssigningTask → AwaitingAgent.
    async fn to_awaiting_agent(
        engine: &SagaEngine<WorkflowData>,
        b: &SqliteBroker,
        seen: &mut usize,
        root: &Envelope,
    ) -> Envelope {
        let mut cause = root.clone();
        for _ in 0..3 {
            let next = feed(engine, b, seen, &cause).await;
            cause = next[0].clone();
        }
        assert_eq!(cause.event_type.as_str(), "AgentTaskAssigned");
        feed(engine, b, seen, &cause).await;
        cause
    }

    #[test]
    fn planned_traces_stop_where_their_path_leaves_the_scenario() {
        let last = |p: &Planned| ALL_TYPES[p.scenario_types - 1];
        assert_eq!(last(&PLANNED[0]), "MemoryRecordCreated");
        assert_eq!(last(&PLANNED[1]), "AgentTaskAssigned");
        assert_eq!(last(&PLANNED[2]), "ApprovalRequested");
        assert_eq!(PLANNED[2].expected_types().len(), 13);
    }

    #[tokio::test]
    async fn happy_path_and_explicit_rejection() {
        let (_dir, b, engine) = open().await;
        let mut seen = 0;
        for (bp, decision, want) in [
            ("saas-booking-blueprint", "grant", "Completed"),
            ("pci-payments-blueprint", "reject", "Rejected"),
        ] {
            let root = root(bp);
            let key = root.correlation_id.to_string();
            let assigned = to_awaiting_agent(&engine, &b, &mut seen, &root).await;
            let task_id = assigned.payload["taskId"].as_str().unwrap().to_owned();
            let done = follow(
                &assigned,
                &AgentTaskCompleted {
                    task_id,
                    outcome: "succeeded".into(),
                },
            );
            feed(&engine, &b, &mut seen, &done).await;
            let policy = follow(
                &done,
                &PolicyDecisionRecorded {
                    policy_id: "pol".into(),
                    decision: "RequiresApproval".into(),
                    subject: "art".into(),
                },
            );
            let requested = feed(&engine, &b, &mut seen, &policy).await.remove(0);
            feed(&engine, &b, &mut seen, &requested).await;
            let approval_id = requested.payload["approvalId"].as_str().unwrap().to_owned();
            let decided = if decision == "grant" {
                follow(
                    &requested,
                    &ApprovalGranted {
                        approval_id,
                        approver: "release-manager".into(),
                    },
                )
            } else {
                follow(
                    &requested,
                    &ApprovalRejected {
                        approval_id,
                        reason: "no".into(),
                        rejected_by: "security-officer".into(),
                    },
                )
            };
            feed(&engine, &b, &mut seen, &decided).await;
            let d = engine.store().details(SAGA, &key).await.unwrap().unwrap();
            assert_eq!(d.instance.state, want);
            assert!(d.instance.completed);
            assert_eq!(d.instance.version, 8);
            assert!(d.timeouts.is_empty(), "a final state drops its timeouts");
            let path: Vec<&str> = d.history.iter().map(|h| h.to_state.as_str()).collect();
            assert_eq!(
                path,
                [
                    "Created",
                    "Running",
                    "AssigningTask",
                    "AwaitingAgent",
                    "Running",
                    "Running",
                    "AwaitingApproval",
                    want
                ]
            );
        }
    }

    #[tokio::test]
    async fn an_event_that_overtakes_its_predecessor_is_faulted_for_redelivery() {
        let (_dir, b, engine) = open().await;
        let mut seen = 0;
        let root = root("saas-booking-blueprint");
        let assigned = to_awaiting_agent(&engine, &b, &mut seen, &root).await;
        let early = follow(
            &assigned,
            &ApprovalGranted {
                approval_id: "apr-release-x".into(),
                approver: "release-manager".into(),
            },
        );
        match engine.handle(&early).await {
            Err(SagaEngineError::Unexpected { state, retry, .. }) => {
                assert_eq!(state, "AwaitingAgent");
                assert!(retry, "Policy::Fault: the subscription redelivers it");
            }
            other => panic!("{other:?}"),
        }
        let i = engine
            .store()
            .load(SAGA, root.correlation_id.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((i.state.as_str(), i.version), ("AwaitingAgent", 4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn step_timeout_and_approval_auto_reject() {
        let (_dir, b, engine) = open().await;
        let scheduler = TimeoutScheduler::new(engine.store().clone())
            .options(SchedulerOptions {
                poll: Duration::from_millis(50),
                ..SchedulerOptions::default()
            })
            .register(&engine)
            .start();
        let mut seen = 0;
        // The legacy port: nobody completes the task.
        let legacy = root("legacy-port-blueprint");
        let legacy_key = legacy.correlation_id.to_string();
        let assigned = to_awaiting_agent(&engine, &b, &mut seen, &legacy).await;
        // The payments gateway: up to its gate, where nobody decides.
        let pci = root("pci-payments-blueprint");
        let pci_key = pci.correlation_id.to_string();
        let pci_assigned = to_awaiting_agent(&engine, &b, &mut seen, &pci).await;
        let done = follow(
            &pci_assigned,
            &AgentTaskCompleted {
                task_id: pci_assigned.payload["taskId"].as_str().unwrap().into(),
                outcome: "succeeded".into(),
            },
        );
        feed(&engine, &b, &mut seen, &done).await;
        let policy = follow(
            &done,
            &PolicyDecisionRecorded {
                policy_id: "pol".into(),
                decision: "RequiresApproval".into(),
                subject: "art".into(),
            },
        );
        let requested = feed(&engine, &b, &mut seen, &policy).await.remove(0);
        feed(&engine, &b, &mut seen, &requested).await;

        let final_state = |key: String| {
            let store = engine.store().clone();
            async move {
                for _ in 0..200 {
                    let i = store.load(SAGA, &key).await.unwrap().unwrap();
                    if i.completed {
                        return i;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                panic!("{key} did not complete");
            }
        };
        let l = final_state(legacy_key.clone()).await;
        assert_eq!((l.state.as_str(), l.version), ("TimedOut", 5));
        let p = final_state(pci_key.clone()).await;
        assert_eq!((p.state.as_str(), p.version), ("Rejected", 8));
        scheduler.stop().await;

        let out = outbox(&b).await;
        let later = &out[seen..];
        // The fired timeouts are published as they are: their eventId is the one the history
        // recorded, caused by the event whose transition armed them.
        let d = engine
            .store()
            .details(SAGA, &legacy_key)
            .await
            .unwrap()
            .unwrap();
        let last = d.history.last().unwrap();
        assert_eq!(last.event_type, "WorkflowStepTimedOut");
        let timed_out = later
            .iter()
            .find(|e| e.event_type.as_str() == "WorkflowStepTimedOut")
            .unwrap();
        assert_eq!(timed_out.event_id.as_str(), last.event_id);
        assert_eq!(timed_out.causation_id.as_ref(), Some(&assigned.event_id));
        assert_eq!(timed_out.payload["timeoutMs"], SHORT_TIMEOUT_MS);
        let gate_timeout = later
            .iter()
            .find(|e| e.event_type.as_str() == "ApprovalTimedOut")
            .unwrap();
        assert_eq!(
            gate_timeout.causation_id.as_ref(),
            Some(&requested.event_id)
        );
        let rejected = later
            .iter()
            .find(|e| e.event_type.as_str() == "ApprovalRejected")
            .unwrap();
        assert_eq!(rejected.causation_id.as_ref(), Some(&gate_timeout.event_id));
        assert_eq!(rejected.correlation_id.as_str(), pci_key);
        assert_eq!(later.len(), 3, "{later:?}");
    }
}

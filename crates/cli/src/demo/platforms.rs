//! The platform services of the reference scenario: each is a handler that reacts to one event
//! and publishes the next ones. Handlers never set trace, correlation, tenant or causation: the
//! bus propagates them from the handled event.

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use eventyard::sqlite::{InboxOutcome, SqliteBroker};
use eventyard::{Bus, Envelope, Event, HandlerError, MessageContext, RetryPolicy, TenantId};

use super::Recorder;
use super::events::*;

fn short(ctx: &MessageContext) -> String {
    let id = ctx.envelope().event_id.as_str();
    id[id.len() - 6..].to_owned()
}

fn emit<E: Event>(tenant: &TenantId, e: E) -> Envelope {
    // Typed events of this module always have valid names and object payloads.
    Envelope::for_event(&e, tenant.clone()).expect("scenario events are valid")
}

/// Subscribes one platform step: `platform.name` handles `I` for `tenant` and publishes what
/// `react` returns.
async fn step<I: Event + Clone>(
    bus: &Bus,
    rec: &Arc<Recorder>,
    tenant: &TenantId,
    platform: &'static str,
    name: &'static str,
    cross_platform: bool,
    react: fn(&I, &MessageContext) -> Vec<Envelope>,
) -> anyhow::Result<()> {
    let rec = rec.clone();
    let mine = tenant.clone();
    // `.tenant(..)` filters the subscription on cs-tenant-id *and* puts the tenant guard in
    // front of the handler.
    let mut sub = bus
        .subscription(format!("{platform}.{name}.{tenant}"))
        .tenant(tenant.clone());
    if cross_platform {
        sub = sub.cross_platform();
    }
    sub.handle(move |e: I, ctx: MessageContext| {
        let rec = rec.clone();
        let mine = mine.clone();
        async move {
            if ctx.tenant() != &mine {
                rec.violation(&mine, ctx.envelope());
                return Err(HandlerError::security(format!(
                    "tenant {} reached a handler of {mine}",
                    ctx.tenant()
                )));
            }
            let out = react(&e, &ctx);
            let names: Vec<String> = out.iter().map(|o| o.event_type.to_string()).collect();
            rec.progress(format!(
                "[{:<11}] {:<13} {:<26} → {}  (evt …{})",
                mine.as_str(),
                platform,
                I::EVENT_TYPE,
                if names.is_empty() {
                    "·".to_owned()
                } else {
                    names.join(" + ")
                },
                short(&ctx)
            ));
            // Published through the bus itself: propagation comes from the handler's task.
            ctx.bus()
                .publish_batch(out)
                .await
                .map_err(|e| HandlerError::transient(e.to_string()))
        }
    })
    .await?;
    Ok(())
}

/// The demo's state that handlers share: the store (for the inbox) and the "bug fix" switch.
pub struct Shared {
    /// The embedded store.
    pub broker: SqliteBroker,
    /// False until the demo "deploys the fix" of the alerting handler.
    pub alerting_fixed: AtomicBool,
}

/// Creates the application table the Runtime platform writes through the inbox.
pub async fn create_tables(broker: &SqliteBroker) -> anyhow::Result<()> {
    broker
        .transaction(|tx| {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS demo_deployments (
                     tenant TEXT NOT NULL, release_id TEXT NOT NULL, environment TEXT NOT NULL,
                     deployed_at TEXT NOT NULL)",
            )
        })
        .await??;
    Ok(())
}

/// Wires every platform service for `tenant`.
pub async fn wire(
    bus: &Bus,
    rec: &Arc<Recorder>,
    shared: &Arc<Shared>,
    t: &TenantId,
) -> anyhow::Result<()> {
    // 1. Control Plane: project → workflow → step → agent task.
    step(
        bus,
        rec,
        t,
        "control-plane",
        "bootstrap-workflow",
        false,
        |_: &ProjectCreated, c| {
            vec![emit(
                c.tenant(),
                WorkflowInstanceStarted {
                    workflow_instance_id: format!(
                        "wfi-{}",
                        &c.envelope().correlation_id.as_str()[5..13]
                    ),
                    workflow_definition_id: "wfd-project-bootstrap".into(),
                    workflow_definition_version: "4.1.0".into(),
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "control-plane",
        "plan-step",
        false,
        |e: &WorkflowInstanceStarted, c| {
            vec![emit(
                c.tenant(),
                WorkflowStepReady {
                    workflow_instance_id: e.workflow_instance_id.clone(),
                    step_id: "generate-reservations-api".into(),
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "control-plane",
        "assign-agent",
        false,
        |e: &WorkflowStepReady, c| {
            vec![emit(
                c.tenant(),
                AgentTaskAssigned {
                    task_id: format!("task-{}", e.step_id),
                    agent_id: "agent-backend-developer".into(),
                    step_id: e.step_id.clone(),
                },
            )]
        },
    )
    .await?;
    // 2. Agent Mesh: execute → model → completed + artifact.
    step(
        bus,
        rec,
        t,
        "agent-mesh",
        "execute-task",
        true,
        |e: &AgentTaskAssigned, c| {
            vec![emit(
                c.tenant(),
                AgentExecutionStarted {
                    task_id: e.task_id.clone(),
                    agent_id: e.agent_id.clone(),
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "agent-mesh",
        "invoke-model",
        false,
        |e: &AgentExecutionStarted, c| {
            vec![emit(
                c.tenant(),
                ModelInvoked {
                    task_id: e.task_id.clone(),
                    model: "codegen-large".into(),
                    prompt_tokens: 1840,
                    completion_tokens: 2210,
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "agent-mesh",
        "complete-task",
        false,
        |e: &ModelInvoked, c| {
            vec![
                emit(
                    c.tenant(),
                    AgentTaskCompleted {
                        task_id: e.task_id.clone(),
                        outcome: "succeeded".into(),
                    },
                ),
                emit(
                    c.tenant(),
                    ArtifactCreated {
                        artifact_id: "art-reservations-api-src".into(),
                        kind: "source-code".into(),
                        path: "src/Reservations.Api".into(),
                    },
                ),
            ]
        },
    )
    .await?;
    // Knowledge ingests artifacts from another platform: a cross-platform subscription.
    step(
        bus,
        rec,
        t,
        "knowledge",
        "ingest-artifact",
        true,
        |e: &ArtifactCreated, c| {
            vec![emit(
                c.tenant(),
                ArtifactIngested {
                    artifact_id: e.artifact_id.clone(),
                    chunks: 42,
                },
            )]
        },
    )
    .await?;
    // 3. Governance gate: policy → approval requested → granted.
    step(
        bus,
        rec,
        t,
        "control-plane",
        "evaluate-policy",
        true,
        |e: &ArtifactCreated, c| {
            vec![emit(
                c.tenant(),
                PolicyDecisionRecorded {
                    policy_id: "pol-release-requires-approval".into(),
                    decision: "RequiresApproval".into(),
                    subject: e.artifact_id.clone(),
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "control-plane",
        "request-approval",
        false,
        |_: &PolicyDecisionRecorded, c| {
            vec![emit(
                c.tenant(),
                ApprovalRequested {
                    approval_id: "apr-release-1".into(),
                    gate: "release".into(),
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "control-plane",
        "approver",
        false,
        |e: &ApprovalRequested, c| {
            vec![emit(
                c.tenant(),
                ApprovalGranted {
                    approval_id: e.approval_id.clone(),
                    approver: "release-manager".into(),
                },
            )]
        },
    )
    .await?;
    // 4. DevOps → Runtime.
    step(
        bus,
        rec,
        t,
        "devops",
        "commit",
        true,
        |_: &ApprovalGranted, c| {
            vec![emit(
                c.tenant(),
                CommitCreated {
                    repository: "booking-saas/reservations-api".into(),
                    commit_sha: "9f3e2b8".into(),
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "devops",
        "open-pull-request",
        false,
        |e: &CommitCreated, c| {
            vec![emit(
                c.tenant(),
                PullRequestOpened {
                    repository: e.repository.clone(),
                    pull_request: 17,
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "devops",
        "build",
        false,
        |_: &PullRequestOpened, c| {
            vec![emit(
                c.tenant(),
                BuildCompleted {
                    build_id: "build-311".into(),
                    result: "succeeded".into(),
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "devops",
        "release",
        false,
        |_: &BuildCompleted, c| {
            vec![emit(
                c.tenant(),
                ReleaseApproved {
                    release_id: "rel-1.0.0".into(),
                },
            )]
        },
    )
    .await?;
    // The promotion is published twice with the same eventId (a producer that retried after a
    // lost acknowledgement): the Runtime platform's inbox applies it once.
    step(
        bus,
        rec,
        t,
        "devops",
        "promote",
        false,
        |e: &ReleaseApproved, c| {
            let promoted = emit(
                c.tenant(),
                DeploymentPromoted {
                    release_id: e.release_id.clone(),
                    environment: "production".into(),
                },
            );
            vec![promoted.clone(), promoted]
        },
    )
    .await?;
    deploy(bus, rec, shared, t).await?;
    // 5. Observability → feedback into Knowledge.
    step(
        bus,
        rec,
        t,
        "observability",
        "record-trace",
        true,
        |_: &RuntimeDeploymentCompleted, c| {
            // connectsoft's service is busier: its trace has more spans than the alerting code
            // handles until the fix (see `alerting`).
            let spans = if c.tenant().as_str() == "connectsoft" {
                128
            } else {
                64
            };
            vec![emit(c.tenant(), TraceRecorded { spans, p95_ms: 412 })]
        },
    )
    .await?;
    alerting(bus, rec, shared, t).await?;
    step(
        bus,
        rec,
        t,
        "knowledge",
        "runtime-feedback",
        true,
        |e: &AlertTriggered, c| {
            vec![emit(
                c.tenant(),
                MemoryRecordCreated {
                    memory_id: format!("mem-{}", e.alert_id),
                    source: "runtime-feedback".into(),
                },
            )]
        },
    )
    .await?;
    Ok(())
}

/// Runtime: applies a promotion through the idempotent inbox (state change and key in one
/// transaction); a duplicate returns the stored result and publishes nothing.
async fn deploy(
    bus: &Bus,
    rec: &Arc<Recorder>,
    shared: &Arc<Shared>,
    t: &TenantId,
) -> anyhow::Result<()> {
    let (rec, shared, mine) = (rec.clone(), shared.clone(), t.clone());
    bus.subscription(format!("runtime.deploy.{t}"))
        .tenant(t.clone())
        .cross_platform()
        .handle(move |e: DeploymentPromoted, ctx: MessageContext| {
            let (rec, shared, mine) = (rec.clone(), shared.clone(), mine.clone());
            async move {
                let (tenant, release, env) =
                    (ctx.tenant().to_string(), e.release_id.clone(), e.environment.clone());
                let at = ctx.envelope().occurred_at.to_rfc3339();
                let outcome = shared
                    .broker
                    .inbox()
                    .run(ctx.envelope(), ctx.handler_name(), &e.release_id, move |tx| {
                        tx.execute(
                            "INSERT INTO demo_deployments VALUES (?1, ?2, ?3, ?4)",
                            (&tenant, &release, &env, &at),
                        )?;
                        Ok::<_, eventyard::sqlite::rusqlite::Error>(format!("dep-{release}"))
                    })
                    .await
                    .map_err(|e| HandlerError::transient(e.to_string()))?;
                match outcome {
                    InboxOutcome::Applied(deployment_id) => {
                        rec.progress(format!(
                            "[{:<11}] {:<13} {:<26} → RuntimeDeploymentCompleted  (evt …{}, applied via the inbox)",
                            mine.as_str(), "runtime", "DeploymentPromoted", short(&ctx)
                        ));
                        ctx.publish(&RuntimeDeploymentCompleted {
                            deployment_id,
                            environment: e.environment,
                        })
                        .await
                        .map_err(|e| HandlerError::transient(e.to_string()))?;
                    }
                    InboxOutcome::Duplicate(deployment_id) => {
                        rec.duplicate();
                        rec.progress(format!(
                            "[{:<11}] {:<13} {:<26} → ·  DUPLICATE of evt …{}: inbox returned `{deployment_id}`, nothing re-applied",
                            mine.as_str(), "runtime", "DeploymentPromoted", short(&ctx)
                        ));
                    }
                }
                Ok(())
            }
        })
        .await?;
    Ok(())
}

/// Observability alerting, with a bug: traces over 100 spans overflow its histogram. Such a
/// message is poison (a validation error: dead-lettered at once) until the demo "deploys the fix".
async fn alerting(
    bus: &Bus,
    rec: &Arc<Recorder>,
    shared: &Arc<Shared>,
    t: &TenantId,
) -> anyhow::Result<()> {
    let (rec, shared, mine) = (rec.clone(), shared.clone(), t.clone());
    bus.subscription(format!("observability.alerting.{t}"))
        .tenant(t.clone())
        .retry(RetryPolicy::interval(3, std::time::Duration::from_millis(50)))
        .handle(move |e: TraceRecorded, ctx: MessageContext| {
            let (rec, shared, mine) = (rec.clone(), shared.clone(), mine.clone());
            async move {
                if e.spans > 100 && !shared.alerting_fixed.load(Ordering::SeqCst) {
                    rec.progress(format!(
                        "[{:<11}] {:<13} {:<26} ✗ bug: histogram overflow ({} spans > 100) → ValidationError, dead-lettered",
                        mine.as_str(), "observability", "TraceRecorded", e.spans
                    ));
                    return Err(HandlerError::validation(format!(
                        "span histogram overflow: {} spans exceed the 100 buckets",
                        e.spans
                    )));
                }
                let replayed = ctx.is_replay();
                rec.progress(format!(
                    "[{:<11}] {:<13} {:<26} → AlertTriggered  (evt …{}{})",
                    mine.as_str(),
                    "observability",
                    "TraceRecorded",
                    short(&ctx),
                    if replayed { ", replayed after the fix" } else { "" }
                ));
                ctx.publish(&AlertTriggered {
                    alert_id: "alert-p95-latency".into(),
                    rule: "p95 > 300 ms".into(),
                    severity: "warning".into(),
                })
                .await
                .map_err(|e| HandlerError::transient(e.to_string()))?;
                Ok(())
            }
        })
        .await?;
    Ok(())
}

//! The platform services of the reference scenario: each is a handler that reacts to one event
//! and publishes the next ones. Handlers never set trace, correlation, tenant or causation: the
//! bus propagates them from the handled event.

use std::sync::Arc;

use eventyard::{Bus, Envelope, Event, Filter, HandlerError, MessageContext, TenantId};

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
    let filter = Filter::sql(&format!("[cs-tenant-id] = '{tenant}'"))?;
    let rec = rec.clone();
    let mine = tenant.clone();
    let mut sub = bus
        .subscription(format!("{platform}.{name}.{tenant}"))
        .filter(filter);
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

/// Wires every platform service for `tenant`.
pub async fn wire(bus: &Bus, rec: &Arc<Recorder>, t: &TenantId) -> anyhow::Result<()> {
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
    step(
        bus,
        rec,
        t,
        "devops",
        "promote",
        false,
        |e: &ReleaseApproved, c| {
            vec![emit(
                c.tenant(),
                DeploymentPromoted {
                    release_id: e.release_id.clone(),
                    environment: "production".into(),
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "runtime",
        "deploy",
        true,
        |e: &DeploymentPromoted, c| {
            vec![emit(
                c.tenant(),
                RuntimeDeploymentCompleted {
                    deployment_id: format!("dep-{}", e.release_id),
                    environment: e.environment.clone(),
                },
            )]
        },
    )
    .await?;
    // 5. Observability → feedback into Knowledge.
    step(
        bus,
        rec,
        t,
        "observability",
        "record-trace",
        true,
        |_: &RuntimeDeploymentCompleted, c| {
            vec![emit(
                c.tenant(),
                TraceRecorded {
                    spans: 128,
                    p95_ms: 412,
                },
            )]
        },
    )
    .await?;
    step(
        bus,
        rec,
        t,
        "observability",
        "alerting",
        false,
        |e: &TraceRecorded, c| {
            if e.p95_ms > 300 {
                vec![emit(
                    c.tenant(),
                    AlertTriggered {
                        alert_id: "alert-p95-latency".into(),
                        rule: "p95 > 300 ms".into(),
                        severity: "warning".into(),
                    },
                )]
            } else {
                Vec::new()
            }
        },
    )
    .await?;
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

//! The platform services of the reference scenario: each is a handler that reacts to one event
//! and produces the next ones. A producing handler commits its state change and its events in one
//! transaction through the outbox (see `store`); the demo's relay publishes them. Handlers never
//! set trace, correlation, tenant or causation: they are derived from the handled event.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use eventyard::{Bus, Envelope, Event, HandlerError, MessageContext, RetryPolicy, TenantId};

use super::Recorder;
use super::events::*;
use super::store::Shared;

fn short(ctx: &MessageContext) -> String {
    let id = ctx.envelope().event_id.as_str();
    id[id.len() - 6..].to_owned()
}

/// The agents with a worker online (a task for another agent waits: its step times out).
const AGENTS_ONLINE: &[&str] = &["agent-backend-developer"];

/// The approval gates with an approver on duty (another gate's requests wait: auto-rejected).
const GATES_STAFFED: &[&str] = &["release"];

/// Why a step produced nothing, for its progress line.
fn idle(platform: &str, name: &str) -> &'static str {
    match (platform, name) {
        ("agent-mesh", "execute-task") => "  (no worker online for this agent: the task waits)",
        ("control-plane", "approver") => "  (no approver on duty at this gate: the request waits)",
        _ => "",
    }
}

fn emit<E: Event>(tenant: &TenantId, e: E) -> Envelope {
    // Typed events of this module always have valid names and object payloads.
    Envelope::for_event(&e, tenant.clone()).expect("scenario events are valid")
}

/// Subscribes one platform step: `platform.name` handles `I` for `tenant` and publishes what
/// `react` returns.
#[allow(clippy::too_many_arguments)]
async fn step<I: Event + Clone>(
    bus: &Bus,
    rec: &Arc<Recorder>,
    shared: &Arc<Shared>,
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
    let shared = shared.clone();
    sub.handle(move |e: I, ctx: MessageContext| {
        let (rec, shared, mine) = (rec.clone(), shared.clone(), mine.clone());
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
            let applied = shared.apply(&ctx, platform, name, out).await?;
            rec.progress(format!(
                "[{:<11}] {:<13} {:<26} → {}  (evt …{}; {})",
                mine.as_str(),
                platform,
                I::EVENT_TYPE,
                if names.is_empty() {
                    format!("·{}", idle(platform, name))
                } else {
                    names.join(" + ")
                },
                short(&ctx),
                applied.describe()
            ));
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// Wires every platform service for `tenant`.
pub async fn wire(
    bus: &Bus,
    rec: &Arc<Recorder>,
    shared: &Arc<Shared>,
    t: &TenantId,
) -> anyhow::Result<()> {
    // Declared concurrently: on a remote broker each declaration is a few round trips.
    let mut subs: Vec<futures::future::BoxFuture<'_, anyhow::Result<()>>> = Vec::new();
    // 1. Control Plane: the WorkflowInstance saga (`workflow`) starts on ProjectCreated and
    //    emits WorkflowInstanceStarted → WorkflowStepReady → AgentTaskAssigned.
    // 2. Agent Mesh: execute → model → completed + artifact.
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
        t,
        "agent-mesh",
        "execute-task",
        true,
        |e: &AgentTaskAssigned, c| {
            if !AGENTS_ONLINE.contains(&e.agent_id.as_str()) {
                return Vec::new();
            }
            vec![emit(
                c.tenant(),
                AgentExecutionStarted {
                    task_id: e.task_id.clone(),
                    agent_id: e.agent_id.clone(),
                },
            )]
        },
    )));
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
                emit(c.tenant(), {
                    let what = e.task_id.trim_start_matches("task-generate-");
                    ArtifactCreated {
                        artifact_id: format!("art-{what}-src"),
                        kind: "source-code".into(),
                        path: format!("src/{what}"),
                    }
                }),
            ]
        },
    )));
    // Knowledge ingests artifacts from another platform: a cross-platform subscription.
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    // 3. Governance gate: policy → (saga: approval requested) → granted by the approver.
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
        t,
        "control-plane",
        "approver",
        false,
        |e: &ApprovalRequested, c| {
            if !GATES_STAFFED.contains(&e.gate.as_str()) {
                return Vec::new();
            }
            vec![emit(
                c.tenant(),
                ApprovalGranted {
                    approval_id: e.approval_id.clone(),
                    approver: "release-manager".into(),
                },
            )]
        },
    )));
    // 4. DevOps → Runtime.
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    // The promotion is published twice with the same eventId (a producer that retried after a
    // lost acknowledgement): the Runtime platform's inbox applies it once.
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    subs.push(Box::pin(deploy(bus, rec, shared, t)));
    // 5. Observability → feedback into Knowledge.
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    subs.push(Box::pin(alerting(bus, rec, shared, t)));
    subs.push(Box::pin(step(
        bus,
        rec,
        shared,
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
    )));
    futures::future::try_join_all(subs).await?;
    Ok(())
}

/// Runtime: applies a promotion through the inbox (its deployment row, the key and
/// RuntimeDeploymentCompleted in the outbox, in one transaction); a duplicate returns the stored
/// result and commits nothing.
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
                let done = emit(
                    ctx.tenant(),
                    RuntimeDeploymentCompleted {
                        deployment_id: format!("dep-{}", e.release_id),
                        environment: e.environment.clone(),
                    },
                );
                let state = format!("deployed:{}", e.environment);
                let applied = shared.apply(&ctx, "runtime", &state, vec![done]).await?;
                if applied.duplicate {
                    rec.duplicate();
                    rec.progress(format!(
                        "[{:<11}] {:<13} {:<26} → ·  DUPLICATE of evt …{}: {}",
                        mine.as_str(),
                        "runtime",
                        "DeploymentPromoted",
                        short(&ctx),
                        applied.describe()
                    ));
                } else {
                    rec.progress(format!(
                        "[{:<11}] {:<13} {:<26} → RuntimeDeploymentCompleted  (evt …{}, applied via the inbox; {})",
                        mine.as_str(),
                        "runtime",
                        "DeploymentPromoted",
                        short(&ctx),
                        applied.describe()
                    ));
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
                let alert = emit(
                    ctx.tenant(),
                    AlertTriggered {
                        alert_id: "alert-p95-latency".into(),
                        rule: "p95 > 300 ms".into(),
                        severity: "warning".into(),
                    },
                );
                let applied = shared.apply(&ctx, "observability", "alerted", vec![alert]).await?;
                rec.progress(format!(
                    "[{:<11}] {:<13} {:<26} → AlertTriggered  (evt …{}{}; {})",
                    mine.as_str(),
                    "observability",
                    "TraceRecorded",
                    short(&ctx),
                    if ctx.is_replay() { ", replayed after the fix" } else { "" },
                    applied.describe()
                ));
                Ok(())
            }
        })
        .await?;
    Ok(())
}

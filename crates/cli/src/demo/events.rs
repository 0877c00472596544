//! The reference scenario's integration events (SPEC §6–§7), as typed events.

use eventyard::Event;

macro_rules! events {
    ($( $(#[$doc:meta])* $name:ident @ $ctx:literal { $($field:ident : $ty:ty),* $(,)? } )*) => { $(
        $(#[$doc])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        #[allow(missing_docs)]
        pub struct $name { $( pub $field: $ty ),* }
        impl Event for $name {
            const EVENT_TYPE: &'static str = stringify!($name);
            const CONTEXT: &'static str = $ctx;
        }
    )* };
}

events! {
    /// Control Plane: a project was created (the root of a lifecycle).
    ProjectCreated @ "control-plane" { project_name: String, blueprint: String }
    /// Control Plane: a workflow instance started.
    WorkflowInstanceStarted @ "control-plane" {
        workflow_instance_id: String, workflow_definition_id: String, workflow_definition_version: String
    }
    /// Control Plane: a workflow step is ready to be assigned.
    WorkflowStepReady @ "control-plane" { workflow_instance_id: String, step_id: String }
    /// Control Plane: an agent task was assigned.
    AgentTaskAssigned @ "control-plane" { task_id: String, agent_id: String, step_id: String }
    /// Agent Mesh: an agent started executing a task.
    AgentExecutionStarted @ "agent-mesh" { task_id: String, agent_id: String }
    /// Agent Mesh: a model was invoked.
    ModelInvoked @ "agent-mesh" { task_id: String, model: String, prompt_tokens: u32, completion_tokens: u32 }
    /// Agent Mesh: a task completed.
    AgentTaskCompleted @ "agent-mesh" { task_id: String, outcome: String }
    /// Knowledge: an artifact was created.
    ArtifactCreated @ "knowledge" { artifact_id: String, kind: String, path: String }
    /// Knowledge: an artifact was ingested.
    ArtifactIngested @ "knowledge" { artifact_id: String, chunks: u32 }
    /// Control Plane: a policy decision was recorded.
    PolicyDecisionRecorded @ "control-plane" { policy_id: String, decision: String, subject: String }
    /// Control Plane: an approval was requested.
    ApprovalRequested @ "control-plane" { approval_id: String, gate: String }
    /// Control Plane: an approval was granted.
    ApprovalGranted @ "control-plane" { approval_id: String, approver: String }
    /// Control Plane: a workflow step was not completed in time (the WorkflowInstance saga's
    /// step timeout, published as fired).
    WorkflowStepTimedOut @ "control-plane" {
        workflow_instance_id: String, step_id: String, task_id: String, agent_id: String, timeout_ms: u64
    }
    /// Control Plane: an approval gate got no decision in time (the saga's auto-reject timeout).
    ApprovalTimedOut @ "control-plane" { approval_id: String, gate: String, timeout_ms: u64 }
    /// Control Plane: an approval was rejected (by an approver, or by the gate on timeout).
    ApprovalRejected @ "control-plane" { approval_id: String, reason: String, rejected_by: String }
    /// DevOps: a commit was created.
    CommitCreated @ "devops" { repository: String, commit_sha: String }
    /// DevOps: a pull request was opened.
    PullRequestOpened @ "devops" { repository: String, pull_request: u32 }
    /// DevOps: a build completed.
    BuildCompleted @ "devops" { build_id: String, result: String }
    /// DevOps: a release was approved.
    ReleaseApproved @ "devops" { release_id: String }
    /// DevOps: a deployment was promoted.
    DeploymentPromoted @ "devops" { release_id: String, environment: String }
    /// Runtime: a deployment completed.
    RuntimeDeploymentCompleted @ "runtime" { deployment_id: String, environment: String }
    /// Observability: a trace was recorded.
    TraceRecorded @ "observability" { spans: u32, p95_ms: u32 }
    /// Observability: an alert fired.
    AlertTriggered @ "observability" { alert_id: String, rule: String, severity: String }
    /// Knowledge: a memory record was created (runtime feedback into knowledge).
    MemoryRecordCreated @ "knowledge" { memory_id: String, source: String }
}

/// Every event type of the scenario (the topics of topic-per-event-type).
pub const ALL_TYPES: &[&str] = &[
    "ProjectCreated",
    "WorkflowInstanceStarted",
    "WorkflowStepReady",
    "AgentTaskAssigned",
    "AgentExecutionStarted",
    "ModelInvoked",
    "AgentTaskCompleted",
    "ArtifactCreated",
    "ArtifactIngested",
    "PolicyDecisionRecorded",
    "ApprovalRequested",
    "ApprovalGranted",
    "CommitCreated",
    "PullRequestOpened",
    "BuildCompleted",
    "ReleaseApproved",
    "DeploymentPromoted",
    "RuntimeDeploymentCompleted",
    "TraceRecorded",
    "AlertTriggered",
    "MemoryRecordCreated",
];

/// The events of the workflow paths that do not complete (a step timing out, an approval
/// rejected), beyond [`ALL_TYPES`].
pub const WORKFLOW_FAULT_TYPES: &[&str] = &[
    "WorkflowStepTimedOut",
    "ApprovalTimedOut",
    "ApprovalRejected",
];

/// Every topic of a run: [`ALL_TYPES`] and [`WORKFLOW_FAULT_TYPES`].
pub fn topics() -> Vec<&'static str> {
    ALL_TYPES
        .iter()
        .chain(WORKFLOW_FAULT_TYPES)
        .copied()
        .collect()
}

/// Events that end the scenario's branches: the run is complete when both were seen.
pub const TERMINAL: &[&str] = &[
    "MemoryRecordCreated",
    "ArtifactIngested",
    "AgentTaskCompleted",
];

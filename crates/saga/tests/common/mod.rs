//! Shared fixtures of the saga engine tests: events, an approval-gate saga, a workflow saga
//! with step timeouts, and a store on a temporary SQLite file.

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use eventyard_core::outbox::OutboxStore;
use eventyard_core::saga::SagaStore;
use eventyard_core::{Envelope, Event, TenantId};
use eventyard_saga::{Policy, SagaDefinition};
use eventyard_sqlite::{SqliteBroker, SqliteConfig, SqliteSagaStore};
use serde::{Deserialize, Serialize};

macro_rules! event {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name { $(pub $field: $ty),* }
        impl Event for $name {
            const EVENT_TYPE: &'static str = stringify!($name);
        }
    };
}

event!(ApprovalRequested {
    requested_by: String
});
event!(ApprovalGranted { approver: String });
event!(ApprovalTimedOut {});
event!(ApprovalRejected { reason: String });
event!(ReviewerAssigned {
    requested_by: String
});
event!(WorkflowInstanceStarted { steps: u32 });
event!(WorkflowStepCompleted { step: u32 });
event!(WorkflowStepTimedOut { step: u32 });

/// The approval gate's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub requester: String,
    pub approver: Option<String>,
}

/// An approval gate: requested → Awaiting (reviewer assigned; auto-reject timeout after
/// `timeout`); granted by someone else than the requester → Approved; timeout → Rejected with
/// an ApprovalRejected event.
pub fn approval_gate(timeout: Duration, unknown: Policy) -> SagaDefinition<Gate> {
    SagaDefinition::<Gate>::new("approval-gate")
        .states(["Awaiting", "Approved", "Rejected"])
        .finals(["Approved", "Rejected"])
        .on_unknown(unknown)
        .start_on::<ApprovalRequested>()
        .then(move |e, data, step| {
            data.requester = e.requested_by.clone();
            step.publish(&ReviewerAssigned {
                requested_by: e.requested_by.clone(),
            })?;
            step.schedule(timeout, &ApprovalTimedOut {})
        })
        .go_to("Awaiting")
        .on::<ApprovalGranted>(["Awaiting"])
        .when(|e, data| e.approver != data.requester)
        .then(|e, data, _| {
            data.approver = Some(e.approver.clone());
            Ok(())
        })
        .go_to("Approved")
        .on_timeout::<ApprovalTimedOut>(["Awaiting"])
        .then(|_, _, step| {
            step.publish(&ApprovalRejected {
                reason: "timeout".into(),
            })
        })
        .go_to("Rejected")
        .build()
        .expect("valid definition")
}

/// The workflow's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub steps: u32,
    pub done: u32,
    pub timed_out: Option<u32>,
}

/// A workflow: started → Running, each step must complete within `step_timeout` (else
/// WorkflowStepTimedOut is published and the workflow is Escalated); each completion
/// reschedules the step timeout; the last one completes the workflow (Completed).
pub fn workflow(step_timeout: Duration) -> SagaDefinition<Workflow> {
    SagaDefinition::<Workflow>::new("workflow")
        .states(["Running", "Escalated", "Completed"])
        .finals(["Completed"])
        .start_on::<WorkflowInstanceStarted>()
        .then(move |e, data, step| {
            data.steps = e.steps;
            step.schedule(step_timeout, &WorkflowStepTimedOut { step: 1 })
        })
        .go_to("Running")
        .on::<WorkflowStepCompleted>(["Running"])
        .when(|e, data| e.step == data.done + 1)
        .then(move |_, data, step| {
            data.done += 1;
            if data.done == data.steps {
                step.cancel::<WorkflowStepTimedOut>();
                step.go_to("Completed");
                Ok(())
            } else {
                step.schedule(
                    step_timeout,
                    &WorkflowStepTimedOut {
                        step: data.done + 1,
                    },
                )
            }
        })
        .stay()
        .on_timeout::<WorkflowStepTimedOut>(["Running"])
        .then(|e, data, step| {
            data.timed_out = Some(e.step);
            step.publish(e)
        })
        .go_to("Escalated")
        .build()
        .expect("valid definition")
}

/// The tenant of the tests.
pub fn tenant() -> TenantId {
    TenantId::parse("connectsoft").expect("tenant")
}

/// A root envelope for `event`.
pub fn envelope<E: Event>(event: &E) -> Envelope {
    Envelope::for_event(event, tenant()).expect("envelope")
}

/// An envelope for `event` in the workflow of `root` (same correlation, caused by it).
pub fn follow<E: Event>(root: &Envelope, event: &E) -> Envelope {
    let mut env = envelope(event);
    env.inherit_from(root);
    env
}

/// Opens a broker and the saga store on `path`.
pub async fn open(path: &Path) -> (SqliteBroker, Arc<dyn SagaStore>) {
    let broker = SqliteBroker::open(SqliteConfig::new(path)).expect("open broker");
    let store = SqliteSagaStore::open(broker.clone())
        .await
        .expect("saga store");
    (broker, Arc::new(store))
}

/// Every envelope in the outbox (claimed with a long lease), in commit order.
pub async fn outbox_envelopes(broker: &SqliteBroker) -> Vec<(String, Envelope)> {
    let outbox = broker.outbox();
    let records = outbox
        .claim("test", 10_000, Duration::from_secs(600))
        .await
        .expect("claim");
    records
        .into_iter()
        .map(|r| {
            let env = Envelope::from_json(&r.message.body).expect("an envelope");
            (r.topic, env)
        })
        .collect()
}

/// Polls `check` every 20 ms until it returns true or `within` passes; returns the last result.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The instance's state, or "absent".
pub async fn state_of(store: &dyn SagaStore, saga: &str, key: &str) -> String {
    store
        .load(saga, key)
        .await
        .expect("load")
        .map_or_else(|| "absent".to_owned(), |i| i.state)
}

/// Waits (up to 10 s) until the instance is in `state`.
pub async fn reaches(store: &dyn SagaStore, saga: &str, key: &str, state: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        state_of(store, saga, key).await == state
    })
    .await
}

//! The saga engine (eventyard-saga) over the PostgreSQL store, as two processes would run it:
//! the SPEC §3 WorkflowInstance with step timeouts, two engines and two timeout schedulers on
//! separate stores of one schema. The step timeout fires once, its event reaches the outbox
//! once, and a duplicate delivery changes nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use eventyard_core::outbox::OutboxStore;
use eventyard_core::saga::SagaStore;
use eventyard_core::{Envelope, Event, TenantId};
use eventyard_postgres::{PgOutbox, PgSagaConfig, PgSagaStore};
use eventyard_saga::{
    Handled, SagaDefinition, SagaEngine, SchedulerHandle, SchedulerOptions, TimeoutScheduler,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkflowInstanceStarted {
    steps: u32,
}
impl Event for WorkflowInstanceStarted {
    const EVENT_TYPE: &'static str = "WorkflowInstanceStarted";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkflowStepCompleted {
    step: u32,
}
impl Event for WorkflowStepCompleted {
    const EVENT_TYPE: &'static str = "WorkflowStepCompleted";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkflowStepTimedOut {
    step: u32,
}
impl Event for WorkflowStepTimedOut {
    const EVENT_TYPE: &'static str = "WorkflowStepTimedOut";
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    steps: u32,
    done: u32,
}

/// Running while steps complete, each within `limit`; a late step escalates (the timeout event
/// is published for a human).
fn workflow(limit: Duration) -> SagaDefinition<Progress> {
    SagaDefinition::<Progress>::new("workflow")
        .states(["Running", "Escalated", "Completed"])
        .finals(["Completed"])
        .start_on::<WorkflowInstanceStarted>()
        .then(move |e, p, step| {
            p.steps = e.steps;
            step.schedule(limit, &WorkflowStepTimedOut { step: 1 })
        })
        .go_to("Running")
        .on::<WorkflowStepCompleted>(["Running"])
        .when(|e, p| e.step == p.done + 1)
        .then(move |_, p, step| {
            p.done += 1;
            step.schedule(limit, &WorkflowStepTimedOut { step: p.done + 1 })
        })
        .stay()
        .on_timeout::<WorkflowStepTimedOut>(["Running"])
        .then(|e, _, step| step.publish(e))
        .go_to("Escalated")
        .build()
        .expect("valid definition")
}

fn envelope<E: Event>(event: &E, root: Option<&Envelope>) -> Envelope {
    let mut env = Envelope::for_event(event, TenantId::parse("tenant-a").unwrap()).unwrap();
    if let Some(r) = root {
        env.inherit_from(r);
    }
    env
}

async fn process(
    url: &str,
    schema: &str,
    limit: Duration,
) -> (SagaEngine<Progress>, SchedulerHandle, Arc<dyn SagaStore>) {
    let store: Arc<dyn SagaStore> = Arc::new(
        PgSagaStore::connect(url, PgSagaConfig::with_schema(schema))
            .await
            .expect("connect"),
    );
    let engine = SagaEngine::new(workflow(limit), store.clone());
    let scheduler = TimeoutScheduler::new(store.clone())
        .options(SchedulerOptions {
            poll: Duration::from_millis(50),
            ..SchedulerOptions::default()
        })
        .register(&engine)
        .start();
    (engine, scheduler, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_step_timeout_fires_once_across_two_processes() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema();
    let _drop = DropSchema(url.clone(), schema.clone());
    let limit = Duration::from_millis(400);
    let (a, sched_a, store) = process(&url, &schema, limit).await;
    let (b, sched_b, _) = process(&url, &schema, limit).await;

    let start = envelope(&WorkflowInstanceStarted { steps: 3 }, None);
    let key = start.correlation_id.to_string();
    a.handle(&start).await.expect("start");
    let step1 = envelope(&WorkflowStepCompleted { step: 1 }, Some(&start));
    assert!(matches!(
        b.handle(&step1).await.expect("step 1"),
        Handled::Moved { .. }
    ));
    // A redelivery of step 1 to the other process is a duplicate: nothing changes.
    let again = a.handle(&step1).await.expect("step 1 again");
    assert!(!matches!(again, Handled::Moved { .. }), "{again:?}");

    // Step 2 never completes: its timeout escalates, once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let i = store.load("workflow", &key).await.unwrap().unwrap();
        if i.state == "Escalated" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {}", i.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sched_a.stop().await;
    sched_b.stop().await;
    let fired = a.counts().timeouts_fired + b.counts().timeouts_fired;
    assert_eq!(fired, 1, "the step timeout fired {fired} times");

    let d = store.details("workflow", &key).await.unwrap().unwrap();
    let steps: Vec<(&str, &str)> = d
        .history
        .iter()
        .map(|h| (h.event_type.as_str(), h.to_state.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("WorkflowInstanceStarted", "Running"),
            ("WorkflowStepCompleted", "Running"),
            ("WorkflowStepTimedOut", "Escalated"),
        ]
    );
    assert!(d.timeouts.is_empty(), "{:?}", d.timeouts);

    let outbox = PgOutbox::connect(&url, common::config(&schema))
        .await
        .expect("outbox");
    let records = outbox
        .claim("test", 100, common::LONG)
        .await
        .expect("claim");
    let timed_out: Vec<Envelope> = records
        .iter()
        .map(|r| Envelope::from_json(&r.message.body).expect("envelope"))
        .filter(|e| e.event_type.as_str() == "WorkflowStepTimedOut")
        .collect();
    assert_eq!(timed_out.len(), 1, "published once");
    assert_eq!(timed_out[0].correlation_id, start.correlation_id);
    assert_eq!(timed_out[0].payload["step"], 2);
}

/// Drops the schema when the test ends, passed or failed.
struct DropSchema(String, String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        common::drop_schema_blocking(&self.0, &self.1);
    }
}

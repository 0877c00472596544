//! Durable timeouts: an approval gate auto-rejects on timeout, also after a restart of
//! everything on the same file; the awaited event arriving first cancels it; step timeouts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use eventyard_core::Transport;
use eventyard_core::saga::SagaStore;
use eventyard_saga::{Policy, SagaEngine, SchedulerOptions, TimeoutScheduler};

/// An approval gate timing out after `ms` with its scheduler running, over `store`.
fn gate(
    store: &Arc<dyn SagaStore>,
    ms: u64,
) -> (SagaEngine<Gate>, eventyard_saga::SchedulerHandle) {
    let engine = SagaEngine::new(
        approval_gate(Duration::from_millis(ms), Policy::Ignore),
        store.clone(),
    );
    let scheduler = TimeoutScheduler::new(store.clone())
        .options(fast())
        .register(&engine)
        .start();
    (engine, scheduler)
}

fn fast() -> SchedulerOptions {
    SchedulerOptions {
        poll: Duration::from_millis(50),
        ..SchedulerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gate_auto_rejects_on_timeout() {
    let dir = tempfile::tempdir().expect("dir");
    let (broker, store) = open(&dir.path().join("s.db")).await;
    let (engine, scheduler) = gate(&store, 300);
    let start = envelope(&ApprovalRequested {
        requested_by: "ana".into(),
    });
    let key = start.correlation_id.to_string();
    let t0 = tokio::time::Instant::now();
    engine.handle(&start).await.expect("start");
    assert!(
        reaches(&*store, "approval-gate", &key, "Rejected").await,
        "not rejected"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(290),
        "fired early: {:?}",
        t0.elapsed()
    );
    let d = store
        .details("approval-gate", &key)
        .await
        .expect("details")
        .expect("present");
    assert!(d.instance.completed);
    assert!(d.timeouts.is_empty());
    let last = d.history.last().expect("history");
    assert_eq!(last.event_type, "ApprovalTimedOut");
    let out = outbox_envelopes(&broker).await;
    let rejected = out
        .iter()
        .find(|(_, e)| e.event_type.as_str() == "ApprovalRejected")
        .expect("ApprovalRejected emitted");
    assert_eq!(rejected.1.correlation_id, start.correlation_id);
    assert_eq!(rejected.1.payload["reason"], "timeout");
    assert_eq!(
        rejected.1.causation_id.as_ref().map(|c| c.to_string()),
        Some(last.event_id.clone()),
        "caused by the timeout event"
    );
    assert_eq!(engine.counts().timeouts_fired, 1);
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fires_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("s.db");
    let start = envelope(&ApprovalRequested {
        requested_by: "ana".into(),
    });
    let key = start.correlation_id.to_string();
    {
        let (broker, store) = open(&path).await;
        let (engine, scheduler) = gate(&store, 400);
        engine.handle(&start).await.expect("start");
        // Everything goes away before the timeout is due.
        scheduler.stop().await;
        drop(engine);
        drop(store);
        broker.close().await.expect("close");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_broker, store) = open(&path).await;
    assert_eq!(state_of(&*store, "approval-gate", &key).await, "Awaiting");
    let (_engine, scheduler) = gate(&store, 400);
    assert!(
        reaches(&*store, "approval-gate", &key, "Rejected").await,
        "the durable timeout did not fire after the restart"
    );
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_awaited_event_arriving_first_cancels_the_timeout() {
    let dir = tempfile::tempdir().expect("dir");
    let (broker, store) = open(&dir.path().join("s.db")).await;
    let (engine, scheduler) = gate(&store, 300);
    let start = envelope(&ApprovalRequested {
        requested_by: "ana".into(),
    });
    let key = start.correlation_id.to_string();
    engine.handle(&start).await.expect("start");
    engine
        .handle(&follow(
            &start,
            &ApprovalGranted {
                approver: "bob".into(),
            },
        ))
        .await
        .expect("grant");
    assert_eq!(store.next_due().await.expect("next_due"), None, "cancelled");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state_of(&*store, "approval-gate", &key).await, "Approved");
    let out = outbox_envelopes(&broker).await;
    assert!(
        out.iter()
            .all(|(_, e)| e.event_type.as_str() != "ApprovalRejected"),
        "{out:?}"
    );
    assert_eq!(engine.counts().timeouts_fired, 0);
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_timeouts_reschedule_cancel_and_escalate() {
    let dir = tempfile::tempdir().expect("dir");
    let (broker, store) = open(&dir.path().join("s.db")).await;
    let engine = SagaEngine::new(workflow(Duration::from_millis(300)), store.clone());
    let scheduler = TimeoutScheduler::new(store.clone())
        .options(fast())
        .register(&engine)
        .start();

    // Completed in time: each step reschedules, the last cancels.
    let quick = envelope(&WorkflowInstanceStarted { steps: 2 });
    let quick_key = quick.correlation_id.to_string();
    engine.handle(&quick).await.expect("start");
    for step in 1..=2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        engine
            .handle(&follow(&quick, &WorkflowStepCompleted { step }))
            .await
            .expect("step");
    }
    assert_eq!(state_of(&*store, "workflow", &quick_key).await, "Completed");

    // Step 2 never completes: WorkflowStepTimedOut { step: 2 }, escalated.
    let slow = envelope(&WorkflowInstanceStarted { steps: 3 });
    let slow_key = slow.correlation_id.to_string();
    engine.handle(&slow).await.expect("start");
    engine
        .handle(&follow(&slow, &WorkflowStepCompleted { step: 1 }))
        .await
        .expect("step 1");
    assert!(reaches(&*store, "workflow", &slow_key, "Escalated").await);
    let inst = store
        .load("workflow", &slow_key)
        .await
        .expect("load")
        .expect("present");
    assert_eq!(inst.data["timed_out"], 2);
    let out = outbox_envelopes(&broker).await;
    let timed_out: Vec<_> = out
        .iter()
        .filter(|(_, e)| e.event_type.as_str() == "WorkflowStepTimedOut")
        .collect();
    assert_eq!(timed_out.len(), 1, "{out:?}");
    assert_eq!(timed_out[0].1.correlation_id, slow.correlation_id);
    assert_eq!(timed_out[0].1.payload["step"], 2);
    assert_eq!(
        state_of(&*store, "workflow", &quick_key).await,
        "Completed",
        "no timeout fired for the completed workflow"
    );
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_schedulers_fire_each_timeout_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (broker, store) = open(&dir.path().join("s.db")).await;
    let engine = SagaEngine::new(
        approval_gate(Duration::from_millis(200), Policy::Ignore),
        store.clone(),
    );
    let mut keys = Vec::new();
    for i in 0..20 {
        let start = envelope(&ApprovalRequested {
            requested_by: format!("user-{i}"),
        });
        keys.push(start.correlation_id.to_string());
        engine.handle(&start).await.expect("start");
    }
    let schedulers: Vec<_> = (0..3)
        .map(|_| {
            let other = SagaEngine::new(
                approval_gate(Duration::from_millis(200), Policy::Ignore),
                store.clone(),
            );
            TimeoutScheduler::new(store.clone())
                .options(SchedulerOptions { batch: 3, ..fast() })
                .register(&other)
                .start()
        })
        .collect();
    for key in &keys {
        let store = Arc::clone(&store);
        assert!(reaches(&*store, "approval-gate", key, "Rejected").await);
    }
    for s in schedulers {
        s.stop().await;
    }
    let rejected = outbox_envelopes(&broker)
        .await
        .into_iter()
        .filter(|(_, e)| e.event_type.as_str() == "ApprovalRejected")
        .count();
    assert_eq!(rejected, keys.len(), "one rejection per gate");
    assert!(store.next_due().await.expect("next").is_none());
}

//! The saga engine on the embedded SQLite store: starting, guards, unknown-instance policies,
//! duplicates, conflict retry, the outbox, and the bus.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use common::*;
use eventyard_core::saga::{
    SagaCommit, SagaDetails, SagaError, SagaFilter, SagaInstance, SagaStore, ScheduledTimeout,
};
use eventyard_core::{Envelope, SubQueue, Transport};
use eventyard_runtime::{Bus, ErrorKind, RetryPolicy};
use eventyard_saga::{Handled, IgnoreReason, Policy, SagaDefinition, SagaEngine};
use serde::{Deserialize, Serialize};

const LONG: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_creates_the_instance_and_emits_through_the_outbox() {
    let dir = tempfile::tempdir().expect("dir");
    let (broker, store) = open(&dir.path().join("s.db")).await;
    let engine = SagaEngine::new(approval_gate(LONG, Policy::Ignore), store.clone());
    let start = envelope(&ApprovalRequested {
        requested_by: "ana".into(),
    });
    let key = start.correlation_id.to_string();
    let r = engine.handle(&start).await.expect("handled");
    assert_eq!(
        r,
        Handled::Started {
            key: key.clone(),
            state: "Awaiting".into()
        }
    );
    let inst = store
        .load("approval-gate", &key)
        .await
        .expect("load")
        .expect("present");
    assert_eq!((inst.state.as_str(), inst.version), ("Awaiting", 1));
    assert_eq!(inst.tenant, "connectsoft");
    assert_eq!(inst.data["requester"], "ana");

    let out = outbox_envelopes(&broker).await;
    assert_eq!(out.len(), 1, "{out:?}");
    let (topic, emitted) = &out[0];
    assert_eq!(topic, "ReviewerAssigned");
    assert_eq!(emitted.event_type.as_str(), "ReviewerAssigned");
    assert_eq!(
        emitted.correlation_id, start.correlation_id,
        "correlation = key"
    );
    assert_eq!(emitted.trace_id, start.trace_id);
    assert_eq!(emitted.causation_id.as_ref(), Some(&start.event_id));

    let d = store
        .details("approval-gate", &key)
        .await
        .expect("details")
        .expect("present");
    assert_eq!(d.timeouts.len(), 1, "the auto-reject timeout is scheduled");
    assert_eq!(d.timeouts[0].name, "ApprovalTimedOut");
    assert_eq!(d.history[0].event_id, start.event_id.as_str());
    assert_eq!(engine.counts().started, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_rejects_then_accepts() {
    let dir = tempfile::tempdir().expect("dir");
    let (_broker, store) = open(&dir.path().join("s.db")).await;
    let engine = SagaEngine::new(approval_gate(LONG, Policy::Ignore), store.clone());
    let start = envelope(&ApprovalRequested {
        requested_by: "ana".into(),
    });
    let key = start.correlation_id.to_string();
    engine.handle(&start).await.expect("start");

    let self_approval = follow(
        &start,
        &ApprovalGranted {
            approver: "ana".into(),
        },
    );
    let r = engine.handle(&self_approval).await.expect("handled");
    assert_eq!(
        r,
        Handled::Ignored {
            key: Some(key.clone()),
            reason: IgnoreReason::GuardRejected
        }
    );
    assert_eq!(state_of(&*store, "approval-gate", &key).await, "Awaiting");

    let grant = follow(
        &start,
        &ApprovalGranted {
            approver: "bob".into(),
        },
    );
    let r = engine.handle(&grant).await.expect("handled");
    assert_eq!(
        r,
        Handled::Moved {
            key: key.clone(),
            from: "Awaiting".into(),
            to: "Approved".into(),
            completed: true
        }
    );
    let d = store
        .details("approval-gate", &key)
        .await
        .expect("details")
        .expect("present");
    assert!(d.instance.completed);
    assert_eq!(d.instance.data["approver"], "bob");
    assert!(
        d.timeouts.is_empty(),
        "completion cancels the pending timeout"
    );

    // Completed: later events change nothing.
    let late = follow(
        &start,
        &ApprovalGranted {
            approver: "carl".into(),
        },
    );
    assert_eq!(
        engine.handle(&late).await.expect("handled"),
        Handled::Ignored {
            key: Some(key),
            reason: IgnoreReason::Completed
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_instance_policies() {
    let dir = tempfile::tempdir().expect("dir");
    let (_broker, store) = open(&dir.path().join("s.db")).await;
    let orphan = envelope(&ApprovalGranted {
        approver: "bob".into(),
    });
    let key = orphan.correlation_id.to_string();

    let ignore = SagaEngine::new(approval_gate(LONG, Policy::Ignore), store.clone());
    assert_eq!(
        ignore.handle(&orphan).await.expect("ignored"),
        Handled::Ignored {
            key: Some(key.clone()),
            reason: IgnoreReason::UnknownInstance
        }
    );

    let dead = SagaEngine::new(approval_gate(LONG, Policy::DeadLetter), store.clone());
    let e = dead.handle(&orphan).await.expect_err("dead-letter policy");
    assert_eq!(e.kind(), ErrorKind::Validation, "{e}");
    let h = e.into_handler_error();
    assert_eq!(h.kind(), ErrorKind::Validation);
    assert!(h.chain()[0].contains("UnknownSagaInstance"), "{h}");

    let fault = SagaEngine::new(approval_gate(LONG, Policy::Fault), store.clone());
    let e = fault.handle(&orphan).await.expect_err("fault policy");
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");

    assert_eq!(state_of(&*store, "approval-gate", &key).await, "absent");
    // An event the saga does not know at all is ignored, whatever the policy.
    let other = envelope(&WorkflowStepCompleted { step: 1 });
    assert_eq!(
        dead.handle(&other).await.expect("ignored"),
        Handled::Ignored {
            key: None,
            reason: IgnoreReason::NotHandled
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_event_is_applied_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (broker, store) = open(&dir.path().join("s.db")).await;
    let engine = SagaEngine::new(workflow(LONG), store.clone());
    let start = envelope(&WorkflowInstanceStarted { steps: 3 });
    let key = start.correlation_id.to_string();
    engine.handle(&start).await.expect("start");
    assert_eq!(
        engine.handle(&start).await.expect("dup start"),
        Handled::Duplicate { key: key.clone() }
    );
    let step1 = follow(&start, &WorkflowStepCompleted { step: 1 });
    engine.handle(&step1).await.expect("step 1");
    // The redelivery would pass no guard now (done = 1) yet is recognized as a duplicate.
    assert_eq!(
        engine.handle(&step1).await.expect("dup"),
        Handled::Duplicate { key: key.clone() }
    );
    let inst = store
        .load("workflow", &key)
        .await
        .expect("load")
        .expect("present");
    assert_eq!((inst.version, inst.data["done"].as_u64()), (2, Some(1)));
    assert_eq!(engine.counts().duplicates, 2);
    assert!(outbox_envelopes(&broker).await.is_empty());
}

mod tally {
    //! A saga whose every item event passes in any state, to race two commits.
    use super::*;
    use eventyard_core::Event;

    /// Counts items.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct Tally {
        pub items: Vec<u32>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct TallyOpened {}
    impl Event for TallyOpened {
        const EVENT_TYPE: &'static str = "TallyOpened";
    }
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ItemCounted {
        pub item: u32,
    }
    impl Event for ItemCounted {
        const EVENT_TYPE: &'static str = "ItemCounted";
    }

    fn tally() -> SagaDefinition<Tally> {
        SagaDefinition::<Tally>::new("tally")
            .start_on::<TallyOpened>()
            .go_to("Open")
            .on::<ItemCounted>(["Open"])
            .then(|e, data, _| {
                data.items.push(e.item);
                Ok(())
            })
            .stay()
            .build()
            .expect("valid")
    }

    /// A store that lets the rival's commit land between the engine's load and its commit,
    /// once.
    struct RacingTally {
        inner: Arc<dyn SagaStore>,
        armed: AtomicBool,
        rival: SagaEngine<Tally>,
        rival_event: Envelope,
    }

    #[async_trait]
    impl SagaStore for RacingTally {
        fn name(&self) -> &'static str {
            "racing"
        }
        async fn load(&self, saga: &str, key: &str) -> Result<Option<SagaInstance>, SagaError> {
            self.inner.load(saga, key).await
        }
        async fn commit(&self, commit: SagaCommit) -> Result<u64, SagaError> {
            if self.armed.swap(false, Ordering::SeqCst) {
                self.rival.handle(&self.rival_event).await.expect("rival");
            }
            self.inner.commit(commit).await
        }
        async fn is_processed(&self, s: &str, k: &str, id: &str) -> Result<bool, SagaError> {
            self.inner.is_processed(s, k, id).await
        }
        async fn list(&self, f: &SagaFilter) -> Result<Vec<SagaInstance>, SagaError> {
            self.inner.list(f).await
        }
        async fn details(&self, s: &str, k: &str) -> Result<Option<SagaDetails>, SagaError> {
            self.inner.details(s, k).await
        }
        async fn claim_due(
            &self,
            now: DateTime<Utc>,
            max: usize,
            lease: Duration,
        ) -> Result<Vec<ScheduledTimeout>, SagaError> {
            self.inner.claim_due(now, max, lease).await
        }
        async fn mark_fired(&self, id: &str) -> Result<(), SagaError> {
            self.inner.mark_fired(id).await
        }
        async fn next_due(&self) -> Result<Option<DateTime<Utc>>, SagaError> {
            self.inner.next_due().await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conflict_retries_against_the_fresh_state_and_loses_no_update() {
        let dir = tempfile::tempdir().expect("dir");
        let (_broker, store) = open(&dir.path().join("s.db")).await;
        let plain = SagaEngine::new(tally(), store.clone());
        let start = envelope(&TallyOpened {});
        let key = start.correlation_id.to_string();
        plain.handle(&start).await.expect("start");
        let racing = Arc::new(RacingTally {
            inner: store.clone(),
            armed: AtomicBool::new(true),
            rival: plain.clone(),
            rival_event: follow(&start, &ItemCounted { item: 1 }),
        });
        let engine = SagaEngine::new(tally(), racing);
        let r = engine
            .handle(&follow(&start, &ItemCounted { item: 2 }))
            .await
            .expect("handled");
        assert!(matches!(r, Handled::Moved { .. }), "{r:?}");
        assert_eq!(engine.counts().conflicts, 1, "one conflict, then retried");
        let inst = store
            .load("tally", &key)
            .await
            .expect("load")
            .expect("present");
        assert_eq!(inst.version, 3);
        assert_eq!(
            inst.data["items"],
            serde_json::json!([1, 2]),
            "no lost update"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_on_the_bus_with_competing_consumers_and_dead_letters() {
    let dir = tempfile::tempdir().expect("dir");
    let (broker, store) = open(&dir.path().join("s.db")).await;
    let bus = Bus::new(Arc::new(broker.clone()));
    let engine = SagaEngine::new(approval_gate(LONG, Policy::DeadLetter), store.clone());
    let consumers = engine
        .subscribe(&bus, "approval-gate", |s| {
            s.concurrency(4).retry(RetryPolicy::default())
        })
        .await
        .expect("subscribe");
    assert_eq!(consumers.len(), 2, "ApprovalRequested and ApprovalGranted");

    let start = envelope(&ApprovalRequested {
        requested_by: "ana".into(),
    });
    let key = start.correlation_id.to_string();
    bus.publish_envelope(start.clone()).await.expect("publish");
    assert!(reaches(&*store, "approval-gate", &key, "Awaiting").await);
    bus.publish_envelope(follow(
        &start,
        &ApprovalGranted {
            approver: "bob".into(),
        },
    ))
    .await
    .expect("publish");
    assert!(reaches(&*store, "approval-gate", &key, "Approved").await);

    // Unknown instance under the dead-letter policy: dead-lettered at once.
    bus.publish_envelope(envelope(&ApprovalGranted {
        approver: "bob".into(),
    }))
    .await
    .expect("publish");
    let mut dlq = broker
        .receiver("ApprovalGranted", "approval-gate", SubQueue::DeadLetter)
        .await
        .expect("dlq");
    let got = dlq
        .receive(10, Duration::from_secs(10))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    let prop = |name: &str| {
        got[0]
            .message
            .properties
            .get(name)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    assert_eq!(prop("cs-dead-letter-reason"), "ValidationError");
    let description = prop("cs-dead-letter-description");
    assert!(
        description.contains("UnknownSagaInstance"),
        "description: {description}"
    );
    bus.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cached_instance_is_never_trusted() {
    let dir = tempfile::tempdir().expect("dir");
    let (_broker, store) = open(&dir.path().join("s.db")).await;
    // Two engines (as two processes) over one store; `a` caches what it commits.
    let a = SagaEngine::new(workflow(LONG), store.clone());
    let b = SagaEngine::new(workflow(LONG), store.clone());
    let start = envelope(&WorkflowInstanceStarted { steps: 4 });
    let key = start.correlation_id.to_string();
    a.handle(&start).await.expect("start"); // a caches done = 0
    b.handle(&follow(&start, &WorkflowStepCompleted { step: 1 }))
        .await
        .expect("step 1 elsewhere");
    // On a's stale cache step 2 fails its guard; it must be decided on the fresh state.
    let r = a
        .handle(&follow(&start, &WorkflowStepCompleted { step: 2 }))
        .await
        .expect("step 2");
    assert!(matches!(r, Handled::Moved { .. }), "{r:?}");
    b.handle(&follow(&start, &WorkflowStepCompleted { step: 3 }))
        .await
        .expect("step 3 elsewhere");
    // Again: a's cache (done = 2) is stale; step 4 is decided on the fresh state (done = 3).
    let r = a
        .handle(&follow(&start, &WorkflowStepCompleted { step: 4 }))
        .await
        .expect("step 4");
    assert!(
        matches!(
            r,
            Handled::Moved {
                completed: true,
                ..
            }
        ),
        "{r:?}"
    );
    let inst = store
        .load("workflow", &key)
        .await
        .expect("load")
        .expect("present");
    assert_eq!((inst.version, inst.data["done"].as_u64()), (5, Some(4)));
    assert_eq!(inst.state, "Completed");
}

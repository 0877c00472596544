//! The saga store conformance suite: one `pub async fn` per rule of the [`SagaStore`] contract
//! (see [`eventyard_core::saga`]), each taking a [`SagaFactory`].
//!
//! Every store runs the same cases with [`saga_conformance!`](crate::saga_conformance), which
//! expands to one `#[tokio::test]` per case:
//!
//! ```ignore
//! // crates/<store>/tests/saga_conformance.rs — needs `tokio` and `eventyard-testkit` as
//! // dev-dependencies.
//! eventyard_testkit::saga_conformance!(MySagaFactory::new());
//! ```
//!
//! **Isolation**: the factory expression is evaluated once per case, and each value must be a
//! store of its own (a fresh file or schema): cases list, claim and count *everything*.
//!
//! # Contract → cases
//!
//! | rule of the contract | case |
//! |---|---|
//! | a first commit (expected version 0) creates the instance at version 1; load returns every field | [`create_then_load_round_trip`] |
//! | each commit adds one to the version and one history entry; `created_at` is kept | [`update_increments_version_and_appends_history`] |
//! | a stale expected version (or creating an existing instance) is a `Conflict` with the found version, and writes nothing: no state, history, outbox record or timeout | [`version_conflict_writes_nothing`] |
//! | committing an event already processed by the instance is a `Duplicate` and writes nothing; `is_processed` tells | [`duplicate_event_is_a_no_op`] |
//! | emitted events land in the outbox with the commit, in order; a commit that fails (a refused event) leaves no instance, history or outbox record | [`emitted_events_commit_atomically_with_the_state`] |
//! | many concurrent load → commit → retry-on-conflict loops on one instance lose no update | [`concurrent_commits_lose_no_update`] |
//! | timeouts: schedule, replace by name, cancel by name, delete the fired one, all gone on completion; `next_due` | [`timeouts_schedule_replace_cancel_and_complete`] |
//! | `claim_due` hands out only due timeouts, earliest first, each once under concurrent claimers; an expired lease makes it claimable again; `mark_fired` deletes it | [`claim_due_hands_each_timeout_out_once`] |
//! | `list` filters by saga, state, completion and tenant, newest first, limited; `details` returns history and timeouts | [`list_and_details`] |
//! | a completed instance stays listed, cannot be reopened, and has no timeouts | [`completed_instances_stay_and_cannot_reopen`] |

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventyard_core::Envelope;
use eventyard_core::outbox::{OutboxStore, PendingEvent};
use eventyard_core::saga::{
    SagaCommit, SagaDetails, SagaError, SagaHistoryEntry, SagaInstance, SagaStore, ScheduledTimeout,
};
use serde_json::Value;

mod cases;
mod concurrency;
mod macros;
mod timeouts;

pub use crate::conformance::{CASE_TIMEOUT, PATIENCE, run_case};
pub use cases::{
    completed_instances_stay_and_cannot_reopen, create_then_load_round_trip,
    duplicate_event_is_a_no_op, emitted_events_commit_atomically_with_the_state, list_and_details,
    update_increments_version_and_appends_history, version_conflict_writes_nothing,
};
pub use concurrency::concurrent_commits_lose_no_update;
pub use timeouts::{
    claim_due_hands_each_timeout_out_once, timeouts_schedule_replace_cancel_and_complete,
};

/// Connects the suite to a saga store.
#[async_trait]
pub trait SagaFactory: Send + Sync {
    /// A new handle onto the factory's saga store (as another process would hold). Panics if it
    /// cannot connect.
    async fn connect(&self) -> Arc<dyn SagaStore>;

    /// The outbox of the same database, to check the events commits recorded.
    async fn outbox(&self) -> Arc<dyn OutboxStore>;
}

#[async_trait]
impl<T: SagaFactory + ?Sized> SagaFactory for Arc<T> {
    async fn connect(&self) -> Arc<dyn SagaStore> {
        (**self).connect().await
    }

    async fn outbox(&self) -> Arc<dyn OutboxStore> {
        (**self).outbox().await
    }
}

#[async_trait]
impl<T: SagaFactory + ?Sized> SagaFactory for Box<T> {
    async fn connect(&self) -> Arc<dyn SagaStore> {
        (**self).connect().await
    }

    async fn outbox(&self) -> Arc<dyn OutboxStore> {
        (**self).outbox().await
    }
}

/// Tenant of every instance the suite writes.
pub const TENANT: &str = "tenant-a";

/// Times with millisecond precision (stores keep at least that), now.
pub fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
}

/// An instance of `saga`/`key` in `state` with `data`, times now, version 0, running.
pub fn instance(saga: &str, key: &str, state: &str, data: Value) -> SagaInstance {
    let now = now_ms();
    SagaInstance {
        saga: saga.into(),
        key: key.into(),
        tenant: TENANT.into(),
        state: state.into(),
        data,
        version: 0,
        created_at: now,
        updated_at: now,
        completed: false,
    }
}

/// A commit moving `instance` (read at `expected`) into its state, handling a fresh event of
/// type `StepDone` from `from`; no events or timeouts.
pub fn commit(instance: SagaInstance, expected: u64, from: Option<&str>) -> SagaCommit {
    commit_event(instance, expected, from, &fresh_event_id())
}

/// [`commit`] for a given event id.
pub fn commit_event(
    instance: SagaInstance,
    expected: u64,
    from: Option<&str>,
    event_id: &str,
) -> SagaCommit {
    SagaCommit {
        history: SagaHistoryEntry {
            version: 0,
            event_id: event_id.into(),
            event_type: "StepDone".into(),
            from_state: from.map(str::to_owned),
            to_state: instance.state.clone(),
            at: now_ms(),
        },
        instance,
        expected_version: expected,
        events: Vec::new(),
        schedule: Vec::new(),
        cancel: Vec::new(),
        fired: None,
    }
}

/// A new event id.
pub fn fresh_event_id() -> String {
    crate::helpers::sample_envelope(TENANT, "StepDone")
        .event_id
        .to_string()
}

/// A pending event on topic `topic`, partitioned by `key`.
pub fn event(topic: &str, key: &str) -> PendingEvent {
    let env = crate::helpers::sample_envelope(TENANT, "ThingHappened");
    PendingEvent::new(topic, &env)
        .unwrap_or_else(|e| panic!("PendingEvent::new({topic}): {e}"))
        .partition_key(key)
}

/// A timeout `name` for `saga`/`key`, due at `due_at`; its envelope is a fresh event of type
/// `name` whose eventId is the timeout's id.
pub fn timeout(saga: &str, key: &str, name: &str, due_at: DateTime<Utc>) -> ScheduledTimeout {
    let envelope: Envelope = crate::helpers::sample_envelope(TENANT, name);
    ScheduledTimeout {
        id: envelope.event_id.to_string(),
        saga: saga.into(),
        key: key.into(),
        name: name.into(),
        due_at,
        envelope,
    }
}

/// Commits, panicking on error.
pub async fn commit_ok(store: &dyn SagaStore, c: SagaCommit) -> u64 {
    let what = format!("{}/{}", c.instance.saga, c.instance.key);
    store
        .commit(c)
        .await
        .unwrap_or_else(|e| panic!("commit of {what} failed: {e}"))
}

/// Loads, panicking on error or absence.
pub async fn load_ok(store: &dyn SagaStore, saga: &str, key: &str) -> SagaInstance {
    store
        .load(saga, key)
        .await
        .unwrap_or_else(|e| panic!("load({saga}, {key}) failed: {e}"))
        .unwrap_or_else(|| panic!("{saga}/{key} is absent"))
}

/// Asserts a conflict with the given versions.
pub fn assert_conflict(r: Result<u64, SagaError>, expected_v: u64, found_v: u64) {
    match r {
        Err(SagaError::Conflict {
            expected, found, ..
        }) => {
            assert_eq!(
                (expected, found),
                (expected_v, found_v),
                "conflict versions"
            );
        }
        other => panic!("expected a conflict ({expected_v} vs {found_v}), got {other:?}"),
    }
}

/// Claims everything the outbox holds (long lease).
pub async fn outbox_records(outbox: &dyn OutboxStore) -> Vec<eventyard_core::outbox::OutboxRecord> {
    outbox
        .claim("saga-suite", 10_000, std::time::Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("outbox claim failed: {e}"))
}

/// The details of a stored instance, panicking on error or absence.
pub async fn details_ok(store: &dyn SagaStore, saga: &str, key: &str) -> SagaDetails {
    store
        .details(saga, key)
        .await
        .unwrap_or_else(|e| panic!("details({saga}, {key}) failed: {e}"))
        .unwrap_or_else(|| panic!("{saga}/{key} is absent"))
}

/// True if the instance is not stored (load returns `None`), panicking on error.
pub async fn absent(store: &dyn SagaStore, saga: &str, key: &str) -> bool {
    store
        .load(saga, key)
        .await
        .unwrap_or_else(|e| panic!("load({saga}, {key}) failed: {e}"))
        .is_none()
}

/// Claims due timeouts, panicking on error.
pub async fn claim_due_ok(
    store: &dyn SagaStore,
    now: DateTime<Utc>,
    max: usize,
    lease: std::time::Duration,
) -> Vec<ScheduledTimeout> {
    store
        .claim_due(now, max, lease)
        .await
        .unwrap_or_else(|e| panic!("claim_due({now}, {max}) failed: {e}"))
}

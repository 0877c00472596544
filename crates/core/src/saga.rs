//! The saga (process manager) storage contract (SPEC §3): durable state machines keyed by
//! correlationId (or another property), whose every transition commits atomically with the
//! events it emits (through the transactional outbox) and the timeouts it schedules.
//!
//! The engine (`eventyard-saga`) decides transitions; a [`SagaStore`] only persists them. No I/O
//! lives here. The conformance suite in `eventyard-testkit` (`saga_conformance!`) tests each rule
//! below for every store.
//!
//! # Rules
//! - **Optimistic concurrency.** Every instance has a version, 1 after its first commit and one
//!   more per commit. [`SagaStore::commit`] names the version it read (`expected_version`, 0 for
//!   an instance that does not exist yet); if the stored version differs it returns
//!   [`SagaError::Conflict`] and writes *nothing*. The engine then reloads and retries the event
//!   against the fresh state.
//! - **Atomicity.** One commit writes, in one database transaction: the instance row, one history
//!   entry, the processed-event record, the emitted events (outbox records, published later by the
//!   relay), the timeouts it schedules and the timeouts it cancels. Any failure rolls all of it
//!   back.
//! - **Duplicates.** A commit records `(saga, key, event_id)` as processed; committing the same
//!   event for the same instance again returns [`SagaError::Duplicate`] and writes nothing (a
//!   redelivered or duplicated event is applied once). [`SagaStore::is_processed`] lets the engine
//!   recognize a duplicate it could not apply.
//! - **Timeouts** are durable rows. Scheduling a timeout replaces a pending timeout of the same
//!   name for the same instance. Cancelling by name deletes it; a commit that handles a fired
//!   timeout names it in [`SagaCommit::fired`] and deletes it. Completing an instance deletes all
//!   its pending timeouts. [`SagaStore::claim_due`] leases due timeouts (at most `max`): a leased
//!   timeout is not handed out again until its lease expires (at least once across crashes;
//!   once while a lease runs, whatever the number of concurrent claimers).
//!   [`SagaStore::mark_fired`] deletes a timeout that could not be applied.
//! - **Completed** instances stay stored (for `yard saga list/show`); they accept no commit that
//!   would un-complete them (the engine ignores events for them).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::envelope::Envelope;
use crate::outbox::{OutboxError, PendingEvent};

/// One saga instance: the state machine `saga`'s instance for `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaInstance {
    /// The saga definition's name.
    pub saga: String,
    /// The instance key (its correlationId, or the property the definition names).
    pub key: String,
    /// The tenant the instance belongs to; events of other tenants never touch it.
    pub tenant: String,
    /// The current state's name.
    pub state: String,
    /// The saga's data (its typed state, as JSON).
    pub data: serde_json::Value,
    /// 1 after the first commit, one more per commit; 0 for an instance not yet stored.
    pub version: u64,
    /// When the instance was first committed.
    pub created_at: DateTime<Utc>,
    /// When it was last committed.
    pub updated_at: DateTime<Utc>,
    /// True once it reached a final state.
    pub completed: bool,
}

/// One step of an instance's history: the event it handled and the transition it made.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaHistoryEntry {
    /// The instance version this step produced.
    pub version: u64,
    /// The handled event's id (a timeout's id for a fired timeout).
    pub event_id: String,
    /// The handled event's type.
    pub event_type: String,
    /// The state before (`None` when the event started the instance).
    pub from_state: Option<String>,
    /// The state after.
    pub to_state: String,
    /// When the step committed.
    pub at: DateTime<Utc>,
}

/// A durable timeout: the event `envelope` is fed to the saga instance when `due_at` comes,
/// unless cancelled first.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledTimeout {
    /// Unique id; also the fired event's id (the envelope's eventId), so a timeout fired twice
    /// is a duplicate.
    pub id: String,
    /// The saga definition's name.
    pub saga: String,
    /// The instance key.
    pub key: String,
    /// The timeout's name (its event type); one pending timeout per name and instance.
    pub name: String,
    /// When it fires.
    pub due_at: DateTime<Utc>,
    /// The event fed to the instance when it fires.
    pub envelope: Envelope,
}

/// Everything one transition writes, atomically (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct SagaCommit {
    /// The instance after the transition. Its `version` is ignored: the store writes
    /// `expected_version + 1`. `created_at` is kept from the stored row on updates.
    pub instance: SagaInstance,
    /// The version read before the transition; 0 creates the instance (which must not exist).
    pub expected_version: u64,
    /// The history entry (its `version` is ignored, as above).
    pub history: SagaHistoryEntry,
    /// Events to record in the outbox, in order.
    pub events: Vec<PendingEvent>,
    /// Timeouts to schedule (each replaces a pending one of the same name).
    pub schedule: Vec<ScheduledTimeout>,
    /// Names of pending timeouts to cancel.
    pub cancel: Vec<String>,
    /// The id of the fired timeout this transition handles, deleted with the commit.
    pub fired: Option<String>,
}

/// Which instances [`SagaStore::list`] returns; newest `updated_at` first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SagaFilter {
    /// Only this saga definition.
    pub saga: Option<String>,
    /// Only instances in this state.
    pub state: Option<String>,
    /// Only completed (`Some(true)`) or running (`Some(false)`) instances.
    pub completed: Option<bool>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// At most this many (0: no limit).
    pub limit: u32,
}

/// An instance with its history and pending timeouts (`yard saga show`).
#[derive(Debug, Clone, PartialEq)]
pub struct SagaDetails {
    /// The instance.
    pub instance: SagaInstance,
    /// Its history, oldest first.
    pub history: Vec<SagaHistoryEntry>,
    /// Its pending timeouts, earliest first.
    pub timeouts: Vec<ScheduledTimeout>,
}

/// Errors of saga stores.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The stored version is not the expected one (another commit won): nothing was written.
    #[error("saga {saga}/{key}: version conflict (expected {expected}, found {found}; 0 = absent)")]
    Conflict {
        /// Saga name.
        saga: String,
        /// Instance key.
        key: String,
        /// The version the commit expected.
        expected: u64,
        /// The version stored (0: no instance).
        found: u64,
    },
    /// The event was already processed by this instance: nothing was written.
    #[error("saga {saga}/{key}: event {event_id} was already processed")]
    Duplicate {
        /// Saga name.
        saga: String,
        /// Instance key.
        key: String,
        /// The duplicate event's id.
        event_id: String,
    },
    /// No such instance.
    #[error("saga {saga}/{key}: no such instance")]
    NotFound {
        /// Saga name.
        saga: String,
        /// Instance key.
        key: String,
    },
    /// The commit is invalid (empty names, a completed instance un-completed …).
    #[error("invalid saga commit: {0}")]
    Invalid(String),
    /// Data or an envelope could not be (de)serialized.
    #[error("saga serialization: {0}")]
    Serialization(String),
    /// An emitted event could not be recorded in the outbox.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The database is unreachable, locked or failed transiently.
    #[error("saga store unavailable: {0}")]
    Unavailable(String),
    /// Any other store error, described.
    #[error("saga store error: {0}")]
    Storage(String),
}

impl SagaError {
    /// True when retrying later may succeed (a conflict is retried by the engine itself).
    pub fn is_transient(&self) -> bool {
        match self {
            SagaError::Unavailable(_) => true,
            SagaError::Outbox(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Persistence of saga instances. See the module doc for the rules.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Short name (`sqlite`, `postgres`).
    fn name(&self) -> &'static str;

    /// The instance `key` of `saga`, if stored.
    async fn load(&self, saga: &str, key: &str) -> Result<Option<SagaInstance>, SagaError>;

    /// Commits one transition atomically; returns the new version. [`SagaError::Conflict`] when
    /// the stored version is not `expected_version`, [`SagaError::Duplicate`] when
    /// `history.event_id` was already processed by the instance (checked first); both write
    /// nothing.
    async fn commit(&self, commit: SagaCommit) -> Result<u64, SagaError>;

    /// True if `event_id` was committed for the instance.
    async fn is_processed(&self, saga: &str, key: &str, event_id: &str) -> Result<bool, SagaError>;

    /// Instances matching `filter`, most recently updated first.
    async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaInstance>, SagaError>;

    /// One instance with its history and pending timeouts; `None` if absent.
    async fn details(&self, saga: &str, key: &str) -> Result<Option<SagaDetails>, SagaError>;

    /// Leases up to `max` timeouts due at `now` (earliest first) for `lease`.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ScheduledTimeout>, SagaError>;

    /// Deletes a timeout that fired but was not applied (instance gone, completed, or no
    /// transition for it). Unknown ids are ignored.
    async fn mark_fired(&self, id: &str) -> Result<(), SagaError>;

    /// The earliest due time of any pending timeout (leased ones included), to sleep until.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, SagaError>;
}

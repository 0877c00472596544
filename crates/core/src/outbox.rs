//! The transactional outbox contract (SPEC §3): an aggregate's state and its pending events
//! commit in one database transaction; a relay publishes them afterwards, at least once.
//!
//! Recording an event is store-specific because it joins the *application's* transaction
//! (`eventyard_sqlite::outbox::add(&tx, ..)`, `eventyard_postgres::outbox::add(&mut tx, ..)`):
//! nothing is recorded if that transaction rolls back. Everything after the commit goes through
//! [`OutboxStore`], which the relay (`eventyard_runtime::Relay`) drives for any store and any
//! transport. The conformance suite in `eventyard-testkit` tests each rule below.
//!
//! # Rules
//! - Records are claimed in commit order (the store's sequence), at most `max` at a time, and a
//!   claim is a *lease*: a relay that crashes leaves its claims to expire, after which another
//!   relay claims them again (at least once; never lost).
//! - **Per-partition order**: records sharing a `partition_key` (default: the aggregate / the
//!   correlationId) are published in sequence order even with several relays. A store guarantees
//!   it by never handing out a record while an earlier record of the same key is pending in
//!   another relay's lease or is waiting for a retry.
//! - After the transport confirmed a batch, the relay marks it dispatched; a dispatched record is
//!   never claimed again. Dispatched records are deleted later by [`OutboxStore::cleanup`], run by
//!   one elected cleaner at a time, in bounded batches.
//! - A record the transport refuses for good (too large, invalid topic) is *parked* with its
//!   reason: moved aside, never retried, never blocking the others — but it keeps blocking later
//!   records of its own partition key (their order would break otherwise) until an operator acts.
//! - A transient publish failure releases the batch with a retry time (backoff).
//! - **Direct dispatch.** A store whose database also holds the transport's queues (the
//!   embedded store and the broker of the same data file) can move records into the transport
//!   itself ([`OutboxStore::dispatch`]): claim, publish and mark in one transaction of that
//!   database, with the claim's order rules and no lease. The relay uses it whenever
//!   [`OutboxStore::dispatches_into`] says so: a record is then published exactly once, even
//!   across crashes.
//! - [`OutboxStore::wait`] returns as soon as new records are committed (LISTEN/NOTIFY on
//!   PostgreSQL — at most one NOTIFY per transaction; an in-process signal on SQLite), or after the
//!   timeout (the polling fallback).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::envelope::Envelope;
use crate::transport::{Message, Transport, TransportError};

/// One recorded event waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    /// Store sequence (commit order).
    pub id: i64,
    /// Topic to publish to.
    pub topic: String,
    /// Records with the same key are published in `id` order.
    pub partition_key: String,
    /// The message (envelope JSON and properties).
    pub message: Message,
    /// Scheduled delivery time, if any.
    pub deliver_at: Option<DateTime<Utc>>,
    /// When it was recorded (its transaction's time).
    pub created_at: DateTime<Utc>,
    /// Failed publish attempts so far.
    pub attempts: u32,
}

/// What to record: an envelope for a topic, with its partition key.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEvent {
    /// Topic to publish to.
    pub topic: String,
    /// Default: the envelope's correlationId (one workflow/aggregate stays in order).
    pub partition_key: String,
    /// The message to publish. Its properties include the trace context captured at `add`
    /// time (`cs-trace-id`, `cs-correlation-id`, `cs-causation-id`).
    pub message: Message,
    /// Scheduled delivery time, if any.
    pub deliver_at: Option<DateTime<Utc>>,
}

impl PendingEvent {
    /// The envelope for `topic`, partitioned by its correlationId. Validates the envelope.
    pub fn new(topic: impl Into<String>, envelope: &Envelope) -> Result<Self, OutboxError> {
        envelope
            .validate()
            .map_err(|e| OutboxError::Invalid(e.to_string()))?;
        let topic = topic.into();
        crate::transport::check_name("topic", &topic)?;
        Ok(PendingEvent {
            topic,
            partition_key: envelope.correlation_id.to_string(),
            message: Message::from_envelope(envelope),
            deliver_at: None,
        })
    }

    /// Uses another partition key (e.g. the aggregate id).
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = key.into();
        self
    }
}

/// Backlog figures (`yard outbox status`, metrics).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct OutboxStatus {
    /// Records not yet dispatched (parked excluded).
    pub pending: u64,
    /// Of which currently leased by a relay.
    pub in_flight: u64,
    /// Parked records (refused by the transport).
    pub parked: u64,
    /// Dispatched records not yet cleaned up.
    pub dispatched: u64,
    /// Age of the oldest pending record, seconds.
    pub oldest_pending_age_secs: Option<f64>,
    /// Time from commit to dispatch of the most recently dispatched record, seconds.
    pub last_relay_lag_secs: Option<f64>,
}

/// Errors of outbox stores.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The database is unreachable or failed (transient).
    #[error("outbox store unavailable: {0}")]
    Unavailable(String),
    /// The record or its envelope is invalid.
    #[error("invalid outbox record: {0}")]
    Invalid(String),
    /// A topic name is invalid.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Any other store error, described.
    #[error("outbox store error: {0}")]
    Store(String),
}

impl OutboxError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, OutboxError::Unavailable(_))
    }
}

/// The relay's side of an outbox store. See the module doc for the rules.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Short name (`sqlite`, `postgres`).
    fn name(&self) -> &'static str;

    /// Leases up to `max` publishable records for `relay` for `lease`, in sequence order,
    /// honouring per-partition order.
    async fn claim(
        &self,
        relay: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxRecord>, OutboxError>;

    /// Marks records published (confirmed by the transport).
    async fn mark_dispatched(&self, relay: &str, ids: &[i64]) -> Result<(), OutboxError>;

    /// Gives records back after a transient failure; they become claimable after `retry_after`.
    async fn release(
        &self,
        relay: &str,
        ids: &[i64],
        retry_after: Duration,
    ) -> Result<(), OutboxError>;

    /// Moves a record aside for good, with the reason.
    async fn park(&self, relay: &str, id: i64, reason: &str) -> Result<(), OutboxError>;

    /// If this caller wins the cleaner election (one at a time), deletes at most `batch`
    /// dispatched records older than `older_than`; returns how many (0 when not elected).
    async fn cleanup(&self, older_than: Duration, batch: u32) -> Result<u64, OutboxError>;

    /// Returns when new records may be available, or after `timeout`.
    async fn wait(&self, timeout: Duration);

    /// Backlog figures.
    async fn status(&self) -> Result<OutboxStatus, OutboxError>;

    /// True when this store can move its records into `transport` itself with
    /// [`OutboxStore::dispatch`]: the transport keeps its queues in this store's database, so a
    /// record's publish and its mark commit in one transaction. Default: false.
    fn dispatches_into(&self, transport: &dyn Transport) -> bool {
        let _ = transport;
        false
    }

    /// Moves up to `max` claimable records (in sequence order, with [`OutboxStore::claim`]'s
    /// per-partition rule) into the transport that [`OutboxStore::dispatches_into`] accepted,
    /// publishing and marking them dispatched in one transaction: exactly once, no lease.
    /// Records the transport refuses for good are parked with the reason in the same
    /// transaction. The default refuses (a store that never accepts a transport).
    async fn dispatch(&self, relay: &str, max: usize) -> Result<DirectBatch, OutboxError> {
        let _ = (relay, max);
        Err(OutboxError::Store(format!(
            "the {} outbox store cannot dispatch into a transport itself",
            self.name()
        )))
    }
}

/// What one [`OutboxStore::dispatch`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectBatch {
    /// Records published and marked dispatched.
    pub dispatched: usize,
    /// Records parked (refused by the transport for good), with the reason.
    pub parked: Vec<(i64, String)>,
    /// Creation time of the last record dispatched, µs since the epoch (for the relay lag).
    pub last_created_us: Option<i64>,
}

impl DirectBatch {
    /// Records the batch took out of the queue (dispatched or parked).
    pub fn moved(&self) -> usize {
        self.dispatched + self.parked.len()
    }
}

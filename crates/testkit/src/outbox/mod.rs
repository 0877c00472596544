//! The outbox conformance suite: one `pub async fn` per rule of the
//! [`OutboxStore`] contract (see [`eventyard_core::outbox`]), each taking an [`OutboxFactory`].
//!
//! Every store runs the same cases with [`outbox_conformance!`](crate::outbox_conformance),
//! which expands to one `#[tokio::test]` per case:
//!
//! ```ignore
//! // crates/<store>/tests/outbox_conformance.rs — needs `tokio` and `eventyard-testkit` as
//! // dev-dependencies.
//! eventyard_testkit::outbox_conformance!(MyOutboxFactory::new());
//! ```
//!
//! **Isolation**: the factory expression is evaluated once per case, and each value must be an
//! outbox of its own (a fresh file, a fresh schema or table): cases claim, count and clean up
//! *everything* in the outbox, so two cases must never share one.
//!
//! Timing: lower bounds ("not before") are asserted strictly, up to [`SLACK`]; upper bounds
//! ("promptly") are loose ([`PATIENCE`]). Every case is bounded by [`CASE_TIMEOUT`].
//!
//! # Contract → cases
//!
//! | rule of the contract | case |
//! |---|---|
//! | an event added in a committed transaction is claimed with its topic, key, message (body and typed properties), scheduled time and `attempts = 0` | [`add_then_claim_round_trip`] |
//! | an event added in a transaction that rolls back is never recorded | [`rolled_back_add_records_nothing`] |
//! | claims follow commit order (the store's sequence) and return at most `max` | [`claims_in_commit_order_at_most_max`] |
//! | a claim is a lease: not claimed again while it runs; once it expires (relay crashed) the records are claimed again, in order | [`lease_expiry_reclaims`] |
//! | a record is not handed out while an earlier record of its key is leased; marking that one dispatched releases the next | [`earlier_record_of_a_key_blocks_later_ones`] |
//! | several relays at once (many keys, interleaved commits): no record is claimed twice, none is lost, each key's records are published in order | [`concurrent_relays_share_nothing_and_keep_key_order`] |
//! | `release`: claimable again after the retry time (not before), `attempts + 1`; meanwhile it blocks only its own key | [`release_makes_records_claimable_after_retry_time`] |
//! | `park`: never claimed again; later records of its key stay blocked; other keys flow | [`parked_record_is_set_aside_and_blocks_only_its_key`] |
//! | `mark_dispatched`: never claimed again, even after the lease expires | [`dispatched_records_are_never_claimed_again`] |
//! | `cleanup` deletes only dispatched records older than `older_than`, at most `batch` per call | [`cleanup_deletes_only_old_dispatched_in_bounded_batches`] |
//! | `cleanup` deletes nothing unless elected (one cleaner at a time); concurrent cleaners never exceed the eligible rows | [`cleanup_runs_only_when_elected`] |
//! | `wait` returns promptly on a commit, also one that landed between the last claim and the wait | [`wait_returns_promptly_on_commit`] |
//! | `wait` returns after its timeout when nothing is committed (and not much before) | [`wait_times_out_without_commits`] |
//! | `status`: pending, in flight, parked, dispatched, oldest pending age, last relay lag | [`status_reports_the_backlog`] |

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventyard_core::outbox::{OutboxRecord, OutboxStore, PendingEvent};

mod cases;
mod concurrency;
mod macros;

pub use crate::conformance::{CASE_TIMEOUT, PATIENCE, run_case};
pub use cases::{
    add_then_claim_round_trip, claims_in_commit_order_at_most_max,
    cleanup_deletes_only_old_dispatched_in_bounded_batches, cleanup_runs_only_when_elected,
    dispatched_records_are_never_claimed_again, earlier_record_of_a_key_blocks_later_ones,
    lease_expiry_reclaims, parked_record_is_set_aside_and_blocks_only_its_key,
    release_makes_records_claimable_after_retry_time, rolled_back_add_records_nothing,
    status_reports_the_backlog, wait_returns_promptly_on_commit, wait_times_out_without_commits,
};
pub use concurrency::concurrent_relays_share_nothing_and_keep_key_order;

/// Tolerance on lower bounds ("not before"), for stores keeping times in milliseconds.
pub const SLACK: Duration = Duration::from_millis(20);

/// Connects the suite to an outbox store.
///
/// Recording is store-specific (it joins the application's transaction), so the factory does
/// it: [`add`](OutboxFactory::add) runs a real application transaction with the store's own
/// `add` function.
#[async_trait]
pub trait OutboxFactory: Send + Sync {
    /// A new handle onto the factory's outbox. Each handle is a separate relay host and cleaner
    /// candidate, as another process would be. Panics if it cannot connect.
    async fn connect(&self) -> Arc<dyn OutboxStore>;

    /// Records `events`, in order, in *one* application transaction (with the store's own
    /// `add`), then commits it when `commit` is true and rolls it back otherwise. Returns the
    /// records' ids when committed, nothing when rolled back. Panics if the store fails.
    async fn add(&self, events: Vec<PendingEvent>, commit: bool) -> Vec<i64>;

    /// Takes the cleaner election the way another cleaner would (another process holding the
    /// lease row or advisory lock) and holds it until the returned guard is dropped; the
    /// election may become free shortly after the drop rather than at once.
    async fn hold_cleaner_election(&self) -> Box<dyn Any + Send>;
}

#[async_trait]
impl<T: OutboxFactory + ?Sized> OutboxFactory for Arc<T> {
    async fn connect(&self) -> Arc<dyn OutboxStore> {
        (**self).connect().await
    }

    async fn add(&self, events: Vec<PendingEvent>, commit: bool) -> Vec<i64> {
        (**self).add(events, commit).await
    }

    async fn hold_cleaner_election(&self) -> Box<dyn Any + Send> {
        (**self).hold_cleaner_election().await
    }
}

#[async_trait]
impl<T: OutboxFactory + ?Sized> OutboxFactory for Box<T> {
    async fn connect(&self) -> Arc<dyn OutboxStore> {
        (**self).connect().await
    }

    async fn add(&self, events: Vec<PendingEvent>, commit: bool) -> Vec<i64> {
        (**self).add(events, commit).await
    }

    async fn hold_cleaner_election(&self) -> Box<dyn Any + Send> {
        (**self).hold_cleaner_election().await
    }
}

/// A pending event on `topic` partitioned by `key`: a [`sample_envelope`](crate::sample_envelope)
/// of tenant `tenant-a`, type `OrderPlaced`.
pub fn event(topic: &str, key: &str) -> PendingEvent {
    let env = crate::helpers::sample_envelope("tenant-a", "OrderPlaced");
    PendingEvent::new(topic, &env)
        .unwrap_or_else(|e| panic!("PendingEvent::new({topic}): {e}"))
        .partition_key(key)
}

/// The ids of records.
pub fn ids(records: &[OutboxRecord]) -> Vec<i64> {
    records.iter().map(|r| r.id).collect()
}

/// A long lease for cases that do not test expiry.
pub const LONG_LEASE: Duration = Duration::from_secs(60);

/// Claims with a long lease, panicking on error.
pub async fn claim(store: &dyn OutboxStore, relay: &str, max: usize) -> Vec<OutboxRecord> {
    claim_for(store, relay, max, LONG_LEASE).await
}

/// Claims with the given lease, panicking on error.
pub async fn claim_for(
    store: &dyn OutboxStore,
    relay: &str,
    max: usize,
    lease: Duration,
) -> Vec<OutboxRecord> {
    store
        .claim(relay, max, lease)
        .await
        .unwrap_or_else(|e| panic!("claim({relay}, {max}) failed: {e}"))
}

/// Claims repeatedly (every 20 ms) until the claim returns something or [`PATIENCE`] passes;
/// returns what the last claim returned.
pub async fn claim_eventually(
    store: &dyn OutboxStore,
    relay: &str,
    max: usize,
) -> Vec<OutboxRecord> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = claim(store, relay, max).await;
        if !got.is_empty() || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Marks records dispatched, panicking on error.
pub async fn dispatch(store: &dyn OutboxStore, relay: &str, ids: &[i64]) {
    store
        .mark_dispatched(relay, ids)
        .await
        .unwrap_or_else(|e| panic!("mark_dispatched({ids:?}) failed: {e}"));
}

//! The single-relay cases of the outbox suite: recording, claiming, leases, release, park,
//! dispatch, cleanup, wait and status.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::{
    OutboxFactory, PATIENCE, SLACK, claim, claim_eventually, claim_for, dispatch, event, ids,
};

fn status_of(
    s: Result<eventyard_core::outbox::OutboxStatus, eventyard_core::outbox::OutboxError>,
) -> eventyard_core::outbox::OutboxStatus {
    s.unwrap_or_else(|e| panic!("status failed: {e}"))
}

/// An event added in a committed transaction is claimed with its topic, partition key, message
/// (body and properties with their types), scheduled time, creation time and `attempts = 0`;
/// ids grow with commit order.
pub async fn add_then_claim_round_trip(f: &dyn OutboxFactory) {
    let store = f.connect().await;
    let at = DateTime::<Utc>::from_timestamp_millis(Utc::now().timestamp_millis() + 3_600_000)
        .expect("a valid time");
    let mut first = event("orders", "order-1");
    first.message.properties.insert("x-number", 42i64);
    first.message.properties.insert("x-flag", true);
    first.deliver_at = Some(at);
    let second = event("payments", "order-2");
    let before = Utc::now() - chrono::Duration::seconds(1);
    let added = f.add(vec![first.clone(), second.clone()], true).await;
    let after = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(added.len(), 2, "add returned {added:?}");
    assert!(added[0] < added[1], "ids must grow in order: {added:?}");

    let got = claim(&*store, "relay-1", 10).await;
    assert_eq!(ids(&got), added, "claimed {got:?}");
    for (rec, ev) in got.iter().zip([&first, &second]) {
        assert_eq!(rec.topic, ev.topic);
        assert_eq!(rec.partition_key, ev.partition_key);
        assert_eq!(rec.message, ev.message, "message of record {}", rec.id);
        assert_eq!(
            rec.deliver_at, ev.deliver_at,
            "deliver_at of record {}",
            rec.id
        );
        assert_eq!(rec.attempts, 0);
        assert!(
            rec.created_at >= before && rec.created_at <= after,
            "created_at {} outside [{before}, {after}]",
            rec.created_at
        );
    }
}

/// An event added in a transaction that rolls back is never recorded: nothing to claim,
/// nothing pending; a later committed transaction is unaffected.
pub async fn rolled_back_add_records_nothing(f: &dyn OutboxFactory) {
    let store = f.connect().await;
    let none = f
        .add(vec![event("orders", "k1"), event("orders", "k2")], false)
        .await;
    assert!(none.is_empty(), "a rolled-back add returned ids {none:?}");
    assert!(claim(&*store, "relay-1", 10).await.is_empty());
    assert_eq!(status_of(store.status().await).pending, 0);

    let kept = f.add(vec![event("orders", "k3")], true).await;
    assert_eq!(ids(&claim(&*store, "relay-1", 10).await), kept);
}

/// Claims follow commit order and return at most `max` records.
pub async fn claims_in_commit_order_at_most_max(f: &dyn OutboxFactory) {
    let store = f.connect().await;
    let mut all = Vec::new();
    for t in 0..3 {
        let evs = (0..4)
            .map(|i| event("orders", &format!("k-{t}-{i}")))
            .collect();
        all.extend(f.add(evs, true).await);
    }
    let first = claim(&*store, "relay-1", 5).await;
    assert_eq!(ids(&first), all[..5].to_vec());
    let rest = claim(&*store, "relay-1", 100).await;
    assert_eq!(ids(&rest), all[5..].to_vec());
    assert!(claim(&*store, "relay-1", 100).await.is_empty());
}

/// A claim is a lease: while it runs, nobody claims the records again (nor later records of
/// their keys); once it expires — the relay crashed — another relay claims them again, in
/// order, with `attempts` unchanged.
pub async fn lease_expiry_reclaims(f: &dyn OutboxFactory) {
    const LEASE: Duration = Duration::from_millis(600);
    let store = f.connect().await;
    let other = f.connect().await;
    let a = f.add(vec![event("orders", "k1")], true).await;
    let b = f.add(vec![event("orders", "k1")], true).await;
    let c = f.add(vec![event("orders", "k2")], true).await;

    let t0 = Instant::now();
    let held = claim_for(&*store, "crashing-relay", 1, LEASE).await;
    assert_eq!(ids(&held), a);
    // The lease runs: `a` is not handed out again, `b` waits behind it, `c` is free.
    let got = claim(&*other, "relay-2", 10).await;
    assert_eq!(ids(&got), c, "during the lease");
    dispatch(&*other, "relay-2", &c).await;
    tokio::time::sleep(LEASE / 3).await;
    if t0.elapsed() + SLACK < LEASE {
        let early = claim(&*other, "relay-2", 10).await;
        assert!(early.is_empty(), "claimed during the lease: {early:?}");
    }
    // After expiry, both come back in order.
    tokio::time::sleep_until(t0 + LEASE).await;
    let again = claim_eventually(&*other, "relay-2", 10).await;
    assert_eq!(
        ids(&again),
        [a.clone(), b].concat(),
        "after the lease expired"
    );
    assert_eq!(again[0].attempts, 0, "lease expiry is not a failed attempt");
}

/// A record is not handed out while an earlier record of its partition key is leased (by any
/// relay); records of other keys flow; marking the earlier one dispatched releases the next.
pub async fn earlier_record_of_a_key_blocks_later_ones(f: &dyn OutboxFactory) {
    let store = f.connect().await;
    let a = f.add(vec![event("orders", "k1")], true).await;
    let b = f.add(vec![event("payments", "k1")], true).await;
    let c = f.add(vec![event("orders", "k2")], true).await;

    assert_eq!(ids(&claim(&*store, "relay-1", 1).await), a);
    assert_eq!(
        ids(&claim(&*store, "relay-2", 10).await),
        c,
        "b must wait for a"
    );
    assert!(claim(&*store, "relay-2", 10).await.is_empty());
    dispatch(&*store, "relay-1", &a).await;
    assert_eq!(ids(&claim(&*store, "relay-2", 10).await), b);
}

/// `release` gives records back after a transient failure: claimable again after the retry
/// time and not before, with `attempts + 1`; while it waits, the released record keeps blocking
/// the later records of its key, and only those.
pub async fn release_makes_records_claimable_after_retry_time(f: &dyn OutboxFactory) {
    const RETRY: Duration = Duration::from_millis(600);
    let store = f.connect().await;
    let a = f.add(vec![event("orders", "k1")], true).await;
    let b = f.add(vec![event("orders", "k1")], true).await;
    let c = f.add(vec![event("orders", "k2")], true).await;

    assert_eq!(ids(&claim(&*store, "relay-1", 1).await), a);
    let t0 = Instant::now();
    store
        .release("relay-1", &a, RETRY)
        .await
        .unwrap_or_else(|e| panic!("release failed: {e}"));
    let got = claim(&*store, "relay-2", 10).await;
    assert_eq!(ids(&got), c, "only k2 may flow while a waits for its retry");
    dispatch(&*store, "relay-2", &c).await;
    tokio::time::sleep(RETRY / 2).await;
    if t0.elapsed() + SLACK < RETRY {
        let early = claim(&*store, "relay-2", 10).await;
        assert!(early.is_empty(), "claimed before the retry time: {early:?}");
    }
    tokio::time::sleep_until(t0 + RETRY).await;
    let again = claim_eventually(&*store, "relay-2", 10).await;
    assert_eq!(ids(&again), [a, b].concat(), "after the retry time");
    assert_eq!(again[0].attempts, 1, "a release counts a failed attempt");
    assert_eq!(again[1].attempts, 0);

    // A zero retry time makes the record claimable at once.
    let ids2 = ids(&again);
    store
        .release("relay-2", &ids2, Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("release failed: {e}"));
    assert_eq!(ids(&claim_eventually(&*store, "relay-3", 10).await), ids2);
}

/// A parked record is set aside for good: never claimed again; later records of its key stay
/// blocked (their order would break otherwise); other keys flow.
pub async fn parked_record_is_set_aside_and_blocks_only_its_key(f: &dyn OutboxFactory) {
    let store = f.connect().await;
    let a = f.add(vec![event("orders", "k1")], true).await;
    let b = f.add(vec![event("orders", "k1")], true).await;
    let c = f.add(vec![event("orders", "k2")], true).await;

    assert_eq!(ids(&claim(&*store, "relay-1", 1).await), a);
    store
        .park("relay-1", a[0], "MessageTooLarge: 2000000 bytes > 1048576")
        .await
        .unwrap_or_else(|e| panic!("park failed: {e}"));
    assert_eq!(ids(&claim(&*store, "relay-1", 10).await), c);
    dispatch(&*store, "relay-1", &c).await;
    let later = f.add(vec![event("orders", "k3")], true).await;
    assert_eq!(ids(&claim(&*store, "relay-1", 10).await), later);
    dispatch(&*store, "relay-1", &later).await;
    assert!(
        claim(&*store, "relay-1", 10).await.is_empty(),
        "neither the parked record nor {b:?} behind it may be claimed"
    );
    let s = status_of(store.status().await);
    assert_eq!((s.parked, s.pending), (1, 1), "status {s:?}");
}

/// A record marked dispatched is never claimed again, even after its lease would have expired.
pub async fn dispatched_records_are_never_claimed_again(f: &dyn OutboxFactory) {
    const LEASE: Duration = Duration::from_millis(300);
    let store = f.connect().await;
    let added = f
        .add(
            vec![
                event("orders", "k1"),
                event("orders", "k1"),
                event("orders", "k2"),
            ],
            true,
        )
        .await;
    let got = claim_for(&*store, "relay-1", 10, LEASE).await;
    assert_eq!(ids(&got), added);
    dispatch(&*store, "relay-1", &added).await;
    tokio::time::sleep(LEASE + SLACK * 5).await;
    assert!(claim(&*store, "relay-2", 10).await.is_empty());
    let s = status_of(store.status().await);
    assert_eq!((s.pending, s.dispatched), (0, 3), "status {s:?}");
}

/// `cleanup` deletes dispatched records older than `older_than` only — never pending, leased or
/// parked ones, nor recently dispatched ones — at most `batch` per call.
pub async fn cleanup_deletes_only_old_dispatched_in_bounded_batches(f: &dyn OutboxFactory) {
    const AGE: Duration = Duration::from_millis(500);
    let store = f.connect().await;
    let old = f
        .add(
            (0..6)
                .map(|i| event("orders", &format!("old-{i}")))
                .collect(),
            true,
        )
        .await;
    assert_eq!(ids(&claim(&*store, "relay-1", 6).await), old);
    dispatch(&*store, "relay-1", &old).await;
    tokio::time::sleep(AGE + AGE / 2).await;

    let others = f
        .add(
            (0..4)
                .map(|i| event("orders", &format!("new-{i}")))
                .collect(),
            true,
        )
        .await;
    let got = claim(&*store, "relay-1", 3).await;
    assert_eq!(ids(&got), others[..3].to_vec());
    dispatch(&*store, "relay-1", &others[..2]).await; // recently dispatched
    store
        .park("relay-1", others[2], "InvalidName")
        .await
        .unwrap_or_else(|e| panic!("park failed: {e}"));
    // others[3] stays pending, never claimed.

    let clean = |batch| {
        let store = store.clone();
        async move {
            store
                .cleanup(AGE, batch)
                .await
                .unwrap_or_else(|e| panic!("cleanup failed: {e}"))
        }
    };
    assert_eq!(clean(4).await, 4, "bounded by the batch");
    assert_eq!(clean(4).await, 2, "the rest of the old dispatched records");
    assert_eq!(clean(4).await, 0, "nothing else is old and dispatched");
    let s = status_of(store.status().await);
    assert_eq!(
        (s.dispatched, s.parked, s.pending),
        (2, 1, 1),
        "status after cleanup {s:?}"
    );
}

/// `cleanup` deletes nothing unless the caller is elected: while another cleaner holds the
/// election it returns 0; once the election is free it cleans; concurrent cleaners together
/// never delete more than the eligible records.
pub async fn cleanup_runs_only_when_elected(f: &dyn OutboxFactory) {
    let store = f.connect().await;
    let added = f
        .add(
            (0..20).map(|i| event("orders", &format!("k{i}"))).collect(),
            true,
        )
        .await;
    assert_eq!(claim(&*store, "relay-1", 100).await.len(), 20);
    dispatch(&*store, "relay-1", &added).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let guard = f.hold_cleaner_election().await;
    for _ in 0..3 {
        let n = store
            .cleanup(Duration::ZERO, 100)
            .await
            .unwrap_or_else(|e| panic!("cleanup failed: {e}"));
        assert_eq!(n, 0, "cleaned while another cleaner holds the election");
    }
    assert_eq!(status_of(store.status().await).dispatched, 20);
    drop(guard);

    // Free again: several cleaners race; together they delete exactly the 20 records.
    let deadline = Instant::now() + PATIENCE;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let s = f.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut total = 0u64;
            while Instant::now() < deadline {
                let n = s
                    .cleanup(Duration::ZERO, 3)
                    .await
                    .unwrap_or_else(|e| panic!("cleanup failed: {e}"));
                assert!(n <= 3, "cleanup deleted {n} > batch 3");
                total += n;
                let left = status_of(s.status().await).dispatched;
                if left == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            total
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("cleaner task");
    }
    assert_eq!(total, 20, "deleted in total");
    assert_eq!(status_of(store.status().await).dispatched, 0);
}

/// `wait` returns promptly when records are committed — while it waits, and also when the
/// commit landed between the last claim and the call to `wait` (no lost wake-up).
pub async fn wait_returns_promptly_on_commit(f: &dyn OutboxFactory) {
    const LONG: Duration = Duration::from_secs(30);
    let store = f.connect().await;
    assert!(claim(&*store, "relay-1", 10).await.is_empty());

    // A commit while waiting.
    let adder = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        f.add(vec![event("orders", "k1")], true).await;
        Instant::now()
    };
    let waiter = async {
        store.wait(LONG).await;
        Instant::now()
    };
    let (added_at, woke_at) = tokio::join!(adder, waiter);
    let late = woke_at.saturating_duration_since(added_at);
    assert!(
        woke_at < added_at + PATIENCE,
        "wait returned {late:?} after the commit"
    );
    assert_eq!(claim_eventually(&*store, "relay-1", 10).await.len(), 1);

    // A commit between the (empty) claim and the wait.
    assert!(claim(&*store, "relay-1", 10).await.is_empty());
    f.add(vec![event("orders", "k2")], true).await;
    let t0 = Instant::now();
    store.wait(LONG).await;
    assert!(
        t0.elapsed() < PATIENCE,
        "wait missed a commit made before it was called ({:?})",
        t0.elapsed()
    );
    assert_eq!(claim(&*store, "relay-1", 10).await.len(), 1);
}

/// Without commits, `wait` returns after its timeout (the polling fallback), not much before.
pub async fn wait_times_out_without_commits(f: &dyn OutboxFactory) {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let store = f.connect().await;
    assert!(claim(&*store, "relay-1", 10).await.is_empty());
    let t0 = Instant::now();
    store.wait(TIMEOUT).await;
    let took = t0.elapsed();
    assert!(
        took + Duration::from_millis(100) >= TIMEOUT,
        "wait({TIMEOUT:?}) returned after {took:?} with nothing committed"
    );
    assert!(took < TIMEOUT + PATIENCE, "wait({TIMEOUT:?}) took {took:?}");
}

/// `status`: pending (parked excluded), in flight (leased), parked, dispatched, the age of the
/// oldest pending record and the commit → dispatch lag of the last dispatched record.
pub async fn status_reports_the_backlog(f: &dyn OutboxFactory) {
    const AGE: Duration = Duration::from_millis(300);
    let store = f.connect().await;
    let s = status_of(store.status().await);
    assert_eq!(
        (s.pending, s.in_flight, s.parked, s.dispatched),
        (0, 0, 0, 0),
        "empty outbox {s:?}"
    );
    assert_eq!(s.oldest_pending_age_secs, None);
    assert_eq!(s.last_relay_lag_secs, None);

    let added = f
        .add(
            (0..5).map(|i| event("orders", &format!("k{i}"))).collect(),
            true,
        )
        .await;
    tokio::time::sleep(AGE).await;
    let s = status_of(store.status().await);
    assert_eq!((s.pending, s.in_flight), (5, 0), "{s:?}");
    let age = s.oldest_pending_age_secs.expect("oldest pending age");
    let min = (AGE - SLACK).as_secs_f64();
    assert!(
        age >= min && age < PATIENCE.as_secs_f64() + min,
        "age {age}"
    );

    let got = claim(&*store, "relay-1", 2).await;
    assert_eq!(ids(&got), added[..2].to_vec());
    let s = status_of(store.status().await);
    assert_eq!(
        (s.pending, s.in_flight),
        (5, 2),
        "after a claim of 2: {s:?}"
    );

    dispatch(&*store, "relay-1", &added[..1]).await;
    store
        .park("relay-1", added[1], "MessageTooLarge")
        .await
        .unwrap_or_else(|e| panic!("park failed: {e}"));
    let s = status_of(store.status().await);
    assert_eq!(
        (s.pending, s.in_flight, s.parked, s.dispatched),
        (3, 0, 1, 1),
        "after dispatch and park: {s:?}"
    );
    let lag = s.last_relay_lag_secs.expect("last relay lag");
    assert!(
        lag >= min && lag < PATIENCE.as_secs_f64() + min,
        "lag {lag}"
    );
    let age = s.oldest_pending_age_secs.expect("oldest pending age");
    assert!(age >= min, "age {age}");
}

//! PostgreSQL-specific claim behaviour beyond the conformance suite: leases held by another
//! relay, retries, parking with operator actions (requeue, discard, held records), the bounded
//! claim window, and per-key order under concurrent relays with releases.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{LONG, TestDb, event, ids};
use eventyard_core::outbox::OutboxStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_releases_and_parks() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let added = db.commit(&[event("t", "a", 1), event("t", "b", 2)]).await;
    let other = db.other_store().await;
    assert_eq!(ids(&db.store.claim("r1", 10, LONG).await.unwrap()), added);
    // r2 holds nothing: its release and park are no-ops.
    other.release("r2", &added, Duration::ZERO).await.unwrap();
    other.park("r2", added[0], "nope").await.unwrap();
    let s = db.store.status().await.unwrap();
    assert_eq!((s.in_flight, s.parked), (2, 0), "{s:?}");
    // The holder's release counts an attempt and frees the records after the retry time.
    db.store
        .release("r1", &added, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(other.claim("r2", 10, LONG).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let again = other.claim("r2", 10, LONG).await.unwrap();
    assert_eq!(ids(&again), added);
    assert!(again.iter().all(|r| r.attempts == 1), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_blocks_its_key_only() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let a = db.commit(&[event("t", "a", 1), event("t", "a", 2)]).await;
    let b = db.commit(&[event("t", "b", 3)]).await;
    let got = db.store.claim("r", 1, LONG).await.unwrap();
    assert_eq!(ids(&got), vec![a[0]]);
    db.store
        .release("r", &[a[0]], Duration::from_secs(30))
        .await
        .unwrap();
    // a[1] waits behind a[0]'s retry; b flows.
    assert_eq!(ids(&db.store.claim("r", 10, LONG).await.unwrap()), b);
    assert!(db.store.claim("r", 10, LONG).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_key_is_held_then_requeued_or_discarded_in_order() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let a = db.commit(&[event("t", "a", 1)]).await;
    let got = db.store.claim("r", 10, LONG).await.unwrap();
    db.store
        .park("r", got[0].id, "MessageTooLarge")
        .await
        .unwrap();
    let later_a = db.commit(&[event("t", "a", 2), event("t", "a", 3)]).await;
    let b = db.commit(&[event("t", "b", 4)]).await;

    // Cleanup moves the records blocked by the parked one out of the claim's way.
    db.store
        .cleanup(Duration::from_secs(3600), 100)
        .await
        .unwrap();
    let held = db
        .scalar_i64("SELECT count(*) FROM {s}.outbox WHERE state = 3")
        .await;
    assert_eq!(held, 2);
    let s = db.store.status().await.unwrap();
    assert_eq!((s.pending, s.parked), (3, 1), "{s:?}");
    assert_eq!(ids(&db.store.claim("r", 10, LONG).await.unwrap()), b);
    db.store.mark_dispatched("r", &b).await.unwrap();

    let parked = db.store.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].id, parked[0].reason.as_str()),
        (a[0], "MessageTooLarge")
    );
    assert_eq!(parked[0].attempts, 1);

    // Requeue: the parked record first, then the held ones, in order.
    assert!(db.store.requeue(a[0]).await.unwrap());
    assert!(!db.store.requeue(a[0]).await.unwrap());
    let mut all = a.clone();
    all.extend(&later_a);
    assert_eq!(ids(&db.store.claim("r", 10, LONG).await.unwrap()), all);

    // Discard: the held records of the key flow again, without the discarded one.
    let c = db.commit(&[event("t", "c", 5)]).await;
    let got = db.store.claim("r", 10, LONG).await.unwrap();
    assert_eq!(ids(&got), c);
    db.store.park("r", c[0], "InvalidTopic").await.unwrap();
    let later_c = db.commit(&[event("t", "c", 6)]).await;
    db.store
        .cleanup(Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert!(db.store.claim("r", 10, LONG).await.unwrap().is_empty());
    assert!(db.store.discard(c[0]).await.unwrap());
    assert_eq!(ids(&db.store.claim("r", 10, LONG).await.unwrap()), later_c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_scan_is_bounded_when_every_key_is_blocked() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    // 20 keys with 600 records each; one relay leases the head of every key.
    let events: Vec<_> = (0..12_000u64)
        .map(|i| event("t", &format!("k{}", i % 20), i))
        .collect();
    let tx = db.app.transaction().await.unwrap();
    db.store.add_batch(&tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    let first = db.store.claim("r1", 20, LONG).await.unwrap();
    assert_eq!(first.len(), 20);
    // Everything else is blocked: the claim returns nothing, quickly (a bounded window, not a
    // scan of the whole backlog).
    let t = std::time::Instant::now();
    assert!(db.store.claim("r2", 500, LONG).await.unwrap().is_empty());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    db.store.mark_dispatched("r1", &ids(&first)).await.unwrap();
    assert_eq!(db.store.claim("r2", 500, LONG).await.unwrap().len(), 500);
}

/// Four relays on two store handles claim concurrently, release a third of their batches for
/// an immediate retry, and publish the rest. Every record is published; for each key, the
/// records are first published in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relays_with_releases_keep_key_order() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    const N: u64 = 1_500;
    let events: Vec<_> = (0..N)
        .map(|i| event("t", &format!("k{}", i % 15), i))
        .collect();
    for chunk in events.chunks(100) {
        let tx = db.app.transaction().await.unwrap();
        db.store.add_batch(&tx, chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
    let stores = [db.store.clone(), db.other_store().await];
    let published: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for r in 0..4 {
        let store = stores[r % 2].clone();
        let published = published.clone();
        tasks.push(tokio::spawn(async move {
            let relay = format!("relay-{r}");
            let mut round = 0u64;
            let mut idle = 0;
            while idle < 20 {
                let got = store.claim(&relay, 40, LONG).await.unwrap();
                if got.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                idle = 0;
                round += 1;
                if (round + r as u64).is_multiple_of(3) {
                    store
                        .release(&relay, &ids(&got), Duration::ZERO)
                        .await
                        .unwrap();
                    continue;
                }
                {
                    let mut p = published.lock().unwrap();
                    p.extend(got.iter().map(|r| (r.partition_key.clone(), r.id)));
                }
                store.mark_dispatched(&relay, &ids(&got)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let published = std::mem::take(&mut *published.lock().unwrap());
    let mut per_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for (k, id) in published.iter() {
        per_key.entry(k).or_default().push(*id);
    }
    assert_eq!(published.len() as u64, N, "each record published once");
    for (k, ids) in per_key {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "key {k} out of order: {ids:?}"
        );
    }
    assert_eq!(db.store.status().await.unwrap().pending, 0);
}

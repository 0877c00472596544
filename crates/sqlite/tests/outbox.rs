//! The embedded outbox beyond the shared suite: recording errors, parked records and the records
//! waiting behind them (requeue, discard), the claim's scan bound, wake-up latency in one
//! process and across connections.

use std::time::{Duration, Instant};

use eventyard_core::outbox::{OutboxError, OutboxStore, PendingEvent};
use eventyard_sqlite::outbox::{self, SqliteOutbox};
use eventyard_sqlite::{SqliteBroker, SqliteConfig};

const LEASE: Duration = Duration::from_secs(60);

fn open() -> (tempfile::TempDir, SqliteBroker) {
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBroker::open(SqliteConfig::new(dir.path().join("outbox.db"))).unwrap();
    (dir, b)
}

fn event(key: &str) -> PendingEvent {
    let env = eventyard_testkit::sample_envelope("tenant-a", "OrderPlaced");
    PendingEvent::new("orders", &env)
        .unwrap()
        .partition_key(key)
}

async fn add(b: &SqliteBroker, events: Vec<PendingEvent>) -> Vec<i64> {
    b.transaction(move |tx| outbox::add_all(tx, &events))
        .await
        .unwrap()
        .unwrap()
}

fn ids(r: &[eventyard_core::outbox::OutboxRecord]) -> Vec<i64> {
    r.iter().map(|r| r.id).collect()
}

#[tokio::test]
async fn add_refuses_bad_records_with_clear_errors() {
    let (_d, b) = open();
    let mut bad_topic = event("k");
    bad_topic.topic = "no spaces".into();
    let r = b
        .transaction(move |tx| outbox::add(tx, &bad_topic))
        .await
        .unwrap();
    assert!(matches!(r, Err(OutboxError::Transport(_))), "{r:?}");
    let mut no_key = event("k");
    no_key.partition_key.clear();
    let r = b
        .transaction(move |tx| outbox::add(tx, &no_key))
        .await
        .unwrap();
    assert!(matches!(r, Err(OutboxError::Invalid(_))), "{r:?}");

    // A plain SQLite file without the outbox tables: a store error that says so.
    let dir = tempfile::tempdir().unwrap();
    let mut conn = rusqlite::Connection::open(dir.path().join("plain.db")).unwrap();
    let tx = conn.transaction().unwrap();
    let e = outbox::add(&tx, &event("k")).unwrap_err();
    assert!(matches!(e, OutboxError::Store(_)), "{e:?}");
    assert!(e.to_string().contains("outbox"), "{e}");
}

#[tokio::test]
async fn a_locked_file_is_reported_as_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let mut cfg = SqliteConfig::new(&path);
    cfg.busy_timeout = Duration::from_millis(100);
    let b = SqliteBroker::open(cfg).unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = b.transaction(|tx| outbox::add(tx, &event("k"))).await;
    other.execute_batch("ROLLBACK").unwrap();
    // The broker cannot even begin its transaction: its own error, transient.
    let e = r.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    let store = b.outbox();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let e = store.claim("r", 10, LEASE).await.unwrap_err();
    other.execute_batch("ROLLBACK").unwrap();
    assert!(e.is_transient(), "{e:?}");
}

#[tokio::test]
async fn records_added_while_their_key_is_parked_wait_behind_it() {
    let (_d, b) = open();
    let store = b.outbox();
    let a = add(&b, vec![event("k1"), event("k1"), event("k2")]).await;
    let got = store.claim("r", 1, LEASE).await.unwrap();
    assert_eq!(ids(&got), vec![a[0]]);
    store.park("r", a[0], "MessageTooLarge").await.unwrap();
    let late = add(&b, vec![event("k1"), event("k3")]).await;
    // k2 and k3 flow; a[1] and the late k1 wait behind the parked record.
    let got = store.claim("r", 10, LEASE).await.unwrap();
    assert_eq!(ids(&got), vec![a[2], late[1]]);
    store.mark_dispatched("r", &ids(&got)).await.unwrap();
    assert!(store.claim("r", 10, LEASE).await.unwrap().is_empty());
    let s = store.status().await.unwrap();
    assert_eq!((s.pending, s.parked, s.dispatched), (2, 1, 2), "{s:?}");
    let parked = store.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].record.id, a[0]);
    assert_eq!(parked[0].reason, "MessageTooLarge");
    assert_eq!(parked[0].record.attempts, 1);

    // Requeued: in line again, attempts reset, the records behind it after it.
    assert!(
        !store.requeue(a[1]).await.unwrap(),
        "only a parked record can be requeued"
    );
    assert!(store.requeue(a[0]).await.unwrap());
    let got = store.claim("r", 10, LEASE).await.unwrap();
    assert_eq!(ids(&got), vec![a[0], a[1], late[0]]);
    assert_eq!(got[0].attempts, 0);
    let s = store.status().await.unwrap();
    assert_eq!((s.pending, s.parked, s.in_flight), (3, 0, 3), "{s:?}");
}

#[tokio::test]
async fn a_discarded_record_is_gone_and_its_key_flows_again() {
    let (_d, b) = open();
    let store = b.outbox();
    let a = add(&b, vec![event("k1"), event("k1")]).await;
    store.claim("r", 1, LEASE).await.unwrap();
    store.park("r", a[0], "InvalidName").await.unwrap();
    assert!(store.discard(a[0]).await.unwrap());
    assert!(!store.discard(a[0]).await.unwrap());
    let got = store.claim("r", 10, LEASE).await.unwrap();
    assert_eq!(ids(&got), vec![a[1]]);
    let s = store.status().await.unwrap();
    assert_eq!((s.pending, s.parked), (1, 0));
    let n: i64 = b
        .transaction(move |tx| {
            tx.query_row("SELECT count(*) FROM outbox WHERE id = ?1", [a[0]], |r| {
                r.get(0)
            })
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the discarded payload is deleted");
}

#[tokio::test]
async fn a_claim_skips_a_bounded_number_of_held_records() {
    let (_d, b) = open();
    let store = b.outbox();
    // 20,000 records of one key in front, then one of another key.
    let pile = outbox::CLAIM_SCAN + 3_616;
    add(&b, (0..pile).map(|_| event("hot")).collect()).await;
    let other = add(&b, vec![event("cold")]).await;
    let first = store.claim("r1", 1, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    // Another relay walks at most CLAIM_SCAN rows past the held pile: it does not reach `cold`
    // now, and costs little.
    let t0 = Instant::now();
    let got = store.claim("r2", 10, LEASE).await.unwrap();
    println!("claim over a held pile of {pile}: {:?}", t0.elapsed());
    assert!(got.is_empty());
    // Once the hot key moves on, everything comes, in order.
    store.mark_dispatched("r1", &ids(&first)).await.unwrap();
    let mut seen = 0;
    let mut last = 0;
    loop {
        let got = store.claim("r2", 4096, LEASE).await.unwrap();
        if got.is_empty() {
            break;
        }
        assert!(got[0].id > last);
        last = got.last().unwrap().id;
        seen += got.len();
        store.mark_dispatched("r2", &ids(&got)).await.unwrap();
    }
    assert_eq!(seen, pile);
    assert_eq!(last, other[0]);
}

async fn wake_latency(store: &SqliteOutbox, adder: &SqliteBroker) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        assert!(store.claim("r", 10, LEASE).await.unwrap().is_empty());
        let a = adder.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            add(&a, vec![event("k")]).await;
            Instant::now()
        });
        store.wait(Duration::from_secs(10)).await;
        let woke = Instant::now();
        let added = task.await.unwrap();
        worst = worst.max(woke.saturating_duration_since(added));
        let got = store.claim("r", 10, LEASE).await.unwrap();
        store.mark_dispatched("r", &ids(&got)).await.unwrap();
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_within_milliseconds_in_process_and_across_connections() {
    let (dir, b) = open();
    let store = b.outbox();
    let local = wake_latency(&store, &b).await;
    let other = SqliteBroker::open(SqliteConfig::new(dir.path().join("outbox.db"))).unwrap();
    let remote = wake_latency(&store, &other).await;
    println!(
        "commit -> wait returns, worst of 20: same broker {local:?}, other connection {remote:?}"
    );
    assert!(local < Duration::from_millis(200), "{local:?}");
    assert!(remote < Duration::from_millis(500), "{remote:?}");
}

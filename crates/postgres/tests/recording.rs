//! Recording inside the application's transaction: commit, rollback, batches, one NOTIFY per
//! transaction, envelopes round-tripping, clear errors.

mod common;

use std::time::Duration;

use common::{LONG, TestDb, event, ids};
use eventyard_core::outbox::{OutboxError, OutboxStore, PendingEvent};
use eventyard_postgres::{OutboxWriter, outbox};
use eventyard_testkit::sample_envelope;
use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_records_and_rollback_records_nothing() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let tx = db.app.transaction().await.unwrap();
    db.store.add(&tx, &event("t", "k", 1)).await.unwrap();
    tx.rollback().await.unwrap();

    // A rolled-back savepoint discards its record, the rest of the transaction stays.
    let mut tx = db.app.transaction().await.unwrap();
    let kept = db.store.add(&tx, &event("t", "k", 2)).await.unwrap();
    let sp = tx.savepoint("sp").await.unwrap();
    db.store
        .writer()
        .add(&sp, &event("t", "k", 3))
        .await
        .unwrap();
    sp.rollback().await.unwrap();
    tx.commit().await.unwrap();

    let claimed = db.store.claim("r", 10, LONG).await.unwrap();
    assert_eq!(ids(&claimed), vec![kept]);
    assert_eq!(&claimed[0].message.body[..], b"{\"n\":2}");
    assert_eq!(db.store.status().await.unwrap().pending, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_returns_ids_in_order_and_keeps_fields() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let mut events: Vec<PendingEvent> = (0..50).map(|i| event("orders", "k", i)).collect();
    let when = chrono::DateTime::parse_from_rfc3339("2031-01-02T03:04:05.123456Z")
        .unwrap()
        .to_utc();
    events[7].deliver_at = Some(when);
    let tx = db.app.transaction().await.unwrap();
    let first = db.store.add(&tx, &event("orders", "k", 100)).await.unwrap();
    let batch = db.store.add_batch(&tx, &events).await.unwrap();
    assert!(db.store.add_batch(&tx, &[]).await.unwrap().is_empty());
    tx.commit().await.unwrap();

    assert_eq!(batch.len(), 50);
    assert!(batch.windows(2).all(|w| w[0] < w[1]) && batch[0] > first);
    let claimed = db.store.claim("r", 100, LONG).await.unwrap();
    assert_eq!(claimed.len(), 51);
    for (record, (id, e)) in claimed[1..].iter().zip(batch.iter().zip(&events)) {
        assert_eq!(record.id, *id);
        assert_eq!(record.message, e.message);
        assert_eq!(record.topic, "orders");
        assert_eq!(record.deliver_at, e.deliver_at);
        assert_eq!(record.attempts, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_round_trips_with_its_trace_context() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let envelope = sample_envelope("tenant-a", "OrderPlaced");
    let pending = PendingEvent::new("orders", &envelope).unwrap();
    db.commit(std::slice::from_ref(&pending)).await;
    let claimed = db.store.claim("r", 1, LONG).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].message, pending.message);
    assert_eq!(
        claimed[0].partition_key,
        envelope.correlation_id.to_string()
    );
    assert_eq!(claimed[0].message.envelope().unwrap(), envelope);
}

/// A connection listening on `channel`, and the channel names of the notifications it gets.
async fn count_notifications(
    url: &str,
    channel: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.channel().to_owned());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notify_per_transaction() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let channel = format!("{}_outbox", db.schema);
    let (_listener, mut rx) = count_notifications(&db.url, &channel).await;

    // Three adds and a batch in one transaction: one notification.
    let tx = db.app.transaction().await.unwrap();
    for i in 0..3 {
        db.store.add(&tx, &event("t", "k", i)).await.unwrap();
    }
    let batch: Vec<_> = (0..5).map(|i| event("t", "b", i)).collect();
    db.store.add_batch(&tx, &batch).await.unwrap();
    tx.commit().await.unwrap();
    // A rolled-back transaction: none.
    let tx = db.app.transaction().await.unwrap();
    db.store.add(&tx, &event("t", "k", 9)).await.unwrap();
    tx.rollback().await.unwrap();
    // A savepoint that notified and rolled back, then another insert: still exactly one.
    let mut tx = db.app.transaction().await.unwrap();
    let sp = tx.savepoint("a").await.unwrap();
    db.store
        .writer()
        .add(&sp, &event("t", "k", 10))
        .await
        .unwrap();
    sp.rollback().await.unwrap();
    db.store.add(&tx, &event("t", "k", 11)).await.unwrap();
    db.store.add(&tx, &event("t", "k", 12)).await.unwrap();
    tx.commit().await.unwrap();
    // Two more single-add transactions: two.
    db.commit(&[event("t", "x", 1)]).await;
    db.commit(&[event("t", "x", 2)]).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut n = 0;
    while let Ok(c) = rx.try_recv() {
        assert_eq!(c, channel);
        n += 1;
    }
    assert_eq!(n, 4, "one notification per committed transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_schema_functions_and_clear_errors() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    // The free functions write to `eventyard`; against a database without that schema they
    // say what to do instead of failing obscurely. (Run in a transaction on a missing schema
    // by pointing a writer at one that does not exist.)
    let missing = OutboxWriter::new("eyt_missing_schema_x").unwrap();
    let mut app = common::client(&db.url).await;
    let tx = app.transaction().await.unwrap();
    match missing.add(&tx, &event("t", "k", 1)).await {
        Err(OutboxError::Store(m)) => assert!(m.contains("migrate"), "{m}"),
        other => panic!("expected a Store error naming migrate, got {other:?}"),
    }
    drop(tx);
    // Invalid topics are refused before any SQL.
    let tx = app.transaction().await.unwrap();
    let mut bad = event("t", "k", 1);
    bad.topic = "no spaces allowed".into();
    assert!(matches!(
        outbox::add(&tx, &bad).await,
        Err(OutboxError::Transport(_))
    ));
    assert!(OutboxWriter::new("Bad-Name").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_is_unavailable_on_add() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let mut app = common::client(&db.url).await;
    let pid: i32 = app
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let tx = app.transaction().await.unwrap();
    db.app
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = db.store.add(&tx, &event("t", "k", 1)).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(matches!(err, OutboxError::Unavailable(_)), "{err:?}");
}

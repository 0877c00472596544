//! Quick end-to-end checks of the embedded broker beyond the shared conformance suite.

use std::time::Duration;

use eventyard_core::{Filter, Message, SubQueue, SubscriptionSpec, Transport};
use eventyard_sqlite::{SqliteBroker, SqliteConfig};

fn msg(tenant: &str) -> Message {
    let env = eventyard_core::Envelope::new(
        eventyard_core::EventType::event("ProjectCreated").unwrap(),
        eventyard_core::TenantId::parse(tenant).unwrap(),
        serde_json::json!({"n": 1}),
    );
    Message::from_envelope(&env)
}

#[tokio::test]
async fn publish_receive_ack() {
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBroker::open(SqliteConfig::new(dir.path().join("a.db"))).unwrap();
    b.ensure_subscription(
        &SubscriptionSpec::new("ProjectCreated", "s1")
            .filter(Filter::sql("[cs-tenant-id] = 'acme'").unwrap()),
    )
    .await
    .unwrap();
    b.publish(
        "ProjectCreated",
        vec![msg("acme").into(), msg("other").into()],
    )
    .await
    .unwrap();
    let mut r = b
        .receiver("ProjectCreated", "s1", SubQueue::Main)
        .await
        .unwrap();
    let got = r.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery_count, 1);
    assert_eq!(
        got[0].message.properties.get_str("cs-tenant-id"),
        Some("acme")
    );
    for d in got {
        d.ack().await.unwrap();
    }
    let empty = r.receive(10, Duration::from_millis(50)).await.unwrap();
    assert!(empty.is_empty());
    let stats = b.stats().await.unwrap();
    assert_eq!(stats[0].available + stats[0].pending, 0);
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_file_locked_by_another_process_gives_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let mut cfg = SqliteConfig::new(&path);
    cfg.busy_timeout = Duration::from_millis(200);
    let b = SqliteBroker::open(cfg.clone()).unwrap();
    b.ensure_subscription(&SubscriptionSpec::new("ProjectCreated", "s"))
        .await
        .unwrap();
    // Another connection (as another process would) holds the write lock.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = b
        .publish("ProjectCreated", vec![msg("acme").into()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, eventyard_core::TransportError::Locked { .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    // Once released, the same handle works again.
    other.execute_batch("COMMIT").unwrap();
    b.publish("ProjectCreated", vec![msg("acme").into()])
        .await
        .unwrap();
    assert_eq!(b.stats().await.unwrap()[0].available, 1);
}

#[tokio::test]
async fn application_work_commits_or_rolls_back_in_the_store_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBroker::open(SqliteConfig::new(dir.path().join("tx.db"))).unwrap();
    b.transaction(|tx| {
        tx.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
    })
    .await
    .unwrap()
    .unwrap();
    let ok: Result<usize, rusqlite::Error> = b
        .transaction(|tx| tx.execute("INSERT INTO orders (total) VALUES (10)", []))
        .await
        .unwrap();
    assert_eq!(ok.unwrap(), 1);
    // The closure's own error rolls back only its own writes.
    let failed: Result<(), String> = b
        .transaction(|tx| {
            tx.execute("INSERT INTO orders (total) VALUES (20)", [])
                .map_err(|e| e.to_string())?;
            Err("business rule violated".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(failed.unwrap_err(), "business rule violated");
    // A panic is caught, rolled back, and the store keeps working.
    let panicked = b
        .transaction(|tx| -> Result<(), rusqlite::Error> {
            tx.execute("INSERT INTO orders (total) VALUES (30)", [])?;
            panic!("bug in application code")
        })
        .await;
    assert!(
        panicked
            .unwrap_err()
            .to_string()
            .contains("bug in application code")
    );
    let totals: Vec<i64> = b
        .transaction(|tx| {
            let mut s = tx.prepare("SELECT total FROM orders ORDER BY id")?;
            let rows: Vec<i64> = s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok::<_, rusqlite::Error>(rows)
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(totals, vec![10]);
}

/// Several openers racing to create the same new data file all succeed: none of them mistakes
/// the half-created file of another for "an SQLite database of another application".
#[test]
fn concurrent_first_opens_of_one_new_file_all_succeed() {
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.db");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteBroker::open(SqliteConfig::new(path)).map(drop)
                })
            })
            .collect();
        for h in handles {
            if let Err(e) = h.join().unwrap() {
                panic!("round {round}: a concurrent first open failed: {e}");
            }
        }
    }
}

/// A data file of schema version 1 (inbox keys stored as the bare hash) is migrated on open:
/// the keys it recorded still deduplicate, and new keys are stored in event order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_inbox_is_migrated_and_still_deduplicates() {
    use eventyard_core::IdempotencyKey;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    drop(SqliteBroker::open(SqliteConfig::new(&path)).unwrap());
    let env = eventyard_core::Envelope::new(
        eventyard_core::EventType::event("ProjectCreated").unwrap(),
        eventyard_core::TenantId::parse("acme").unwrap(),
        serde_json::json!({"n": 1}),
    );
    let key = IdempotencyKey::new(&env.event_id, "billing", "order-1");
    // What version 1 wrote: the bare hash as the key.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute(
        "INSERT INTO inbox (key, tenant, handler, event_id, result, handled_at)
         VALUES (?1, 'acme', 'billing', ?2, '41', 0)",
        rusqlite::params![key.as_str(), env.event_id.as_str()],
    )
    .unwrap();
    c.execute_batch("PRAGMA user_version = 1").unwrap();
    drop(c);
    let b = SqliteBroker::open(SqliteConfig::new(&path)).unwrap();
    let inbox = b.inbox();
    assert!(inbox.contains(&key).await.unwrap());
    let out = inbox
        .run(&env, "billing", "order-1", |_tx| Ok::<i64, String>(42))
        .await
        .unwrap();
    assert!(
        matches!(out, eventyard_sqlite::InboxOutcome::Duplicate(41)),
        "the migrated key was not found"
    );
    let stored: (String, i64) = b
        .transaction(|tx| {
            tx.query_row(
                "SELECT key, (SELECT user_version FROM pragma_user_version) FROM inbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, (key.storage_key().to_owned(), 3));
}

/// A data file of schema version 2 (message bytes in the `messages` rows) is migrated on open:
/// waiting messages are delivered with their body and properties, dead letters keep their
/// reason and fault context, and sequence numbers already handed out are not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_data_file_is_migrated_with_its_messages() {
    use eventyard_core::{DeadLetterInfo, Settlement};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    let b = SqliteBroker::open(SqliteConfig::new(&path)).unwrap();
    b.ensure_subscription(&SubscriptionSpec::new("ProjectCreated", "s1"))
        .await
        .unwrap();
    b.close().await.unwrap();
    drop(b);
    let ready = msg("acme");
    let dead = msg("acme");
    // What version 2 held: one wide `messages` table; seq 1000 was handed out and settled.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "DROP TRIGGER message_bodies_follow; DROP TABLE message_bodies; DROP TABLE messages;
         CREATE TABLE messages (
             seq            INTEGER PRIMARY KEY AUTOINCREMENT,
             queue          INTEGER NOT NULL,
             visible_at     INTEGER NOT NULL,
             delivery_count INTEGER NOT NULL DEFAULT 0,
             enqueued_at    INTEGER NOT NULL,
             body           BLOB NOT NULL,
             props          TEXT NOT NULL,
             dl_context     TEXT,
             dl_at          INTEGER
         );
         CREATE INDEX messages_ready ON messages (queue, visible_at, seq);
         CREATE INDEX messages_dead_lettered ON messages (dl_at, seq) WHERE queue < 0;
         UPDATE sqlite_sequence SET seq = 1000 WHERE name = 'messages';
         INSERT INTO sqlite_sequence (name, seq) SELECT 'messages', 1000
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messages');
         PRAGMA user_version = 2;",
    )
    .unwrap();
    let props = |m: &Message| serde_json::to_string(&m.properties).unwrap();
    let mut dead_props = dead.properties.clone();
    dead_props.insert("cs-dead-letter-reason", "Poison");
    dead_props.insert("cs-dead-letter-description", "could not parse");
    dead_props.insert("cs-dead-letter-source", "s1");
    c.execute(
        "INSERT INTO messages (seq, queue, visible_at, enqueued_at, body, props)
         VALUES (10, 1, 0, 5, ?1, ?2)",
        rusqlite::params![&ready.body[..], props(&ready)],
    )
    .unwrap();
    c.execute(
        "INSERT INTO messages (seq, queue, visible_at, enqueued_at, body, props, dl_context, dl_at)
         VALUES (11, -1, 0, 5, ?1, ?2, '{\"fingerprint\":\"abc\"}', 7)",
        rusqlite::params![&dead.body[..], serde_json::to_string(&dead_props).unwrap()],
    )
    .unwrap();
    drop(c);

    let b = SqliteBroker::open(SqliteConfig::new(&path)).unwrap();
    let mut r = b
        .receiver("ProjectCreated", "s1", SubQueue::Main)
        .await
        .unwrap();
    let got = r.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sequence, 10);
    assert_eq!(got[0].message, ready);
    let listed = eventyard_sqlite::dlq::list(&b, &eventyard_sqlite::dlq::DlqQuery::new())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].seq, 11);
    assert_eq!(listed[0].reason, "Poison");
    assert_eq!(listed[0].fingerprint, "abc");
    // A settlement after the migration deletes the message and its bytes.
    for d in got {
        d.settle(Settlement::Ack).await.unwrap();
    }
    // New messages continue above the old high-water mark.
    b.publish("ProjectCreated", vec![msg("acme").into()])
        .await
        .unwrap();
    let got = r.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].sequence > 1000, "seq {} reused", got[0].sequence);
    got.into_iter()
        .next()
        .unwrap()
        .settle(Settlement::DeadLetter(DeadLetterInfo::new("Later", "x")))
        .await
        .unwrap();
    let (rows, bodies, version): (i64, i64, i64) = b
        .transaction(|tx| {
            tx.query_row(
                "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM message_bodies),
                        (SELECT user_version FROM pragma_user_version)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rows, bodies, version), (2, 2, 3));
}

/// How long after `act` a receive that was already waiting on an empty queue got a message
/// due `delay` later; the best of three tries, so a busy machine does not decide it. `prepare`
/// runs before the receive starts waiting and hands its result to `act`.
async fn wake_lag<T, P, PFut, A, AFut>(
    b: &SqliteBroker,
    delay: Duration,
    prepare: P,
    act: A,
) -> Duration
where
    P: Fn(SqliteBroker) -> PFut,
    PFut: std::future::Future<Output = T>,
    A: Fn(T) -> AFut,
    AFut: std::future::Future<Output = ()>,
{
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let prepared = prepare(b.clone()).await;
        let mut waiting = b
            .receiver("ProjectCreated", "s", SubQueue::Main)
            .await
            .unwrap();
        let waiter = tokio::spawn(async move {
            let got = waiting.receive(1, Duration::from_secs(5)).await.unwrap();
            let at = std::time::Instant::now();
            assert_eq!(got.len(), 1, "nothing arrived within 5 s");
            for d in got {
                d.ack().await.unwrap();
            }
            at
        });
        // Let the receive find the queue empty and go to sleep.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let start = std::time::Instant::now();
        act(prepared).await;
        let at = waiter.await.unwrap();
        best = best.min(at.duration_since(start).saturating_sub(delay));
    }
    best
}

/// A delayed abandon or a scheduled publish wakes a receive that is already waiting, so the
/// message arrives at its time rather than when the receiver's idle safety sleep (250 ms) ends.
#[tokio::test]
async fn delayed_messages_reach_a_receiver_already_waiting_on_time() {
    const DELAY: Duration = Duration::from_millis(30);
    const BOUND: Duration = Duration::from_millis(150);
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBroker::open(SqliteConfig::new(dir.path().join("w.db"))).unwrap();
    b.ensure_subscription(&SubscriptionSpec::new("ProjectCreated", "s"))
        .await
        .unwrap();

    let scheduled = wake_lag(
        &b,
        DELAY,
        |b| async move { b },
        |b| async move {
            let at = chrono::Utc::now() + chrono::Duration::from_std(DELAY).unwrap();
            let out = eventyard_core::OutgoingMessage {
                message: msg("acme"),
                deliver_at: Some(at),
            };
            b.publish("ProjectCreated", vec![out]).await.unwrap();
        },
    )
    .await;
    assert!(
        scheduled < BOUND,
        "scheduled publish arrived {scheduled:?} late"
    );

    let abandoned = wake_lag(
        &b,
        DELAY,
        |b| async move {
            b.publish("ProjectCreated", vec![msg("acme").into()])
                .await
                .unwrap();
            let mut holder = b
                .receiver("ProjectCreated", "s", SubQueue::Main)
                .await
                .unwrap();
            let mut held = holder.receive(1, Duration::from_secs(2)).await.unwrap();
            assert_eq!(held.len(), 1);
            held.remove(0)
        },
        |held| async move { held.abandon(DELAY).await.unwrap() },
    )
    .await;
    assert!(
        abandoned < BOUND,
        "delayed abandon arrived {abandoned:?} late"
    );
    b.close().await.unwrap();
}

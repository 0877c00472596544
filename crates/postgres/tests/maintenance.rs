//! Schema management, connection failures and reconnection, LISTEN recovery.

mod common;

use std::time::{Duration, Instant};

use common::{LONG, TestDb, event, ids};
use eventyard_core::outbox::{OutboxError, OutboxStore};
use eventyard_postgres::{PgOutbox, PgOutboxConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_concurrent_safe() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let added = db.commit(&[event("t", "k", 1)]).await;
    // Explicit migrations and concurrent connects on an existing schema keep the data.
    db.store.migrate().await.unwrap();
    let (a, b) = tokio::join!(db.other_store(), db.other_store());
    a.migrate().await.unwrap();
    assert_eq!(ids(&b.claim("r", 10, LONG).await.unwrap()), added);
    // A fresh schema created by several processes at once.
    let schema = common::unique_schema();
    let connects = (0..3).map(|_| PgOutbox::connect(&db.url, common::config(&schema)));
    let stores = futures::future::join_all(connects).await;
    assert!(stores.iter().all(|s| s.is_ok()), "{stores:?}");
    stores[0].as_ref().unwrap().drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrate_a_missing_schema_is_a_clear_error() {
    let Some(url) = common::url() else { return };
    let config = PgOutboxConfig {
        migrate: false,
        listen: false,
        ..common::config(&common::unique_schema())
    };
    match PgOutbox::connect(&url, config).await {
        Err(OutboxError::Store(m)) => assert!(m.contains("migrate"), "{m}"),
        other => panic!("expected a Store error naming migrate, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable_after_bounded_retries() {
    // Nothing listens on port 1; three attempts 50 ms apart.
    let config = PgOutboxConfig {
        connect_attempts: 3,
        connect_backoff: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(1),
        ..PgOutboxConfig::default()
    };
    let t = Instant::now();
    let err = PgOutbox::connect("postgres://postgres:secret@127.0.0.1:1/test", config)
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let OutboxError::Unavailable(m) = &err else {
        panic!("{err:?}")
    };
    assert!(err.is_transient());
    assert!(
        m.contains("127.0.0.1:1/test") && m.contains("3 attempts"),
        "{m}"
    );
    assert!(!m.contains("secret"), "the password leaked: {m}");
    // Bad configuration is refused before connecting.
    assert!(matches!(
        PgOutbox::connect(
            "postgres://x@127.0.0.1:1/t",
            PgOutboxConfig::with_schema("No-Good")
        )
        .await,
        Err(OutboxError::Store(_))
    ));
    assert!(matches!(
        PgOutbox::connect("not a url at all ::", PgOutboxConfig::default()).await,
        Err(OutboxError::Store(_))
    ));
}

/// Terminates the server sessions of this test's store (they carry its application name).
async fn kill_sessions(db: &TestDb, application_name: &str) -> i64 {
    db.app
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sessions_are_unavailable_then_reconnected_and_listen_resumes() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let name = format!("eyt-{}", db.schema);
    let config = PgOutboxConfig {
        application_name: name.clone(),
        pool_size: 1,
        ..common::config(&db.schema)
    };
    let store = PgOutbox::connect(&db.url, config).await.unwrap();
    assert!(store.is_listening());
    let first = db.commit(&[event("t", "k", 1)]).await;
    assert_eq!(ids(&store.claim("r", 10, LONG).await.unwrap()), first);

    assert!(kill_sessions(&db, &name).await >= 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The first call on the dead connection fails as transient (or already reconnects).
    match store.mark_dispatched("r", &first).await {
        Ok(()) => {}
        Err(e) => {
            assert!(matches!(e, OutboxError::Unavailable(_)), "{e:?}");
            store.mark_dispatched("r", &first).await.unwrap();
        }
    }
    // The listener reconnects by itself; a commit then wakes `wait`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.is_listening() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.is_listening(), "LISTEN connection not re-established");
    // Drain the wake-ups of the reconnect.
    store.wait(Duration::from_millis(50)).await;
    store.wait(Duration::from_millis(50)).await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            store.wait(Duration::from_secs(10)).await;
            t.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = db.commit(&[event("t", "k", 2)]).await;
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(3), "wait took {waited:?}");
    assert_eq!(ids(&store.claim("r", 10, LONG).await.unwrap()), second);
    assert_eq!(store.status().await.unwrap().dispatched, 1);
}

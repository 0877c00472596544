//! What the PostgreSQL saga store does beyond the shared suite: racing creations, the relay
//! woken by a saga commit (the outbox trigger), read-only connects, concurrent migrations,
//! unreachable servers.

mod common;

use std::time::{Duration, Instant};

use eventyard_core::outbox::OutboxStore;
use eventyard_core::saga::{SagaError, SagaStore};
use eventyard_postgres::{PgOutbox, PgSagaConfig, PgSagaStore};
use eventyard_testkit::saga::{commit, event, instance};
use serde_json::json;

/// A schema dropped when the guard is.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new() -> Option<Schema> {
        Some(Schema {
            url: common::url()?,
            name: common::unique_schema(),
        })
    }

    fn config(&self) -> PgSagaConfig {
        PgSagaConfig {
            connect_attempts: 2,
            connect_backoff: Duration::from_millis(20),
            pool_size: 2,
            ..PgSagaConfig::with_schema(&self.name)
        }
    }

    async fn store(&self) -> PgSagaStore {
        PgSagaStore::connect(&self.url, self.config())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        common::drop_schema_blocking(&self.url, &self.name);
    }
}

/// Stores racing to create one instance: exactly one wins at version 1, every other gets a
/// conflict that found version 1, and the history holds the winner's event only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creations_make_one_instance() {
    let Some(db) = Schema::new() else { return };
    db.store().await; // migrated once, so the racers measure commits, not DDL
    let mut racers = Vec::new();
    for n in 0..8 {
        let store = db.store().await;
        racers.push(tokio::spawn(async move {
            let c = commit(
                instance("orders", "k", &format!("S{n}"), json!({})),
                0,
                None,
            );
            store.commit(c).await
        }));
    }
    let (mut won, mut lost) = (0, 0);
    for r in racers {
        match r.await.expect("racer") {
            Ok(1) => won += 1,
            Err(SagaError::Conflict {
                expected: 0,
                found: 1,
                ..
            }) => lost += 1,
            other => panic!("unexpected result {other:?}"),
        }
    }
    assert_eq!((won, lost), (1, 7));
    let d = db
        .store()
        .await
        .details("orders", "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.history.len(), 1);
    assert_eq!(d.history[0].to_state, d.instance.state);
}

/// A saga commit records its events through the outbox writer: the relay's store, listening on
/// the schema, is woken by the commit and claims them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_commit_wakes_the_relay() {
    let Some(db) = Schema::new() else { return };
    let store = db.store().await;
    let relay = PgOutbox::connect(&db.url, common::config(&db.name))
        .await
        .expect("outbox");
    assert!(relay.is_listening());
    let waiter = {
        let relay = relay.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            relay.wait(Duration::from_secs(10)).await;
            t.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = commit(instance("orders", "k", "Placed", json!({})), 0, None);
    c.events = vec![event("orders", "k"), event("payments", "k")];
    store.commit(c).await.expect("commit");
    let waited = waiter.await.expect("waiter");
    assert!(
        waited < Duration::from_secs(5),
        "the relay slept {waited:?}"
    );
    let records = relay.claim("relay", 10, common::LONG).await.expect("claim");
    let topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["orders", "payments"]);
}

/// Without migration (read-only tools), a schema that has no saga tables is a clear error and
/// creates nothing; an unreachable server is `Unavailable` naming the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_connect_and_unreachable_server() {
    let Some(db) = Schema::new() else { return };
    let config = PgSagaConfig {
        migrate: false,
        ..db.config()
    };
    match PgSagaStore::connect(&db.url, config.clone()).await {
        Err(SagaError::Storage(m)) => assert!(m.contains("no saga tables"), "{m}"),
        other => panic!("expected a missing-tables error, got {other:?}"),
    }
    let app = common::client(&db.url).await;
    let exists: bool = app
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "a read-only connect created the schema");
    db.store().await;
    PgSagaStore::connect(&db.url, config)
        .await
        .expect("read-only connect once the tables exist");

    let t = Instant::now();
    match PgSagaStore::connect("postgres://postgres@127.0.0.1:1/test", db.config()).await {
        Err(e @ SagaError::Unavailable(_)) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains("127.0.0.1:1/test"), "{e}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    match PgSagaStore::connect(&db.url, PgSagaConfig::with_schema("Bad;Name")).await {
        Err(SagaError::Storage(m)) => assert!(m.contains("schema name"), "{m}"),
        other => panic!("expected an invalid schema error, got {other:?}"),
    }
}

/// Processes migrating a fresh schema at once all succeed, and the result works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations() {
    let Some(db) = Schema::new() else { return };
    let connects = (0..4).map(|_| db.store());
    let stores = futures::future::join_all(connects).await;
    let c = commit(instance("orders", "k", "S", json!({})), 0, None);
    assert_eq!(stores[3].commit(c).await.expect("commit"), 1);
    assert!(stores[0].load("orders", "k").await.unwrap().is_some());
}

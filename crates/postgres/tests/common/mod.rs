//! Shared helpers of the PostgreSQL tests: a store in a schema of its own per test (dropped at
//! the end, even when the test panics), an application connection, sample events.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use eventyard_core::outbox::PendingEvent;
use eventyard_core::transport::Message;
use eventyard_core::{Properties, properties::names};
use eventyard_postgres::{PgOutbox, PgOutboxConfig};
use eventyard_testkit::services::{Service, require};
use tokio_postgres::{Client, NoTls};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique schema name for this process and call.
pub fn unique_schema() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        % 100_000_000;
    format!(
        "eyt_{}_{}_{}",
        std::process::id(),
        t,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A store on a fresh schema, an application client, and the URL. Drops the schema on drop.
pub struct TestDb {
    pub url: String,
    pub schema: String,
    pub store: PgOutbox,
    pub app: Client,
}

/// The server URL, or `None` (test skipped outside CI; panics under CI).
pub fn url() -> Option<String> {
    require(Service::Postgres)
}

/// An application connection.
pub async fn client(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Configuration with a fresh schema and quick connect retries.
pub fn config(schema: &str) -> PgOutboxConfig {
    PgOutboxConfig {
        connect_attempts: 3,
        connect_backoff: Duration::from_millis(50),
        ..PgOutboxConfig::with_schema(schema)
    }
}

impl TestDb {
    /// `None` when PostgreSQL is absent outside CI.
    pub async fn new() -> Option<TestDb> {
        let url = url()?;
        let schema = unique_schema();
        let store = PgOutbox::connect(&url, config(&schema))
            .await
            .expect("connect the outbox store");
        let app = client(&url).await;
        Some(TestDb {
            url,
            schema,
            store,
            app,
        })
    }

    /// Another store (another relay process) on the same schema.
    pub async fn other_store(&self) -> PgOutbox {
        PgOutbox::connect(&self.url, config(&self.schema))
            .await
            .expect("connect a second store")
    }

    /// Commits `events` in one application transaction; returns their ids.
    pub async fn commit(&mut self, events: &[PendingEvent]) -> Vec<i64> {
        let tx = self.app.transaction().await.unwrap();
        let mut ids = Vec::new();
        for e in events {
            ids.push(self.store.add(&tx, e).await.unwrap());
        }
        tx.commit().await.unwrap();
        ids
    }

    /// Runs a scalar query on the application connection.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let sql = sql.replace("{s}", &self.schema);
        self.app.query_one(&sql, &[]).await.unwrap().get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_schema_blocking(&self.url, &self.schema);
    }
}

/// Drops `schema` from a thread with a runtime of its own (callable from `Drop`, inside or
/// outside the test's runtime, also while a test panics).
pub fn drop_schema_blocking(url: &str, schema: &str) {
    let (url, schema) = (url.to_owned(), schema.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok((c, conn)) = tokio_postgres::connect(&url, NoTls).await {
                tokio::spawn(conn);
                let _ = c
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await;
            }
        });
    })
    .join();
}

/// An event for `topic` with partition key `key`; `n` goes into the body and `cs-event-id`.
pub fn event(topic: &str, key: &str, n: u64) -> PendingEvent {
    let properties: Properties = [
        (names::EVENT_ID, format!("e-{n}")),
        (names::CORRELATION_ID, key.to_owned()),
    ]
    .into_iter()
    .collect();
    PendingEvent {
        topic: topic.to_owned(),
        partition_key: key.to_owned(),
        message: Message {
            body: Bytes::from(format!("{{\"n\":{n}}}")),
            properties,
        },
        deliver_at: None,
    }
}

/// Ids of records.
pub fn ids(records: &[eventyard_core::outbox::OutboxRecord]) -> Vec<i64> {
    records.iter().map(|r| r.id).collect()
}

/// Thirty seconds: a lease that does not expire during a test.
pub const LONG: Duration = Duration::from_secs(30);

//! The outbox conformance suite (eventyard-testkit) on the PostgreSQL store: each case gets a
//! schema of its own, dropped when the case ends.

mod common;

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use eventyard_core::outbox::{OutboxStore, PendingEvent};
use eventyard_postgres::{OutboxWriter, PgOutbox};
use eventyard_testkit::outbox::OutboxFactory;
use tokio::sync::OnceCell;

/// One case's outbox: a fresh schema on the server at `url`.
struct PgFactory {
    url: String,
    schema: String,
    migrated: OnceCell<()>,
}

impl PgFactory {
    fn new(url: String) -> Self {
        PgFactory {
            url,
            schema: common::unique_schema(),
            migrated: OnceCell::new(),
        }
    }

    async fn store(&self) -> PgOutbox {
        let store = PgOutbox::connect(&self.url, common::config(&self.schema))
            .await
            .unwrap_or_else(|e| panic!("connect the outbox store: {e}"));
        let _ = self.migrated.set(());
        store
    }
}

#[async_trait]
impl OutboxFactory for PgFactory {
    async fn connect(&self) -> Arc<dyn OutboxStore> {
        Arc::new(self.store().await)
    }

    async fn add(&self, events: Vec<PendingEvent>, commit: bool) -> Vec<i64> {
        if self.migrated.get().is_none() {
            drop(self.store().await);
        }
        let writer = OutboxWriter::new(&self.schema).unwrap();
        let mut app = common::client(&self.url).await;
        let tx = app.transaction().await.unwrap();
        let mut ids = Vec::new();
        for e in &events {
            ids.push(
                writer
                    .add(&tx, e)
                    .await
                    .unwrap_or_else(|e| panic!("add: {e}")),
            );
        }
        if commit {
            tx.commit().await.unwrap();
            ids
        } else {
            tx.rollback().await.unwrap();
            Vec::new()
        }
    }

    async fn hold_cleaner_election(&self) -> Box<dyn Any + Send> {
        let store = self.store().await;
        let client = common::client(&self.url).await;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&store.cleaner_lock_key()])
            .await
            .unwrap();
        // Dropping the client closes its session, which releases the lock.
        Box::new(client)
    }
}

impl Drop for PgFactory {
    fn drop(&mut self) {
        common::drop_schema_blocking(&self.url, &self.schema);
    }
}

eventyard_testkit::outbox_conformance!(
    service = eventyard_testkit::services::Service::Postgres,
    |url: String| PgFactory::new(url)
);

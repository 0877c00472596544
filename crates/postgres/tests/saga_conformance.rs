//! The saga conformance suite (eventyard-testkit) on the PostgreSQL store: each case gets a
//! schema of its own, dropped when the case ends. Every `connect` is a store of its own (its own
//! connections), as another process would hold.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use eventyard_core::outbox::OutboxStore;
use eventyard_core::saga::SagaStore;
use eventyard_postgres::{PgOutbox, PgSagaConfig, PgSagaStore};
use eventyard_testkit::saga::SagaFactory;

/// One case's saga store: a fresh schema on the server at `url`.
struct PgSagaFactory {
    url: String,
    schema: String,
}

impl PgSagaFactory {
    fn new(url: String) -> Self {
        PgSagaFactory {
            url,
            schema: common::unique_schema(),
        }
    }
}

#[async_trait]
impl SagaFactory for PgSagaFactory {
    async fn connect(&self) -> Arc<dyn SagaStore> {
        let config = PgSagaConfig {
            connect_attempts: 3,
            connect_backoff: std::time::Duration::from_millis(50),
            pool_size: 4,
            ..PgSagaConfig::with_schema(&self.schema)
        };
        Arc::new(
            PgSagaStore::connect(&self.url, config)
                .await
                .unwrap_or_else(|e| panic!("connect the saga store: {e}")),
        )
    }

    async fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::new(
            PgOutbox::connect(&self.url, common::config(&self.schema))
                .await
                .unwrap_or_else(|e| panic!("connect the outbox store: {e}")),
        )
    }
}

impl Drop for PgSagaFactory {
    fn drop(&mut self) {
        common::drop_schema_blocking(&self.url, &self.schema);
    }
}

eventyard_testkit::saga_conformance!(
    service = eventyard_testkit::services::Service::Postgres,
    |url: String| PgSagaFactory::new(url)
);

//! The embedded saga store passes the shared saga conformance suite, twice: every handle on one
//! broker (one process), and each handle on a broker of its own over the same file (as separate
//! processes would be); and with commits gathered by the store (`batch_commits`).

use std::sync::Arc;

use eventyard_core::outbox::OutboxStore;
use eventyard_core::saga::SagaStore;
use eventyard_sqlite::{SqliteBroker, SqliteConfig, SqliteSagaStore};
use eventyard_testkit::saga::SagaFactory;

struct SqliteSagaFactory {
    dir: tempfile::TempDir,
    app: SqliteBroker,
    separate: bool,
    batched: bool,
}

impl SqliteSagaFactory {
    fn new(separate: bool) -> Self {
        Self::with(separate, false)
    }

    fn with(separate: bool, batched: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = SqliteBroker::open(SqliteConfig::new(dir.path().join("saga.db"))).expect("open");
        SqliteSagaFactory {
            dir,
            app,
            separate,
            batched,
        }
    }

    fn broker(&self) -> SqliteBroker {
        if self.separate {
            SqliteBroker::open(SqliteConfig::new(self.dir.path().join("saga.db"))).expect("open")
        } else {
            self.app.clone()
        }
    }
}

#[async_trait::async_trait]
impl SagaFactory for SqliteSagaFactory {
    async fn connect(&self) -> Arc<dyn SagaStore> {
        let store = SqliteSagaStore::open(self.broker())
            .await
            .expect("saga store");
        Arc::new(store.batch_commits(self.batched))
    }

    async fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::new(self.app.outbox())
    }
}

mod one_broker {
    eventyard_testkit::saga_conformance!(super::SqliteSagaFactory::new(false));
}

mod separate_brokers {
    eventyard_testkit::saga_conformance!(super::SqliteSagaFactory::new(true));
}

mod batched_commits {
    eventyard_testkit::saga_conformance!(super::SqliteSagaFactory::with(true, true));
}

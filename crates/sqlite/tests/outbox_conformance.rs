//! The embedded store passes the shared outbox conformance suite, twice: with every store
//! handle on the application's own broker (one process), and with each handle on a broker of
//! its own over the same file (as separate processes would be: separate connections, file
//! locks, cross-process wake-up).

use std::any::Any;
use std::sync::Arc;

use eventyard_core::outbox::{OutboxError, OutboxStore, PendingEvent};
use eventyard_sqlite::{SqliteBroker, SqliteConfig, outbox};
use eventyard_testkit::outbox::OutboxFactory;

struct SqliteOutboxFactory {
    dir: tempfile::TempDir,
    /// The application's broker: `add` runs its transactions.
    app: SqliteBroker,
    separate: bool,
}

impl SqliteOutboxFactory {
    fn new(separate: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let app =
            SqliteBroker::open(SqliteConfig::new(dir.path().join("outbox.db"))).expect("open");
        SqliteOutboxFactory { dir, app, separate }
    }
}

enum Fail {
    Rollback,
    Outbox(OutboxError),
}

/// Holds the cleaner lease row for a foreign holder; frees it when dropped.
struct Election(SqliteBroker);

impl Drop for Election {
    fn drop(&mut self) {
        let broker = self.0.clone();
        tokio::spawn(async move {
            let _ = broker
                .transaction(|tx| {
                    tx.execute(
                        "DELETE FROM outbox_leases WHERE holder = 'another-cleaner'",
                        [],
                    )
                })
                .await;
        });
    }
}

#[async_trait::async_trait]
impl OutboxFactory for SqliteOutboxFactory {
    async fn connect(&self) -> Arc<dyn OutboxStore> {
        if self.separate {
            let cfg = SqliteConfig::new(self.dir.path().join("outbox.db"));
            Arc::new(SqliteBroker::open(cfg).expect("open").outbox())
        } else {
            Arc::new(self.app.outbox())
        }
    }

    async fn add(&self, events: Vec<PendingEvent>, commit: bool) -> Vec<i64> {
        let r = self
            .app
            .transaction(move |tx| {
                let ids = outbox::add_all(tx, &events).map_err(Fail::Outbox)?;
                if commit { Ok(ids) } else { Err(Fail::Rollback) }
            })
            .await
            .expect("the store runs the transaction");
        match r {
            Ok(ids) => ids,
            Err(Fail::Rollback) => Vec::new(),
            Err(Fail::Outbox(e)) => panic!("outbox::add failed: {e}"),
        }
    }

    async fn hold_cleaner_election(&self) -> Box<dyn Any + Send> {
        self.app
            .transaction(|tx| {
                tx.execute(
                    "INSERT OR REPLACE INTO outbox_leases (name, holder, expires_at)
                     VALUES ('cleaner', 'another-cleaner', 9000000000000000)",
                    [],
                )
            })
            .await
            .expect("store")
            .expect("lease row");
        Box::new(Election(self.app.clone()))
    }
}

mod one_broker {
    eventyard_testkit::outbox_conformance!(super::SqliteOutboxFactory::new(false));
}

mod separate_brokers {
    eventyard_testkit::outbox_conformance!(super::SqliteOutboxFactory::new(true));
}

//! The embedded broker passes the shared transport conformance suite, unmodified.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eventyard_core::Transport;
use eventyard_sqlite::{SqliteBroker, SqliteConfig};
use eventyard_testkit::conformance::TransportFactory;

/// Each test gets its own data file; `connect` opens a new broker on the same file, as a
/// restarted process would.
struct SqliteFactory {
    dir: tempfile::TempDir,
    counter: AtomicU64,
}

impl SqliteFactory {
    fn new() -> Self {
        SqliteFactory {
            dir: tempfile::tempdir().expect("temp dir"),
            counter: AtomicU64::new(0),
        }
    }
}

#[async_trait::async_trait]
impl TransportFactory for SqliteFactory {
    async fn connect(&self) -> Arc<dyn Transport> {
        let cfg = SqliteConfig::new(self.dir.path().join("conformance.db"));
        Arc::new(SqliteBroker::open(cfg).expect("open the embedded broker"))
    }

    fn unique(&self, base: &str) -> String {
        format!("{base}-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

eventyard_testkit::transport_conformance!(SqliteFactory::new());

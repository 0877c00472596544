//! eventyard's embedded default: a durable broker (and, later, every store) in one SQLite file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), eventyard_core::TransportError> {
//! use eventyard_sqlite::{SqliteBroker, SqliteConfig};
//! let broker = SqliteBroker::open(SqliteConfig::new("eventyard.db"))?;
//! # Ok(()) }
//! ```
//!
//! Durability: WAL journal, `synchronous=FULL` by default; a publish is acknowledged after its
//! transaction commits, so it survives a crash of the process. Group commit: one writer thread
//! drains all pending commands into one transaction.

mod broker;
mod config;
pub mod dlq;
mod error;
mod inbox;
mod ops;
pub mod outbox;
pub mod saga;
mod schema;
mod syncer;
mod topology;
mod writer;

pub use broker::SqliteBroker;
pub use config::{SqliteConfig, Synchronous};
pub use inbox::{Inbox, InboxError, InboxOutcome};
pub use ops::SubscriptionStats;
/// The SQLite engine, re-exported so applications use the same version in [`SqliteBroker::transaction`].
pub use rusqlite;
pub use saga::SqliteSagaStore;
pub use writer::WriterStats;

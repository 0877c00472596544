//! eventyard stores on PostgreSQL: the transactional outbox.
//!
//! - [`outbox::add`] / [`outbox::add_batch`] record events inside the application's own
//!   `tokio_postgres::Transaction` (one NOTIFY per transaction, nothing on rollback);
//!   [`OutboxWriter`] does the same for another schema.
//! - [`PgOutbox`] is the relay's side ([`eventyard_core::outbox::OutboxStore`]): serialised
//!   claims with leases in a narrow claims table, per-partition-key order across relays, retry,
//!   parking (with requeue/discard), elected cleanup, LISTEN/NOTIFY wake-ups, status figures;
//!   it reconnects after a server restart.
//! - [`bench`] measures the relay drain rate against a batched INSERT (TARGETS R4) and the
//!   commit → claim latency (the store's part of R6).
//! - [`PgSagaStore`] persists saga instances ([`eventyard_core::saga::SagaStore`]; see [`saga`]).
//!
//! The schema and its SQL are described in the `schema` module's source documentation:
//! `<schema>.outbox` (pending and parked records), `<schema>.outbox_claims` (leases),
//! `<schema>.outbox_dispatched` (log for cleanup and status), a NOTIFY-once statement trigger,
//! and the `outbox_claim` / `outbox_cleanup` functions. Connections are plain TCP (`NoTls`).

pub mod bench;
mod config;
mod error;
mod listen;
pub mod outbox;
mod pool;
pub mod saga;
mod schema;
mod sql;
mod store;

pub use config::{DEFAULT_SCHEMA, PgOutboxConfig, check_schema};
pub use outbox::OutboxWriter;
pub use saga::{PgSagaConfig, PgSagaStore};
pub use store::{ParkedRecord, PgOutbox};

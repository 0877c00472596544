//! eventyard sagas (process managers, SPEC §3): long-running workflows as durable state
//! machines declared in Rust, keyed by correlationId (or another property), whose every
//! transition commits atomically with the events it emits and the timeouts it schedules.
//!
//! - [`SagaDefinition`] — states, the events that start or move an instance ([`start_on`],
//!   [`on`], [`on_timeout`]) with guards and actions, final states, the correlation key, and
//!   the [`Policy`] for events of unknown instances or unexpected in a state.
//! - [`SagaEngine`] — applies events with optimistic concurrency over any
//!   [`SagaStore`](eventyard_core::saga::SagaStore) (SQLite: `eventyard_sqlite::SqliteSagaStore`):
//!   a conflict retries the event against the fresh state; duplicates change nothing; emitted
//!   events go through the outbox in the same transaction as the state change (a relay
//!   publishes them). [`SagaEngine::subscribe`] plugs it into the [`Bus`](eventyard_runtime::Bus)
//!   like any handler, with competing consumers.
//! - [`TimeoutScheduler`] — fires durable timeouts (approval gates that auto-reject, step
//!   timeouts); a timeout is cancelled when the awaited event arrives first.
//!
//! [`start_on`]: SagaDefinition::start_on
//! [`on`]: SagaDefinition::on
//! [`on_timeout`]: SagaDefinition::on_timeout

mod definition;
mod engine;
mod error;
mod scheduler;
mod step;
mod subscribe;

pub use definition::{Correlation, Policy, SagaData, SagaDefinition, TransitionBuilder};
pub use engine::{EngineOptions, Handled, IgnoreReason, SagaCounts, SagaEngine};
pub use error::{DefinitionError, SagaEngineError};
pub use scheduler::{SchedulerHandle, SchedulerOptions, TimeoutScheduler, TimeoutTarget};
pub use step::Step;

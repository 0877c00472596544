//! eventyard testkit: conformance suites every backend must pass, and test helpers.
//!
//! - [`conformance`] — the transport conformance suite: one case per rule of the
//!   [`Transport`](eventyard_core::Transport) contract, run against a backend through a
//!   [`conformance::TransportFactory`] with [`transport_conformance!`].
//! - [`memory`] — [`memory::MemoryTransport`], an in-memory transport honouring the whole
//!   contract, for unit tests (and [`memory::MemoryFactory`] to run the suite on it).
//! - [`outbox`] — the outbox conformance suite: one case per rule of the
//!   [`OutboxStore`](eventyard_core::outbox::OutboxStore) contract, run against a store through
//!   an [`outbox::OutboxFactory`] with [`outbox_conformance!`].
//! - [`saga`] — the saga store conformance suite, with [`saga_conformance!`].
//! - [`helpers`] — sample envelopes and messages, receiving with deadlines.

pub mod conformance;
pub mod helpers;
mod macros;
pub mod memory;
pub mod outbox;
pub mod saga;
pub mod services;

pub use helpers::{assert_nothing, message, receive_exactly, sample_envelope};

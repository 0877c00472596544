//! The NATS JetStream transport passes the shared transport conformance suite, unmodified.
//!
//! Each case runs under a prefix of its own (time, process and counter based), so leftovers of
//! earlier runs never collide; its streams are deleted when the case ends. Skipped (with a
//! printed reason) when no NATS server answers, unless `CI=true`.

mod common;

use common::NatsFactory;

eventyard_testkit::transport_conformance!(
    service = eventyard_testkit::services::Service::Nats,
    |url: String| NatsFactory::new(url)
);

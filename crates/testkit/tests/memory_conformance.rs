//! The in-memory transport passes the transport conformance suite.

use eventyard_testkit::memory::MemoryFactory;

eventyard_testkit::transport_conformance!(MemoryFactory::new());

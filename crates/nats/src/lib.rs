//! eventyard transport over NATS JetStream (async-nats).

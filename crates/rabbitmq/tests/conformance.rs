//! The RabbitMQ transport passes the shared transport conformance suite, unmodified, with
//! classic subscription queues (the default) and, with the `quorum-tests` feature, with quorum
//! queues (`cargo test -p eventyard-rabbitmq --features quorum-tests --test conformance`).
//!
//! Needs RabbitMQ (`EVENTYARD_AMQP_URL`, or one answering on 127.0.0.1:5672): skipped otherwise,
//! failed under CI.

mod common;

mod classic {
    use super::common::AmqpFactory;

    eventyard_testkit::transport_conformance!(
        service = eventyard_testkit::services::Service::Amqp,
        |url: String| AmqpFactory::new(url)
    );
}

#[cfg(feature = "quorum-tests")]
mod quorum {
    use super::common::AmqpFactory;
    use eventyard_rabbitmq::QueueType;

    eventyard_testkit::transport_conformance!(
        service = eventyard_testkit::services::Service::Amqp,
        |url: String| AmqpFactory::new(url).queue_type(QueueType::Quorum)
    );
}

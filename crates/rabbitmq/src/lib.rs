//! eventyard transport over RabbitMQ (lapin).

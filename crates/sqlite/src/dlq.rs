//! Dead-letter queue operations on the embedded store (being implemented).

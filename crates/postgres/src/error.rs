//! Mapping `tokio_postgres` errors onto [`OutboxError`].
//!
//! Transient failures (connection lost or refused, server shutting down or starting, out of
//! resources, serialization failure, deadlock) become [`OutboxError::Unavailable`], which the
//! relay retries with backoff; a missing table or function says to run `migrate()`; bad data
//! becomes [`OutboxError::Invalid`]; anything else [`OutboxError::Store`].

use std::error::Error as _;

use eventyard_core::outbox::OutboxError;
use tokio_postgres::error::SqlState;

/// Describes an error with its whole source chain (`tokio_postgres::Error`'s own `Display` only
/// says "db error" for server errors).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// True when retrying later may succeed.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57P") // admin/crash shutdown, cannot connect now
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::QUERY_CANCELED
        }
        // No SQLSTATE: I/O error, connection closed, timeout, protocol error.
        None => {
            e.source()
                .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
                || e.to_string().contains("timeout")
                || e.to_string().contains("connection")
        }
    }
}

/// Maps an error of an outbox operation (`what` says which).
pub(crate) fn map(what: &str, e: tokio_postgres::Error) -> OutboxError {
    let text = describe(&e);
    if is_transient(&e) {
        return OutboxError::Unavailable(format!("postgres: {what}: {text}"));
    }
    match e.code() {
        Some(c)
            if *c == SqlState::UNDEFINED_TABLE
                || *c == SqlState::INVALID_SCHEMA_NAME
                || *c == SqlState::UNDEFINED_FUNCTION =>
        {
            OutboxError::Store(format!(
                "postgres: {what}: {text} (outbox schema missing: run PgOutbox::migrate)"
            ))
        }
        Some(c) if c.code().starts_with("22") => {
            OutboxError::Invalid(format!("postgres: {what}: {text}"))
        }
        _ => OutboxError::Store(format!("postgres: {what}: {text}")),
    }
}

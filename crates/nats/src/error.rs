//! Turning async-nats failures into [`TransportError`]s (engine types never leak out).

use std::fmt::Display;

use async_nats::client::RequestErrorKind;
use async_nats::jetstream::context::PublishErrorKind;
use eventyard_core::TransportError;

/// The backend name in errors.
pub(crate) const BACKEND: &str = "nats";

/// The server cannot be reached or did not answer in time (transient).
pub(crate) fn unavailable(message: impl Display) -> TransportError {
    TransportError::Unavailable {
        backend: BACKEND,
        message: message.to_string(),
    }
}

/// Any other server or client error, described.
pub(crate) fn backend(message: impl Display) -> TransportError {
    TransportError::Backend {
        backend: BACKEND,
        message: message.to_string(),
    }
}

/// A failed publish acknowledgement (other than "no stream", which callers handle).
pub(crate) fn publish_error(e: &async_nats::jetstream::context::PublishError) -> TransportError {
    match e.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            unavailable(format!("publish not acknowledged: {e}"))
        }
        _ => backend(format!("publish failed: {e}")),
    }
}

/// A failed core NATS request (confirmed settlement).
pub(crate) fn request_error(e: &async_nats::RequestError, what: &str) -> TransportError {
    match e.kind() {
        RequestErrorKind::TimedOut => unavailable(format!("{what} not confirmed in time: {e}")),
        _ => backend(format!("{what} failed: {e}")),
    }
}

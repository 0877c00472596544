//! Errors of the bus API.

use eventyard_core::{EnvelopeError, TransportError};
use thiserror::Error;

/// Why a bus call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BusError {
    /// The transport refused or failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The envelope or event is invalid.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Publishing for another tenant from inside a handler of this tenant.
    #[error(
        "cross-tenant publish refused: handling an event of tenant `{handling}`, publishing for `{publishing}`"
    )]
    CrossTenant {
        /// Tenant of the event being handled.
        handling: String,
        /// Tenant of the event being published.
        publishing: String,
    },
    /// Under topic-per-context, the event type's bounded context is unknown.
    #[error(
        "no bounded context registered for event type `{0}` (topic-per-context); register it with Bus::register::<E>() or Bus::map_context"
    )]
    UnknownContext(String),
    /// A batch sent through a [`crate::Publisher`] ended without an outcome: its task panicked
    /// or the runtime shut down. Its messages may or may not have been stored.
    #[error(
        "a pipelined publish ended without an outcome (its task panicked or the runtime shut down); its messages may or may not be stored"
    )]
    PublishAborted,
    /// Invalid bus or subscription configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl From<eventyard_core::IdError> for BusError {
    fn from(e: eventyard_core::IdError) -> Self {
        BusError::Envelope(EnvelopeError::InvalidId(e))
    }
}

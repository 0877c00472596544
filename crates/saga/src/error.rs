//! Errors of saga definitions and of the engine, and how they classify as handler failures.

use eventyard_core::EnvelopeError;
use eventyard_core::saga::SagaError;
use eventyard_runtime::{ErrorKind, HandlerError};
use thiserror::Error;

/// A definition that [`SagaDefinition::build`](crate::SagaDefinition::build) refused.
#[derive(Debug, Clone, Error)]
#[error("saga definition `{saga}` is invalid: {}", problems.join("; "))]
pub struct DefinitionError {
    /// The saga's name.
    pub saga: String,
    /// Every problem found.
    pub problems: Vec<String>,
}

/// Why the engine could not apply an event.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SagaEngineError {
    /// The event does not name an instance (no correlation key).
    #[error("saga {saga}: {event_type} carries no instance key")]
    NoKey {
        /// Saga name.
        saga: String,
        /// The event's type.
        event_type: String,
    },
    /// The payload does not decode as the declared event type.
    #[error("saga {saga}: {source}")]
    Decode {
        /// Saga name.
        saga: String,
        /// The decoding error.
        #[source]
        source: EnvelopeError,
    },
    /// No instance for the key and the event starts none; the definition's policy is
    /// dead-letter (`retry: false`) or fault (`retry: true`).
    #[error("saga {saga}: no instance `{key}` for {event_type}")]
    UnknownInstance {
        /// Saga name.
        saga: String,
        /// Instance key.
        key: String,
        /// The event's type.
        event_type: String,
        /// True under [`Policy::Fault`](crate::Policy::Fault).
        retry: bool,
    },
    /// The instance's state does not accept the event; the policy is dead-letter or fault.
    #[error("saga {saga}/{key}: {event_type} is not expected in state {state}")]
    Unexpected {
        /// Saga name.
        saga: String,
        /// Instance key.
        key: String,
        /// The instance's state.
        state: String,
        /// The event's type.
        event_type: String,
        /// True under [`Policy::Fault`](crate::Policy::Fault).
        retry: bool,
    },
    /// The event's tenant is not the instance's.
    #[error("saga {saga}/{key}: event of tenant `{event_tenant}` for an instance of `{tenant}`")]
    TenantMismatch {
        /// Saga name.
        saga: String,
        /// Instance key.
        key: String,
        /// The instance's tenant.
        tenant: String,
        /// The event's tenant.
        event_tenant: String,
    },
    /// A transition targets a state the definition does not declare.
    #[error("saga {saga}: state `{state}` is not declared")]
    UndeclaredState {
        /// Saga name.
        saga: String,
        /// The state.
        state: String,
    },
    /// An action failed (nothing was committed).
    #[error("saga {saga}: action failed: {error}")]
    Action {
        /// Saga name.
        saga: String,
        /// The action's error, classified.
        error: HandlerError,
    },
    /// Version conflicts went on for every allowed attempt.
    #[error("saga {saga}/{key}: still conflicting after {attempts} attempts")]
    ConflictsExhausted {
        /// Saga name.
        saga: String,
        /// Instance key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The data does not (de)serialize.
    #[error("saga {saga}: data: {message}")]
    Data {
        /// Saga name.
        saga: String,
        /// serde's message.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] SagaError),
}

impl SagaEngineError {
    /// The handler failure kind: retried (transient) or dead-lettered at once.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SagaEngineError::NoKey { .. }
            | SagaEngineError::Decode { .. }
            | SagaEngineError::Data { .. } => ErrorKind::Validation,
            SagaEngineError::UnknownInstance { retry, .. }
            | SagaEngineError::Unexpected { retry, .. } => {
                if *retry {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Validation
                }
            }
            SagaEngineError::TenantMismatch { .. } => ErrorKind::Security,
            SagaEngineError::UndeclaredState { .. } => ErrorKind::Permanent,
            SagaEngineError::Action { error, .. } => error.kind(),
            SagaEngineError::ConflictsExhausted { .. } => ErrorKind::Transient,
            SagaEngineError::Store(e) => {
                if e.is_transient() {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Permanent
                }
            }
        }
    }

    /// A short reason code for dead-letter context.
    pub fn code(&self) -> &'static str {
        match self {
            SagaEngineError::NoKey { .. } => "SagaNoKey",
            SagaEngineError::Decode { .. } => "PayloadMismatch",
            SagaEngineError::UnknownInstance { .. } => "UnknownSagaInstance",
            SagaEngineError::Unexpected { .. } => "UnexpectedSagaEvent",
            SagaEngineError::TenantMismatch { .. } => "TenantMismatch",
            SagaEngineError::UndeclaredState { .. } => "UndeclaredSagaState",
            SagaEngineError::Action { .. } => "SagaActionFailed",
            SagaEngineError::ConflictsExhausted { .. } => "SagaConflict",
            SagaEngineError::Data { .. } => "SagaData",
            SagaEngineError::Store(_) => "SagaStore",
        }
    }
}

impl SagaEngineError {
    /// The classified handler failure (the consumer retries or dead-letters by its kind).
    /// Not a `From` impl: `HandlerError` already converts from every error (as transient).
    pub fn into_handler_error(self) -> HandlerError {
        match self {
            SagaEngineError::Action { error, saga } => error.context(format!("saga {saga}")),
            other => HandlerError::new(other.kind(), other.to_string()).context(other.code()),
        }
    }
}

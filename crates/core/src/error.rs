//! Typed errors of the core types. Transport and store errors live in [`crate::transport`].

use thiserror::Error;

/// An identifier did not have its required form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {kind} `{value}`: expected {expected}")]
pub struct IdError {
    /// Which id (the envelope field name, e.g. `eventId`).
    pub kind: &'static str,
    /// The rejected value.
    pub value: String,
    /// The form that was expected.
    pub expected: &'static str,
}

/// Why an envelope (JSON or typed) was rejected. Every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not JSON, or a field has the wrong JSON type.
    #[error("malformed envelope JSON: {message}")]
    Json {
        /// serde_json's message, prefixed with the field path where known.
        message: String,
    },
    /// The bytes are not UTF-8.
    #[error("envelope is not valid UTF-8 (invalid byte at offset {offset})")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// A required field is absent.
    #[error("envelope field `{field}` is required but missing")]
    MissingField {
        /// camelCase field name.
        field: &'static str,
    },
    /// An id field has the wrong form.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// `eventType` breaks the naming rule.
    #[error("invalid eventType `{value}`: {reason}")]
    InvalidEventType {
        /// The rejected type name.
        value: String,
        /// What rule it breaks.
        reason: String,
    },
    /// `occurredAt` is not an RFC 3339 UTC timestamp.
    #[error("invalid occurredAt `{value}`: {reason}")]
    InvalidTime {
        /// The rejected text.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `payload` is not a JSON object.
    #[error("envelope field `payload` must be a JSON object, found {found}")]
    PayloadNotObject {
        /// The JSON kind found (`array`, `string`, ...).
        found: &'static str,
    },
    /// `schemaVersion` is not a positive integer.
    #[error("envelope field `schemaVersion` must be an integer >= 1, found {found}")]
    InvalidSchemaVersion {
        /// The rejected value as text.
        found: String,
    },
    /// Decoding into a typed event found another event type.
    #[error("envelope carries eventType `{found}`, expected `{expected}`")]
    TypeMismatch {
        /// The type the caller asked for.
        expected: String,
        /// The type in the envelope.
        found: String,
    },
    /// The payload does not fit the typed event's shape.
    #[error("payload of `{event_type}` does not match its type: {message}")]
    Payload {
        /// The event type being decoded.
        event_type: String,
        /// serde's message.
        message: String,
    },
    /// A CloudEvent lacks what an eventyard envelope needs, or has the wrong form.
    #[error("CloudEvent cannot be converted: {0}")]
    CloudEvent(String),
}

impl EnvelopeError {
    /// A short, stable, machine-readable kind for dead-letter reasons and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            EnvelopeError::Json { .. } => "MalformedJson",
            EnvelopeError::InvalidUtf8 { .. } => "InvalidUtf8",
            EnvelopeError::MissingField { .. } => "MissingField",
            EnvelopeError::InvalidId(_) => "InvalidId",
            EnvelopeError::InvalidEventType { .. } => "InvalidEventType",
            EnvelopeError::InvalidTime { .. } => "InvalidTime",
            EnvelopeError::PayloadNotObject { .. } => "PayloadNotObject",
            EnvelopeError::InvalidSchemaVersion { .. } => "InvalidSchemaVersion",
            EnvelopeError::TypeMismatch { .. } => "TypeMismatch",
            EnvelopeError::Payload { .. } => "PayloadMismatch",
            EnvelopeError::CloudEvent(_) => "CloudEvent",
        }
    }
}

//! How a handler's result becomes a settlement: [`HandlerError`] carries an [`ErrorKind`]; the
//! subscription's [`RetryPolicy`](crate::RetryPolicy) turns it into an [`Outcome`]. Nothing
//! unclassified reaches the consumer loop: any `std::error::Error` converts into a
//! `HandlerError` of kind [`ErrorKind::Transient`], and a panic is caught and classified as
//! [`ErrorKind::Panic`].

use std::fmt;
use std::time::Duration;

/// The class of a handler failure, which decides retry or dead-letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// May succeed later (timeouts, contention): retried with backoff.
    Transient,
    /// An external system failed: retried with backoff.
    External,
    /// The input is wrong; retrying cannot help: dead-lettered at once, never retried.
    Validation,
    /// A bug or permanent condition: dead-lettered at once.
    Permanent,
    /// Tenant or authorization violation: dead-lettered at once.
    Security,
    /// The handler panicked: dead-lettered at once.
    Panic,
}

impl ErrorKind {
    /// Stable name (`Transient`, `Validation`...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "Transient",
            ErrorKind::External => "External",
            ErrorKind::Validation => "Validation",
            ErrorKind::Permanent => "Permanent",
            ErrorKind::Security => "Security",
            ErrorKind::Panic => "Panic",
        }
    }

    /// Whether this kind is retried at all.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::External)
    }
}

/// A classified handler failure: its kind, the message chain, and optionally a requested delay.
#[derive(Debug, Clone)]
pub struct HandlerError {
    kind: ErrorKind,
    chain: Vec<String>,
    retry_after: Option<Duration>,
}

impl HandlerError {
    /// A failure of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        HandlerError {
            kind,
            chain: vec![message.into()],
            retry_after: None,
        }
    }

    /// A transient failure (retried).
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    /// An external-system failure (retried).
    pub fn external(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::External, message)
    }

    /// Invalid input (dead-lettered, never retried).
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// A permanent failure (dead-lettered).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    /// A security violation (dead-lettered).
    pub fn security(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Security, message)
    }

    /// Classifies any error with its source chain.
    pub fn from_error(kind: ErrorKind, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = vec![err.to_string()];
        let mut src = err.source();
        while let Some(s) = src {
            chain.push(s.to_string());
            src = s.source();
        }
        HandlerError {
            kind,
            chain,
            retry_after: None,
        }
    }

    /// Changes the kind.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Requests a specific redelivery delay (overrides the policy's backoff; attempts still count).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Adds an outer context message (the chain reads outer → inner).
    pub fn context(mut self, message: impl Into<String>) -> Self {
        self.chain.insert(0, message.into());
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Messages, outermost first.
    pub fn chain(&self) -> &[String] {
        &self.chain
    }

    /// The requested delay, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.chain.join(": "))
    }
}

impl<E: std::error::Error + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::from_error(ErrorKind::Transient, &e)
    }
}

/// What the consumer loop does with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Acknowledge: done.
    Ack,
    /// Redeliver after the delay (a scheduled redelivery; the consumer keeps going).
    Retry {
        /// Delay.
        after: Duration,
    },
    /// Move to the dead-letter sub-queue.
    DeadLetter {
        /// Short reason code.
        reason: String,
        /// Message chain.
        description: String,
    },
}

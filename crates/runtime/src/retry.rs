//! Retry policy: how many attempts and how long between them.

use std::time::Duration;

use crate::outcome::{HandlerError, Outcome};

/// Exponential backoff with a cap. Default (SPEC §3): 5 attempts, 2 s doubling to at most
/// 2 min. Validation, permanent, security and panic failures are never retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first. Default 5.
    pub max_attempts: u32,
    /// Delay before the second attempt. Default 2 s.
    pub initial: Duration,
    /// Upper bound of any delay. Default 120 s.
    pub max: Duration,
    /// Growth factor between attempts. Default 2.0.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(2),
            max: Duration::from_secs(120),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff.
    pub fn exponential(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            initial,
            max,
            multiplier: 2.0,
        }
    }

    /// No retries: the first failure dead-letters.
    pub fn none() -> Self {
        Self::exponential(1, Duration::ZERO, Duration::ZERO)
    }

    /// Delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
        let d = self.initial.as_secs_f64() * exp;
        if !d.is_finite() || d >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(d)
        }
    }

    /// Turns a failure at delivery `attempt` (1-based) into an outcome.
    pub fn classify(&self, err: &HandlerError, attempt: u32) -> Outcome {
        let description = err.chain().join(": ");
        if !err.kind().is_retryable() {
            return Outcome::DeadLetter {
                reason: format!("{}Error", err.kind().as_str()),
                description,
            };
        }
        if attempt >= self.max_attempts {
            return Outcome::DeadLetter {
                reason: "RetriesExhausted".into(),
                description: format!(
                    "{} after {attempt} attempts: {description}",
                    err.kind().as_str()
                ),
            };
        }
        Outcome::Retry {
            after: err.requested_delay().unwrap_or_else(|| self.delay(attempt)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_backoff_is_2s_doubling_to_2min() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_secs(2));
        assert_eq!(p.delay(2), Duration::from_secs(4));
        assert_eq!(p.delay(4), Duration::from_secs(16));
        assert_eq!(p.delay(20), Duration::from_secs(120));
    }

    #[test]
    fn validation_is_never_retried() {
        let p = RetryPolicy::default();
        let o = p.classify(&HandlerError::validation("bad"), 1);
        assert!(matches!(o, Outcome::DeadLetter { ref reason, .. } if reason == "ValidationError"));
    }

    #[test]
    fn transient_retries_then_dead_letters() {
        let p = RetryPolicy::default();
        let e = HandlerError::transient("db timeout");
        assert_eq!(
            p.classify(&e, 1),
            Outcome::Retry {
                after: Duration::from_secs(2)
            }
        );
        assert!(
            matches!(p.classify(&e, 5), Outcome::DeadLetter { ref reason, .. } if reason == "RetriesExhausted")
        );
        let e = e.retry_after(Duration::from_millis(10));
        assert_eq!(
            p.classify(&e, 2),
            Outcome::Retry {
                after: Duration::from_millis(10)
            }
        );
    }
}

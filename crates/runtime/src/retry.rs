//! Retry policies: how many attempts, how long between them, per error kind.
//!
//! A retry is a *scheduled redelivery* on the transport (abandon with a delay): the consumer
//! keeps processing other messages while a failed one waits. Validation, permanent, security and
//! panic failures are never retried, whatever the policy says.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::outcome::{ErrorKind, HandlerError, Outcome};

/// How the delay grows between attempts.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// Redeliver at once.
    Immediate,
    /// The same delay every time.
    Interval(Duration),
    /// `initial × multiplier^(attempt-1)`, capped at `max`, each delay scaled by a random factor
    /// in `[1 - jitter, 1 + jitter]` (then capped again) so that many failing messages do not
    /// come back in lockstep.
    Exponential {
        /// First delay.
        initial: Duration,
        /// Cap.
        max: Duration,
        /// Growth factor.
        multiplier: f64,
        /// Relative jitter, 0.0–1.0.
        jitter: f64,
    },
}

impl Backoff {
    /// Delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        match self {
            Backoff::Immediate => Duration::ZERO,
            Backoff::Interval(d) => *d,
            Backoff::Exponential {
                initial,
                max,
                multiplier,
                jitter,
            } => {
                let exp =
                    multiplier.powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
                let mut secs = initial.as_secs_f64() * exp;
                let j = jitter.clamp(0.0, 1.0);
                if j > 0.0 {
                    secs *= 1.0 - j + 2.0 * j * unit_random();
                }
                if !secs.is_finite() || secs >= max.as_secs_f64() {
                    *max
                } else {
                    Duration::from_secs_f64(secs.max(0.0))
                }
            }
        }
    }
}

/// A uniform random number in [0, 1) from the standard library's randomly keyed hasher.
fn unit_random() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Attempts and backoff, with optional overrides per [`ErrorKind`].
///
/// Default (SPEC §3): 5 attempts, exponential from 2 s doubling to at most 2 min, 10 % jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first. Default 5.
    pub max_attempts: u32,
    /// Delay between attempts. Default exponential 2 s → 2 min, ×2, 10 % jitter.
    pub backoff: Backoff,
    /// Overrides for particular kinds (only retryable kinds are ever retried).
    pub per_kind: BTreeMap<ErrorKind, (u32, Backoff)>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff: Backoff::Exponential {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(120),
                multiplier: 2.0,
                jitter: 0.1,
            },
            per_kind: BTreeMap::new(),
        }
    }
}

impl RetryPolicy {
    /// Immediate redelivery, `max_attempts` in all.
    pub fn immediate(max_attempts: u32) -> Self {
        Self::with(max_attempts, Backoff::Immediate)
    }

    /// A fixed delay between attempts.
    pub fn interval(max_attempts: u32, delay: Duration) -> Self {
        Self::with(max_attempts, Backoff::Interval(delay))
    }

    /// Exponential backoff (×2) from `initial` capped at `max`, without jitter.
    pub fn exponential(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        Self::with(
            max_attempts,
            Backoff::Exponential {
                initial,
                max,
                multiplier: 2.0,
                jitter: 0.0,
            },
        )
    }

    /// No retries: the first failure dead-letters.
    pub fn none() -> Self {
        Self::with(1, Backoff::Immediate)
    }

    /// `max_attempts` with the given backoff.
    pub fn with(max_attempts: u32, backoff: Backoff) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            backoff,
            per_kind: BTreeMap::new(),
        }
    }

    /// Sets the jitter of an exponential backoff (ignored for the others).
    pub fn jitter(mut self, jitter: f64) -> Self {
        if let Backoff::Exponential { jitter: j, .. } = &mut self.backoff {
            *j = jitter.clamp(0.0, 1.0);
        }
        self
    }

    /// Uses `attempts` and `backoff` for failures of `kind` instead of the defaults.
    pub fn for_kind(mut self, kind: ErrorKind, attempts: u32, backoff: Backoff) -> Self {
        self.per_kind.insert(kind, (attempts.max(1), backoff));
        self
    }

    fn rule(&self, kind: ErrorKind) -> (u32, &Backoff) {
        match self.per_kind.get(&kind) {
            Some((a, b)) => (*a, b),
            None => (self.max_attempts, &self.backoff),
        }
    }

    /// Delay after failed attempt `attempt` (1-based) of a failure of `kind`.
    pub fn delay(&self, kind: ErrorKind, attempt: u32) -> Duration {
        self.rule(kind).1.delay(attempt)
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
        let (max_attempts, backoff) = self.rule(err.kind());
        if attempt >= max_attempts {
            return Outcome::DeadLetter {
                reason: "RetriesExhausted".into(),
                description: format!(
                    "{} after {attempt} attempts: {description}",
                    err.kind().as_str()
                ),
            };
        }
        Outcome::Retry {
            after: err
                .requested_delay()
                .unwrap_or_else(|| backoff.delay(attempt)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn default_backoff_is_2s_doubling_to_2min_with_jitter() {
        let p = RetryPolicy::default();
        for (attempt, nominal) in [(1u32, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)] {
            for _ in 0..50 {
                let d = secs(p.delay(ErrorKind::Transient, attempt));
                assert!(
                    d >= nominal * 0.9 - 1e-9 && d <= nominal * 1.1 + 1e-9,
                    "{attempt}: {d}"
                );
            }
        }
        assert_eq!(p.delay(ErrorKind::Transient, 20), Duration::from_secs(120));
        // Jitter really varies.
        let samples: std::collections::BTreeSet<u128> = (0..20)
            .map(|_| p.delay(ErrorKind::Transient, 3).as_micros())
            .collect();
        assert!(samples.len() > 5);
    }

    #[test]
    fn immediate_and_interval() {
        assert_eq!(
            RetryPolicy::immediate(3).delay(ErrorKind::Transient, 2),
            Duration::ZERO
        );
        let p = RetryPolicy::interval(3, Duration::from_millis(250));
        assert_eq!(p.delay(ErrorKind::Transient, 1), Duration::from_millis(250));
        assert_eq!(p.delay(ErrorKind::Transient, 2), Duration::from_millis(250));
    }

    #[test]
    fn validation_is_never_retried() {
        let p = RetryPolicy::immediate(10).for_kind(ErrorKind::Validation, 10, Backoff::Immediate);
        let o = p.classify(&HandlerError::validation("bad"), 1);
        assert!(matches!(o, Outcome::DeadLetter { ref reason, .. } if reason == "ValidationError"));
    }

    #[test]
    fn transient_retries_then_dead_letters() {
        let p = RetryPolicy::exponential(5, Duration::from_secs(2), Duration::from_secs(120));
        let e = HandlerError::transient("db timeout");
        assert_eq!(
            p.classify(&e, 1),
            Outcome::Retry {
                after: Duration::from_secs(2)
            }
        );
        assert_eq!(
            p.classify(&e, 2),
            Outcome::Retry {
                after: Duration::from_secs(4)
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

    #[test]
    fn per_kind_overrides() {
        let p = RetryPolicy::immediate(2).for_kind(
            ErrorKind::External,
            4,
            Backoff::Interval(Duration::from_secs(30)),
        );
        let ext = HandlerError::external("gateway down");
        assert_eq!(
            p.classify(&ext, 3),
            Outcome::Retry {
                after: Duration::from_secs(30)
            }
        );
        assert!(matches!(p.classify(&ext, 4), Outcome::DeadLetter { .. }));
        let tr = HandlerError::transient("deadlock");
        assert_eq!(
            p.classify(&tr, 1),
            Outcome::Retry {
                after: Duration::ZERO
            }
        );
        assert!(matches!(p.classify(&tr, 2), Outcome::DeadLetter { .. }));
    }
}

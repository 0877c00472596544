//! Circuit breaker for external-system failures.
//!
//! After `failure_threshold` consecutive [`ErrorKind::External`] failures, the breaker *opens*:
//! the consumer stops taking messages from its subscription for `open_for` (they stay queued —
//! no attempts are burnt against a system known to be down). Then it is *half-open*: one message
//! at a time is let through; a success closes the breaker, another external failure opens it
//! again. Other outcomes (success, non-external failures) reset the count.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::outcome::ErrorKind;

/// Circuit breaker settings. Every field documents its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreakerConfig {
    /// Consecutive external failures that open the circuit. Default 5.
    pub failure_threshold: u32,
    /// How long the circuit stays open before a trial. Default 30 s.
    pub open_for: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// The breaker's state, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BreakerState {
    /// Messages flow.
    Closed,
    /// No messages are taken until the trial time.
    Open,
    /// One trial message at a time.
    HalfOpen,
}

/// What the consumer may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Take as many as there is room for.
    Flow,
    /// Take exactly one (the half-open trial).
    Trial,
    /// Take nothing for this long.
    Wait(Duration),
}

#[derive(Debug)]
struct State {
    consecutive: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
    opened: u64,
}

/// A circuit breaker shared by one consumer's handler tasks.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: Mutex::new(State {
                consecutive: 0,
                open_until: None,
                trial_in_flight: false,
                opened: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        let s = self.lock();
        match s.open_until {
            None => BreakerState::Closed,
            Some(t) if Instant::now() < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// How many times it opened.
    pub fn times_opened(&self) -> u64 {
        self.lock().opened
    }

    pub(crate) fn permit(&self) -> Permit {
        let mut s = self.lock();
        match s.open_until {
            None => Permit::Flow,
            Some(t) => {
                let now = Instant::now();
                if now < t {
                    Permit::Wait(t - now)
                } else if s.trial_in_flight {
                    Permit::Wait(Duration::from_millis(20))
                } else {
                    s.trial_in_flight = true;
                    Permit::Trial
                }
            }
        }
    }

    /// A trial slot that was not used (nothing to receive) is given back.
    pub(crate) fn cancel_trial(&self) {
        self.lock().trial_in_flight = false;
    }

    /// Records a handler outcome: `None` for success, else the failure's kind.
    pub(crate) fn record(&self, failure: Option<ErrorKind>) {
        let mut s = self.lock();
        s.trial_in_flight = false;
        if failure == Some(ErrorKind::External) {
            s.consecutive += 1;
            let half_open = s.open_until.is_some_and(|t| Instant::now() >= t);
            if half_open || s.consecutive >= self.config.failure_threshold {
                s.open_until = Some(Instant::now() + self.config.open_for);
                s.opened += 1;
                tracing::warn!(
                    consecutive = s.consecutive,
                    open_for = ?self.config.open_for,
                    "circuit opened after external-system failures"
                );
            }
        } else {
            s.consecutive = 0;
            if s.open_until.is_some_and(|t| Instant::now() >= t) {
                s.open_until = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_half_opens_and_closes() {
        let b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(50),
        });
        b.record(Some(ErrorKind::External));
        b.record(Some(ErrorKind::Transient)); // resets
        b.record(Some(ErrorKind::External));
        b.record(Some(ErrorKind::External));
        assert_eq!(b.permit(), Permit::Flow);
        b.record(Some(ErrorKind::External));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.permit(), Permit::Wait(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.permit(), Permit::Trial);
        assert!(matches!(b.permit(), Permit::Wait(_)), "one trial at a time");
        b.record(Some(ErrorKind::External)); // trial failed: open again
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.times_opened(), 2);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.permit(), Permit::Trial);
        b.record(None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.permit(), Permit::Flow);
    }
}

//! Delays: scheduled delivery (`deliver_at`) and delayed redelivery (`abandon(after)`).
//!
//! A delayed message is published to the shared delay exchange (headers) with the header
//! [`DELAY`](crate::headers::DELAY) = its delay bucket and routing key = its target (a topic
//! exchange or a subscription queue). The exchange routes it to the delay queue of that bucket:
//! a classic queue with a queue-wide `x-message-ttl` (one TTL per queue, so no head-of-line
//! blocking) that dead-letters expired messages to the route exchange, which routes them by
//! their routing key to the target. Delay queues are shared by all topics and subscriptions of
//! a prefix and expire (`x-expires`) when unused.
//!
//! Delays are rounded *up* to two significant digits (at most 10% later; delays such as 300 ms,
//! 5 s or 1 h are exact), which bounds the number of delay queues. Delays beyond
//! [`MAX_DELAY_MS`] take several hops: every delayed message carries its
//! [`NOT_BEFORE`](crate::headers::NOT_BEFORE) time and a receiver re-delays a message that
//! arrives early.

/// Longest single delay (about 24.8 days; TTL and `x-expires` must fit in 32 bits).
pub(crate) const MAX_DELAY_MS: u64 = (1 << 31) - 1;

/// The delay queue bucket for a delay of `ms` milliseconds: `ms` rounded up to two significant
/// digits, at least 1 and at most [`MAX_DELAY_MS`].
pub(crate) fn bucket(ms: u64) -> u64 {
    let ms = ms.clamp(1, MAX_DELAY_MS);
    if ms < 100 {
        return ms;
    }
    let mut step = 1u64;
    while ms / step >= 100 {
        step *= 10;
    }
    ms.div_ceil(step).saturating_mul(step).min(MAX_DELAY_MS)
}

/// Milliseconds from now until `at_ms`, rounded up; 0 when it has passed.
pub(crate) fn remaining_ms(at_ms: i64, now_ms: i64) -> u64 {
    u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_to_two_significant_digits() {
        for (ms, expected) in [
            (0, 1),
            (1, 1),
            (99, 99),
            (100, 100),
            (101, 110),
            (300, 300),
            (398, 400),
            (399, 400),
            (1234, 1300),
            (3000, 3000),
            (3_599_987, 3_600_000),
            (u64::MAX, MAX_DELAY_MS),
        ] {
            assert_eq!(bucket(ms), expected, "bucket({ms})");
        }
        for ms in (1..100_000).step_by(7) {
            let b = bucket(ms);
            assert!(b >= ms && b * 10 <= ms * 11 + 10, "bucket({ms}) = {b}");
        }
    }

    #[test]
    fn remaining() {
        assert_eq!(remaining_ms(1_000, 400), 600);
        assert_eq!(remaining_ms(400, 1_000), 0);
    }
}

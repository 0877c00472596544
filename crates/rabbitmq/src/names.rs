//! Exchange and queue names.
//!
//! Topic and subscription names may contain `.`, so the subscription's parts are joined with
//! `:` (which names cannot contain): `<prefix>.<topic>:<subscription>` can never collide for two
//! different (topic, subscription) pairs, nor with another subscription's `:dlq`. AMQP limits
//! names to 255 bytes; a subscription whose name would exceed 200 bytes gets a shortened,
//! hash-suffixed name instead (stable: the same pair always maps to the same name).

use sha2::{Digest, Sha256};

/// Longest subscription base name used verbatim; longer ones are shortened and hashed.
const MAX_BASE: usize = 200;
/// How much of the topic and of the subscription a shortened name keeps.
const KEEP: usize = 64;

/// The topic's headers exchange: `<prefix>.<topic>` (at most 233 bytes).
pub(crate) fn topic_exchange(prefix: &str, topic: &str) -> String {
    format!("{prefix}.{topic}")
}

/// The shared direct exchange that delay queues dead-letter into; every subscription queue and
/// topic exchange is bound to it under its own name.
pub(crate) fn route_exchange(prefix: &str) -> String {
    format!("{prefix}:route")
}

/// The shared headers exchange routing delayed messages to their delay queue.
pub(crate) fn delay_exchange(prefix: &str) -> String {
    format!("{prefix}:delay")
}

/// The shared delay queue for one delay.
pub(crate) fn delay_queue(prefix: &str, delay_ms: u64) -> String {
    format!("{prefix}:delay:{delay_ms}")
}

/// The queues of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubscriptionNames {
    /// The topic's exchange.
    pub exchange: String,
    /// Main queue.
    pub main: String,
    /// Dead-letter sub-queue.
    pub dlq: String,
    /// Holds the subscription's settings (one message).
    pub meta: String,
}

impl SubscriptionNames {
    /// Names for `topic`/`subscription` (both already checked with `check_name`).
    pub(crate) fn new(prefix: &str, topic: &str, subscription: &str) -> Self {
        let mut base = format!("{prefix}.{topic}:{subscription}");
        if base.len() > MAX_BASE {
            let mut hasher = Sha256::new();
            hasher.update(topic.as_bytes());
            hasher.update([0]);
            hasher.update(subscription.as_bytes());
            let digest = hasher.finalize();
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            // Names are ASCII, so byte slicing is safe.
            let t = &topic[..topic.len().min(KEEP)];
            let s = &subscription[..subscription.len().min(KEEP)];
            base = format!("{prefix}.{t}:{s}:{hex}");
        }
        SubscriptionNames {
            exchange: topic_exchange(prefix, topic),
            dlq: format!("{base}:dlq"),
            meta: format!("{base}:meta"),
            main: base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names() {
        let n = SubscriptionNames::new("eventyard", "orders", "billing");
        assert_eq!(n.exchange, "eventyard.orders");
        assert_eq!(n.main, "eventyard.orders:billing");
        assert_eq!(n.dlq, "eventyard.orders:billing:dlq");
        assert_eq!(n.meta, "eventyard.orders:billing:meta");
    }

    #[test]
    fn dotted_names_do_not_collide() {
        let a = SubscriptionNames::new("p", "a.b", "c");
        let b = SubscriptionNames::new("p", "a", "b.c");
        assert_ne!(a.main, b.main);
        let dlq_of_x = SubscriptionNames::new("p", "t", "x").dlq;
        let sub_named_dlq = SubscriptionNames::new("p", "t", "x.dlq").main;
        assert_ne!(dlq_of_x, sub_named_dlq);
    }

    #[test]
    fn long_names_fit_and_are_stable() {
        let topic = "t".repeat(200);
        let sub1 = format!("{}1", "s".repeat(199));
        let sub2 = format!("{}2", "s".repeat(199));
        let a = SubscriptionNames::new("a-32-character-prefix-xxxxxxxxxx", &topic, &sub1);
        let b = SubscriptionNames::new("a-32-character-prefix-xxxxxxxxxx", &topic, &sub2);
        assert_ne!(a.main, b.main);
        for n in [&a.main, &a.dlq, &a.meta, &a.exchange] {
            assert!(n.len() <= 255, "{} bytes: {n}", n.len());
        }
        assert_eq!(
            a,
            SubscriptionNames::new("a-32-character-prefix-xxxxxxxxxx", &topic, &sub1)
        );
    }
}

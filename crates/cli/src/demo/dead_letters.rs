//! Step 6's poison message: finding it in the dead-letter queue and replaying it after the fix.
//!
//! On the embedded broker the demo uses the data file's DLQ operations (`sqlite::dlq`: listing
//! with fingerprint and attempts, a replay back into the one subscription, audited). On any
//! other transport it uses only what the transport contract offers: a receiver on the
//! subscription's dead-letter sub-queue, and a re-publish of the same body (same eventId) with
//! `cs-replayed` to the topic, then the dead letter is acknowledged. The contract has no way to
//! put a message back into one subscription, so the re-published copy also reaches the topic's
//! other subscriptions of that tenant (here the lineage observer, which ignores a copy of an
//! event it already saw).

use std::time::Duration;

use anyhow::bail;
use eventyard::properties::names;
use eventyard::sqlite::SqliteBroker;
use eventyard::sqlite::dlq::{self, DlqQuery, ReplayOptions, prop};
use eventyard::{Delivery, Message, PropertyValue, SubQueue, Transport};
use tokio::time::Instant;

/// A dead-lettered message waiting for its replay.
pub enum Poisoned {
    /// In the data file's dead-letter queue.
    Embedded {
        /// The query that finds it.
        query: DlqQuery,
    },
    /// Received (and locked) from the transport's dead-letter sub-queue.
    Received {
        /// The topic to re-publish to.
        topic: String,
        /// The locked dead letter.
        delivery: Box<Delivery>,
    },
}

/// What was found, for the progress line and the summary.
pub struct Found {
    /// The dead letter.
    pub poisoned: Poisoned,
    /// Its dead-letter reason.
    pub reason: String,
    /// A line describing it.
    pub line: String,
}

/// Waits until the dead-letter queue of `topic`/`subscription` holds a message (until
/// `deadline`).
pub async fn wait(
    embedded: Option<&SqliteBroker>,
    transport: &dyn Transport,
    topic: &str,
    subscription: &str,
    deadline: Instant,
) -> anyhow::Result<Found> {
    if let Some(broker) = embedded {
        let query = DlqQuery::new().subscription(subscription.to_owned());
        loop {
            if let Some(e) = dlq::list(broker, &query).await?.into_iter().next() {
                return Ok(Found {
                    line: format!(
                        "seq {} reason {} fingerprint {} after {} attempt(s): {}",
                        e.seq,
                        e.reason,
                        e.fingerprint,
                        e.attempts.unwrap_or(0),
                        e.description
                    ),
                    reason: e.reason,
                    poisoned: Poisoned::Embedded { query },
                });
            }
            if Instant::now() >= deadline {
                bail!("the poison message never reached the dead-letter queue of {subscription}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut receiver = transport
        .receiver(topic, subscription, SubQueue::DeadLetter)
        .await?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the poison message never reached the dead-letter queue of {subscription}");
        }
        let got = receiver
            .receive(1, left.min(Duration::from_millis(500)))
            .await?;
        if let Some(d) = got.into_iter().next() {
            let p = &d.message.properties;
            let text = |n: &str| p.get(n).map(|v| v.to_string()).unwrap_or_default();
            let reason = text(names::DEAD_LETTER_REASON);
            return Ok(Found {
                line: format!(
                    "received through the transport's dead-letter receiver: reason {reason} after {} delivery(ies): {}",
                    d.delivery_count.max(1),
                    text(names::DEAD_LETTER_DESCRIPTION)
                ),
                reason,
                poisoned: Poisoned::Received {
                    topic: topic.to_owned(),
                    delivery: Box::new(d),
                },
            });
        }
    }
}

impl Poisoned {
    /// Replays it; returns a line describing what was done.
    pub async fn replay(
        self,
        embedded: Option<&SqliteBroker>,
        transport: &dyn Transport,
    ) -> anyhow::Result<String> {
        match self {
            Poisoned::Embedded { query } => {
                let Some(broker) = embedded else {
                    bail!("internal: an embedded dead letter without its data file");
                };
                let r = dlq::replay(
                    broker,
                    &query,
                    ReplayOptions {
                        actor: Some("yard-demo".into()),
                        ..Default::default()
                    },
                )
                .await?;
                Ok(format!(
                    "replayed {} of {} dead letter(s) (same eventId, marked cs-replayed; audit #{})",
                    r.replayed, r.matched, r.audit_id
                ))
            }
            Poisoned::Received { topic, delivery } => {
                let mut p = delivery.message.properties.clone();
                let count = match p.get(prop::REPLAY_COUNT) {
                    Some(PropertyValue::Int(n)) => n + 1,
                    _ => 1,
                };
                for (from, to) in [
                    (names::DEAD_LETTER_REASON, prop::LAST_DEAD_LETTER_REASON),
                    (
                        names::DEAD_LETTER_DESCRIPTION,
                        prop::LAST_DEAD_LETTER_DESCRIPTION,
                    ),
                    (names::DEAD_LETTER_SOURCE, prop::LAST_DEAD_LETTER_SOURCE),
                ] {
                    if let Some(v) = p.remove(from) {
                        p.insert(to, v);
                    }
                }
                p.insert(names::REPLAYED, true);
                p.insert(prop::REPLAY_COUNT, count);
                p.insert(prop::REPLAYED_BY, "yard-demo");
                p.insert(prop::REPLAYED_AT, chrono::Utc::now().to_rfc3339());
                let copy = Message {
                    body: delivery.message.body.clone(),
                    properties: p,
                };
                // Published (durable) before the dead letter is removed: at least once.
                transport.publish(&topic, vec![copy.into()]).await?;
                delivery.ack().await?;
                Ok(format!(
                    "replayed 1 of 1 dead letter(s) by re-publishing it to topic {topic} (same eventId, marked cs-replayed), then acknowledging the dead letter"
                ))
            }
        }
    }
}

//! Settling deliveries: ack, NAK (with delay), dead-lettering, `LockLost`, release on drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{HeaderMap, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use eventyard_core::properties::names;
use eventyard_core::{DeadLetterInfo, Settle, Settlement, SubQueue, TransportError};
use tokio::time::Instant;

use crate::error::backend;
use crate::headers::{
    self, DEAD_LETTER_CONTEXT_HEADER, DEAD_LETTER_SEQUENCE_HEADER, DEAD_LETTER_TIME_HEADER,
};
use crate::publish::{Prepared, publish_one};
use crate::transport::Shared;

/// Longest dead-letter description kept (bytes).
const MAX_DESCRIPTION: usize = 4 * 1024;
/// Longest dead-letter context kept (bytes of JSON); a longer one is replaced by a note.
const MAX_CONTEXT: usize = 8 * 1024;

/// What settlements need to know about the queue a delivery came from (one per receiver).
pub(crate) struct Origin {
    pub topic: String,
    pub subscription: String,
    pub queue: SubQueue,
    /// Where dead-lettered messages of the subscription go.
    pub dead_letter_subject: String,
}

/// The server-side identity of one delivery.
pub(crate) struct Locked {
    /// The ack subject (`$JS.ACK...`) of this delivery.
    pub reply: Subject,
    /// Stream sequence.
    pub sequence: u64,
    /// Local time after which the server may already have redelivered the message.
    pub deadline: Instant,
    /// Set by the receiver when a later delivery of the same message reached it: the server
    /// redelivered it, whatever this delivery's local deadline says (a delivery received late,
    /// on a loaded machine, has a deadline later than the server's).
    pub superseded: Arc<AtomicBool>,
}

impl Locked {
    /// True once this delivery can no longer be settled.
    pub fn lost(&self) -> bool {
        Instant::now() >= self.deadline || self.superseded.load(Ordering::Acquire)
    }
}

/// A message as received, kept for dead-lettering.
pub(crate) struct Original {
    pub headers: Option<HeaderMap>,
    pub body: Bytes,
}

/// Payload of a release: NAK, with a delay when one is asked for.
fn nak(after: Duration) -> Bytes {
    if after.is_zero() {
        Bytes::from_static(b"-NAK")
    } else {
        Bytes::from(format!("-NAK {{\"delay\":{}}}", crate::api::nanos(after)))
    }
}

/// Copies a message to the subscription's dead-letter sub-queue with the dead-letter properties
/// and context, and waits until the server stored it.
pub(crate) async fn copy_to_dead_letter(
    shared: &Shared,
    origin: &Origin,
    sequence: u64,
    original: &Original,
    info: &DeadLetterInfo,
) -> Result<(), TransportError> {
    let mut props = headers::decode(original.headers.as_ref());
    props.insert(names::DEAD_LETTER_REASON, info.reason.as_str());
    props.insert(
        names::DEAD_LETTER_DESCRIPTION,
        truncate(&info.description, MAX_DESCRIPTION),
    );
    props.insert(names::DEAD_LETTER_SOURCE, origin.subscription.as_str());
    let mut h = HeaderMap::new();
    headers::encode(&props, &mut h);
    if !info.context.is_null() {
        let context = info.context.to_string();
        let context = if context.len() <= MAX_CONTEXT {
            context
        } else {
            serde_json::json!({ "omitted": format!("context of {} bytes", context.len()) })
                .to_string()
        };
        h.insert(DEAD_LETTER_CONTEXT_HEADER, context);
    }
    h.insert(
        DEAD_LETTER_TIME_HEADER,
        Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    h.insert(DEAD_LETTER_SEQUENCE_HEADER, sequence.to_string());
    // Idempotent: a dead-lettering retried after an unclear failure is stored once.
    let queue = match origin.queue {
        SubQueue::Main => "main",
        SubQueue::DeadLetter => "dlq",
    };
    h.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{}~{queue}~{sequence}", origin.subscription),
    );
    let stored = publish_one(
        shared,
        Prepared {
            subject: origin.dead_letter_subject.as_str().into(),
            headers: h,
            body: original.body.clone(),
        },
    )
    .await?;
    if stored {
        Ok(())
    } else {
        Err(backend(format!(
            "the dead-letter stream of `{}` is missing; declare the subscription again",
            origin.topic
        )))
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Settlement of one delivery.
pub(crate) struct NatsSettle {
    pub shared: Arc<Shared>,
    pub origin: Arc<Origin>,
    pub locked: Locked,
    pub original: Original,
    pub settled: bool,
}

impl NatsSettle {
    fn lock_lost(&self) -> TransportError {
        TransportError::LockLost {
            subscription: self.origin.subscription.clone(),
            sequence: self.locked.sequence,
        }
    }
}

#[async_trait]
impl Settle for NatsSettle {
    async fn settle(mut self: Box<Self>, settlement: Settlement) -> Result<(), TransportError> {
        self.settled = true;
        self.shared.check_open()?;
        // JetStream accepts an ack from a delivery whose ack wait has passed (even if the
        // message went to another consumer meanwhile), so the lock is enforced here: past its
        // deadline a delivery can no longer be settled, and the message is (or will be)
        // delivered again.
        if self.locked.lost() {
            return Err(self.lock_lost());
        }
        let reply = self.locked.reply.clone();
        match settlement {
            Settlement::Ack => {
                self.shared
                    .settle_request(reply, Bytes::from_static(b"+ACK"), "ack")
                    .await
            }
            Settlement::Abandon { after } => {
                self.shared
                    .settle_request(reply, nak(after), "abandon")
                    .await
            }
            Settlement::DeadLetter(info) => {
                // Boxed: the rare path's future would otherwise size every settlement's
                // (1,944 bytes instead of 1,480; the rest is async-nats's request future).
                Box::pin(copy_to_dead_letter(
                    &self.shared,
                    &self.origin,
                    self.locked.sequence,
                    &self.original,
                    &info,
                ))
                .await?;
                if self.locked.lost() {
                    // The copy is stored, but the original may have been redelivered meanwhile.
                    return Err(self.lock_lost());
                }
                self.shared
                    .settle_request(reply, Bytes::from_static(b"+ACK"), "dead-letter")
                    .await
            }
        }
    }
}

impl Drop for NatsSettle {
    fn drop(&mut self) {
        // Release an unsettled delivery at once (not at lock expiry). After the deadline the
        // message may already be with another consumer: leave it alone.
        if self.settled || self.shared.is_closed() || self.locked.lost() {
            return;
        }
        release(&self.shared, self.locked.reply.clone());
    }
}

/// NAKs a delivery in the background (from `Drop`).
pub(crate) fn release(shared: &Arc<Shared>, reply: Subject) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let client = shared.client.clone();
    runtime.spawn(async move {
        if let Err(e) = client.publish(reply, Bytes::from_static(b"-NAK")).await {
            tracing::debug!("nats: release of a dropped delivery failed: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nak_payloads() {
        assert_eq!(nak(Duration::ZERO), Bytes::from_static(b"-NAK"));
        assert_eq!(
            nak(Duration::from_millis(300)),
            Bytes::from_static(b"-NAK {\"delay\":300000000}")
        );
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("short", 10), "short");
    }
}

//! Scheduled delivery on a server without it: the schedule stream and the pump that moves due
//! messages onto the topic.
//!
//! A message published with `deliver_at` in the future goes to the topic's schedule stream
//! (`<prefix>.s.<topic>`, work-queue retention) with its delivery time and its topic subject in
//! headers. While a transport has a receiver open on a topic's main queue it runs that topic's
//! pump: a puller on the schedule stream's `scheduler` consumer that NAKs each not-yet-due message
//! with a delay of exactly the remaining time (NAK delay, server 2.7+), and, once a message is
//! due, publishes it to its topic subject (idempotently, `Nats-Msg-Id` = schedule stream and
//! sequence) and then acknowledges it. Pumps of several processes compete on the same consumer,
//! so each message is moved once.
//!
//! Consequences: a scheduled message enters the topic (and its subscriptions, through their
//! filters) when it is due, so its delivery count starts at 1 like any other; it is moved only
//! while some process receives from the topic (when nobody does, nobody would get it anyway, and
//! it is moved as soon as a receiver opens); the time check uses the mover's clock.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message as NatsMessage, StatusCode};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::headers::{DELIVER_AT_HEADER, TARGET_HEADER};
use crate::publish::{Prepared, publish_one};
use crate::subjects::SCHEDULER;
use crate::transport::Shared;

/// Messages asked for per pull request.
const BATCH: usize = 64;
/// Server-side wait of one pull request.
const POLL: Duration = Duration::from_secs(5);
/// Pause after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

/// A running pump; stopped when the last receiver holding it is dropped, or by `stop`.
pub(crate) struct Pump {
    task: JoinHandle<()>,
}

impl Pump {
    /// Starts the pump of `topic`.
    pub(crate) fn start(shared: Arc<Shared>, topic: String) -> Self {
        Pump {
            task: tokio::spawn(run(shared, topic)),
        }
    }

    /// Stops it.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(shared: Arc<Shared>, topic: String) {
    let stream = shared.names.schedule_stream(&topic);
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{SCHEDULER}");
    let inbox = shared.client.new_inbox();
    let mut sub = match shared.client.subscribe(format!("{inbox}.*")).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!("nats: scheduler of `{topic}` cannot subscribe: {e}");
            return;
        }
    };
    let request =
        Bytes::from(json!({ "batch": BATCH, "expires": crate::api::nanos(POLL) }).to_string());
    let mut token = 0u64;
    while !shared.is_closed() {
        shared.maybe_trim(&topic);
        token += 1;
        let reply = format!("{inbox}.{token}");
        if let Err(e) = shared
            .client
            .publish_with_reply(next.clone(), reply.clone(), request.clone())
            .await
        {
            tracing::debug!("nats: scheduler pull failed: {e}");
            tokio::time::sleep(BACKOFF).await;
            continue;
        }
        let gone_at = Instant::now() + POLL + Duration::from_secs(1);
        let mut received = 0;
        let mut answered = false;
        while received < BATCH {
            let message = match tokio::time::timeout_at(gone_at, sub.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(_) => break,
            };
            answered = true;
            match message.status {
                None | Some(StatusCode::OK) => {
                    received += 1;
                    move_or_delay(&shared, &topic, &stream, message).await;
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // This request ended (timeout, no messages) or an earlier one did.
                Some(_) if message.subject.as_str() == reply => break,
                Some(_) => {}
            }
        }
        if !answered {
            // No answer at all: the consumer is gone or the server is restarting.
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// Moves a due message to its topic subject, or puts it back until it is due.
async fn move_or_delay(shared: &Shared, topic: &str, stream: &str, message: NatsMessage) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let ack = |payload: Bytes| {
        let reply = reply.clone();
        async move {
            if let Err(e) = shared.settle_request(reply, payload, "scheduler ack").await {
                tracing::debug!("nats: {e}");
            }
        }
    };
    let headers = message.headers.unwrap_or_default();
    let deliver_at = headers
        .get(DELIVER_AT_HEADER)
        .and_then(|v| v.as_str().parse::<i64>().ok());
    let target = headers.get(TARGET_HEADER).map(|v| v.as_str().to_owned());
    let (Some(deliver_at), Some(target)) = (deliver_at, target) else {
        tracing::warn!("nats: dropping a malformed scheduled message from {stream}");
        ack(Bytes::from_static(b"+ACK")).await;
        return;
    };
    let now = Utc::now().timestamp_micros();
    if deliver_at > now {
        let delay = Duration::from_micros(u64::try_from(deliver_at - now).unwrap_or(0));
        let nak = format!("-NAK {{\"delay\":{}}}", crate::api::nanos(delay));
        ack(Bytes::from(nak)).await;
        return;
    }
    let sequence = crate::receive::parse_ack_subject(reply.as_str())
        .map(|a| a.stream_sequence)
        .unwrap_or_default();
    let mut out = HeaderMap::new();
    for (name, values) in headers.iter() {
        let n: &str = name.as_ref();
        if n == DELIVER_AT_HEADER || n == TARGET_HEADER || n == "Nats-Msg-Id" {
            continue;
        }
        for v in values {
            out.append(name.clone(), v.clone());
        }
    }
    out.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{stream}~{sequence}"),
    );
    let moved = publish_one(
        shared,
        Prepared {
            subject: target.into(),
            headers: out,
            body: message.payload,
        },
    )
    .await;
    let moved = match moved {
        // No stream took it: discard only if the topic really has no stream (no subscription
        // wants it, as at publish), not while JetStream is restarting.
        Ok(false) => match shared
            .api
            .stream_exists(&shared.names.topic_stream(topic))
            .await
        {
            Ok(false) => Ok(()),
            Ok(true) => Err(crate::error::unavailable(
                "no stream answered; JetStream not ready?",
            )),
            Err(e) => Err(e),
        },
        Ok(true) => Ok(()),
        Err(e) => Err(e),
    };
    match moved {
        Ok(()) => ack(Bytes::from_static(b"+ACK")).await,
        Err(e) => {
            tracing::warn!("nats: moving a due scheduled message failed: {e}; retrying");
            ack(Bytes::from(format!(
                "-NAK {{\"delay\":{}}}",
                crate::api::nanos(BACKOFF)
            )))
            .await;
        }
    }
}

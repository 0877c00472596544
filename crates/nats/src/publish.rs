//! Publishing: headers, size checks, a window of publish acknowledgements, scheduled messages.

use std::future::IntoFuture;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use chrono::Utc;
use eventyard_core::properties::names;
use eventyard_core::transport::check_name;
use eventyard_core::{OutgoingMessage, Properties, PropertyValue, TransportError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::error::{publish_error, unavailable};
use crate::headers::{self, DELIVER_AT_HEADER, TARGET_HEADER};
use crate::transport::Shared;

/// A message ready to go: subject, headers, body.
pub(crate) struct Prepared {
    pub subject: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The `Nats-Msg-Id` of a message: its event id, so that a publish retried after an unclear
/// failure is stored once (within the stream's two-minute duplicate window). A re-driven message
/// (`cs-replayed`) gets a distinct id, or it would be dropped as a duplicate of the original.
pub(crate) fn message_id(props: &Properties) -> Option<String> {
    let id = props.get_str(names::EVENT_ID)?;
    Some(match props.get(names::REPLAYED) {
        Some(replayed) => format!("{id}~replayed~{replayed}"),
        None => id.to_owned(),
    })
}

/// The subject of the previous message of a batch, reused while tenant and event type repeat
/// (a batch has one topic, and usually one tenant and event type).
#[derive(Default)]
struct LastSubject {
    last: Option<(Option<PropertyValue>, Option<PropertyValue>, String)>,
}

impl LastSubject {
    /// The subject of a message of `topic` with `props`; kept for the next when `more`
    /// messages follow.
    fn subject(&mut self, shared: &Shared, topic: &str, props: &Properties, more: bool) -> String {
        let tenant = props.get(names::TENANT_ID);
        let event_type = props.get(names::EVENT_TYPE);
        if let Some((t, e, subject)) = &self.last
            && t.as_ref() == tenant
            && e.as_ref() == event_type
        {
            return subject.clone();
        }
        let subject = shared.names.message_subject(topic, props);
        if more {
            self.last = Some((tenant.cloned(), event_type.cloned(), subject.clone()));
        }
        subject
    }
}

/// A message of the batch and its headers (without the message id), from which the headers of
/// the next messages are made when they differ only in a few string values (see
/// [`headers::reencode`]).
#[derive(Default)]
struct BaseHeaders {
    base: Option<(Properties, HeaderMap)>,
    /// Bases made so far; a batch whose messages keep differing (mixed tenants, say) stops
    /// paying for the copies a base takes.
    made: u8,
}

/// At most this many bases per batch.
const MAX_BASES: u8 = 4;

impl BaseHeaders {
    /// The headers carrying `props`; a message that cannot be made from the base becomes it
    /// when `more` messages follow.
    fn headers(&mut self, props: &Properties, more: bool) -> HeaderMap {
        if let Some((base, base_headers)) = &self.base
            && let Some(headers) = headers::reencode(base, base_headers, props)
        {
            return headers;
        }
        let mut headers = headers::message_map();
        headers::encode(props, &mut headers);
        if more && self.made < MAX_BASES {
            self.made += 1;
            self.base = Some((props.clone(), headers.clone()));
        }
        headers
    }
}

/// Checks sizes and builds every message of the batch before anything is sent, so that a batch
/// with an oversized message publishes nothing.
fn prepare(
    shared: &Shared,
    topic: &str,
    messages: Vec<OutgoingMessage>,
) -> Result<Vec<Prepared>, TransportError> {
    let now_us = Utc::now().timestamp_micros();
    let mut prepared = Vec::with_capacity(messages.len());
    let mut subjects = LastSubject::default();
    let mut base = BaseHeaders::default();
    let count = messages.len();
    for (i, outgoing) in messages.into_iter().enumerate() {
        let OutgoingMessage {
            message,
            deliver_at,
        } = outgoing;
        if message.body.len() > shared.max_message_size {
            return Err(TransportError::MessageTooLarge {
                size: message.body.len(),
                max: shared.max_message_size,
            });
        }
        let more = i + 1 < count;
        let mut subject = subjects.subject(shared, topic, &message.properties, more);
        let mut headers = base.headers(&message.properties, more);
        if let Some(id) = message_id(&message.properties) {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        if let Some(at) = deliver_at.map(|t| t.timestamp_micros())
            && at > now_us
        {
            headers.insert(DELIVER_AT_HEADER, at.to_string());
            headers.insert(TARGET_HEADER, subject);
            subject = shared.names.schedule_subject(topic);
        }
        let wire = headers::wire_len(&headers) + message.body.len();
        if wire > shared.max_wire_size {
            return Err(TransportError::MessageTooLarge {
                size: wire,
                max: shared.max_wire_size,
            });
        }
        prepared.push(Prepared {
            subject,
            headers,
            body: message.body,
        });
    }
    Ok(prepared)
}

/// Publishes within the transport's publish window (shared by concurrent calls); returns once
/// every message of this call is acknowledged by the server, or with the first failure (after
/// the rest settled).
pub(crate) async fn publish(
    shared: &Shared,
    topic: &str,
    messages: Vec<OutgoingMessage>,
) -> Result<(), TransportError> {
    shared.check_open()?;
    check_name("topic", topic)?;
    if messages.is_empty() {
        return Ok(());
    }
    let prepared = prepare(shared, topic, messages)?;
    let outcome = send_all(shared, prepared).await;
    match outcome {
        Outcome::Ok => Ok(()),
        Outcome::Failed(e) => Err(e),
        Outcome::NoStream => {
            // No stream took the subject. Either nobody ever subscribed to the topic (then the
            // message matches no subscription and is discarded, as the contract says), or
            // JetStream is not ready (restarting): only a definite "stream not found" may
            // discard.
            let stream = shared.names.topic_stream(topic);
            if shared.api.stream_exists(&stream).await? {
                Err(unavailable(format!(
                    "publish to `{topic}` found no stream although {stream} exists; \
                     JetStream not ready?"
                )))
            } else {
                Ok(())
            }
        }
    }
}

pub(crate) enum Outcome {
    Ok,
    NoStream,
    Failed(TransportError),
}

/// Why one publish failed.
enum Failure {
    NoStream,
    Error(TransportError),
}

fn classify(e: &async_nats::jetstream::context::PublishError) -> Failure {
    if e.kind() == PublishErrorKind::StreamNotFound {
        Failure::NoStream
    } else {
        Failure::Error(publish_error(e))
    }
}

/// Hands one message to the client; bounded, since waiting for an acknowledgement permit is
/// not.
async fn send(shared: &Shared, p: Prepared) -> Result<PublishAckFuture, Failure> {
    let timeout = shared.cfg.request_timeout;
    let message = PublishMessage::build().payload(p.body).headers(p.headers);
    match tokio::time::timeout(timeout, shared.js.send_publish(p.subject, message)).await {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(Failure::Error(unavailable(format!(
            "publish not sent within {timeout:?}"
        )))),
    }
}

/// Sends prepared messages, each once it holds a permit of the transport's publish window (so
/// at most `publish_window` acknowledgements are outstanding across all concurrent calls), and
/// awaits every acknowledgement of this call. Each one is awaited concurrently and bounded from
/// its first poll (right after its send), so an outage costs one timeout, not one per message.
/// A permit is released as soon as its acknowledgement (or failure) is in, so one caller's tail
/// leaves room for the others.
pub(crate) async fn send_all(shared: &Shared, prepared: Vec<Prepared>) -> Outcome {
    let mut in_flight = FuturesUnordered::new();
    let mut no_stream = false;
    let mut failure: Option<TransportError> = None;
    let mut record = |result: Result<(), Failure>| match result {
        Ok(()) => {}
        Err(Failure::NoStream) => no_stream = true,
        Err(Failure::Error(e)) => {
            failure.get_or_insert(e);
        }
    };
    for p in prepared {
        // Settle what came in while waiting for a permit: this call's own finished
        // acknowledgements hold permits until they are polled.
        let permit = loop {
            tokio::select! {
                biased;
                Some(result) = in_flight.next(), if !in_flight.is_empty() => record(result),
                permit = Arc::clone(&shared.window).acquire_owned() => break permit,
            }
        };
        let Ok(permit) = permit else {
            break; // never closed
        };
        match send(shared, p).await {
            Ok(ack) => {
                // The acknowledgement future times out by itself (the context's `ack_timeout`
                // is `request_timeout`), from its first poll, right after this push.
                in_flight.push(async move {
                    let result = ack.into_future().await.map(drop).map_err(|e| classify(&e));
                    drop(permit);
                    result
                });
            }
            Err(failure) => {
                record(Err(failure));
                break;
            }
        }
        if shared.is_closed() {
            break;
        }
    }
    while let Some(result) = in_flight.next().await {
        record(result);
    }
    if let Some(e) = failure {
        Outcome::Failed(e)
    } else if shared.is_closed() {
        Outcome::Failed(TransportError::Closed)
    } else if no_stream {
        Outcome::NoStream
    } else {
        Outcome::Ok
    }
}

/// Publishes one prepared message and waits for its acknowledgement; `Ok(false)` when no stream
/// takes the subject.
pub(crate) async fn publish_one(shared: &Shared, p: Prepared) -> Result<bool, TransportError> {
    let timeout = shared.cfg.request_timeout;
    let result = match send(shared, p).await {
        Ok(ack) => match tokio::time::timeout(timeout, ack.into_future()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Failure::Error(unavailable(format!(
                "publish not acknowledged within {timeout:?}"
            )))),
        },
        Err(failure) => Err(failure),
    };
    match result {
        Ok(()) => Ok(true),
        Err(Failure::NoStream) => Ok(false),
        Err(Failure::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids() {
        let mut p = Properties::new();
        assert_eq!(message_id(&p), None);
        p.insert(names::EVENT_ID, "evt-1");
        assert_eq!(message_id(&p).as_deref(), Some("evt-1"));
        p.insert(names::REPLAYED, true);
        assert_eq!(message_id(&p).as_deref(), Some("evt-1~replayed~true"));
    }
}

//! Publishing: headers, size checks, a window of publish acknowledgements, scheduled messages.

use std::future::{Future, IntoFuture, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use chrono::Utc;
use eventyard_core::properties::names;
use eventyard_core::transport::check_name;
use eventyard_core::{OutgoingMessage, Properties, PropertyValue, TransportError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::TryAcquireError;

use crate::error::{publish_error, unavailable};
use crate::headers::{self, DELIVER_AT_HEADER, TARGET_HEADER, Template, line_len};
use crate::transport::Shared;

/// A message ready to go: subject, headers, body.
pub(crate) struct Prepared {
    /// Shared by the messages of a batch that go to the same subject.
    pub subject: Subject,
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
    last: Option<(Option<PropertyValue>, Option<PropertyValue>, Subject)>,
}

impl LastSubject {
    /// The subject of a message of `topic` with `props`; kept for the next when `more`
    /// messages follow.
    fn subject(&mut self, shared: &Shared, topic: &str, props: &Properties, more: bool) -> Subject {
        let tenant = props.get(names::TENANT_ID);
        let event_type = props.get(names::EVENT_TYPE);
        if let Some((t, e, subject)) = &self.last
            && t.as_ref() == tenant
            && e.as_ref() == event_type
        {
            // A reference count, not a copy.
            return subject.clone();
        }
        let subject = Subject::from(shared.names.message_subject(topic, props));
        if more {
            self.last = Some((tenant.cloned(), event_type.cloned(), subject.clone()));
        }
        subject
    }
}

/// The template the headers of the batch's messages are made from (see [`Template`]).
#[derive(Default)]
struct BaseHeaders {
    base: Option<Template>,
    /// Templates made so far; a batch whose messages keep differing (mixed tenants, say) stops
    /// paying for the copies a template takes.
    made: u8,
}

/// At most this many templates per batch.
const MAX_BASES: u8 = 4;

impl BaseHeaders {
    /// The headers carrying `props` and their wire length; a message whose headers cannot be
    /// made from the template becomes it when `more` messages follow.
    fn headers(&mut self, props: Properties, more: bool) -> (HeaderMap, usize) {
        let props = match &self.base {
            Some(base) => match base.make(props) {
                Ok(made) => return made,
                Err(props) => props,
            },
            None => props,
        };
        let props = if more && self.made < MAX_BASES {
            self.made += 1;
            let base = self.base.insert(Template::new(props.clone()));
            match base.make(props) {
                Ok(made) => return made,
                Err(props) => props,
            }
        } else {
            props
        };
        let mut headers = headers::message_map();
        headers::encode(&props, &mut headers);
        let wire = headers::wire_len(&headers);
        (headers, wire)
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
        let id = message_id(&message.properties);
        let (mut headers, mut wire) = base.headers(message.properties, more);
        // None of the headers added below can come from a property (their names are
        // reserved), so each adds a line.
        if let Some(id) = id {
            wire += line_len(NATS_MESSAGE_ID.as_ref(), &id);
            headers.insert(NATS_MESSAGE_ID, id);
        }
        if let Some(at) = deliver_at.map(|t| t.timestamp_micros())
            && at > now_us
        {
            let at = at.to_string();
            wire += line_len(DELIVER_AT_HEADER, &at) + line_len(TARGET_HEADER, &subject);
            headers.insert(DELIVER_AT_HEADER, at);
            headers.insert(TARGET_HEADER, subject.as_str());
            subject = Subject::from(shared.names.schedule_subject(topic));
        }
        debug_assert_eq!(wire, headers::wire_len(&headers));
        let wire = wire + message.body.len();
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
    let mut sending = pin!(shared.js.send_publish(p.subject, message));
    // A send usually completes at its first poll (room in the client's queue, an ack permit
    // free): only one that has to wait pays for the timer that bounds it.
    let sent = match poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await {
        Poll::Ready(sent) => sent,
        Poll::Pending => match tokio::time::timeout(timeout, sending).await {
            Ok(sent) => sent,
            Err(_) => {
                return Err(Failure::Error(unavailable(format!(
                    "publish not sent within {timeout:?}"
                ))));
            }
        },
    };
    sent.map_err(|e| classify(&e))
}

/// Sends prepared messages, each once it holds a permit of the transport's publish window (so
/// at most `publish_window` acknowledgements are outstanding across all concurrent calls), and
/// awaits every acknowledgement of this call. Each one is awaited concurrently and bounded from
/// its first poll (right after its send), so an outage costs one timeout, not one per message.
/// A permit is released as soon as its acknowledgement (or failure) is in, so one caller's tail
/// leaves room for the others.
pub(crate) async fn send_all(shared: &Shared, mut prepared: Vec<Prepared>) -> Outcome {
    if prepared.len() == 1
        && let Some(p) = prepared.pop()
    {
        return send_one(shared, p).await;
    }
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
        let permit = match Arc::clone(&shared.window).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break, // never closed
            Err(TryAcquireError::NoPermits) => {
                // Settle what comes in while waiting for a permit: this call's own finished
                // acknowledgements hold permits until they are polled. One wait, kept across
                // those settlements, so the call keeps its place in the window's queue.
                let mut acquire = pin!(Arc::clone(&shared.window).acquire_owned());
                let permit = loop {
                    tokio::select! {
                        biased;
                        Some(result) = in_flight.next(), if !in_flight.is_empty() => record(result),
                        permit = &mut acquire => break permit,
                    }
                };
                let Ok(permit) = permit else {
                    break; // never closed
                };
                permit
            }
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
    outcome(shared, failure, no_stream)
}

/// [`send_all`] of a single message (a publish of one message, as when streaming): the same
/// steps (a window permit, the send, the acknowledgement, the permit released once it is in),
/// without a `FuturesUnordered` to allocate and poll the acknowledgement through.
async fn send_one(shared: &Shared, p: Prepared) -> Outcome {
    let permit = match Arc::clone(&shared.window).try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => match Arc::clone(&shared.window).acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => return outcome(shared, None, false), // never closed
        },
    };
    let result = match send(shared, p).await {
        Ok(ack) => ack.into_future().await.map(drop).map_err(|e| classify(&e)),
        Err(failure) => Err(failure),
    };
    drop(permit);
    match result {
        Ok(()) => outcome(shared, None, false),
        Err(Failure::NoStream) => outcome(shared, None, true),
        Err(Failure::Error(e)) => outcome(shared, Some(e), false),
    }
}

/// The outcome of a [`send_all`]: its first failure, else closed, else no stream, else success.
fn outcome(shared: &Shared, failure: Option<TransportError>, no_stream: bool) -> Outcome {
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

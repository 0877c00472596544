//! Publishing with publisher confirms: pipelined over a window, retried across reconnects.
//!
//! A batch is published on one confirm-mode channel without waiting in between, each message
//! once it holds a permit of the transport's confirm window (`confirm_window` messages in flight
//! across all concurrent publishes); when none is free, the call's oldest confirm is awaited
//! before the next publish. A permit is released as soon as its confirm is in, so while one
//! call waits for its last confirms another's messages take the freed places. `send` returns
//! `Ok` only when every message of the call is confirmed; a nack fails it. When the
//! connection drops, the messages not yet confirmed are published again on the new connection
//! (within `reconnect_timeout`), so a message is never silently dropped (it may be duplicated:
//! delivery is at-least-once).

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use eventyard_core::properties::names;
use eventyard_core::{OutgoingMessage, TransportError};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, ErrorKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::connection::{BACKEND, Live, Manager, is_connection_error, is_not_found, lock, map_err};
use crate::headers::{self, Meta};
use crate::{delay, names as qnames, topology};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// A topic (its exchange routes it to the matching subscriptions).
    Topic(String),
    /// One queue.
    Queue(String),
}

/// A message ready to publish.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// Destination.
    pub target: Target,
    /// Delay bucket, when delayed (then `props` carries the delay header too).
    pub delay_ms: Option<u64>,
    /// Body.
    pub body: Bytes,
    /// AMQP properties, headers included.
    pub props: BasicProperties,
}

impl Outgoing {
    /// Builds a message with headers from `properties` and `meta` (`meta.delay_ms` decides
    /// whether it goes through a delay queue). `base` provides the other AMQP properties.
    pub(crate) fn new(
        target: Target,
        body: Bytes,
        base: BasicProperties,
        properties: &eventyard_core::Properties,
        meta: &Meta,
    ) -> Result<Self, TransportError> {
        let table = headers::encode(properties, meta)?;
        Ok(Outgoing {
            target,
            delay_ms: meta.delay_ms,
            body,
            props: base.with_headers(table),
        })
    }

    fn route(&self, prefix: &str) -> (String, String, bool) {
        let target = match &self.target {
            Target::Topic(t) => qnames::topic_exchange(prefix, t),
            Target::Queue(q) => q.clone(),
        };
        match (&self.target, self.delay_ms) {
            (_, Some(_)) => (qnames::delay_exchange(prefix), target, true),
            (Target::Topic(_), None) => (target.clone(), target, false),
            (Target::Queue(_), None) => (String::new(), target, false),
        }
    }
}

/// AMQP properties of a freshly published message.
pub(crate) fn base_properties(message_id: Option<&str>, now_ms: i64) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_timestamp(u64::try_from(now_ms / 1000).unwrap_or(0));
    if let Some(id) = message_id.and_then(|id| lapin::types::ShortString::try_new(id).ok()) {
        p = p.with_message_id(id);
    }
    p
}

/// The messages of a `publish` call, checked and encoded.
pub(crate) fn prepare(
    topic: &str,
    messages: Vec<OutgoingMessage>,
    max_size: usize,
) -> Result<Vec<Outgoing>, TransportError> {
    if let Some(m) = messages.iter().find(|m| m.message.body.len() > max_size) {
        return Err(TransportError::MessageTooLarge {
            size: m.message.body.len(),
            max: max_size,
        });
    }
    let now = headers::now_ms();
    messages
        .into_iter()
        .map(|m| {
            let mut meta = Meta {
                enqueued_at_ms: Some(now),
                ..Meta::default()
            };
            if let Some(at) = m.deliver_at {
                let at = at.timestamp_millis();
                let wait = delay::remaining_ms(at, now);
                if wait > 0 {
                    meta.not_before_ms = Some(at);
                    meta.delay_ms = Some(delay::bucket(wait));
                }
            }
            let props = &m.message.properties;
            let base = base_properties(props.get_str(names::EVENT_ID), now);
            Outgoing::new(
                Target::Topic(topic.to_owned()),
                m.message.body,
                base,
                props,
                &meta,
            )
        })
        .collect()
}

/// Declares what the messages need (topic exchanges, delay queues) that this connection has not
/// declared yet.
async fn declare_needs(
    live: &Live,
    prefix: &str,
    messages: &[&Outgoing],
    forced: &HashSet<u64>,
) -> Result<(), lapin::Error> {
    let mut topics = BTreeSet::new();
    let mut delays = BTreeSet::new();
    {
        let known = lock(&live.topics);
        let declared = lock(&live.delays);
        for m in messages {
            if let Target::Topic(t) = &m.target
                && !known.contains(t)
            {
                topics.insert(t.clone());
            }
            if let Some(d) = m.delay_ms
                && (forced.contains(&d)
                    || declared
                        .get(&d)
                        .is_none_or(|at| at.elapsed() >= topology::DELAY_LEASE / 2))
            {
                delays.insert(d);
            }
        }
    }
    if topics.is_empty() && delays.is_empty() {
        return Ok(());
    }
    let ch = live.channel().await?;
    let result = async {
        for t in &topics {
            topology::declare_topic(live, &ch, prefix, t).await?;
        }
        for d in &delays {
            topology::declare_delay(live, &ch, prefix, *d, forced.contains(d)).await?;
        }
        Ok(())
    }
    .await;
    if ch.status().connected() {
        let _ = ch.close(200, "done".into()).await;
    }
    result
}

/// How one attempt ended.
enum Attempt {
    /// All confirmed; these (mandatory, delayed) ones came back unroutable.
    Done { returned: Vec<usize> },
    /// Failed; these are still unconfirmed.
    Failed {
        unconfirmed: Vec<usize>,
        error: lapin::Error,
    },
    /// The broker refused (nacked) a message.
    Nacked,
}

async fn attempt(
    live: &Live,
    prefix: &str,
    messages: &[Outgoing],
    todo: &[usize],
    window: &Arc<Semaphore>,
    forced: &HashSet<u64>,
) -> Attempt {
    let mut confirmed = vec![false; messages.len()];
    let mut returned = Vec::new();
    // On failure, everything not confirmed is published again (returned ones included).
    let unconfirmed = |confirmed: &[bool]| -> Vec<usize> {
        todo.iter().copied().filter(|&i| !confirmed[i]).collect()
    };
    let needs: Vec<&Outgoing> = todo.iter().map(|&i| &messages[i]).collect();
    if let Err(error) = declare_needs(live, prefix, &needs, forced).await {
        return Attempt::Failed {
            unconfirmed: todo.to_vec(),
            error,
        };
    }
    let ch = match live.publisher().await {
        Ok(ch) => ch,
        Err(error) => {
            return Attempt::Failed {
                unconfirmed: todo.to_vec(),
                error,
            };
        }
    };
    let mut inflight: VecDeque<(usize, _, OwnedSemaphorePermit)> = VecDeque::new();
    let mut next = todo.iter().copied().peekable();
    loop {
        // Publish while the window has room, then settle the oldest confirm.
        while next.peek().is_some() {
            let permit = match Arc::clone(window).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) if !inflight.is_empty() => break,
                // Nothing of ours in flight: wait for another publish's confirms.
                Err(_) => match Arc::clone(window).acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => break, // never closed
                },
            };
            let Some(i) = next.next() else { break };
            let m = &messages[i];
            let (exchange, routing_key, mandatory) = m.route(prefix);
            let options = BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            };
            match ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &m.body,
                    m.props.clone(),
                )
                .await
            {
                Ok(confirm) => inflight.push_back((i, confirm, permit)),
                Err(error) => {
                    return Attempt::Failed {
                        unconfirmed: unconfirmed(&confirmed),
                        error,
                    };
                }
            }
        }
        let Some((i, confirm, permit)) = inflight.pop_front() else {
            return Attempt::Done { returned };
        };
        let confirmation = confirm.await;
        drop(permit);
        match confirmation {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => confirmed[i] = true,
            Ok(Confirmation::Ack(Some(_))) => returned.push(i),
            Ok(Confirmation::Nack(_)) => return Attempt::Nacked,
            Err(error) => {
                return Attempt::Failed {
                    unconfirmed: unconfirmed(&confirmed),
                    error,
                };
            }
        }
    }
}

/// Publishes `messages`, returning once all are confirmed.
pub(crate) async fn send(
    manager: &Arc<Manager>,
    messages: &[Outgoing],
) -> Result<(), TransportError> {
    send_as(manager, messages, false).await
}

/// As [`send`], for the transport's own republishing, which may finish while `close` waits
/// for it (but does not reconnect once closed).
pub(crate) async fn send_internal(
    manager: &Arc<Manager>,
    messages: &[Outgoing],
) -> Result<(), TransportError> {
    send_as(manager, messages, true).await
}

async fn send_as(
    manager: &Arc<Manager>,
    messages: &[Outgoing],
    internal: bool,
) -> Result<(), TransportError> {
    if messages.is_empty() {
        return Ok(());
    }
    let prefix = manager.config.prefix.as_str();
    let window = &manager.window;
    let deadline = Instant::now() + manager.config.reconnect_timeout;
    let mut todo: Vec<usize> = (0..messages.len()).collect();
    let mut forced = HashSet::new();
    let mut unroutable_retries = 0;
    let mut channel_retries = 0;
    loop {
        let live = if internal {
            manager.live_internal().await?
        } else {
            manager.live().await?
        };
        match attempt(&live, prefix, messages, &todo, window, &forced).await {
            Attempt::Done { returned } if returned.is_empty() => return Ok(()),
            Attempt::Done { returned } => {
                // A delay queue vanished (expired or deleted by hand): declare it and retry.
                unroutable_retries += 1;
                if unroutable_retries > 2 {
                    return Err(TransportError::Backend {
                        backend: BACKEND,
                        message: format!("{} delayed messages stayed unroutable", returned.len()),
                    });
                }
                forced = returned
                    .iter()
                    .filter_map(|&i| messages[i].delay_ms)
                    .collect();
                todo = returned;
            }
            Attempt::Nacked => {
                return Err(TransportError::Backend {
                    backend: BACKEND,
                    message: "the broker refused (nacked) a published message".into(),
                });
            }
            Attempt::Failed { unconfirmed, error } => {
                if !internal {
                    manager.check_open()?;
                }
                todo = unconfirmed;
                let connection_lost = is_connection_error(&error) || !live.alive();
                let channel_closed = matches!(error.kind(), ErrorKind::InvalidChannelState(..));
                if is_not_found(&error) {
                    // An exchange or delay queue this connection declared was deleted since:
                    // declare again.
                    lock(&live.topics).clear();
                    lock(&live.delays).clear();
                }
                if Instant::now() >= deadline {
                    return Err(map_err(&error));
                }
                if connection_lost {
                    tracing::warn!(%error, pending = todo.len(), "connection lost while publishing; retrying");
                    manager.invalidate(live.generation);
                } else if (channel_closed || is_not_found(&error)) && channel_retries < 3 {
                    channel_retries += 1;
                } else {
                    return Err(map_err(&error));
                }
                if todo.is_empty() {
                    return Ok(());
                }
            }
        }
    }
}

//! Declaring and removing topics and subscriptions: streams, durable consumers and the
//! subscription settings they carry.

use std::time::Duration;

use eventyard_core::transport::check_name;
use eventyard_core::{Filter, SubQueue, SubscriptionScope, SubscriptionSpec, TransportError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::DurableSpec;
use crate::error::backend;
use crate::subjects::SCHEDULER;
use crate::transport::Shared;

/// Largest consumer description NATS Server 2.9 accepts.
const MAX_DESCRIPTION: usize = 4096;
/// How long the server remembers `Nats-Msg-Id`s to drop duplicate publishes.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A subscription's settings, stored as JSON in the description of its consumers so that every
/// process finds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SubMeta {
    /// Format marker.
    pub eventyard: u8,
    /// The filter (evaluated in the client; its tenant/type equalities also natively).
    pub filter: Filter,
    /// Deliveries before the transport dead-letters a message.
    pub max_delivery_count: u32,
    /// In-platform or cross-platform.
    pub scope: SubscriptionScope,
    /// Lock duration in nanoseconds (also the consumers' `ack_wait`).
    pub lock_ns: u64,
}

impl SubMeta {
    fn of(spec: &SubscriptionSpec) -> Self {
        SubMeta {
            eventyard: 1,
            filter: spec.filter.clone(),
            max_delivery_count: spec.max_delivery_count,
            scope: spec.scope,
            lock_ns: u64::try_from(spec.lock_duration.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// The lock duration.
    pub(crate) fn lock(&self) -> Duration {
        Duration::from_nanos(self.lock_ns)
    }

    /// Reads the settings from a consumer description (`None` if it is not ours).
    pub(crate) fn parse(description: Option<&str>, ack_wait_ns: u64) -> Option<Self> {
        let mut meta: SubMeta = serde_json::from_str(description?).ok()?;
        if meta.lock_ns == 0 {
            meta.lock_ns = ack_wait_ns;
        }
        Some(meta)
    }
}

/// Stream config JSON (file storage, one replica, no limits). Topic and dead-letter streams use
/// limits retention and are trimmed by the transport (see the `trim` module for why not
/// interest retention).
fn stream_config(name: &str, subjects: &str, retention: &str) -> serde_json::Value {
    json!({
        "name": name,
        "subjects": [subjects],
        "retention": retention,
        "storage": "file",
        "discard": "old",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": -1,
        "max_msg_size": -1,
        "num_replicas": 1,
        "duplicate_window": crate::api::nanos(DUPLICATE_WINDOW),
    })
}

/// Creates the topic's streams (messages, dead letters, schedule) and the scheduler consumer,
/// once per transport and topic.
pub(crate) async fn ensure_topic(shared: &Shared, topic: &str) -> Result<(), TransportError> {
    if shared.topic_known(topic) {
        return Ok(());
    }
    let names = &shared.names;
    let api = &shared.api;
    api.create_stream(&stream_config(
        &names.topic_stream(topic),
        &names.topic_subjects(topic),
        "limits",
    ))
    .await?;
    api.create_stream(&stream_config(
        &names.dead_letter_stream(topic),
        &names.dead_letter_subjects(topic),
        "limits",
    ))
    .await?;
    let schedule = names.schedule_stream(topic);
    api.create_stream(&stream_config(
        &schedule,
        &names.schedule_subject(topic),
        "workqueue",
    ))
    .await?;
    api.create_durable(
        &schedule,
        &DurableSpec {
            name: SCHEDULER,
            description: "eventyard: moves due scheduled messages to the topic",
            deliver_policy: "all",
            ack_wait: Duration::from_secs(30),
            filter_subject: "",
        },
    )
    .await?;
    shared.remember_topic(topic);
    Ok(())
}

/// Declares (or updates) a subscription: its consumer on the topic stream (deliver new, filter
/// subject from the filter's native part) and on the dead-letter stream, both carrying the
/// settings.
pub(crate) async fn ensure_subscription(
    shared: &Shared,
    spec: &SubscriptionSpec,
) -> Result<(), TransportError> {
    spec.validate()?;
    shared.check_open()?;
    let description = serde_json::to_string(&SubMeta::of(spec))
        .map_err(|e| backend(format!("encoding subscription settings: {e}")))?;
    if description.len() > MAX_DESCRIPTION {
        return Err(TransportError::Config(format!(
            "the settings of subscription `{}` take {} bytes; NATS keeps at most {MAX_DESCRIPTION} \
             (shorten the filter)",
            spec.name,
            description.len()
        )));
    }
    let cached = shared.topic_known(&spec.topic);
    match declare(shared, spec, &description).await {
        // The streams may have been removed behind this transport's back: declare them again.
        Err(_) if cached => {
            shared.forget_topic(&spec.topic);
            declare(shared, spec, &description).await
        }
        result => result,
    }
}

async fn declare(
    shared: &Shared,
    spec: &SubscriptionSpec,
    description: &str,
) -> Result<(), TransportError> {
    ensure_topic(shared, &spec.topic).await?;
    let names = &shared.names;
    let durable = names.durable(&spec.name);
    let (filter_subject, _) = names.filter_subject(&spec.topic, &spec.filter);
    shared
        .api
        .create_durable(
            &names.topic_stream(&spec.topic),
            &DurableSpec {
                name: &durable,
                description,
                deliver_policy: "new",
                ack_wait: spec.lock_duration,
                filter_subject: &filter_subject,
            },
        )
        .await?;
    let dead_letter_subject = names.dead_letter_subject(&spec.topic, &spec.name);
    shared
        .api
        .create_durable(
            &names.dead_letter_stream(&spec.topic),
            &DurableSpec {
                name: &durable,
                description,
                deliver_policy: "all",
                ack_wait: spec.lock_duration,
                filter_subject: &dead_letter_subject,
            },
        )
        .await?;
    shared.notify_change(&spec.topic, &spec.name).await;
    Ok(())
}

/// Removes a subscription: both consumers and its dead-lettered messages. A subscription that
/// does not exist is fine.
pub(crate) async fn delete_subscription(
    shared: &Shared,
    topic: &str,
    name: &str,
) -> Result<(), TransportError> {
    shared.check_open()?;
    check_name("topic", topic)?;
    check_name("subscription", name)?;
    let names = &shared.names;
    let durable = names.durable(name);
    shared
        .api
        .delete_consumer(&names.topic_stream(topic), &durable)
        .await?;
    let dead_letters = names.dead_letter_stream(topic);
    shared.api.delete_consumer(&dead_letters, &durable).await?;
    shared
        .api
        .purge_subject(&dead_letters, &names.dead_letter_subject(topic, name))
        .await?;
    shared.notify_change(topic, name).await;
    // What only this subscription still held can go now.
    shared.trim_now(topic).await;
    Ok(())
}

/// Where a receiver reads from: stream and consumer of the subscription's main queue or
/// dead-letter sub-queue, with the subscription's settings. `UnknownSubscription` if it was
/// never declared.
pub(crate) async fn locate(
    shared: &Shared,
    topic: &str,
    subscription: &str,
    queue: SubQueue,
) -> Result<(String, String, SubMeta), TransportError> {
    let names = &shared.names;
    let stream = match queue {
        SubQueue::Main => names.topic_stream(topic),
        SubQueue::DeadLetter => names.dead_letter_stream(topic),
    };
    let consumer = names.durable(subscription);
    let meta = load_meta(shared, &stream, &consumer, topic, subscription).await?;
    Ok((stream, consumer, meta))
}

/// The settings stored on a consumer; `UnknownSubscription` when it does not exist.
pub(crate) async fn load_meta(
    shared: &Shared,
    stream: &str,
    consumer: &str,
    topic: &str,
    subscription: &str,
) -> Result<SubMeta, TransportError> {
    let unknown = || TransportError::UnknownSubscription {
        topic: topic.to_owned(),
        subscription: subscription.to_owned(),
    };
    let info = shared
        .api
        .consumer_info(stream, consumer)
        .await?
        .ok_or_else(unknown)?;
    // A consumer without our settings (declared by another tool): all messages, defaults.
    Ok(
        SubMeta::parse(info.config.description.as_deref(), info.config.ack_wait).unwrap_or_else(
            || {
                let mut spec = SubscriptionSpec::new(topic, subscription);
                if info.config.ack_wait > 0 {
                    spec.lock_duration = Duration::from_nanos(info.config.ack_wait);
                }
                SubMeta::of(&spec)
            },
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_the_description() {
        let spec = SubscriptionSpec::new("t", "s")
            .filter(Filter::sql("[cs-tenant-id] = 'a' AND x > 1.5").expect("valid filter"))
            .max_delivery_count(3)
            .scope(SubscriptionScope::CrossPlatform)
            .lock_duration(Duration::from_millis(1500));
        let meta = SubMeta::of(&spec);
        let text = serde_json::to_string(&meta).expect("serializes");
        let back = SubMeta::parse(Some(&text), 0).expect("parses");
        assert_eq!(back, meta);
        assert_eq!(back.lock(), Duration::from_millis(1500));
        assert!(SubMeta::parse(Some("something else"), 1).is_none());
        assert!(SubMeta::parse(None, 1).is_none());
    }
}

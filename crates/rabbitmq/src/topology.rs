//! Declaring, describing and deleting subscriptions; the shared route and delay exchanges.
//!
//! A subscription's settings (filter, lock duration, maximum deliveries, and the bindings that
//! apply its filter) are kept in-process in a [`Registry`] shared with its receivers, so a
//! re-declaration takes effect at once, and durably as the single message of the subscription's
//! `:meta` queue (`x-max-length=1`), which receivers in other processes read (`basic.get`, then
//! the message is given back by closing the channel) when they were not declared in-process.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use eventyard_core::{Filter, SubscriptionScope, SubscriptionSpec, TransportError};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::bindings;
use crate::config::QueueType;
use crate::connection::{Live, Manager, OpError, is_not_found, lock, with_retry};
use crate::names::{self, SubscriptionNames};

/// How long a delay queue outlives its last declaration beyond its delay (`x-expires`). Each
/// process re-declares a delay queue it uses at least every half lease, so no queue expires
/// while it may still hold a message.
pub(crate) const DELAY_LEASE: Duration = Duration::from_secs(600);

/// A subscription's settings, as stored in its `:meta` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Settings {
    /// When written (ms since the epoch); the newest wins.
    pub version: i64,
    /// The filter.
    pub filter: Filter,
    /// Whether receivers evaluate the filter (else the bindings apply it).
    pub client_side: bool,
    /// The queue's bindings to the topic exchange (their arguments).
    pub bindings: Vec<FieldTable>,
    /// Scope.
    pub scope: SubscriptionScope,
    /// Deliveries before dead-lettering.
    pub max_delivery_count: u32,
    /// Lock duration, ms.
    pub lock_ms: u64,
}

impl Settings {
    fn for_spec(spec: &SubscriptionSpec, native: bool) -> Self {
        let plan = bindings::plan(&spec.filter, native);
        Settings {
            version: crate::headers::now_ms(),
            filter: spec.filter.clone(),
            client_side: plan.client_side,
            bindings: plan.bindings,
            scope: spec.scope,
            max_delivery_count: spec.max_delivery_count,
            lock_ms: u64::try_from(spec.lock_duration.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Settings of a subscription whose metadata is missing: the defaults of
    /// [`SubscriptionSpec::new`] (all messages, 10 deliveries, 30 s lock).
    pub(crate) fn defaults() -> Self {
        let spec = SubscriptionSpec::new("t", "s");
        Settings::for_spec(&spec, true)
    }

    /// Same settings, whatever the version.
    fn same_as(&self, other: &Settings) -> bool {
        Settings {
            version: 0,
            ..self.clone()
        } == Settings {
            version: 0,
            ..other.clone()
        }
    }

    /// The lock duration.
    pub(crate) fn lock(&self) -> Duration {
        Duration::from_millis(self.lock_ms)
    }
}

/// Settings shared between the transport and its receivers.
pub(crate) type SharedSettings = Arc<RwLock<Settings>>;

/// In-process settings of the subscriptions this transport declared or opened.
#[derive(Default)]
pub(crate) struct Registry(Mutex<HashMap<(String, String), SharedSettings>>);

impl Registry {
    fn get(&self, topic: &str, name: &str) -> Option<SharedSettings> {
        lock(&self.0)
            .get(&(topic.to_owned(), name.to_owned()))
            .cloned()
    }

    fn put(&self, topic: &str, name: &str, settings: Settings) -> SharedSettings {
        let mut map = lock(&self.0);
        let cell = map
            .entry((topic.to_owned(), name.to_owned()))
            .or_insert_with(|| Arc::new(RwLock::new(settings.clone())));
        *cell.write().unwrap_or_else(|e| e.into_inner()) = settings;
        cell.clone()
    }

    fn remove(&self, topic: &str, name: &str) {
        lock(&self.0).remove(&(topic.to_owned(), name.to_owned()));
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn millis(d: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Declares the shared route (direct) and delay (headers) exchanges, once per connection.
pub(crate) async fn declare_globals(
    live: &Live,
    ch: &Channel,
    prefix: &str,
) -> Result<(), lapin::Error> {
    if live.globals.load(Ordering::Acquire) {
        return Ok(());
    }
    let route = names::route_exchange(prefix);
    ch.exchange_declare(
        route.as_str().into(),
        ExchangeKind::Direct,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        names::delay_exchange(prefix).into(),
        ExchangeKind::Headers,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    live.globals.store(true, Ordering::Release);
    Ok(())
}

/// Declares a topic's headers exchange and binds it to the route exchange, once per connection.
pub(crate) async fn declare_topic(
    live: &Live,
    ch: &Channel,
    prefix: &str,
    topic: &str,
) -> Result<(), lapin::Error> {
    if lock(&live.topics).contains(topic) {
        return Ok(());
    }
    declare_globals(live, ch, prefix).await?;
    let exchange = names::topic_exchange(prefix, topic);
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Headers,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_bind(
        exchange.as_str().into(),
        names::route_exchange(prefix).into(),
        exchange.as_str().into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    lock(&live.topics).insert(topic.to_owned());
    Ok(())
}

/// Declares the delay queue for `delay_ms` unless this connection did so within half a lease.
pub(crate) async fn declare_delay(
    live: &Live,
    ch: &Channel,
    prefix: &str,
    delay_ms: u64,
    force: bool,
) -> Result<(), lapin::Error> {
    let fresh = lock(&live.delays)
        .get(&delay_ms)
        .is_some_and(|at| at.elapsed() < DELAY_LEASE / 2);
    if fresh && !force {
        return Ok(());
    }
    declare_globals(live, ch, prefix).await?;
    let queue = names::delay_queue(prefix, delay_ms);
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        millis(Duration::from_millis(delay_ms)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(names::route_exchange(prefix))),
    );
    args.insert(
        "x-expires".into(),
        millis(Duration::from_millis(delay_ms) + DELAY_LEASE),
    );
    let declared_at = Instant::now();
    ch.queue_declare(queue.as_str().into(), durable_queue(), args)
        .await?;
    let mut binding = FieldTable::default();
    binding.insert("x-match".into(), AMQPValue::LongString("all".into()));
    binding.insert(
        crate::headers::DELAY.into(),
        AMQPValue::LongLongInt(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
    );
    ch.queue_bind(
        queue.as_str().into(),
        names::delay_exchange(prefix).into(),
        "".into(),
        QueueBindOptions::default(),
        binding,
    )
    .await?;
    lock(&live.delays).insert(delay_ms, declared_at);
    Ok(())
}

/// Runs `op` on a fresh channel, closed afterwards (a failed declaration closes the channel it
/// ran on, so none is shared).
async fn on_channel<T, F, Fut>(live: &Live, op: F) -> Result<T, OpError>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, OpError>>,
{
    let ch = live.channel().await?;
    let result = op(ch.clone()).await;
    if ch.status().connected() {
        let _ = ch.close(200, "done".into()).await;
    }
    result
}

/// Subscriptions: declaration, lookup, deletion.
pub(crate) struct Topology {
    pub(crate) manager: Arc<Manager>,
    registry: Registry,
}

impl Topology {
    pub(crate) fn new(manager: Arc<Manager>) -> Self {
        Topology {
            manager,
            registry: Registry::default(),
        }
    }

    fn prefix(&self) -> &str {
        &self.manager.config.prefix
    }

    /// The names of a subscription.
    pub(crate) fn names(&self, topic: &str, name: &str) -> SubscriptionNames {
        SubscriptionNames::new(self.prefix(), topic, name)
    }

    fn queue_args(&self, extra: Option<(&str, AMQPValue)>) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(e) = self.manager.config.queue_expires {
            args.insert("x-expires".into(), millis(e));
        }
        if let Some((k, v)) = extra {
            args.insert(k.into(), v);
        }
        args
    }

    /// Declares the topic, the subscription's queues and bindings, and stores its settings.
    pub(crate) async fn ensure(&self, spec: &SubscriptionSpec) -> Result<(), TransportError> {
        spec.validate()?;
        self.manager.check_open()?;
        let names = self.names(&spec.topic, &spec.name);
        let new = Settings::for_spec(spec, self.manager.config.native_filters);
        let known = self
            .registry
            .get(&spec.topic, &spec.name)
            .map(|cell| cell.read().unwrap_or_else(|e| e.into_inner()).clone());
        let settings = with_retry(&self.manager, |live| {
            let (names, new, known) = (&names, &new, known.clone());
            async move {
                let live = &*live;
                on_channel(live, |ch| async move {
                    self.declare(live, &ch, spec, names, new, known).await
                })
                .await
            }
        })
        .await?;
        self.registry.put(&spec.topic, &spec.name, settings);
        Ok(())
    }

    /// One attempt of [`Topology::ensure`] on a channel; returns the settings now in force.
    async fn declare(
        &self,
        live: &Live,
        ch: &Channel,
        spec: &SubscriptionSpec,
        names: &SubscriptionNames,
        new: &Settings,
        known: Option<Settings>,
    ) -> Result<Settings, OpError> {
        let prefix = self.prefix();
        declare_topic(live, ch, prefix, &spec.topic).await?;
        let kind = match self.manager.config.queue_type {
            QueueType::Classic => None,
            QueueType::Quorum => Some((
                "x-queue-type",
                AMQPValue::LongString(LongString::from("quorum")),
            )),
        };
        let max_length = Some(("x-max-length", AMQPValue::LongLongInt(1)));
        for (queue, extra) in [
            (&names.main, kind.clone()),
            (&names.dlq, kind),
            (&names.meta, max_length),
        ] {
            ch.queue_declare(
                queue.as_str().into(),
                durable_queue(),
                self.queue_args(extra),
            )
            .await?;
        }
        // Delayed copies come back through the route exchange, by queue name.
        let route = names::route_exchange(prefix);
        for queue in [&names.main, &names.dlq] {
            ch.queue_bind(
                queue.as_str().into(),
                route.as_str().into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        // The broker's record is authoritative (another process may have changed the
        // subscription); the in-process one covers a record being read elsewhere right now.
        let stored = read_meta(live, &names.meta).await?.or(known);
        // Bind the new filter first, then unbind the old one: never a moment without a binding
        // (a message matching both is enqueued once).
        for args in &new.bindings {
            ch.queue_bind(
                names.main.as_str().into(),
                names.exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                args.clone(),
            )
            .await?;
        }
        if let Some(old) = &stored {
            for args in old.bindings.iter().filter(|b| !new.bindings.contains(b)) {
                ch.queue_unbind(
                    names.main.as_str().into(),
                    names.exchange.as_str().into(),
                    "".into(),
                    args.clone(),
                )
                .await?;
            }
        }
        match stored {
            Some(old) if old.same_as(new) => Ok(old),
            _ => {
                write_meta(live, &names.meta, new).await?;
                Ok(new.clone())
            }
        }
    }

    /// Fails with `UnknownSubscription` unless the queue exists.
    pub(crate) async fn check_exists(
        &self,
        topic: &str,
        name: &str,
        queue: &str,
    ) -> Result<(), TransportError> {
        let exists = with_retry(&self.manager, |live| async move {
            on_channel(&live, |ch| async move {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                match ch
                    .queue_declare(queue.into(), passive, FieldTable::default())
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if is_not_found(&e) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            })
            .await
        })
        .await?;
        if exists {
            Ok(())
        } else {
            Err(TransportError::UnknownSubscription {
                topic: topic.to_owned(),
                subscription: name.to_owned(),
            })
        }
    }

    /// The subscription's settings: in-process if known, else from its `:meta` queue (else the
    /// defaults).
    pub(crate) async fn settings(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SharedSettings, TransportError> {
        if let Some(cell) = self.registry.get(topic, name) {
            return Ok(cell);
        }
        let meta = self.names(topic, name).meta;
        let stored = with_retry(&self.manager, |live| {
            let meta = &meta;
            async move { read_meta(&live, meta).await }
        })
        .await?;
        if let Some(cell) = self.registry.get(topic, name) {
            return Ok(cell);
        }
        Ok(self
            .registry
            .put(topic, name, stored.unwrap_or_else(Settings::defaults)))
    }

    /// Deletes the subscription's queues (main, dead-letter, metadata) with their messages.
    pub(crate) async fn delete(&self, topic: &str, name: &str) -> Result<(), TransportError> {
        eventyard_core::transport::check_name("topic", topic)?;
        eventyard_core::transport::check_name("subscription", name)?;
        self.manager.check_open()?;
        let names = self.names(topic, name);
        with_retry(&self.manager, |live| {
            let names = &names;
            async move {
                on_channel(&live, |ch| async move {
                    for queue in [&names.main, &names.dlq, &names.meta] {
                        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await?;
                    }
                    Ok(())
                })
                .await
            }
        })
        .await?;
        self.registry.remove(topic, name);
        Ok(())
    }
}

/// Reads the newest settings from a `:meta` queue. The messages are taken with `basic.get` and
/// given back by closing the channel; another reader holding them makes the queue look empty for
/// a moment, hence a few retries before concluding there are none.
async fn read_meta(live: &Live, queue: &str) -> Result<Option<Settings>, OpError> {
    const ATTEMPTS: u32 = 5;
    for attempt in 0..ATTEMPTS {
        let found = on_channel(live, |ch| async move {
            let mut best: Option<Settings> = None;
            for _ in 0..4 {
                match ch
                    .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                    .await
                {
                    Ok(Some(got)) => {
                        if let Ok(s) = serde_json::from_slice::<Settings>(&got.delivery.data)
                            && best.as_ref().is_none_or(|b| s.version > b.version)
                        {
                            best = Some(s);
                        }
                        if got.message_count == 0 {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) if is_not_found(&e) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(best)
        })
        .await?;
        if found.is_some() || attempt + 1 == ATTEMPTS {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

/// Publishes settings to a `:meta` queue (persistent, confirmed); `x-max-length=1` drops the
/// previous ones.
async fn write_meta(live: &Live, queue: &str, settings: &Settings) -> Result<(), OpError> {
    let body = serde_json::to_vec(settings).map_err(|e| TransportError::Backend {
        backend: crate::connection::BACKEND,
        message: format!("cannot encode subscription settings: {e}"),
    })?;
    let ch = live.publisher().await?;
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await?
        .await?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err(TransportError::Backend {
            backend: crate::connection::BACKEND,
            message: format!("the broker refused the settings of `{queue}`"),
        }
        .into())
    }
}

//! Plugging a saga into the bus: it subscribes like any handler.

use std::collections::BTreeMap;

use eventyard_core::{Envelope, Filter};
use eventyard_runtime::{
    Bus, BusError, Consumer, HandlerError, MessageContext, SubscriptionBuilder, TopologyStyle,
};

use crate::definition::SagaData;
use crate::engine::SagaEngine;
use crate::error::SagaEngineError;

impl<S: SagaData> SagaEngine<S> {
    /// Subscribes the saga on `bus` under the subscription name `subscription`: one consumer
    /// per topic its events arrive on (under topic-per-context, filtered on their event types),
    /// each configured by `configure` (concurrency, retry policy, tenant scope …). Several
    /// consumers — in this process or others — on the same subscription compete for its
    /// messages; optimistic concurrency keeps every instance consistent.
    ///
    /// Emitted events are routed with `bus`'s topology from then on (unless the engine was
    /// given a bus already). Timeout events ([`on_timeout`](crate::SagaDefinition::on_timeout))
    /// come from the [`TimeoutScheduler`](crate::TimeoutScheduler), not the bus.
    pub async fn subscribe(
        &self,
        bus: &Bus,
        subscription: &str,
        configure: impl Fn(SubscriptionBuilder) -> SubscriptionBuilder,
    ) -> Result<Vec<Consumer>, BusError> {
        self.use_bus(bus);
        let mut by_topic: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (event_type, entry) in &self.definition().events {
            if entry.timeout_only {
                continue;
            }
            (entry.register)(bus);
            by_topic
                .entry((entry.topic)(bus))
                .or_default()
                .push(event_type.clone());
        }
        let mut consumers = Vec::with_capacity(by_topic.len());
        for (topic, types) in by_topic {
            let mut builder = bus.subscription(subscription).topic(topic);
            if bus.style() == TopologyStyle::PerContext {
                let list = types
                    .iter()
                    .map(|t| format!("'{t}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let filter = Filter::sql(&format!("[cs-event-type] IN ({list})"))
                    .map_err(|e| BusError::Config(e.to_string()))?;
                builder = builder.filter(filter);
            }
            let handler = self.handler();
            consumers.push(configure(builder).handle_envelopes(handler).await?);
        }
        Ok(consumers)
    }

    /// The saga as a plain handler closure, for callers that wire subscriptions themselves.
    pub fn handler(
        &self,
    ) -> impl Fn(
        Envelope,
        MessageContext,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>
    + Send
    + Sync
    + 'static {
        let engine = self.clone();
        move |envelope: Envelope, _ctx: MessageContext| {
            let engine = engine.clone();
            Box::pin(async move {
                engine
                    .handle(&envelope)
                    .await
                    .map(|_| ())
                    .map_err(SagaEngineError::into_handler_error)
            })
        }
    }
}

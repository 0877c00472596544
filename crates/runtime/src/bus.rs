//! [`Bus`]: publish typed events and subscribe handlers over any [`Transport`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventyard_core::{
    Envelope, Event, EventId, Filter, OutgoingMessage, SubQueue, SubscriptionScope,
    SubscriptionSpec, TenantId, Transport,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::consumer::{self, ConsumerCounts, ConsumerOptions, ConsumerSpec, ConsumerStats};
use crate::context::{MessageContext, current_envelope};
use crate::error::BusError;
use crate::guard::TenantScope;
use crate::handler::{EnvelopeHandler, Handler, SharedFn, Typed};
use crate::outcome::HandlerError;
use crate::publisher::{Publisher, Routed, publish_routed};
use crate::retry::RetryPolicy;
use crate::topology::{Router, TopologyStyle};

struct ConsumerEntry {
    topic: String,
    subscription: String,
    stats: Arc<ConsumerStats>,
    task: Option<JoinHandle<()>>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    router: RwLock<Router>,
    stop: watch::Sender<bool>,
    consumers: Mutex<Vec<ConsumerEntry>>,
}

/// The bus: publishes envelopes to topics and runs consumers. Cheap to clone.
///
/// ```no_run
/// # async fn demo(transport: std::sync::Arc<dyn eventyard_core::Transport>) -> Result<(), eventyard_runtime::BusError> {
/// use eventyard_core::{Event, TenantId};
/// use eventyard_runtime::{Bus, HandlerError, MessageContext};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct ProjectCreated { name: String }
/// impl Event for ProjectCreated { const EVENT_TYPE: &'static str = "ProjectCreated"; }
///
/// let bus = Bus::new(transport);
/// bus.subscription("control-plane.on-project")
///     .handle(|e: ProjectCreated, _ctx: MessageContext| async move {
///         println!("created {}", e.name);
///         Ok::<_, HandlerError>(())
///     })
///     .await?;
/// let tenant = TenantId::parse("connectsoft")?;
/// bus.publish(&tenant, &ProjectCreated { name: "booking".into() }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("transport", &self.inner.transport.capabilities().name)
            .finish()
    }
}

impl Bus {
    /// A bus with topic-per-event-type.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self::with_style(transport, TopologyStyle::PerEventType)
    }

    /// A bus with the given topic layout.
    pub fn with_style(transport: Arc<dyn Transport>, style: TopologyStyle) -> Self {
        let (stop, _) = watch::channel(false);
        Bus {
            inner: Arc::new(Inner {
                transport,
                router: RwLock::new(Router {
                    style,
                    contexts: Default::default(),
                }),
                stop,
                consumers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// The topic layout.
    pub fn style(&self) -> TopologyStyle {
        self.router().style
    }

    fn router(&self) -> std::sync::RwLockReadGuard<'_, Router> {
        self.inner.router.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `E`'s bounded context, so untyped envelopes of its type route under
    /// topic-per-context.
    pub fn register<E: Event>(&self) {
        self.map_context(E::EVENT_TYPE, E::CONTEXT);
    }

    /// Records that `event_type` belongs to `context`.
    pub fn map_context(&self, event_type: &str, context: &str) {
        let mut r = self.inner.router.write().unwrap_or_else(|p| p.into_inner());
        r.contexts.insert(event_type.to_owned(), context.to_owned());
    }

    /// The topic an envelope is published to.
    pub fn topic_for(&self, envelope: &Envelope) -> Result<String, BusError> {
        self.router().topic_for(envelope)
    }

    /// The topic of a typed event.
    pub fn topic_of<E: Event>(&self) -> String {
        self.router().topic_of::<E>()
    }

    /// Publishes a typed event for `tenant`. Inside a handler it inherits the handled event's
    /// trace and correlation and becomes its child; publishing for another tenant there fails
    /// with [`BusError::CrossTenant`].
    pub async fn publish<E: Event>(
        &self,
        tenant: &TenantId,
        event: &E,
    ) -> Result<EventId, BusError> {
        self.register::<E>();
        let env = Envelope::for_event(event, tenant.clone())?;
        self.publish_envelope(env).await
    }

    /// Publishes an envelope. Inside a handler, an envelope without a causation inherits from
    /// the handled one (see [`Bus::publish`]).
    pub async fn publish_envelope(&self, envelope: Envelope) -> Result<EventId, BusError> {
        let id = envelope.event_id.clone();
        self.publish_at(envelope, None).await?;
        Ok(id)
    }

    /// Publishes an envelope for delivery not before `at` (scheduled delivery).
    pub async fn publish_at(
        &self,
        mut envelope: Envelope,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), BusError> {
        self.prepare(&mut envelope)?;
        let topic = self.topic_for(&envelope)?;
        let msg = OutgoingMessage {
            message: eventyard_core::Message::from_envelope(&envelope),
            deliver_at: at,
        };
        self.inner.transport.publish(&topic, vec![msg]).await?;
        Ok(())
    }

    /// Publishes several envelopes; one transport batch per topic, in order. Returns once every
    /// message is stored by the transport (confirmed, on a broker). To keep publishing while
    /// earlier batches await their confirmations, use [`Bus::publisher`].
    pub async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<(), BusError> {
        let batches = self.route_batch(envelopes)?;
        publish_routed(self.transport(), batches).await
    }

    /// A pipelined publisher with up to `max_in_flight` batches on their way at once (see
    /// [`Publisher`]).
    pub fn publisher(&self, max_in_flight: usize) -> Publisher {
        Publisher::new(self.clone(), max_in_flight)
    }

    /// Validates, propagates and routes envelopes into one transport batch per topic, topics in
    /// the order of their first envelope. Fails before anything is sent.
    pub(crate) fn route_batch(&self, envelopes: Vec<Envelope>) -> Result<Vec<Routed>, BusError> {
        let mut routed: Vec<Routed> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for mut env in envelopes {
            self.prepare(&mut env)?;
            let topic = self.topic_for(&env)?;
            let at = *index.entry(topic).or_insert_with_key(|topic| {
                routed.push(Routed {
                    topic: topic.clone(),
                    messages: Vec::new(),
                });
                routed.len() - 1
            });
            routed[at].messages.push(OutgoingMessage::from(&env));
        }
        Ok(routed)
    }

    /// Validates and applies propagation from the current handled envelope.
    fn prepare(&self, env: &mut Envelope) -> Result<(), BusError> {
        if let Some(current) = current_envelope() {
            if current.tenant_id != env.tenant_id {
                return Err(BusError::CrossTenant {
                    handling: current.tenant_id.to_string(),
                    publishing: env.tenant_id.to_string(),
                });
            }
            if env.causation_id.is_none() && current.event_id != env.event_id {
                env.inherit_from(&current);
            }
        }
        env.validate()?;
        Ok(())
    }

    /// Starts declaring a subscription named `name` (unique per topic).
    pub fn subscription(&self, name: impl Into<String>) -> SubscriptionBuilder {
        SubscriptionBuilder {
            bus: self.clone(),
            name: name.into(),
            topic: None,
            filter: None,
            scope: SubscriptionScope::InPlatform,
            max_delivery_count: None,
            lock_duration: None,
            options: ConsumerOptions::default(),
            handler_name: None,
            tenant_scope: TenantScope::Any,
        }
    }

    /// Counters of every consumer started on this bus: (topic, subscription, counts).
    pub fn consumer_counts(&self) -> Vec<(String, String, ConsumerCounts)> {
        let g = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        g.iter()
            .map(|c| (c.topic.clone(), c.subscription.clone(), c.stats.snapshot()))
            .collect()
    }

    /// Stops every consumer: no new deliveries; running handlers get their grace period; then
    /// the transport is closed. Messages not handled are released, never lost.
    pub async fn shutdown(&self) -> Result<(), BusError> {
        let _ = self.inner.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = {
            let mut g = self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            g.iter_mut().filter_map(|c| c.task.take()).collect()
        };
        for t in tasks {
            let _ = t.await;
        }
        self.inner.transport.close().await?;
        Ok(())
    }
}

/// Declares a subscription and starts its consumer. Obtained from [`Bus::subscription`].
#[must_use = "a subscription does nothing until .handle(..) is awaited"]
pub struct SubscriptionBuilder {
    bus: Bus,
    name: String,
    topic: Option<String>,
    filter: Option<Filter>,
    scope: SubscriptionScope,
    max_delivery_count: Option<u32>,
    lock_duration: Option<Duration>,
    options: ConsumerOptions,
    handler_name: Option<String>,
    tenant_scope: TenantScope,
}

impl SubscriptionBuilder {
    /// Names the handler (used in idempotency keys and fault context). Default: the
    /// subscription name.
    pub fn handler_name(mut self, name: impl Into<String>) -> Self {
        self.handler_name = Some(name.into());
        self
    }

    /// Restricts the handler to one tenant: the subscription filters on it, and the tenant guard
    /// dead-letters (as a security fault) any envelope of another tenant that still arrives.
    pub fn tenant(self, tenant: TenantId) -> Self {
        self.tenant_scope(TenantScope::only(tenant))
    }

    /// Restricts the handler to a set of tenants (see [`SubscriptionBuilder::tenant`]).
    pub fn tenant_scope(mut self, scope: TenantScope) -> Self {
        self.tenant_scope = scope;
        self
    }

    /// Subscribes to this topic (default for typed handlers: the event's topic).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Receives only messages whose properties match `filter`.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// In-platform (default) or cross-platform.
    pub fn scope(mut self, scope: SubscriptionScope) -> Self {
        self.scope = scope;
        self
    }

    /// Shorthand for `scope(SubscriptionScope::CrossPlatform)`.
    pub fn cross_platform(self) -> Self {
        self.scope(SubscriptionScope::CrossPlatform)
    }

    /// Transport-level delivery limit (default 10).
    pub fn max_delivery_count(mut self, n: u32) -> Self {
        self.max_delivery_count = Some(n);
        self
    }

    /// Lock duration (default 30 s).
    pub fn lock_duration(mut self, d: Duration) -> Self {
        self.lock_duration = Some(d);
        self
    }

    /// Consumer options.
    pub fn options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }

    /// Handlers running at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.options.concurrency = n.max(1);
        self
    }

    /// Starts a typed handler for `E`. Under topic-per-context the subscription also filters on
    /// `cs-event-type = E`.
    pub async fn handle<E: Event, H: Handler<E>>(
        mut self,
        handler: H,
    ) -> Result<Consumer, BusError> {
        self.bus.register::<E>();
        if self.topic.is_none() {
            self.topic = Some(self.bus.topic_of::<E>());
        }
        if self.bus.style() == TopologyStyle::PerContext {
            let type_filter = format!("[cs-event-type] = '{}'", E::EVENT_TYPE);
            let combined = match &self.filter {
                None | Some(Filter::All) => type_filter,
                Some(f) => format!("({f}) AND {type_filter}"),
            };
            self.filter =
                Some(Filter::sql(&combined).map_err(|e| BusError::Config(e.to_string()))?);
        }
        let typed = Typed {
            handler,
            _marker: std::marker::PhantomData,
        };
        self.start(Arc::new(typed)).await
    }

    /// Starts an untyped handler receiving whole envelopes; needs [`SubscriptionBuilder::topic`].
    ///
    /// A closure `Fn(Envelope, MessageContext)` gets its own copy of each envelope (the context
    /// keeps the consumer's); a handler that only reads it can take the shared one instead,
    /// with [`SubscriptionBuilder::handle_shared_envelopes`].
    pub async fn handle_envelopes<H: EnvelopeHandler>(
        self,
        handler: H,
    ) -> Result<Consumer, BusError> {
        self.start(Arc::new(handler)).await
    }

    /// Starts an untyped handler over the shared envelope, `Fn(Arc<Envelope>, MessageContext)`:
    /// the envelope the consumer parsed and the context holds, without the copy that
    /// [`SubscriptionBuilder::handle_envelopes`] makes for a closure taking `Envelope`. Needs
    /// [`SubscriptionBuilder::topic`].
    pub async fn handle_shared_envelopes<F, Fut>(self, handler: F) -> Result<Consumer, BusError>
    where
        F: Fn(Arc<Envelope>, MessageContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.start(Arc::new(SharedFn(handler))).await
    }

    /// Declares the subscription without consuming (messages accumulate until a consumer runs).
    pub async fn declare(self) -> Result<SubscriptionSpec, BusError> {
        let spec = self.spec()?;
        self.bus.inner.transport.ensure_subscription(&spec).await?;
        Ok(spec)
    }

    fn spec(&self) -> Result<SubscriptionSpec, BusError> {
        let topic = self.topic.clone().ok_or_else(|| {
            BusError::Config(format!("subscription `{}` needs a topic", self.name))
        })?;
        let mut spec = SubscriptionSpec::new(topic, self.name.clone()).scope(self.scope);
        let filter = match (&self.filter, self.tenant_scope.filter_expression()) {
            (f, None) => f.clone(),
            (None | Some(Filter::All), Some(t)) => {
                Some(Filter::sql(&t).map_err(|e| BusError::Config(e.to_string()))?)
            }
            (Some(f), Some(t)) => Some(
                Filter::sql(&format!("({f}) AND {t}"))
                    .map_err(|e| BusError::Config(e.to_string()))?,
            ),
        };
        if let Some(f) = filter {
            spec = spec.filter(f);
        }
        if let Some(n) = self.max_delivery_count {
            spec = spec.max_delivery_count(n);
        }
        if let Some(d) = self.lock_duration {
            spec = spec.lock_duration(d);
        }
        spec.validate()?;
        Ok(spec)
    }

    async fn start(self, handler: crate::handler::SharedHandler) -> Result<Consumer, BusError> {
        let spec = self.spec()?;
        let transport = self.bus.inner.transport.clone();
        transport.ensure_subscription(&spec).await?;
        let receiver = transport
            .receiver(&spec.topic, &spec.name, SubQueue::Main)
            .await?;
        let stats = Arc::new(ConsumerStats::default());
        let breaker = self
            .options
            .circuit_breaker
            .clone()
            .map(|c| Arc::new(CircuitBreaker::new(c)));
        let cspec = ConsumerSpec {
            bus: self.bus.clone(),
            topic: spec.topic.clone(),
            subscription: Arc::from(spec.name.as_str()),
            handler_name: Arc::from(self.handler_name.as_deref().unwrap_or(&spec.name)),
            tenant_scope: self.tenant_scope.clone(),
            breaker: breaker.clone(),
            handler,
            options: self.options,
            stats: stats.clone(),
        };
        let stop = self.bus.inner.stop.subscribe();
        let task = tokio::spawn(consumer::run(cspec, receiver, stop));
        let mut g = self
            .bus
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        g.push(ConsumerEntry {
            topic: spec.topic.clone(),
            subscription: spec.name.clone(),
            stats: stats.clone(),
            task: Some(task),
        });
        Ok(Consumer {
            spec,
            stats,
            breaker,
        })
    }
}

/// A running consumer.
#[derive(Debug, Clone)]
pub struct Consumer {
    spec: SubscriptionSpec,
    stats: Arc<ConsumerStats>,
    breaker: Option<Arc<CircuitBreaker>>,
}

impl Consumer {
    /// The declared subscription.
    pub fn spec(&self) -> &SubscriptionSpec {
        &self.spec
    }

    /// Its counters.
    pub fn counts(&self) -> ConsumerCounts {
        self.stats.snapshot()
    }

    /// Its circuit breaker's state, if it has one.
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker.as_ref().map(|b| b.state())
    }
}

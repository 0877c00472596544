//! eventyard runtime: the [`Bus`] (publish, subscribe), the consumer loop, handler result
//! classification ([`HandlerError`] → [`Outcome`] via [`RetryPolicy`]) and automatic
//! propagation of trace, correlation, tenant and causation from a handled event to the events
//! its handler publishes; and the outbox [`Relay`]. Generic over [`eventyard_core::Transport`]
//! (and [`eventyard_core::outbox::OutboxStore`]).

mod breaker;
mod bus;
mod consumer;
mod context;
mod error;
mod guard;
mod handler;
mod outcome;
mod publisher;
mod relay;
mod retry;
mod topology;

pub use breaker::{BreakerState, CircuitBreaker, CircuitBreakerConfig};
pub use bus::{Bus, Consumer, SubscriptionBuilder};
pub use consumer::{ConsumerCounts, ConsumerOptions, ConsumerStats, FIRST_FAILURE_PROPERTY};
pub use context::{MessageContext, current_envelope};
pub use error::BusError;
pub use guard::TenantScope;
pub use handler::{EnvelopeHandler, Handler};
pub use outcome::{ErrorKind, HandlerError, Outcome};
pub use publisher::{PublishReceipt, Publisher};
pub use relay::{CleanerConfig, Relay, RelayConfig, RelayCounts, RelayHandle, RelayMetrics};
pub use retry::{Backoff, RetryPolicy};
pub use topology::TopologyStyle;

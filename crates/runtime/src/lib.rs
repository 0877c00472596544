//! eventyard runtime: the [`Bus`] (publish, subscribe), the consumer loop, handler result
//! classification ([`HandlerError`] → [`Outcome`] via [`RetryPolicy`]) and automatic
//! propagation of trace, correlation, tenant and causation from a handled event to the events
//! its handler publishes. Generic over [`eventyard_core::Transport`].

mod bus;
mod consumer;
mod context;
mod error;
mod handler;
mod outcome;
mod retry;
mod topology;

pub use bus::{Bus, Consumer, SubscriptionBuilder};
pub use consumer::{ConsumerCounts, ConsumerOptions, ConsumerStats};
pub use context::{MessageContext, current_envelope};
pub use error::BusError;
pub use handler::{EnvelopeHandler, Handler};
pub use outcome::{ErrorKind, HandlerError, Outcome};
pub use retry::RetryPolicy;
pub use topology::TopologyStyle;

//! eventyard core: the canonical envelope, ids, application properties, subscription filters,
//! errors and the backend traits. No I/O lives here.
//!
//! - [`Envelope`] — the canonical record (SPEC §1), with [`Event`] for typed payloads.
//! - [`Properties`] — the `cs-*` application properties carried beside every message.
//! - [`filter::Filter`] — Service Bus SQL and correlation filters over properties.
//! - [`transport::Transport`] — the broker contract every backend implements.

pub mod cloudevents;
pub mod envelope;
pub mod error;
pub mod event;
pub mod event_type;
pub mod fault;
pub mod filter;
pub mod ids;
pub mod outbox;
pub mod properties;
pub mod saga;
pub mod transport;

pub use cloudevents::CloudEvent;
pub use envelope::Envelope;
pub use error::{EnvelopeError, IdError};
pub use event::Event;
pub use event_type::{EventType, MessageKind};
pub use fault::IdempotencyKey;
pub use filter::Filter;
pub use ids::{CorrelationId, EventId, ModuleId, ProjectId, TenantId, TraceId};
pub use properties::{Properties, PropertyValue};
pub use transport::{
    Capabilities, DeadLetterInfo, Delivery, Message, OutgoingMessage, Receiver, Settle, Settlement,
    SubQueue, SubscriptionScope, SubscriptionSpec, Transport, TransportError,
};

//! Which topic an event goes to: one topic per event type (default) or one per bounded context.

use std::collections::HashMap;

use eventyard_core::{Envelope, Event};

use crate::error::BusError;

/// Topic layout (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TopologyStyle {
    /// Topic = event type name (`ArtifactCreated`). Default.
    #[default]
    PerEventType,
    /// Topic = the bounded context (`Event::CONTEXT`, e.g. `knowledge`); subscriptions filter
    /// on `cs-event-type`.
    PerContext,
}

/// Resolves topics; remembers event type → context for envelopes published untyped.
#[derive(Debug, Default)]
pub struct Router {
    pub(crate) style: TopologyStyle,
    pub(crate) contexts: HashMap<String, String>,
}

impl Router {
    /// Topic of a typed event.
    pub fn topic_of<E: Event>(&self) -> String {
        match self.style {
            TopologyStyle::PerEventType => E::EVENT_TYPE.to_owned(),
            TopologyStyle::PerContext => E::CONTEXT.to_owned(),
        }
    }

    /// Topic of an envelope.
    pub fn topic_for(&self, env: &Envelope) -> Result<String, BusError> {
        let ty = env.event_type.as_str();
        match self.style {
            TopologyStyle::PerEventType => Ok(ty.to_owned()),
            TopologyStyle::PerContext => self
                .contexts
                .get(ty)
                .cloned()
                .ok_or_else(|| BusError::UnknownContext(ty.to_owned())),
        }
    }
}

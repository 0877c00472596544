//! Typed events and commands.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::EnvelopeError;
use crate::event_type::{EventType, MessageKind};

/// A typed message carried in an [`Envelope`](crate::Envelope)'s payload.
///
/// ```
/// use eventyard_core::Event;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// #[serde(rename_all = "camelCase")]
/// struct ArtifactCreated { artifact_id: String }
/// impl Event for ArtifactCreated {
///     const EVENT_TYPE: &'static str = "ArtifactCreated";
///     const CONTEXT: &'static str = "knowledge";
/// }
/// assert_eq!(ArtifactCreated::event_type().unwrap().as_str(), "ArtifactCreated");
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type name (`cs-event-type`): NounVerbPastTense for events, VerbNoun for commands.
    const EVENT_TYPE: &'static str;
    /// Payload schema version (`cs-schema-version`). Default 1.
    const SCHEMA_VERSION: u32 = 1;
    /// Bounded context that owns the event; names the topic under topic-per-context.
    /// Default `default`.
    const CONTEXT: &'static str = "default";
    /// Event or command. Default: event.
    const KIND: MessageKind = MessageKind::Event;

    /// The validated type name.
    fn event_type() -> Result<EventType, EnvelopeError> {
        EventType::parse(Self::EVENT_TYPE, Self::KIND)
    }
}

//! [`Step`]: what an action sees of the transition it runs in, and the effects it asks for.

use std::time::Duration;

use chrono::{DateTime, Utc};
use eventyard_core::{Envelope, Event};
use eventyard_runtime::{Bus, HandlerError};

/// Where emitted envelopes are published: the bus's routing when the engine has a bus,
/// else topic-per-event-type.
#[derive(Debug, Clone, Default)]
pub(crate) enum Topics {
    /// Topic = event type.
    #[default]
    EventType,
    /// The bus's topology.
    Bus(Bus),
}

impl Topics {
    /// The topic of `envelope`, carrying an `E`.
    pub(crate) fn topic_of<E: Event>(&self, envelope: &Envelope) -> Result<String, HandlerError> {
        match self {
            Topics::EventType => Ok(envelope.event_type.as_str().to_owned()),
            Topics::Bus(bus) => {
                bus.register::<E>();
                bus.topic_for(envelope)
                    .map_err(|e| HandlerError::permanent(format!("saga: no topic: {e}")))
            }
        }
    }
}

/// A timeout an action scheduled.
#[derive(Debug, Clone)]
pub(crate) struct Scheduled {
    pub(crate) name: String,
    pub(crate) due_at: DateTime<Utc>,
    pub(crate) envelope: Envelope,
}

/// The transition an action runs in: the handled event, the instance, and the effects the
/// action asks for — all committed atomically with the new state, or not at all.
///
/// Emitted envelopes follow the propagation rule (SPEC §1): they inherit the handled event's
/// tenant, trace and correlation (for a saga keyed by correlationId, the instance key) and get
/// causationId = the handled eventId.
#[derive(Debug)]
pub struct Step<'a> {
    pub(crate) handled: &'a Envelope,
    pub(crate) key: &'a str,
    pub(crate) state: Option<&'a str>,
    pub(crate) now: DateTime<Utc>,
    pub(crate) topics: &'a Topics,
    pub(crate) target: Option<String>,
    pub(crate) emitted: Vec<(String, Envelope)>,
    pub(crate) schedule: Vec<Scheduled>,
    pub(crate) cancel: Vec<String>,
    /// True when the handled event is a fired timeout.
    pub(crate) fired: bool,
}

impl<'a> Step<'a> {
    pub(crate) fn new(
        handled: &'a Envelope,
        key: &'a str,
        state: Option<&'a str>,
        topics: &'a Topics,
    ) -> Self {
        Step {
            handled,
            key,
            state,
            now: Utc::now(),
            topics,
            target: None,
            emitted: Vec::new(),
            schedule: Vec::new(),
            cancel: Vec::new(),
            fired: false,
        }
    }

    /// The envelope being handled (a fired timeout's envelope for timeouts).
    pub fn envelope(&self) -> &Envelope {
        self.handled
    }

    /// The instance key.
    pub fn key(&self) -> &str {
        self.key
    }

    /// The state before this transition (`None` when the event starts the instance).
    pub fn state(&self) -> Option<&str> {
        self.state
    }

    /// The time of this step (the base of relative timeouts).
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Overrides the transition's target state.
    pub fn go_to(&mut self, state: impl Into<String>) {
        self.target = Some(state.into());
    }

    fn child<E: Event>(&self, event: &E) -> Result<Envelope, HandlerError> {
        let mut env = Envelope::for_event(event, self.handled.tenant_id.clone()).map_err(|e| {
            HandlerError::permanent(format!("saga: cannot build {}: {e}", E::EVENT_TYPE))
        })?;
        env.inherit_from(self.handled);
        Ok(env)
    }

    /// Publishes `event` (through the outbox, with the transition's commit).
    pub fn publish<E: Event>(&mut self, event: &E) -> Result<(), HandlerError> {
        let env = self.child(event)?;
        let topic = self.topics.topic_of::<E>(&env)?;
        self.emitted.push((topic, env));
        Ok(())
    }

    /// Publishes the fired timeout this step handles *as it is* (same eventId; occurredAt = when
    /// it fired), instead of a new event caused by it: the timeout then is the announced fact
    /// (e.g. `WorkflowStepTimedOut`), caused by the event whose transition scheduled it, so the
    /// causal chain has no unpublished link. Through the outbox, like [`publish`](Self::publish).
    /// Fails unless the handled event is a fired timeout of type `E`.
    pub fn publish_fired<E: Event>(&mut self) -> Result<(), HandlerError> {
        if !self.fired || self.handled.event_type.as_str() != E::EVENT_TYPE {
            return Err(HandlerError::permanent(format!(
                "saga: publish_fired::<{}> while handling {}, not a fired {0} timeout",
                E::EVENT_TYPE,
                self.handled.event_type
            )));
        }
        let mut env = self.handled.clone();
        env.occurred_at = self.now;
        let topic = self.topics.topic_of::<E>(&env)?;
        self.emitted.push((topic, env));
        Ok(())
    }

    /// Sends the command `command` (a message of kind command; through the outbox, like
    /// [`publish`](Self::publish)).
    pub fn send<C: Event>(&mut self, command: &C) -> Result<(), HandlerError> {
        self.publish(command)
    }

    /// Schedules the timeout `event` after `after`: when it comes, `event` is fed to this
    /// instance (see [`SagaDefinition::on_timeout`](crate::SagaDefinition::on_timeout)) unless
    /// cancelled first. Replaces a pending timeout of the same type. Durable: it survives a
    /// restart.
    pub fn schedule<E: Event>(&mut self, after: Duration, event: &E) -> Result<(), HandlerError> {
        let after = chrono::Duration::from_std(after)
            .map_err(|e| HandlerError::validation(format!("saga: timeout too far: {e}")))?;
        self.schedule_at(self.now + after, event)
    }

    /// [`schedule`](Self::schedule) at a given time.
    pub fn schedule_at<E: Event>(
        &mut self,
        due_at: DateTime<Utc>,
        event: &E,
    ) -> Result<(), HandlerError> {
        let envelope = self.child(event)?;
        self.cancel.retain(|n| n != E::EVENT_TYPE);
        self.schedule.retain(|s| s.name != E::EVENT_TYPE);
        self.schedule.push(Scheduled {
            name: E::EVENT_TYPE.to_owned(),
            due_at,
            envelope,
        });
        Ok(())
    }

    /// Cancels the pending timeout of type `E`, if any (also one scheduled earlier in this
    /// step).
    pub fn cancel<E: Event>(&mut self) {
        self.schedule.retain(|s| s.name != E::EVENT_TYPE);
        if !self.cancel.iter().any(|n| n == E::EVENT_TYPE) {
            self.cancel.push(E::EVENT_TYPE.to_owned());
        }
    }
}

//! [`SagaDefinition`]: a saga's state machine, declared in Rust.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::Arc;

use eventyard_core::{Envelope, EnvelopeError, Event};
use eventyard_runtime::{Bus, HandlerError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::DefinitionError;
use crate::step::Step;

/// What a saga's data must be: serializable (it is stored as JSON), with a default (the data
/// a starting event's actions begin from).
pub trait SagaData: Serialize + DeserializeOwned + Default + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Default + Send + Sync + 'static> SagaData for T {}

/// Which property of an event names the saga instance it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Correlation {
    /// The envelope's correlationId (SPEC §3: sagas key on it). The default.
    #[default]
    CorrelationId,
    /// A header of the envelope (`headers[name]`).
    Header(String),
    /// A payload field, by JSON pointer (`/approvalId`); strings and numbers are accepted.
    Payload(String),
}

impl Correlation {
    /// The key of `envelope`, if it has one.
    pub fn key_of(&self, envelope: &Envelope) -> Option<String> {
        match self {
            Correlation::CorrelationId => Some(envelope.correlation_id.to_string()),
            Correlation::Header(name) => envelope.headers.get(name).cloned(),
            Correlation::Payload(pointer) => match envelope.payload.pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
        }
        .filter(|k| !k.is_empty())
    }
}

/// What to do with an event the saga cannot apply: one for an unknown instance that does not
/// start one ([`SagaDefinition::on_unknown`]), or one the instance's state does not accept
/// ([`SagaDefinition::on_unexpected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Acknowledge and drop it (counted).
    Ignore,
    /// Dead-letter it at once (a validation failure: never retried).
    DeadLetter,
    /// Fail it as transient: the subscription's retry policy redelivers it later (an event that
    /// overtook the one starting its instance gets another chance), and dead-letters it when
    /// its attempts run out.
    Fault,
}

/// A decoded event, type-erased.
pub(crate) type Decoded = Box<dyn Any + Send + Sync>;
type Decoder = Arc<dyn Fn(&Envelope) -> Result<Decoded, EnvelopeError> + Send + Sync>;
type KeyFn = Arc<dyn Fn(&dyn Any, &Envelope) -> Option<String> + Send + Sync>;
type GuardFn<S> = Arc<dyn Fn(&dyn Any, &S) -> bool + Send + Sync>;
type ActionFn<S> =
    Arc<dyn Fn(&dyn Any, &mut S, &mut Step<'_>) -> Result<(), HandlerError> + Send + Sync>;
type TopicFn = fn(&Bus) -> String;

/// Where a transition goes (unless its action calls [`Step::go_to`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    State(String),
    Stay,
}

/// One declared transition.
pub(crate) struct Transition<S> {
    /// States it applies in; `None` for a starting transition; empty for any running state.
    pub(crate) from: Option<Vec<String>>,
    pub(crate) guard: Option<GuardFn<S>>,
    pub(crate) actions: Vec<ActionFn<S>>,
    pub(crate) target: Target,
}

impl<S> Transition<S> {
    /// True if it applies to an instance in `state` (`None`: no instance yet).
    pub(crate) fn applies_in(&self, state: Option<&str>) -> bool {
        match (&self.from, state) {
            (None, None) => true,
            (Some(states), Some(s)) => states.is_empty() || states.iter().any(|x| x == s),
            _ => false,
        }
    }
}

/// One event type the saga handles.
pub(crate) struct EventEntry<S> {
    pub(crate) decode: Decoder,
    pub(crate) key: Option<KeyFn>,
    pub(crate) transitions: Vec<Transition<S>>,
    /// Fed by the timeout scheduler only (not subscribed on the bus).
    pub(crate) timeout_only: bool,
    pub(crate) topic: TopicFn,
    pub(crate) register: fn(&Bus),
}

/// A saga's state machine: named states, the events that start or move an instance (with
/// guards and actions), final states, how events find their instance, and what happens to
/// events it cannot apply.
///
/// ```
/// use eventyard_saga::{Policy, SagaDefinition};
/// # use eventyard_core::Event;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct ApprovalRequested { by: String }
/// # impl Event for ApprovalRequested { const EVENT_TYPE: &'static str = "ApprovalRequested"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct ApprovalGranted { by: String }
/// # impl Event for ApprovalGranted { const EVENT_TYPE: &'static str = "ApprovalGranted"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct ApprovalTimedOut {}
/// # impl Event for ApprovalTimedOut { const EVENT_TYPE: &'static str = "ApprovalTimedOut"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct ApprovalRejected { reason: String }
/// # impl Event for ApprovalRejected { const EVENT_TYPE: &'static str = "ApprovalRejected"; }
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Gate { requester: String }
///
/// let gate = SagaDefinition::<Gate>::new("approval-gate")
///     .states(["Awaiting", "Approved", "Rejected"])
///     .finals(["Approved", "Rejected"])
///     .on_unknown(Policy::DeadLetter)
///     .start_on::<ApprovalRequested>()
///     .then(|e, data, step| {
///         data.requester = e.by.clone();
///         step.schedule(std::time::Duration::from_secs(3600), &ApprovalTimedOut {})
///     })
///     .go_to("Awaiting")
///     .on::<ApprovalGranted>(["Awaiting"])
///     .when(|e, data| e.by != data.requester) // no self-approval
///     .go_to("Approved") // reaching a final state cancels the pending timeout
///     .on_timeout::<ApprovalTimedOut>(["Awaiting"])
///     .then(|_, _, step| step.publish(&ApprovalRejected { reason: "timeout".into() }))
///     .go_to("Rejected")
///     .build()
///     .expect("a valid definition");
/// assert_eq!(gate.name(), "approval-gate");
/// ```
pub struct SagaDefinition<S> {
    pub(crate) name: String,
    pub(crate) states: BTreeSet<String>,
    pub(crate) finals: BTreeSet<String>,
    pub(crate) correlation: Correlation,
    pub(crate) unknown: Policy,
    pub(crate) unexpected: Policy,
    pub(crate) events: BTreeMap<String, EventEntry<S>>,
    pub(crate) errors: Vec<String>,
}

impl<S> std::fmt::Debug for SagaDefinition<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.name)
            .field("states", &self.states)
            .field("finals", &self.finals)
            .field("events", &self.events.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<S: SagaData> SagaDefinition<S> {
    /// A new definition named `name` (the instances' `saga` column; unique per store).
    /// Defaults: keyed by correlationId, unknown instances and unexpected events ignored.
    pub fn new(name: impl Into<String>) -> Self {
        SagaDefinition {
            name: name.into(),
            states: BTreeSet::new(),
            finals: BTreeSet::new(),
            correlation: Correlation::default(),
            unknown: Policy::Ignore,
            unexpected: Policy::Ignore,
            events: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// Declares the states. When declared, [`build`](Self::build) checks that every transition
    /// names declared states only.
    pub fn states(mut self, states: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.states.extend(states.into_iter().map(Into::into));
        self
    }

    /// Declares the final states: reaching one completes the instance (it then ignores every
    /// event, and its pending timeouts are deleted).
    pub fn finals(mut self, states: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.finals.extend(states.into_iter().map(Into::into));
        self
    }

    /// How events find their instance (default: correlationId).
    pub fn correlate_by(mut self, correlation: Correlation) -> Self {
        self.correlation = correlation;
        self
    }

    /// Finds the instance of `E` events with `key` instead of the definition's correlation.
    pub fn key_of<E: Event>(mut self, key: impl Fn(&E) -> String + Send + Sync + 'static) -> Self {
        self.entry::<E>(false).key = Some(Arc::new(move |any, _| {
            any.downcast_ref::<E>().map(&key).filter(|k| !k.is_empty())
        }));
        self
    }

    /// What to do with an event for an unknown instance that does not start one (default:
    /// ignore).
    pub fn on_unknown(mut self, policy: Policy) -> Self {
        self.unknown = policy;
        self
    }

    /// What to do with an event the instance's current state does not accept (default:
    /// ignore). Duplicates are recognized before this applies.
    pub fn on_unexpected(mut self, policy: Policy) -> Self {
        self.unexpected = policy;
        self
    }

    /// Declares that `E` starts an instance (when none exists for its key).
    pub fn start_on<E: Event>(self) -> TransitionBuilder<S, E> {
        self.transition(None, false)
    }

    /// Declares that `E` moves an instance in one of `states`.
    pub fn on<E: Event>(
        self,
        states: impl IntoIterator<Item = impl Into<String>>,
    ) -> TransitionBuilder<S, E> {
        let states = states.into_iter().map(Into::into).collect::<Vec<_>>();
        if states.is_empty() {
            let mut s = self;
            s.errors.push(format!(
                "on::<{}>: no state given (use on_any)",
                E::EVENT_TYPE
            ));
            return s.transition(Some(vec![String::from("\u{0}")]), false);
        }
        self.transition(Some(states), false)
    }

    /// Declares that `E` moves an instance in any running (non-final) state.
    pub fn on_any<E: Event>(self) -> TransitionBuilder<S, E> {
        self.transition(Some(Vec::new()), false)
    }

    /// Declares that the timeout `E` (scheduled by an action with [`Step::schedule`]) moves an
    /// instance in one of `states` when it fires. `E` is fed by the timeout scheduler only: the
    /// saga does not subscribe to it on the bus.
    pub fn on_timeout<E: Event>(
        self,
        states: impl IntoIterator<Item = impl Into<String>>,
    ) -> TransitionBuilder<S, E> {
        let states = states.into_iter().map(Into::into).collect();
        self.transition(Some(states), true)
    }

    fn transition<E: Event>(
        mut self,
        from: Option<Vec<String>>,
        timeout: bool,
    ) -> TransitionBuilder<S, E> {
        let entry = self.entry::<E>(timeout);
        entry.timeout_only &= timeout;
        TransitionBuilder {
            definition: self,
            transition: Transition {
                from,
                guard: None,
                actions: Vec::new(),
                target: Target::Stay,
            },
            _event: PhantomData,
        }
    }

    fn entry<E: Event>(&mut self, timeout: bool) -> &mut EventEntry<S> {
        self.events
            .entry(E::EVENT_TYPE.to_owned())
            .or_insert_with(|| EventEntry {
                decode: Arc::new(|env: &Envelope| {
                    env.decode::<E>().map(|e| Box::new(e) as Decoded)
                }),
                key: None,
                transitions: Vec::new(),
                timeout_only: timeout,
                topic: Bus::topic_of::<E>,
                register: Bus::register::<E>,
            })
    }

    /// Checks the definition: at least one starting event; declared states (when declared)
    /// cover every transition and the finals; no unnamed state.
    pub fn build(self) -> Result<Self, DefinitionError> {
        let mut errors = self.errors.clone();
        if self.name.is_empty() {
            errors.push("the saga name is empty".into());
        }
        let starts = self
            .events
            .values()
            .flat_map(|e| &e.transitions)
            .any(|t| t.from.is_none());
        if !starts {
            errors.push("no event starts an instance (declare one with start_on)".into());
        }
        let mut named: Vec<&String> = self.finals.iter().collect();
        for (ty, entry) in &self.events {
            if entry.transitions.is_empty() {
                errors.push(format!("{ty}: a key is declared but no transition"));
            }
            for t in &entry.transitions {
                named.extend(t.from.iter().flatten());
                if let Target::State(s) = &t.target {
                    named.push(s);
                }
            }
        }
        for s in named {
            if s.is_empty() || s.contains('\u{0}') {
                errors.push("a state name is empty".into());
            } else if !self.states.is_empty() && !self.states.contains(s) {
                errors.push(format!("state `{s}` is not declared"));
            }
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            errors.dedup();
            Err(DefinitionError {
                saga: self.name,
                problems: errors,
            })
        }
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if `state` is final.
    pub fn is_final(&self, state: &str) -> bool {
        self.finals.contains(state)
    }

    /// True if `state` may be entered (declared, or no states declared).
    pub(crate) fn knows(&self, state: &str) -> bool {
        !state.is_empty() && (self.states.is_empty() || self.states.contains(state))
    }

    /// The event types the saga receives from the bus (timeouts excluded).
    pub fn subscribed_event_types(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter(|(_, e)| !e.timeout_only)
            .map(|(t, _)| t.as_str())
            .collect()
    }

    /// The instance key of `envelope` (already decoded as `decoded`).
    pub(crate) fn key(
        &self,
        entry: &EventEntry<S>,
        decoded: &dyn Any,
        env: &Envelope,
    ) -> Option<String> {
        match &entry.key {
            Some(k) => k(decoded, env),
            None => self.correlation.key_of(env),
        }
    }
}

/// Declares one transition: [`when`](Self::when) a guard holds, [`then`](Self::then) run
/// actions, and [`go_to`](Self::go_to) a state (or [`stay`](Self::stay)); both return the
/// definition.
#[must_use = "a transition is declared by go_to(..) or stay()"]
pub struct TransitionBuilder<S, E> {
    definition: SagaDefinition<S>,
    transition: Transition<S>,
    _event: PhantomData<fn(E)>,
}

impl<S: SagaData, E: Event> TransitionBuilder<S, E> {
    /// Applies the transition only when `guard` holds for the event and the instance's data
    /// (for a starting event: the default data). When several transitions of an event apply in
    /// a state, the first declared whose guard holds is taken; when none holds, the event is
    /// acknowledged and changes nothing.
    pub fn when(mut self, guard: impl Fn(&E, &S) -> bool + Send + Sync + 'static) -> Self {
        self.transition.guard = Some(Arc::new(move |any, data| {
            any.downcast_ref::<E>().is_some_and(|e| guard(e, data))
        }));
        self
    }

    /// Runs `action` when the transition is taken (several run in order): it may change the
    /// data and, through the [`Step`], publish events, send commands, schedule or cancel
    /// timeouts and choose another target state. An error fails the event: nothing is
    /// committed, and the subscription's retry policy decides by the error's kind.
    pub fn then(
        mut self,
        action: impl Fn(&E, &mut S, &mut Step<'_>) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Self {
        self.transition
            .actions
            .push(Arc::new(move |any, data, step| {
                match any.downcast_ref::<E>() {
                    Some(e) => action(e, data, step),
                    None => Err(HandlerError::permanent("saga: event of the wrong type")),
                }
            }));
        self
    }

    /// Ends the declaration: the transition goes to `state`.
    pub fn go_to(mut self, state: impl Into<String>) -> SagaDefinition<S> {
        self.transition.target = Target::State(state.into());
        self.finish()
    }

    /// Ends the declaration: the transition keeps the current state (unless an action calls
    /// [`Step::go_to`]). A starting transition must name its state with [`go_to`](Self::go_to).
    pub fn stay(mut self) -> SagaDefinition<S> {
        self.transition.target = Target::Stay;
        self.finish()
    }

    fn finish(self) -> SagaDefinition<S> {
        let mut def = self.definition;
        if self.transition.from.is_none() && self.transition.target == Target::Stay {
            def.errors.push(format!(
                "start_on::<{}>: a starting transition needs go_to(state)",
                E::EVENT_TYPE
            ));
        }
        def.entry::<E>(false).transitions.push(self.transition);
        def
    }
}

//! Handler traits. Any `async` closure `Fn(E, MessageContext) -> Result<(), HandlerError>` is a
//! [`Handler<E>`]; `Fn(Envelope, MessageContext)` closures are untyped [`EnvelopeHandler`]s.

use std::future::Future;
use std::sync::Arc;

use eventyard_core::{Envelope, Event};
use futures::future::BoxFuture;

use crate::context::MessageContext;
use crate::outcome::{ErrorKind, HandlerError};

/// Handles typed events `E`.
pub trait Handler<E>: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: E, ctx: MessageContext)
    -> BoxFuture<'static, Result<(), HandlerError>>;
}

impl<E, F, Fut> Handler<E> for F
where
    E: Event,
    F: Fn(E, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        event: E,
        ctx: MessageContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin(self(event, ctx))
    }
}

/// Handles whole envelopes of any type.
pub trait EnvelopeHandler: Send + Sync + 'static {
    /// Handles one envelope.
    fn handle(
        &self,
        envelope: Envelope,
        ctx: MessageContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>>;

    /// Handles one envelope that the consumer shares with the handler's context (what the
    /// consumer calls). The default copies it for [`EnvelopeHandler::handle`]; a handler that
    /// only reads it overrides this to skip the copy (typed handlers decode their event from
    /// it directly).
    fn handle_shared(
        &self,
        envelope: &Arc<Envelope>,
        ctx: MessageContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        self.handle(Envelope::clone(envelope), ctx)
    }
}

impl<F, Fut> EnvelopeHandler for F
where
    F: Fn(Envelope, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        envelope: Envelope,
        ctx: MessageContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin(self(envelope, ctx))
    }
}

/// Adapts a closure over the shared envelope, `Fn(Arc<Envelope>, MessageContext)`
/// ([`SubscriptionBuilder::handle_shared_envelopes`](crate::SubscriptionBuilder::handle_shared_envelopes)):
/// the handler gets the consumer's envelope itself, the one its context holds, not a copy.
pub(crate) struct SharedFn<F>(pub(crate) F);

impl<F, Fut> EnvelopeHandler for SharedFn<F>
where
    F: Fn(Arc<Envelope>, MessageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        envelope: Envelope,
        ctx: MessageContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin((self.0)(Arc::new(envelope), ctx))
    }

    /// Hands over the shared envelope: a reference count, no copy.
    fn handle_shared(
        &self,
        envelope: &Arc<Envelope>,
        ctx: MessageContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin((self.0)(Arc::clone(envelope), ctx))
    }
}

/// Adapts a typed handler: checks the event type and decodes the payload; a mismatch is a
/// validation failure (dead-lettered, never retried).
pub(crate) struct Typed<E, H> {
    pub(crate) handler: H,
    pub(crate) _marker: std::marker::PhantomData<fn(E)>,
}

impl<E: Event, H: Handler<E>> Typed<E, H> {
    fn decode_and_handle(
        &self,
        envelope: &Envelope,
        ctx: MessageContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        match envelope.decode::<E>() {
            Ok(event) => self.handler.handle(event, ctx),
            Err(e) => Box::pin(async move {
                Err(
                    HandlerError::from_error(ErrorKind::Validation, &e).context(match &e {
                        eventyard_core::EnvelopeError::TypeMismatch { .. } => "UnknownEventType",
                        _ => "PayloadMismatch",
                    }),
                )
            }),
        }
    }
}

impl<E: Event, H: Handler<E>> EnvelopeHandler for Typed<E, H> {
    fn handle(
        &self,
        envelope: Envelope,
        ctx: MessageContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        self.decode_and_handle(&envelope, ctx)
    }

    /// Decodes the event from the shared envelope: no copy of it.
    fn handle_shared(
        &self,
        envelope: &Arc<Envelope>,
        ctx: MessageContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        self.decode_and_handle(envelope, ctx)
    }
}

/// A shared, type-erased handler.
pub(crate) type SharedHandler = Arc<dyn EnvelopeHandler>;

//! Checks of the conformance suite itself: the branches the memory transport does not take
//! (persistence, no release on drop, non-atomic batches) run against wrappers that claim other
//! capabilities, and deliberately broken transports make the relevant cases fail.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use eventyard_core::{
    Capabilities, Filter, OutgoingMessage, Receiver, SubQueue, SubscriptionSpec, Transport,
    TransportError,
};
use eventyard_testkit::conformance::{self, TransportFactory};
use eventyard_testkit::memory::MemoryTransport;
use futures::FutureExt;

/// What the wrapper lies about or breaks.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// Claims `persistent`.
    claim_persistent: bool,
    /// Each `connect` opens a new, empty broker (loses everything on reconnect).
    forgetful: bool,
    /// Claims `release_on_drop: false`.
    claim_no_release_on_drop: bool,
    /// Claims `atomic_batch: false`.
    claim_non_atomic: bool,
    /// Declares every subscription without its filter.
    ignore_filters: bool,
    /// Publishes scheduled messages for immediate delivery.
    ignore_deliver_at: bool,
}

/// A memory transport with [`Faults`].
struct Wrapped {
    inner: MemoryTransport,
    faults: Faults,
}

#[async_trait]
impl Transport for Wrapped {
    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        caps.persistent |= self.faults.claim_persistent;
        caps.release_on_drop &= !self.faults.claim_no_release_on_drop;
        caps.atomic_batch &= !self.faults.claim_non_atomic;
        caps
    }

    async fn ensure_subscription(&self, spec: &SubscriptionSpec) -> Result<(), TransportError> {
        if self.faults.ignore_filters {
            let spec = spec.clone().filter(Filter::all());
            self.inner.ensure_subscription(&spec).await
        } else {
            self.inner.ensure_subscription(spec).await
        }
    }

    async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), TransportError> {
        self.inner.delete_subscription(topic, name).await
    }

    async fn publish(
        &self,
        topic: &str,
        mut messages: Vec<OutgoingMessage>,
    ) -> Result<(), TransportError> {
        if self.faults.ignore_deliver_at {
            for m in &mut messages {
                m.deliver_at = None;
            }
        }
        self.inner.publish(topic, messages).await
    }

    async fn receiver(
        &self,
        topic: &str,
        subscription: &str,
        queue: SubQueue,
    ) -> Result<Box<dyn Receiver>, TransportError> {
        self.inner.receiver(topic, subscription, queue).await
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.close().await
    }
}

struct WrappedFactory {
    base: MemoryTransport,
    faults: Faults,
    counter: AtomicU64,
}

impl WrappedFactory {
    fn new(faults: Faults) -> Self {
        WrappedFactory {
            base: MemoryTransport::new(),
            faults,
            counter: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl TransportFactory for WrappedFactory {
    async fn connect(&self) -> Arc<dyn Transport> {
        let inner = if self.faults.forgetful {
            MemoryTransport::new()
        } else {
            self.base.reconnect()
        };
        Arc::new(Wrapped {
            inner,
            faults: self.faults,
        })
    }

    fn unique(&self, base: &str) -> String {
        format!("{base}-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

/// True when the case panics (fails).
async fn fails(case: impl Future<Output = ()>) -> bool {
    AssertUnwindSafe(case).catch_unwind().await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_case_passes_when_storage_is_shared() {
    let factory = WrappedFactory::new(Faults {
        claim_persistent: true,
        ..Faults::default()
    });
    conformance::persistence_across_reconnect(&factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_case_catches_a_forgetful_transport() {
    let factory = WrappedFactory::new(Faults {
        claim_persistent: true,
        forgetful: true,
        ..Faults::default()
    });
    assert!(fails(conformance::persistence_across_reconnect(&factory)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_branches_pass_on_a_conforming_transport() {
    let factory = WrappedFactory::new(Faults {
        claim_no_release_on_drop: true,
        claim_non_atomic: true,
        ..Faults::default()
    });
    conformance::dropped_delivery_is_released(&factory).await;
    conformance::message_too_large_is_rejected(&factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_cases_catch_ignored_filters() {
    let factory = WrappedFactory::new(Faults {
        ignore_filters: true,
        ..Faults::default()
    });
    assert!(fails(conformance::sql_filter(&factory)).await, "sql_filter");
    assert!(
        fails(conformance::correlation_filter(&factory)).await,
        "correlation_filter"
    );
    assert!(
        fails(conformance::tenant_isolation(&factory)).await,
        "tenant_isolation"
    );
    assert!(
        fails(conformance::absent_property_does_not_match(&factory)).await,
        "absent_property_does_not_match"
    );
    assert!(
        fails(conformance::ensure_subscription_is_idempotent_and_updates_filter(&factory)).await,
        "ensure_subscription_is_idempotent_and_updates_filter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_case_catches_ignored_deliver_at() {
    let factory = WrappedFactory::new(Faults {
        ignore_deliver_at: true,
        ..Faults::default()
    });
    assert!(fails(conformance::scheduled_delivery(&factory)).await);
}

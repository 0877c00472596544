//! # eventyard
//!
//! The event backbone for Rust services: a canonical envelope, topics and filtered
//! subscriptions, peek-lock delivery with retries and dead-lettering, and automatic propagation
//! of trace, correlation, tenant and causation — over an embedded SQLite broker by default, or a
//! distributed broker chosen by URL.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use eventyard::{Bus, Event, HandlerError, MessageContext, TenantId};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! #[serde(rename_all = "camelCase")]
//! struct ArtifactCreated { artifact_id: String }
//! impl Event for ArtifactCreated { const EVENT_TYPE: &'static str = "ArtifactCreated"; }
//!
//! let bus = Bus::new(eventyard::connect("sqlite://eventyard.db").await?);
//! bus.subscription("knowledge.ingest")
//!     .handle(|e: ArtifactCreated, ctx: MessageContext| async move {
//!         println!("{} from trace {}", e.artifact_id, ctx.envelope().trace_id);
//!         Ok::<_, HandlerError>(())
//!     })
//!     .await?;
//! let tenant = TenantId::parse("connectsoft")?;
//! bus.publish(&tenant, &ArtifactCreated { artifact_id: "art-1".into() }).await?;
//! bus.shutdown().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

pub use eventyard_core::{self as core, *};
pub use eventyard_lineage as lineage;
#[cfg(feature = "nats")]
pub use eventyard_nats as nats;
#[cfg(feature = "postgres")]
pub use eventyard_postgres as postgres;
#[cfg(feature = "rabbitmq")]
pub use eventyard_rabbitmq as rabbitmq;
pub use eventyard_runtime::{self as runtime, *};

/// Sagas: the store contract and its records (`eventyard-core`) and the engine, definitions and
/// timeout scheduler (`eventyard-saga`) under one name.
pub mod saga {
    pub use eventyard_core::saga::*;
    pub use eventyard_saga::*;
}
#[cfg(feature = "sqlite")]
pub use eventyard_sqlite as sqlite;

/// Opens a transport by URL:
/// - `sqlite://PATH[?synchronous=full|normal|off]` (or a bare file path): the embedded broker
///   (feature `sqlite`, default);
/// - `nats://host:port[?prefix=…]`: NATS JetStream (feature `nats`, default);
/// - `amqp://user:pass@host:port/vhost[?…]`: RabbitMQ (feature `rabbitmq`, default).
///
/// A broker that is down gives `TransportError::Unavailable` after a bounded retry.
pub async fn connect(url: &str) -> Result<Arc<dyn Transport>, TransportError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" | "" => Ok(Arc::new(eventyard_sqlite::SqliteBroker::open_url(url)?)),
        #[cfg(feature = "nats")]
        "nats" => Ok(Arc::new(
            eventyard_nats::NatsTransport::connect_url(url).await?,
        )),
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => Ok(Arc::new(
            eventyard_rabbitmq::AmqpTransport::connect_url(url).await?,
        )),
        // Reached for schemes whose backend feature is disabled in this build.
        #[allow(unreachable_patterns)]
        "amqp" | "amqps" | "nats" | "sb" | "sqlite" => Err(TransportError::Config(format!(
            "`{url}`: the {scheme} transport is not available in this build"
        ))),
        other => Err(TransportError::Config(format!(
            "`{url}`: unknown transport scheme `{other}` (use sqlite://PATH, nats://HOST:PORT or amqp://HOST:PORT)"
        ))),
    }
}

/// The README's code examples, compiled as doc tests so the README stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

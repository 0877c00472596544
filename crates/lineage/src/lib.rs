//! eventyard lineage: the causal graph of a run, rebuilt from its envelopes (SPEC §4), and
//! renderers for it. Pure: no I/O.
//!
//! traceId groups a whole lifecycle, correlationId one workflow, and causationId is the parent
//! edge. [`CausalGraph::from_envelopes`] links an archive of envelopes into a forest; queries
//! answer ancestors, descendants, timing and the critical path; renderers print an aligned
//! tree ([`CausalGraph::render_tree`]), JSON ([`CausalGraph::render_json`]) and a Mermaid
//! flowchart ([`CausalGraph::render_mermaid`]).
//!
//! ```
//! use eventyard_core::{Envelope, EventType, TenantId};
//! use eventyard_lineage::{CausalGraph, TreeOptions};
//! use serde_json::json;
//!
//! let created = Envelope::new(
//!     EventType::event("ProjectCreated").unwrap(),
//!     TenantId::parse("connectsoft").unwrap(),
//!     json!({}),
//! );
//! let started = created.child(EventType::event("WorkflowInstanceStarted").unwrap(), json!({}));
//! let graph = CausalGraph::from_envelopes([created.clone(), started.clone()]);
//! assert_eq!(graph.parent(&started.event_id).unwrap().id(), &created.event_id);
//! assert_eq!(graph.descendants(&created.event_id).len(), 1);
//! print!("{}", graph.render_tree(&TreeOptions::default()));
//! ```

mod graph;
mod query;
mod render;
mod timing;

#[cfg(test)]
mod testutil;

pub use graph::{CausalGraph, Node, RootKind};
pub use render::{TreeOptions, short_id, short_id_with};
pub use timing::{CriticalPath, millis};

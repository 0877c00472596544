//! Structural queries: roots, parents, children, ancestors, descendants, depth, and grouping by
//! traceId (lifecycle) and correlationId (workflow).

use eventyard_core::{CorrelationId, EventId, TraceId};

use crate::graph::{CausalGraph, Node};

impl CausalGraph {
    /// Nodes without a parent in the graph (roots, orphans, broken cycles), in time order.
    pub fn roots(&self) -> Vec<&Node> {
        self.roots.iter().map(|&i| &self.nodes[i]).collect()
    }

    /// Nodes whose cause is missing from the graph, in time order.
    pub fn orphans(&self) -> Vec<&Node> {
        self.nodes.iter().filter(|n| n.is_orphan()).collect()
    }

    /// Direct children of an event, in time order (empty for a leaf or an unknown id).
    pub fn children(&self, id: &EventId) -> Vec<&Node> {
        self.idx(id)
            .map(|i| {
                self.nodes[i]
                    .children
                    .iter()
                    .map(|&c| &self.nodes[c])
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The direct cause of an event, when it is in the graph.
    pub fn parent(&self, id: &EventId) -> Option<&Node> {
        let i = self.idx(id)?;
        self.nodes[i].parent.map(|p| &self.nodes[p])
    }

    /// The chain of causes of an event, nearest first, ending at its root (empty for a root or
    /// an unknown id).
    pub fn ancestors(&self, id: &EventId) -> Vec<&Node> {
        let mut out = Vec::new();
        let mut cur = self.idx(id).and_then(|i| self.nodes[i].parent);
        while let Some(i) = cur {
            out.push(&self.nodes[i]);
            cur = self.nodes[i].parent;
        }
        out
    }

    /// Everything an event caused, directly or not, depth-first in time order (each node before
    /// its children; the event itself excluded; empty for an unknown id).
    pub fn descendants(&self, id: &EventId) -> Vec<&Node> {
        let Some(start) = self.idx(id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        self.walk_preorder(start, |i| out.push(&self.nodes[i]));
        out.remove(0);
        out
    }

    /// Distance from the event's root (0 for a root), or `None` for an unknown id.
    pub fn depth(&self, id: &EventId) -> Option<usize> {
        self.get(id).map(Node::depth)
    }

    /// The root of the tree an event belongs to.
    pub fn root_of(&self, id: &EventId) -> Option<&Node> {
        let mut i = self.idx(id)?;
        while let Some(p) = self.nodes[i].parent {
            i = p;
        }
        Some(&self.nodes[i])
    }

    /// The events of one lifecycle (traceId), in time order.
    pub fn by_trace(&self, trace: &TraceId) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| &n.envelope.trace_id == trace)
            .collect()
    }

    /// The distinct traceIds, ordered by their first event.
    pub fn traces(&self) -> Vec<&TraceId> {
        let mut seen = std::collections::HashSet::new();
        self.nodes
            .iter()
            .map(|n| &n.envelope.trace_id)
            .filter(|t| seen.insert(*t))
            .collect()
    }

    /// The events of one workflow (correlationId), in time order.
    pub fn by_correlation(&self, correlation: &CorrelationId) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| &n.envelope.correlation_id == correlation)
            .collect()
    }

    /// The distinct correlationIds, ordered by their first event.
    pub fn correlations(&self) -> Vec<&CorrelationId> {
        let mut seen = std::collections::HashSet::new();
        self.nodes
            .iter()
            .map(|n| &n.envelope.correlation_id)
            .filter(|c| seen.insert(*c))
            .collect()
    }

    /// Calls `visit` on `start` and everything below it, each node before its children,
    /// children in time order. Iterative: safe on arbitrarily deep chains.
    pub(crate) fn walk_preorder(&self, start: usize, mut visit: impl FnMut(usize)) {
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            visit(i);
            stack.extend(self.nodes[i].children.iter().rev());
        }
    }

    /// Every node index in tree pre-order: roots in time order, each followed by its subtree.
    pub(crate) fn preorder(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for &r in &self.roots {
            self.walk_preorder(r, |i| out.push(i));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::graph::CausalGraph;
    use crate::testutil::*;
    use eventyard_core::{CorrelationId, EventId, TraceId};

    fn ids(nodes: Vec<&crate::Node>) -> Vec<EventId> {
        nodes.into_iter().map(|n| n.id().clone()).collect()
    }

    #[test]
    fn family_queries() {
        // a ─ b ─ d
        //   └ c
        let a = root("ProjectCreated", 0);
        let b = child(&a, "WorkflowInstanceStarted", 10);
        let c = child(&a, "BlueprintValidated", 20);
        let d = child(&b, "WorkflowStepReady", 15);
        let g = CausalGraph::from_slice(&[d.clone(), c.clone(), b.clone(), a.clone()]);

        assert_eq!(ids(g.roots()), vec![a.event_id.clone()]);
        assert_eq!(
            ids(g.children(&a.event_id)),
            vec![b.event_id.clone(), c.event_id.clone()]
        );
        assert!(g.children(&d.event_id).is_empty());
        assert_eq!(g.parent(&d.event_id).unwrap().id(), &b.event_id);
        assert!(g.parent(&a.event_id).is_none());
        assert_eq!(
            ids(g.ancestors(&d.event_id)),
            vec![b.event_id.clone(), a.event_id.clone()]
        );
        assert!(g.ancestors(&a.event_id).is_empty());
        assert_eq!(
            ids(g.descendants(&a.event_id)),
            vec![b.event_id.clone(), d.event_id.clone(), c.event_id.clone()]
        );
        assert!(g.descendants(&c.event_id).is_empty());
        assert_eq!(g.depth(&a.event_id), Some(0));
        assert_eq!(g.depth(&d.event_id), Some(2));
        assert_eq!(g.root_of(&d.event_id).unwrap().id(), &a.event_id);
    }

    #[test]
    fn unknown_ids_are_empty_not_errors() {
        let a = root("ProjectCreated", 0);
        let g = CausalGraph::from_slice(std::slice::from_ref(&a));
        let unknown = EventId::generate();
        assert!(g.children(&unknown).is_empty());
        assert!(g.parent(&unknown).is_none());
        assert!(g.ancestors(&unknown).is_empty());
        assert!(g.descendants(&unknown).is_empty());
        assert_eq!(g.depth(&unknown), None);
        assert!(g.get(&unknown).is_none());
        assert!(!g.contains(&unknown));
        assert!(g.contains(&a.event_id));
        assert!(g.root_of(&unknown).is_none());
    }

    #[test]
    fn grouping_by_trace_and_correlation() {
        let a = root("ProjectCreated", 0)
            .with_trace(TraceId::parse("trace-one").unwrap())
            .with_correlation(CorrelationId::parse("corr-bootstrap").unwrap());
        let b = child(&a, "WorkflowInstanceStarted", 1);
        let c = child(&b, "AgentTaskAssigned", 2)
            .with_correlation(CorrelationId::parse("corr-agent").unwrap());
        let other = root("TenantProvisioned", -5).with_trace(TraceId::parse("trace-two").unwrap());
        let g = CausalGraph::from_slice(&[a.clone(), b.clone(), c.clone(), other.clone()]);

        let traces: Vec<&str> = g.traces().iter().map(|t| t.as_str()).collect();
        assert_eq!(traces, ["trace-two", "trace-one"]);
        assert_eq!(
            ids(g.by_trace(&TraceId::parse("trace-one").unwrap())),
            vec![a.event_id.clone(), b.event_id.clone(), c.event_id.clone()]
        );
        assert!(
            g.by_trace(&TraceId::parse("trace-none").unwrap())
                .is_empty()
        );
        let corrs: Vec<&str> = g.correlations().iter().map(|c| c.as_str()).collect();
        assert_eq!(corrs.len(), 3);
        assert_eq!(corrs[1..], ["corr-bootstrap", "corr-agent"]);
        assert_eq!(
            ids(g.by_correlation(&CorrelationId::parse("corr-bootstrap").unwrap())),
            vec![a.event_id.clone(), b.event_id.clone()]
        );
    }

    #[test]
    fn orphans_are_listed() {
        let a = root("ProjectCreated", 0);
        let b = child(&a, "BlueprintValidated", 1);
        let c = child(&b, "AgentTaskAssigned", 2);
        let g = CausalGraph::from_slice(&[a.clone(), c.clone()]);
        assert_eq!(ids(g.orphans()), vec![c.event_id.clone()]);
    }
}

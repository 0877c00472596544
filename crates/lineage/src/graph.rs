//! The causal graph itself: one [`Node`] per distinct event, linked by causation edges.

use std::collections::{HashMap, HashSet};

use eventyard_core::{Envelope, EventId};

/// Why a node has no parent in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RootKind {
    /// A genuine root event: its envelope has no `causationId`.
    Root,
    /// Its cause is not in the set (or belongs to another tenant, whose events never join this
    /// tenant's graph); the node is treated as a root.
    Orphan,
    /// Its causation edge would have closed a cycle (impossible for well-formed envelopes, so
    /// the data is bad); the edge was dropped at the earliest event of the cycle.
    CycleBroken,
}

/// One event of the graph with its place in it.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) envelope: Envelope,
    pub(crate) parent: Option<usize>,
    pub(crate) children: Vec<usize>,
    pub(crate) depth: usize,
    pub(crate) root_kind: Option<RootKind>,
}

impl Node {
    /// The event's envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The event's id.
    pub fn id(&self) -> &EventId {
        &self.envelope.event_id
    }

    /// The event type name.
    pub fn event_type(&self) -> &str {
        self.envelope.event_type.as_str()
    }

    /// Distance from this node's root (a root has depth 0).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// True when the node has no parent in the graph (a root, an orphan or a broken cycle).
    pub fn is_root(&self) -> bool {
        self.parent.is_none()
    }

    /// Why the node has no parent, or `None` when it has one.
    pub fn root_kind(&self) -> Option<RootKind> {
        self.root_kind
    }

    /// True when the envelope names a cause that is not in the graph.
    pub fn is_orphan(&self) -> bool {
        self.root_kind == Some(RootKind::Orphan)
    }

    /// Number of direct children.
    pub fn child_count(&self) -> usize {
        self.children.len()
    }
}

/// The causal graph of a run, built from a set of envelopes (SPEC §4): causationId is the parent
/// edge; traceId and correlationId group events into lifecycles and workflows.
///
/// The graph is a forest by construction: every event has at most one cause. Building it
/// tolerates bad data — duplicate events are kept once, an event whose cause is absent becomes
/// an [orphan](RootKind::Orphan) root, and a forged causation cycle is cut
/// ([`RootKind::CycleBroken`]) — so no query ever loops. All traversals are iterative.
///
/// Nodes are ordered by `occurredAt` (ties by eventId); children likewise.
#[derive(Debug, Clone, Default)]
pub struct CausalGraph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) index: HashMap<EventId, usize>,
    pub(crate) roots: Vec<usize>,
    pub(crate) duplicates: usize,
}

impl CausalGraph {
    /// Builds the graph. Of several envelopes with the same eventId the first is kept.
    pub fn from_envelopes(envelopes: impl IntoIterator<Item = Envelope>) -> Self {
        let mut seen = HashSet::new();
        let mut duplicates = 0;
        let mut envs: Vec<Envelope> = Vec::new();
        for env in envelopes {
            if seen.insert(env.event_id.clone()) {
                envs.push(env);
            } else {
                duplicates += 1;
            }
        }
        envs.sort_by(|a, b| {
            a.occurred_at
                .cmp(&b.occurred_at)
                .then_with(|| a.event_id.cmp(&b.event_id))
        });
        let index: HashMap<EventId, usize> = envs
            .iter()
            .enumerate()
            .map(|(i, e)| (e.event_id.clone(), i))
            .collect();

        // Tentative parent of each node; a cause in another tenant never links.
        let mut parent: Vec<Option<usize>> = Vec::with_capacity(envs.len());
        let mut kind: Vec<Option<RootKind>> = Vec::with_capacity(envs.len());
        for env in &envs {
            match &env.causation_id {
                None => {
                    parent.push(None);
                    kind.push(Some(RootKind::Root));
                }
                Some(cause) => match index.get(cause) {
                    Some(&p) if envs[p].tenant_id == env.tenant_id => {
                        parent.push(Some(p));
                        kind.push(None);
                    }
                    _ => {
                        parent.push(None);
                        kind.push(Some(RootKind::Orphan));
                    }
                },
            }
        }
        break_cycles(&mut parent, &mut kind);

        let mut nodes: Vec<Node> = envs
            .into_iter()
            .zip(parent.iter().zip(kind))
            .map(|(envelope, (&parent, root_kind))| Node {
                envelope,
                parent,
                children: Vec::new(),
                depth: 0,
                root_kind,
            })
            .collect();
        // Nodes are in time order, so pushing in index order keeps children sorted.
        let mut roots = Vec::new();
        for i in 0..nodes.len() {
            match nodes[i].parent {
                Some(p) => nodes[p].children.push(i),
                None => roots.push(i),
            }
        }
        // Depths, breadth-first from the roots (a forest: each node is reached once).
        let mut queue: std::collections::VecDeque<usize> = roots.iter().copied().collect();
        while let Some(i) = queue.pop_front() {
            let d = nodes[i].depth + 1;
            for k in 0..nodes[i].children.len() {
                let c = nodes[i].children[k];
                nodes[c].depth = d;
                queue.push_back(c);
            }
        }
        CausalGraph {
            nodes,
            index,
            roots,
            duplicates,
        }
    }

    /// Builds the graph from borrowed envelopes (cloned).
    pub fn from_slice(envelopes: &[Envelope]) -> Self {
        Self::from_envelopes(envelopes.iter().cloned())
    }

    /// Number of distinct events.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the graph has no events.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// How many input envelopes were dropped as repeats of an eventId already seen.
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// The node of an event, if it is in the graph.
    pub fn get(&self, id: &EventId) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    /// True when the event is in the graph.
    pub fn contains(&self, id: &EventId) -> bool {
        self.index.contains_key(id)
    }

    /// Every node, in `occurredAt` order.
    pub fn iter(&self) -> std::slice::Iter<'_, Node> {
        self.nodes.iter()
    }

    /// Every envelope, in `occurredAt` order.
    pub fn envelopes(&self) -> impl Iterator<Item = &Envelope> {
        self.nodes.iter().map(|n| &n.envelope)
    }

    pub(crate) fn idx(&self, id: &EventId) -> Option<usize> {
        self.index.get(id).copied()
    }
}

impl FromIterator<Envelope> for CausalGraph {
    fn from_iter<T: IntoIterator<Item = Envelope>>(iter: T) -> Self {
        Self::from_envelopes(iter)
    }
}

impl<'a> IntoIterator for &'a CausalGraph {
    type Item = &'a Node;
    type IntoIter = std::slice::Iter<'a, Node>;
    fn into_iter(self) -> Self::IntoIter {
        self.nodes.iter()
    }
}

impl From<&[Envelope]> for CausalGraph {
    fn from(envelopes: &[Envelope]) -> Self {
        Self::from_slice(envelopes)
    }
}

impl From<Vec<Envelope>> for CausalGraph {
    fn from(envelopes: Vec<Envelope>) -> Self {
        Self::from_envelopes(envelopes)
    }
}

/// Cuts every cycle of the parent relation, in O(n): walking up from each unvisited node, a
/// node met again on the current walk closes a cycle, whose earliest node (lowest index, as
/// nodes are in time order) loses its parent.
fn break_cycles(parent: &mut [Option<usize>], kind: &mut [Option<RootKind>]) {
    const NEW: u8 = 0;
    const ON_WALK: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; parent.len()];
    let mut walk = Vec::new();
    for start in 0..parent.len() {
        if state[start] != NEW {
            continue;
        }
        walk.clear();
        let mut cur = Some(start);
        while let Some(i) = cur {
            match state[i] {
                NEW => {
                    state[i] = ON_WALK;
                    walk.push(i);
                    cur = parent[i];
                }
                ON_WALK => {
                    // The cycle is the part of the walk from `i` on.
                    let pos = walk.iter().position(|&w| w == i).unwrap_or(0);
                    let cut = walk[pos..].iter().copied().min().unwrap_or(i);
                    parent[cut] = None;
                    kind[cut] = Some(RootKind::CycleBroken);
                    break;
                }
                _ => break,
            }
        }
        for &w in &walk {
            state[w] = DONE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn empty_graph() {
        let g = CausalGraph::from_envelopes(Vec::new());
        assert!(g.is_empty());
        assert_eq!(g.len(), 0);
        assert!(g.roots().is_empty());
        assert_eq!(g.span(), None);
        assert!(g.critical_path().is_none());
    }

    #[test]
    fn links_children_to_parents_in_time_order() {
        let a = root("ProjectCreated", 0);
        let b = child(&a, "WorkflowInstanceStarted", 5);
        let c = child(&a, "BlueprintValidated", 2);
        // Input order is irrelevant.
        let g = CausalGraph::from_envelopes(vec![b.clone(), c.clone(), a.clone()]);
        assert_eq!(g.len(), 3);
        let kids: Vec<_> = g
            .children(&a.event_id)
            .iter()
            .map(|n| n.id().clone())
            .collect();
        assert_eq!(kids, vec![c.event_id.clone(), b.event_id.clone()]);
        assert_eq!(
            g.get(&a.event_id).unwrap().root_kind(),
            Some(RootKind::Root)
        );
        assert_eq!(g.get(&b.event_id).unwrap().root_kind(), None);
        assert_eq!(g.get(&b.event_id).unwrap().depth(), 1);
        let order: Vec<_> = g.iter().map(|n| n.event_type().to_owned()).collect();
        assert_eq!(
            order,
            [
                "ProjectCreated",
                "BlueprintValidated",
                "WorkflowInstanceStarted"
            ]
        );
    }

    #[test]
    fn duplicates_are_kept_once() {
        let a = root("ProjectCreated", 0);
        let b = child(&a, "BlueprintValidated", 1);
        let g = CausalGraph::from_envelopes(vec![a.clone(), b.clone(), b.clone(), a.clone()]);
        assert_eq!(g.len(), 2);
        assert_eq!(g.duplicates(), 2);
        assert_eq!(g.children(&a.event_id).len(), 1);
        assert_eq!(g.roots().len(), 1);
    }

    #[test]
    fn missing_parent_makes_an_orphan_root() {
        let a = root("ProjectCreated", 0);
        let b = child(&a, "BlueprintValidated", 1);
        let c = child(&b, "AgentTaskAssigned", 2);
        let g = CausalGraph::from_envelopes(vec![a.clone(), c.clone()]);
        let c_node = g.get(&c.event_id).unwrap();
        assert!(c_node.is_root());
        assert!(c_node.is_orphan());
        assert_eq!(c_node.depth(), 0);
        assert_eq!(g.roots().len(), 2);
        assert!(g.parent(&c.event_id).is_none());
        assert!(!g.get(&a.event_id).unwrap().is_orphan());
    }

    #[test]
    fn cross_tenant_cause_never_links() {
        let a = root("ProjectCreated", 0);
        let mut b = child(&a, "BlueprintValidated", 1);
        b.tenant_id = eventyard_core::TenantId::parse("other").unwrap();
        let g = CausalGraph::from_slice(&[a.clone(), b.clone()]);
        assert!(g.get(&b.event_id).unwrap().is_orphan());
        assert!(g.children(&a.event_id).is_empty());
    }

    #[test]
    fn forged_cycles_are_cut_and_queries_terminate() {
        // a <- b <- c <- a (a claims c as its cause), plus a self-caused d.
        let mut a = root("ProjectCreated", 0);
        let b = child(&a, "BlueprintValidated", 1);
        let c = child(&b, "AgentTaskAssigned", 2);
        a.causation_id = Some(c.event_id.clone());
        let mut d = root("UsageRecorded", 3);
        d.causation_id = Some(d.event_id.clone());
        let g = CausalGraph::from_slice(&[c.clone(), a.clone(), d.clone(), b.clone()]);
        assert_eq!(g.len(), 4);
        assert_eq!(
            g.get(&a.event_id).unwrap().root_kind(),
            Some(RootKind::CycleBroken)
        );
        assert_eq!(
            g.get(&d.event_id).unwrap().root_kind(),
            Some(RootKind::CycleBroken)
        );
        assert_eq!(g.roots().len(), 2);
        assert_eq!(g.descendants(&a.event_id).len(), 2);
        assert_eq!(g.ancestors(&c.event_id).len(), 2);
        assert_eq!(g.depth(&c.event_id), Some(2));
        assert!(g.render_tree(&Default::default()).contains("cycle"));
    }

    #[test]
    fn long_chains_do_not_overflow_the_stack() {
        let mut envs = vec![root("ProjectCreated", 0)];
        for i in 1..20_000 {
            let next = child(envs.last().unwrap(), "UsageRecorded", i);
            envs.push(next);
        }
        let last = envs.last().unwrap().event_id.clone();
        let first = envs[0].event_id.clone();
        let g = CausalGraph::from_envelopes(envs);
        assert_eq!(g.depth(&last), Some(19_999));
        assert_eq!(g.ancestors(&last).len(), 19_999);
        assert_eq!(g.descendants(&first).len(), 19_999);
        assert_eq!(g.critical_path().unwrap().nodes.len(), 20_000);
        assert_eq!(g.render_tree(&Default::default()).lines().count(), 20_000);
        assert_eq!(g.to_json_value()["nodes"].as_array().unwrap().len(), 20_000);
    }
}

//! Timing: span of the run, offsets of events, and the critical path.

use chrono::{DateTime, TimeDelta, Utc};
use eventyard_core::EventId;

use crate::graph::{CausalGraph, Node};

/// A duration in milliseconds, with sub-millisecond precision.
pub fn millis(d: TimeDelta) -> f64 {
    match d.num_nanoseconds() {
        Some(ns) => ns as f64 / 1_000_000.0,
        // Beyond ±292 years of nanoseconds: millisecond precision is plenty.
        None => d.num_milliseconds() as f64,
    }
}

/// The longest causal chain of the run, by time: from a root to the latest event it (directly
/// or transitively) caused.
#[derive(Debug, Clone)]
pub struct CriticalPath<'a> {
    /// The chain, root first, each node the cause of the next.
    pub nodes: Vec<&'a Node>,
    /// From the root's `occurredAt` to the last node's.
    pub duration: TimeDelta,
}

impl CriticalPath<'_> {
    /// The eventIds of the chain, root first.
    pub fn ids(&self) -> Vec<&EventId> {
        self.nodes.iter().map(|n| n.id()).collect()
    }

    /// The duration in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        millis(self.duration)
    }
}

impl CausalGraph {
    /// `occurredAt` of the first event.
    pub fn start(&self) -> Option<DateTime<Utc>> {
        self.nodes.first().map(|n| n.envelope.occurred_at)
    }

    /// `occurredAt` of the last event.
    pub fn end(&self) -> Option<DateTime<Utc>> {
        self.nodes.last().map(|n| n.envelope.occurred_at)
    }

    /// From the first event's `occurredAt` to the last one's (`None` when empty).
    pub fn span(&self) -> Option<TimeDelta> {
        Some(self.end()? - self.start()?)
    }

    /// Time from the first event of the graph to this one, in milliseconds.
    pub fn offset_ms(&self, id: &EventId) -> Option<f64> {
        let n = self.get(id)?;
        Some(millis(n.envelope.occurred_at - self.start()?))
    }

    /// Time from an event's cause to the event, in milliseconds (negative under clock skew;
    /// `None` for a root or an unknown id).
    pub fn since_parent_ms(&self, id: &EventId) -> Option<f64> {
        let n = self.get(id)?;
        let p = self.parent(id)?;
        Some(millis(n.envelope.occurred_at - p.envelope.occurred_at))
    }

    /// The longest chain by time: over every root, the path from the root to the latest event
    /// among its descendants, following causation edges; the longest such duration wins (ties:
    /// the longer chain, then the earlier root). `None` for an empty graph; a lone event is a
    /// path of one with zero duration.
    pub fn critical_path(&self) -> Option<CriticalPath<'_>> {
        let best = self.latest_in_subtree();
        let key = |root: usize| {
            let b = best[root];
            let d = self.nodes[b].envelope.occurred_at - self.nodes[root].envelope.occurred_at;
            (d, self.nodes[b].depth)
        };
        let mut winner: Option<usize> = None;
        for &r in &self.roots {
            if winner.is_none_or(|w| key(r) > key(w)) {
                winner = Some(r);
            }
        }
        let root = winner?;
        let last = best[root];
        let mut nodes = vec![&self.nodes[last]];
        let mut cur = self.nodes[last].parent;
        while let Some(i) = cur {
            nodes.push(&self.nodes[i]);
            cur = self.nodes[i].parent;
        }
        nodes.reverse();
        Some(CriticalPath {
            nodes,
            duration: key(root).0,
        })
    }

    /// For each node, the index of the latest event in its subtree (itself included); ties go
    /// to the deeper node, then the earlier one.
    fn latest_in_subtree(&self) -> Vec<usize> {
        let mut best: Vec<usize> = (0..self.nodes.len()).collect();
        let later = |a: usize, b: usize| {
            let (na, nb) = (&self.nodes[a], &self.nodes[b]);
            (na.envelope.occurred_at, na.depth) > (nb.envelope.occurred_at, nb.depth)
        };
        // Reverse pre-order visits every child before its parent.
        for &i in self.preorder().iter().rev() {
            for &c in &self.nodes[i].children {
                if later(best[c], best[i]) {
                    best[i] = best[c];
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn span_and_offsets() {
        let a = root("ProjectCreated", 100);
        let b = child(&a, "WorkflowInstanceStarted", 101);
        let mut c = child(&b, "WorkflowStepReady", 0);
        c.occurred_at = at(103) + TimeDelta::microseconds(500);
        let g = CausalGraph::from_slice(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(g.start(), Some(at(100)));
        assert_eq!(g.span(), Some(TimeDelta::microseconds(3500)));
        assert_eq!(g.offset_ms(&a.event_id), Some(0.0));
        assert_eq!(g.offset_ms(&c.event_id), Some(3.5));
        assert_eq!(g.since_parent_ms(&c.event_id), Some(2.5));
        assert_eq!(g.since_parent_ms(&a.event_id), None);
    }

    #[test]
    fn clock_skew_gives_negative_delta() {
        let a = root("ProjectCreated", 10);
        let b = child(&a, "BlueprintValidated", 7);
        let g = CausalGraph::from_slice(&[a.clone(), b.clone()]);
        assert_eq!(g.since_parent_ms(&b.event_id), Some(-3.0));
        assert_eq!(g.roots().len(), 1);
        // The latest event is the root itself.
        let cp = g.critical_path().unwrap();
        assert_eq!(cp.ids(), vec![&a.event_id]);
        assert_eq!(cp.duration, TimeDelta::zero());
    }

    #[test]
    fn critical_path_follows_the_latest_descendant() {
        // a(0) ─ b(1) ─ d(50)
        //      └ c(30) ─ e(31) ─ f(40)
        // r2(5) ─ x(60)      (55 ms: the longest)
        let a = root("ProjectCreated", 0);
        let b = child(&a, "WorkflowInstanceStarted", 1);
        let c = child(&a, "BlueprintValidated", 30);
        let d = child(&b, "WorkflowStepReady", 50);
        let e = child(&c, "AgentTaskAssigned", 31);
        let f = child(&e, "AgentTaskCompleted", 40);
        let g1 = CausalGraph::from_slice(&[
            a.clone(),
            b.clone(),
            c.clone(),
            d.clone(),
            e.clone(),
            f.clone(),
        ]);
        let cp = g1.critical_path().unwrap();
        assert_eq!(cp.ids(), vec![&a.event_id, &b.event_id, &d.event_id]);
        assert_eq!(cp.duration_ms(), 50.0);

        let r2 = root("TenantProvisioned", 5);
        let x = child(&r2, "UsageRecorded", 60);
        let g2 = CausalGraph::from_slice(&[
            a.clone(),
            b.clone(),
            c.clone(),
            d.clone(),
            e.clone(),
            f.clone(),
            r2.clone(),
            x.clone(),
        ]);
        let cp = g2.critical_path().unwrap();
        assert_eq!(cp.ids(), vec![&r2.event_id, &x.event_id]);
        assert_eq!(cp.duration, TimeDelta::milliseconds(55));
    }

    #[test]
    fn critical_path_ties_prefer_the_longer_chain() {
        let a = root("ProjectCreated", 0);
        let b = child(&a, "BlueprintValidated", 10);
        let c = child(&b, "AgentTaskAssigned", 10);
        let g = CausalGraph::from_slice(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(
            g.critical_path().unwrap().ids(),
            vec![&a.event_id, &b.event_id, &c.event_id]
        );
    }

    #[test]
    fn lone_event() {
        let a = root("ProjectCreated", 0);
        let g = CausalGraph::from_slice(std::slice::from_ref(&a));
        let cp = g.critical_path().unwrap();
        assert_eq!(cp.nodes.len(), 1);
        assert_eq!(cp.duration_ms(), 0.0);
        assert_eq!(g.span(), Some(TimeDelta::zero()));
    }

    #[test]
    fn millis_precision() {
        assert_eq!(millis(TimeDelta::microseconds(1234)), 1.234);
        assert_eq!(
            millis(TimeDelta::days(365 * 400)),
            365.0 * 400.0 * 86_400_000.0
        );
    }
}

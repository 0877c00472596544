//! The JSON rendering.

use chrono::SecondsFormat;
use serde_json::{Value, json};

use crate::graph::{CausalGraph, RootKind};
use crate::timing::millis;

fn root_kind_name(kind: Option<RootKind>) -> Value {
    match kind {
        None => Value::Null,
        Some(RootKind::Root) => "root".into(),
        Some(RootKind::Orphan) => "orphan".into(),
        Some(RootKind::CycleBroken) => "cycleBroken".into(),
    }
}

impl CausalGraph {
    /// The graph as a JSON value (camelCase, like the envelope):
    ///
    /// ```json
    /// {
    ///   "events": 2, "duplicates": 0,
    ///   "start": "2025-01-01T00:00:00Z", "spanMs": 1.2,
    ///   "roots": ["evt-…"],
    ///   "criticalPath": { "ids": ["evt-…", "evt-…"], "durationMs": 1.2 },
    ///   "nodes": [
    ///     { "id": "evt-…", "type": "ProjectCreated", "tenantId": "connectsoft",
    ///       "traceId": "trace-…", "correlationId": "corr-…", "causationId": null,
    ///       "parent": null, "children": ["evt-…"], "root": "root", "depth": 0,
    ///       "occurredAt": "…", "offsetMs": 0.0, "sinceParentMs": null }
    ///   ]
    /// }
    /// ```
    ///
    /// `nodes` are in time order. `parent` is the cause when it is in the graph; `causationId`
    /// is what the envelope claims. `root` is `root`, `orphan`, `cycleBroken`, or `null` for an
    /// event with a parent. Empty graph: `start`/`criticalPath` are `null`, `spanMs` is 0.
    pub fn to_json_value(&self) -> Value {
        let start = self.start();
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                let env = &n.envelope;
                let parent = n.parent.map(|p| &self.nodes[p]);
                json!({
                    "id": env.event_id.as_str(),
                    "type": env.event_type.as_str(),
                    "tenantId": env.tenant_id.as_str(),
                    "traceId": env.trace_id.as_str(),
                    "correlationId": env.correlation_id.as_str(),
                    "causationId": env.causation_id.as_ref().map(|c| c.as_str()),
                    "parent": parent.map(|p| p.id().as_str()),
                    "children": n.children.iter().map(|&c| self.nodes[c].id().as_str()).collect::<Vec<_>>(),
                    "root": root_kind_name(n.root_kind),
                    "depth": n.depth,
                    "occurredAt": env.occurred_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                    "offsetMs": start.map(|s| millis(env.occurred_at - s)),
                    "sinceParentMs": parent.map(|p| millis(env.occurred_at - p.envelope.occurred_at)),
                })
            })
            .collect();
        let critical = self.critical_path().map(|cp| {
            json!({
                "ids": cp.ids().iter().map(|id| id.as_str()).collect::<Vec<_>>(),
                "durationMs": cp.duration_ms(),
            })
        });
        json!({
            "events": self.len(),
            "duplicates": self.duplicates,
            "start": start.map(|s| s.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            "spanMs": self.span().map(millis).unwrap_or(0.0),
            "roots": self.roots().iter().map(|n| n.id().as_str()).collect::<Vec<_>>(),
            "criticalPath": critical,
            "nodes": nodes,
        })
    }

    /// [`CausalGraph::to_json_value`] as pretty-printed JSON text.
    pub fn render_json(&self) -> String {
        // Serializing a `Value` cannot fail.
        serde_json::to_string_pretty(&self.to_json_value()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use crate::graph::CausalGraph;
    use crate::testutil::*;
    use serde_json::{Value, json};

    #[test]
    fn json_shape() {
        let a = root("ProjectCreated", 0);
        let b = child(&a, "WorkflowInstanceStarted", 2);
        let lost = child(&b, "AgentTaskAssigned", 3);
        let o = child(&lost, "AgentExecutionStarted", 4);
        let g = CausalGraph::from_slice(&[a.clone(), b.clone(), o.clone(), a.clone()]);
        let v: Value = serde_json::from_str(&g.render_json()).unwrap();
        assert_eq!(v, g.to_json_value());
        assert_eq!(v["events"], 3);
        assert_eq!(v["duplicates"], 1);
        assert_eq!(v["spanMs"], 4.0);
        assert_eq!(
            v["roots"],
            json!([a.event_id.as_str(), o.event_id.as_str()])
        );
        assert_eq!(
            v["criticalPath"],
            json!({"ids": [a.event_id.as_str(), b.event_id.as_str()], "durationMs": 2.0})
        );
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0]["id"], a.event_id.as_str());
        assert_eq!(nodes[0]["type"], "ProjectCreated");
        assert_eq!(nodes[0]["parent"], Value::Null);
        assert_eq!(nodes[0]["children"], json!([b.event_id.as_str()]));
        assert_eq!(nodes[0]["root"], "root");
        assert_eq!(nodes[0]["offsetMs"], 0.0);
        assert_eq!(nodes[0]["sinceParentMs"], Value::Null);
        assert_eq!(nodes[1]["parent"], a.event_id.as_str());
        assert_eq!(nodes[1]["root"], Value::Null);
        assert_eq!(nodes[1]["depth"], 1);
        assert_eq!(nodes[1]["offsetMs"], 2.0);
        assert_eq!(nodes[1]["sinceParentMs"], 2.0);
        assert_eq!(nodes[2]["root"], "orphan");
        assert_eq!(nodes[2]["parent"], Value::Null);
        assert_eq!(nodes[2]["causationId"], lost.event_id.as_str());
        assert_eq!(nodes[2]["tenantId"], "t");
        assert_eq!(nodes[2]["occurredAt"], "2025-01-01T00:00:00.004Z");
    }

    #[test]
    fn empty_json() {
        let v = CausalGraph::default().to_json_value();
        assert_eq!(v["events"], 0);
        assert_eq!(v["criticalPath"], Value::Null);
        assert_eq!(v["nodes"], json!([]));
    }
}

//! The Mermaid flowchart rendering.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::graph::{CausalGraph, RootKind};
use crate::render::{fmt_ms, short_id_with, unique_tail};
use crate::timing::millis;

impl CausalGraph {
    /// Renders a Mermaid `flowchart LR` in the style of the seed document: one node per event
    /// (`e1`, `e2`, … in time order) labelled with its type, its cause and its time since the
    /// first event; one edge per causation link, labelled with the time since the cause.
    /// Critical-path edges are drawn thick and red; orphans and broken cycles dashed.
    ///
    /// ```text
    /// flowchart LR
    ///     e1["ProjectCreated<br/>causation: none<br/>+0.0ms"]
    ///     e2["BlueprintValidated<br/>causation: e1<br/>+1.2ms"]
    ///     e1 -->|+1.2ms| e2
    ///     linkStyle 0 stroke:#d33,stroke-width:3px
    /// ```
    pub fn render_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        if self.nodes.is_empty() {
            return out;
        }
        let tail = unique_tail(self.nodes.iter().map(|n| n.id().as_str()));
        let start = self.nodes[0].envelope.occurred_at;
        let name = |i: usize| format!("e{}", i + 1);
        let mut dashed = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let env = &n.envelope;
            let cause = match (n.parent, n.root_kind, &env.causation_id) {
                (Some(p), _, _) => name(p),
                (None, Some(RootKind::Orphan), Some(c)) => {
                    dashed.push(name(i));
                    format!("{} (missing)", short_id_with(c.as_str(), tail))
                }
                (None, Some(RootKind::CycleBroken), Some(c)) => {
                    dashed.push(name(i));
                    format!("{} (cycle)", short_id_with(c.as_str(), tail))
                }
                _ => "none".to_owned(),
            };
            let _ = writeln!(
                out,
                "    {}[\"{}<br/>causation: {}<br/>{}\"]",
                name(i),
                escape(env.event_type.as_str()),
                escape(&cause),
                fmt_ms(millis(env.occurred_at - start)),
            );
        }
        let critical: HashSet<usize> = self
            .critical_path()
            .map(|cp| cp.nodes.iter().filter_map(|n| self.idx(n.id())).collect())
            .unwrap_or_default();
        let mut edge = 0usize;
        let mut critical_edges = Vec::new();
        for i in self.preorder() {
            let n = &self.nodes[i];
            for &c in &n.children {
                let delta = millis(self.nodes[c].envelope.occurred_at - n.envelope.occurred_at);
                let _ = writeln!(out, "    {} -->|{}| {}", name(i), fmt_ms(delta), name(c));
                if critical.contains(&i) && critical.contains(&c) {
                    critical_edges.push(edge.to_string());
                }
                edge += 1;
            }
        }
        if !critical_edges.is_empty() {
            let _ = writeln!(
                out,
                "    linkStyle {} stroke:#d33,stroke-width:3px",
                critical_edges.join(",")
            );
        }
        if !dashed.is_empty() {
            out.push_str("    classDef detached stroke-dasharray: 5 5\n");
            let _ = writeln!(out, "    class {} detached", dashed.join(","));
        }
        out
    }
}

/// Makes text safe inside a quoted Mermaid label.
fn escape(text: &str) -> String {
    text.replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

#[cfg(test)]
mod tests {
    use crate::graph::CausalGraph;
    use crate::testutil::*;

    #[test]
    fn seed_style_chain() {
        let e1 = root("ProjectCreated", 0);
        let e2 = child(&e1, "BlueprintValidated", 1);
        let e3 = child(&e2, "AgentTaskAssigned", 3);
        let side = child(&e1, "UsageRecorded", 2);
        let g = CausalGraph::from_slice(&[e3.clone(), e2.clone(), e1.clone(), side.clone()]);
        let text = g.render_mermaid();
        let expected = "flowchart LR\n\
            \x20   e1[\"ProjectCreated<br/>causation: none<br/>+0.0ms\"]\n\
            \x20   e2[\"BlueprintValidated<br/>causation: e1<br/>+1.0ms\"]\n\
            \x20   e3[\"UsageRecorded<br/>causation: e1<br/>+2.0ms\"]\n\
            \x20   e4[\"AgentTaskAssigned<br/>causation: e2<br/>+3.0ms\"]\n\
            \x20   e1 -->|+1.0ms| e2\n\
            \x20   e1 -->|+2.0ms| e3\n\
            \x20   e2 -->|+2.0ms| e4\n\
            \x20   linkStyle 0,2 stroke:#d33,stroke-width:3px\n";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn orphans_are_dashed() {
        let a = root("ProjectCreated", 0);
        let lost = child(&a, "BlueprintValidated", 1);
        let o = child(&lost, "AgentTaskAssigned", 2);
        let g = CausalGraph::from_slice(&[a.clone(), o.clone()]);
        let text = g.render_mermaid();
        assert!(text.contains("(missing)"), "{text}");
        assert!(text.contains("class e2 detached"), "{text}");
        assert!(!text.contains("-->"), "{text}");
        assert_eq!(CausalGraph::default().render_mermaid(), "flowchart LR\n");
    }
}

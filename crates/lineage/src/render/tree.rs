//! The indented text tree.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::graph::{CausalGraph, RootKind};
use crate::render::{fmt_ms, short_id_with, unique_tail};
use crate::timing::millis;

/// Options of [`CausalGraph::render_tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeOptions {
    /// Show each event's tenant (`[connectsoft]`). Default: off.
    pub show_tenant: bool,
    /// Print full eventIds instead of [short ones](crate::short_id). Default: off.
    pub full_ids: bool,
    /// Pure ASCII output: `|-` and `` `- `` instead of box-drawing characters, `..` instead
    /// of `…`. Default: off.
    pub ascii: bool,
    /// Mark the events of the [critical path](CausalGraph::critical_path) with `*`. Default: on.
    pub mark_critical_path: bool,
    /// Deepest indentation drawn; deeper levels are elided with `…` (their depth is shown), so
    /// very long chains stay readable. Default: 24.
    pub max_indent: usize,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            show_tenant: false,
            full_ids: false,
            ascii: false,
            mark_critical_path: true,
            max_indent: 24,
        }
    }
}

struct Glyphs {
    tee: &'static str,
    elbow: &'static str,
    pipe: &'static str,
    blank: &'static str,
}

const UNICODE: Glyphs = Glyphs {
    tee: "├─ ",
    elbow: "└─ ",
    pipe: "│  ",
    blank: "   ",
};

const ASCII: Glyphs = Glyphs {
    tee: "|- ",
    elbow: "`- ",
    pipe: "|  ",
    blank: "   ",
};

struct Line {
    critical: bool,
    offset: String,
    label: String,
    id: String,
    notes: Vec<String>,
}

impl CausalGraph {
    /// Renders the graph as an aligned tree, one line per event: roots in time order, children
    /// under their cause in time order. Each line shows the time since the first event, the
    /// event type (indented under its cause), the eventId, and the time since its cause;
    /// orphans and broken cycles are labelled. Example:
    ///
    /// ```text
    /// * +0.0ms  ProjectCreated               evt-0190…9e00
    /// * +1.2ms  └─ WorkflowInstanceStarted   evt-0190…9e01  +1.2ms after cause
    ///   +2.0ms     ├─ BlueprintValidated     evt-0190…9e02  +0.8ms after cause
    /// * +3.1ms     └─ WorkflowStepReady      evt-0190…9e03  +1.9ms after cause
    ///   +9.9ms  AgentTaskAssigned            evt-0190…9e04  orphan: cause evt-0190…77aa not in set
    /// ```
    ///
    /// An empty graph renders as an empty string.
    pub fn render_tree(&self, opts: &TreeOptions) -> String {
        if self.nodes.is_empty() {
            return String::new();
        }
        let g = if opts.ascii { &ASCII } else { &UNICODE };
        let tail = unique_tail(self.nodes.iter().map(|n| n.id().as_str()));
        let show_id = |id: &str| {
            if opts.full_ids {
                id.to_owned()
            } else if opts.ascii {
                short_id_with(id, tail).replace('…', "..")
            } else {
                short_id_with(id, tail)
            }
        };
        let critical: HashSet<usize> = if opts.mark_critical_path {
            self.critical_path()
                .map(|cp| cp.nodes.iter().filter_map(|n| self.idx(n.id())).collect())
                .unwrap_or_default()
        } else {
            HashSet::new()
        };
        let start = self.nodes[0].envelope.occurred_at;
        let keep = opts.max_indent.saturating_sub(1);

        // Depth-first with an explicit stack of (node, indentation segments, is last child).
        let mut lines = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<(usize, Vec<&'static str>, bool)> = self
            .roots
            .iter()
            .rev()
            .map(|&r| (r, Vec::new(), true))
            .collect();
        while let Some((i, segments, last)) = stack.pop() {
            let node = &self.nodes[i];
            let env = &node.envelope;
            let mut label = String::new();
            let depth = node.depth;
            // `segments` holds the last `keep` of the node's `depth - 1` indentation levels.
            let elided = depth > 0 && depth - 1 > keep;
            if depth > 0 {
                if elided {
                    label.push_str(if opts.ascii { ".." } else { "…" });
                }
                segments.iter().for_each(|s| label.push_str(s));
                label.push_str(if last { g.elbow } else { g.tee });
            }
            label.push_str(env.event_type.as_str());

            let mut notes = Vec::new();
            if opts.show_tenant {
                notes.push(format!("[{}]", env.tenant_id));
            }
            if let Some(p) = node.parent {
                let delta = millis(env.occurred_at - self.nodes[p].envelope.occurred_at);
                notes.push(format!("{} after cause", fmt_ms(delta)));
            }
            if elided {
                notes.push(format!("depth {depth}"));
            }
            match (node.root_kind, &env.causation_id) {
                (Some(RootKind::Orphan), Some(c)) => {
                    notes.push(format!("orphan: cause {} not in set", show_id(c.as_str())));
                }
                (Some(RootKind::CycleBroken), Some(c)) => notes.push(format!(
                    "cycle broken: claimed cause {}",
                    show_id(c.as_str())
                )),
                _ => {}
            }
            lines.push(Line {
                critical: critical.contains(&i),
                offset: fmt_ms(millis(env.occurred_at - start)),
                label,
                id: show_id(env.event_id.as_str()),
                notes,
            });

            let n = node.children.len();
            if n > 0 {
                let mut child_segments = segments.clone();
                if depth > 0 {
                    child_segments.push(if last { g.blank } else { g.pipe });
                    if child_segments.len() > keep {
                        child_segments.remove(0);
                    }
                }
                for (k, &c) in node.children.iter().enumerate().rev() {
                    stack.push((c, child_segments.clone(), k + 1 == n));
                }
            }
        }

        let w_offset = lines.iter().map(|l| l.offset.len()).max().unwrap_or(0);
        let w_label = lines
            .iter()
            .map(|l| l.label.chars().count())
            .max()
            .unwrap_or(0);
        let w_id = lines
            .iter()
            .map(|l| l.id.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for l in &lines {
            if opts.mark_critical_path {
                out.push_str(if l.critical { "* " } else { "  " });
            }
            let _ = write!(out, "{:>w_offset$}  {:<w_label$}  ", l.offset, l.label);
            if l.notes.is_empty() {
                out.push_str(&l.id);
            } else {
                let _ = write!(out, "{:<w_id$}  {}", l.id, l.notes.join("  "));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use chrono::TimeDelta;

    #[test]
    fn tree_layout() {
        let a = root("ProjectCreated", 0);
        let mut b = child(&a, "WorkflowInstanceStarted", 0);
        b.occurred_at = at(1) + TimeDelta::microseconds(200);
        let c = child(&b, "BlueprintValidated", 2);
        let d = child(&b, "WorkflowStepReady", 3);
        let e = child(&a, "ApprovalRequested", 10);
        let g = CausalGraph::from_slice(&[a.clone(), b.clone(), c.clone(), d.clone(), e.clone()]);
        let opts = TreeOptions {
            mark_critical_path: false,
            full_ids: true,
            ..TreeOptions::default()
        };
        let text = g.render_tree(&opts);
        let (ia, ib, ic, id, ie) = (
            a.event_id.as_str(),
            b.event_id.as_str(),
            c.event_id.as_str(),
            d.event_id.as_str(),
            e.event_id.as_str(),
        );
        let expected = [
            format!(" +0.0ms  ProjectCreated              {ia}"),
            format!(" +1.2ms  ├─ WorkflowInstanceStarted  {ib}  +1.2ms after cause"),
            format!(" +2.0ms  │  ├─ BlueprintValidated    {ic}  +0.8ms after cause"),
            format!(" +3.0ms  │  └─ WorkflowStepReady     {id}  +1.8ms after cause"),
            format!("+10.0ms  └─ ApprovalRequested        {ie}  +10.0ms after cause"),
        ]
        .map(|l| l + "\n")
        .concat();
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn ascii_critical_path_tenant_and_orphans() {
        let a = root("ProjectCreated", 0);
        let b = child(&a, "WorkflowInstanceStarted", 1);
        let c = child(&a, "BlueprintValidated", 5);
        let lost = child(&c, "ArtifactCreated", 6);
        let o = child(&lost, "ArtifactIngested", 7);
        let g = CausalGraph::from_slice(&[a.clone(), b.clone(), c.clone(), o.clone()]);
        let text = g.render_tree(&TreeOptions {
            ascii: true,
            show_tenant: true,
            ..TreeOptions::default()
        });
        let lines: Vec<&str> = text.lines().collect();
        let tail = crate::render::unique_tail(g.iter().map(|n| n.id().as_str()));
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("* +0.0ms  ProjectCreated"), "{text}");
        assert!(
            lines[1].starts_with("  +1.0ms  |- WorkflowInstanceStarted"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("* +5.0ms  `- BlueprintValidated"),
            "{text}"
        );
        assert!(lines[3].starts_with("  +7.0ms  ArtifactIngested"), "{text}");
        assert!(
            lines[3].contains(&format!(
                "orphan: cause {} not in set",
                crate::short_id_with(lost.event_id.as_str(), tail).replace('…', "..")
            )),
            "{text}"
        );
        assert!(lines.iter().all(|l| l.contains("[t]")), "{text}");
        assert!(text.is_ascii(), "{text}");
        assert!(lines[1].contains("evt-"), "{text}");
        // Columns are aligned: every eventId starts at the same position.
        let col = |l: &str, id: &str| {
            l.find(&crate::short_id_with(id, tail).replace('…', ".."))
                .unwrap()
        };
        assert_eq!(
            col(lines[0], a.event_id.as_str()),
            col(lines[2], c.event_id.as_str())
        );
    }

    #[test]
    fn deep_chains_are_elided() {
        let mut envs = vec![root("ProjectCreated", 0)];
        for i in 1..40 {
            let next = child(envs.last().unwrap(), "UsageRecorded", i);
            envs.push(next);
        }
        let g = CausalGraph::from_envelopes(envs);
        let opts = TreeOptions {
            max_indent: 5,
            ..TreeOptions::default()
        };
        let text = g.render_tree(&opts);
        let last = text.lines().last().unwrap();
        assert!(last.contains("…"), "{last}");
        assert!(last.contains("depth 39"), "{last}");
        let width = text.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(width < 120, "{text}");
    }

    #[test]
    fn empty_tree() {
        assert_eq!(
            CausalGraph::default().render_tree(&TreeOptions::default()),
            ""
        );
    }
}

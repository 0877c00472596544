//! Renderers of a [`CausalGraph`](crate::CausalGraph): an aligned text tree
//! ([`CausalGraph::render_tree`](crate::CausalGraph::render_tree)), JSON
//! ([`CausalGraph::render_json`](crate::CausalGraph::render_json)) and a Mermaid flowchart
//! ([`CausalGraph::render_mermaid`](crate::CausalGraph::render_mermaid)).

mod json;
mod mermaid;
mod tree;

pub use tree::TreeOptions;

use std::collections::HashSet;

/// Abbreviates an id for display: `evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00` becomes
/// `evt-0190…9e00` (prefix, the first and last four characters of the rest, dashes dropped).
/// Short ids are returned unchanged.
pub fn short_id(id: &str) -> String {
    short_id_with(id, 4)
}

/// Like [`short_id`], keeping `tail` characters at the end.
pub fn short_id_with(id: &str, tail: usize) -> String {
    let (prefix, body) = match id.find('-') {
        Some(p) => id.split_at(p + 1),
        None => ("", id),
    };
    let body: Vec<char> = body.chars().filter(|c| *c != '-').collect();
    if body.len() <= 4 + tail + 1 {
        return id.to_owned();
    }
    let head: String = body[..4].iter().collect();
    let end: String = body[body.len() - tail..].iter().collect();
    format!("{prefix}{head}…{end}")
}

/// The smallest tail length (at least 4) for which [`short_id_with`] keeps every id distinct.
pub(crate) fn unique_tail<'a>(ids: impl Iterator<Item = &'a str> + Clone) -> usize {
    let longest = ids.clone().map(str::len).max().unwrap_or(0);
    let mut tail = 4;
    while tail < longest {
        let mut seen = HashSet::new();
        if ids.clone().all(|id| seen.insert(short_id_with(id, tail))) {
            return tail;
        }
        tail += 2;
    }
    tail
}

/// A signed millisecond value with one decimal: `+1.2ms`, `-0.5ms`.
pub(crate) fn fmt_ms(ms: f64) -> String {
    format!("{ms:+.1}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids() {
        assert_eq!(
            short_id("evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00"),
            "evt-0190…9e00"
        );
        assert_eq!(
            short_id_with("evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00", 8),
            "evt-0190…5c1d9e00"
        );
        assert_eq!(short_id("evt-1"), "evt-1");
        assert_eq!(short_id("trace-abc"), "trace-abc");
        assert_eq!(short_id("abcdefghijklmnop"), "abcd…mnop");
    }

    #[test]
    fn unique_tails() {
        let ids = [
            "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00",
            "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c109e00",
        ];
        let tail = unique_tail(ids.iter().copied());
        assert_eq!(tail, 6);
        assert_ne!(short_id_with(ids[0], tail), short_id_with(ids[1], tail));
        assert_eq!(
            unique_tail(["evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00"].into_iter()),
            4
        );
    }

    #[test]
    fn ms_format() {
        assert_eq!(fmt_ms(0.0), "+0.0ms");
        assert_eq!(fmt_ms(1.26), "+1.3ms");
        assert_eq!(fmt_ms(-3.0), "-3.0ms");
        assert_eq!(fmt_ms(12345.67), "+12345.7ms");
    }
}

//! The reference scenario of SPEC §7 (first steps), as a lineage graph: build, query, render.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use eventyard_core::{Envelope, EventType, ModuleId, ProjectId, TenantId};
use eventyard_lineage::{CausalGraph, RootKind, TreeOptions};
use serde_json::json;

fn at(ms: f64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 9, 0, 0).unwrap()
        + TimeDelta::microseconds((ms * 1000.0) as i64)
}

fn next(cause: &Envelope, ty: &str, ms: f64) -> Envelope {
    let mut e = cause.child(EventType::event(ty).unwrap(), json!({}));
    e.occurred_at = at(ms);
    e
}

/// ProjectCreated → WorkflowInstanceStarted → WorkflowStepReady → AgentTaskAssigned →
/// AgentExecutionStarted → ModelInvoked → {AgentTaskCompleted, ArtifactCreated}, plus a
/// duplicate delivery and a second tenant's unrelated root.
fn scenario() -> (Vec<Envelope>, Vec<Envelope>) {
    let mut created = Envelope::new(
        EventType::event("ProjectCreated").unwrap(),
        TenantId::parse("connectsoft").unwrap(),
        json!({"projectId": "proj-booking-saas"}),
    )
    .with_project(ProjectId::parse("proj-booking-saas").unwrap())
    .with_module(ModuleId::parse("module-reservations-api").unwrap());
    created.occurred_at = at(0.0);
    let started = next(&created, "WorkflowInstanceStarted", 1.2);
    let ready = next(&started, "WorkflowStepReady", 2.0);
    let assigned = next(&ready, "AgentTaskAssigned", 3.4);
    let exec = next(&assigned, "AgentExecutionStarted", 5.0);
    let invoked = next(&exec, "ModelInvoked", 40.0);
    let completed = next(&invoked, "AgentTaskCompleted", 41.5);
    let artifact = next(&invoked, "ArtifactCreated", 41.0);
    let mut other = Envelope::new(
        EventType::event("TenantProvisioned").unwrap(),
        TenantId::parse("acme").unwrap(),
        json!({}),
    );
    other.occurred_at = at(0.5);
    let main = vec![
        created, started, ready, assigned, exec, invoked, completed, artifact,
    ];
    let mut all = main.clone();
    all.push(other);
    all.push(main[3].clone()); // duplicate delivery
    (main, all)
}

#[test]
fn reference_scenario() {
    let (main, all) = scenario();
    let g = CausalGraph::from_envelopes(all);
    assert_eq!(g.len(), 9);
    assert_eq!(g.duplicates(), 1);
    assert_eq!(g.roots().len(), 2);
    assert!(
        g.roots()
            .iter()
            .all(|r| r.root_kind() == Some(RootKind::Root))
    );
    assert_eq!(g.traces().len(), 2);
    assert_eq!(g.by_trace(&main[0].trace_id).len(), 8);
    assert_eq!(g.descendants(&main[0].event_id).len(), 7);
    assert_eq!(g.ancestors(&main[6].event_id).len(), 6);
    assert_eq!(g.depth(&main[7].event_id), Some(6));
    let cp = g.critical_path().unwrap();
    assert_eq!(cp.nodes.len(), 7);
    assert_eq!(cp.nodes.last().unwrap().event_type(), "AgentTaskCompleted");
    assert_eq!(cp.duration_ms(), 41.5);
    assert_eq!(g.span(), Some(TimeDelta::microseconds(41_500)));

    let tree = g.render_tree(&TreeOptions {
        show_tenant: true,
        ..TreeOptions::default()
    });
    println!("{tree}");
    println!("{}", g.render_mermaid());
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 9);
    assert!(lines[0].contains("ProjectCreated") && lines[0].starts_with('*'));
    // Each root is followed by its subtree; roots in time order.
    assert!(lines[6].contains("ArtifactCreated") && lines[6].contains("├─"));
    assert!(lines[7].contains("AgentTaskCompleted") && lines[7].contains("└─"));
    assert!(lines[7].contains("+1.5ms after cause"), "{tree}");
    assert!(lines[8].contains("TenantProvisioned") && lines[8].contains("[acme]"));
    assert!(!lines[8].starts_with('*'));

    let json = g.to_json_value();
    assert_eq!(json["events"], 9);
    assert_eq!(json["criticalPath"]["durationMs"], 41.5);
}

//! `yard demo`'s WorkflowInstance saga, seen from outside: the run prints the transitions and
//! the three final states, and afterwards `yard saga list/show` reads the instances, their
//! versions and histories from the kept data file; the outbox holds what each transition emitted,
//! with the fired timeouts published as they are.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{broker, run, stderr, stdout};
use serde_json::Value;

/// `yard saga …` → one JSON value per line.
fn json_lines(args: &[&str]) -> Vec<Value> {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn history_types(v: &Value) -> Vec<String> {
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["eventType"].as_str().unwrap().to_owned())
        .collect()
}

fn path(v: &Value) -> Vec<String> {
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn demo_runs_the_workflow_instance_saga_and_yard_saga_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo.db");
    let data_s = data.to_str().unwrap();
    let o = run(&["demo", "--data", data_s]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));

    // Transitions are printed as they happen, the timeouts marked as fired.
    for line in [
        "⇒ WorkflowInstance booking-saas",
        ": (start) → Created; emits WorkflowInstanceStarted",
        ": Created → Running; emits WorkflowStepReady",
        ": Running → AssigningTask; emits AgentTaskAssigned",
        ": AssigningTask → AwaitingAgent; step timeout armed: 1.5 s",
        ": AwaitingAgent → Running; step timeout cancelled",
        ": Running → AwaitingApproval; approval gate pci-release: auto-reject in 1.5 s",
        ": AwaitingApproval → Completed",
        "WorkflowStepTimedOut ⏱",
        ": AwaitingAgent → TimedOut; publishes the fired WorkflowStepTimedOut",
        "ApprovalTimedOut ⏱",
        ": AwaitingApproval → Rejected; publishes the fired ApprovalTimedOut (same eventId) + ApprovalRejected",
        "no worker online for this agent",
        "no approver on duty at this gate",
    ] {
        assert!(out.contains(line), "`{line}` missing\n{out}");
    }
    // The summary: every instance with its final state and version, and where to look next.
    let summary = &out[out.find("\nsummary").unwrap()..];
    let instance = |label: &str, tenant: &str| -> (String, String) {
        let line = summary
            .lines()
            .find(|l| l.contains(&format!("[{tenant}]")) && l.contains(label))
            .unwrap_or_else(|| panic!("{label} of {tenant} not in the summary\n{summary}"));
        let key = line
            .split_whitespace()
            .find(|w| w.starts_with("corr-"))
            .unwrap()
            .to_owned();
        (key, line.to_owned())
    };
    let (happy, l) = instance("booking-saas", "connectsoft");
    assert!(
        l.contains("= Completed (v8) — approved at gate release"),
        "{l}"
    );
    let (other_happy, l) = instance("booking-saas", "acme-robotics");
    assert!(l.contains("= Completed (v8)"), "{l}");
    let (timed_out, l) = instance("legacy-billing", "connectsoft");
    assert!(
        l.contains("= TimedOut (v5) — step port-billing-batch timed out"),
        "{l}"
    );
    let (rejected, l) = instance("payments-gateway", "connectsoft");
    assert!(
        l.contains("= Rejected (v8) — rejected at gate pci-release"),
        "{l}"
    );
    assert!(!summary.contains("UNEXPECTED"), "{summary}");
    assert!(
        summary.contains("(one transaction each; 18 by the WorkflowInstance saga)"),
        "{summary}"
    );
    assert!(
        out.contains(&format!(
            "workflow instances: yard saga list --data {data_s}; yard saga show {timed_out} --data {data_s}"
        )),
        "{out}"
    );
    // The failure paths' causal chains end at the fired timeout.
    assert!(
        out.contains("causal chain of connectsoft's legacy-billing workflow (TimedOut"),
        "{out}"
    );
    assert!(
        out.contains("causal chain of connectsoft's payments-gateway workflow (Rejected"),
        "{out}"
    );

    // yard saga list: the four instances, each tenant's own.
    let list = json_lines(&["saga", "list", "--data", data_s, "--json"]);
    let by_key: BTreeMap<String, &Value> = list
        .iter()
        .map(|v| (v["key"].as_str().unwrap().to_owned(), v))
        .collect();
    assert_eq!(by_key.len(), 4, "{list:?}");
    for (key, tenant, state, version) in [
        (&happy, "connectsoft", "Completed", 8),
        (&other_happy, "acme-robotics", "Completed", 8),
        (&timed_out, "connectsoft", "TimedOut", 5),
        (&rejected, "connectsoft", "Rejected", 8),
    ] {
        let v = by_key[key.as_str()];
        assert_eq!(v["saga"], "WorkflowInstance");
        assert_eq!(v["tenant"], tenant, "{v}");
        assert_eq!(v["state"], state, "{v}");
        assert_eq!(v["version"], version, "{v}");
        assert_eq!(v["completed"], true, "{v}");
    }
    let acme = json_lines(&[
        "saga",
        "list",
        "--data",
        data_s,
        "--tenant",
        "acme-robotics",
        "--json",
    ]);
    assert_eq!(acme.len(), 1);
    assert_eq!(acme[0]["key"].as_str(), Some(other_happy.as_str()));

    // yard saga show: the history of each path.
    let show = |key: &str| {
        let v = json_lines(&["saga", "show", key, "--data", data_s, "--json"]);
        assert_eq!(v.len(), 1);
        v.into_iter().next().unwrap()
    };
    let h = show(&happy);
    assert_eq!(
        history_types(&h),
        [
            "ProjectCreated",
            "WorkflowInstanceStarted",
            "WorkflowStepReady",
            "AgentTaskAssigned",
            "AgentTaskCompleted",
            "PolicyDecisionRecorded",
            "ApprovalRequested",
            "ApprovalGranted"
        ]
    );
    assert_eq!(
        path(&h),
        [
            "Created",
            "Running",
            "AssigningTask",
            "AwaitingAgent",
            "Running",
            "Running",
            "AwaitingApproval",
            "Completed"
        ]
    );
    assert_eq!(h["data"]["approvedBy"], "release-manager");
    assert_eq!(h["timeouts"].as_array().unwrap().len(), 0);
    let t = show(&timed_out);
    assert_eq!(
        history_types(&t),
        [
            "ProjectCreated",
            "WorkflowInstanceStarted",
            "WorkflowStepReady",
            "AgentTaskAssigned",
            "WorkflowStepTimedOut"
        ]
    );
    assert_eq!(t["history"][4]["from"], "AwaitingAgent");
    assert_eq!(t["history"][4]["to"], "TimedOut");
    assert_eq!(t["data"]["stepTimeoutMs"], 1500);
    let r = show(&rejected);
    assert_eq!(history_types(&r).last().unwrap(), "ApprovalTimedOut");
    assert_eq!(path(&r)[6..], ["AwaitingApproval", "Rejected"]);
    assert_eq!(r["data"]["stepsCompleted"], 1);
    // The text form names the transition too.
    let o = run(&["saga", "show", &timed_out, "--data", data_s]);
    let text = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(text.contains("state      TimedOut"), "{text}");
    assert!(text.contains("WorkflowStepTimedOut"), "{text}");
    assert!(text.contains("AwaitingAgent → TimedOut"), "{text}");
    assert!(text.contains("pending timeouts (0)"), "{text}");

    // The outbox: the fired timeouts were published as they are (the eventIds the histories
    // recorded), and every event of the run was caused by one the run produced.
    let b = broker(&data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bodies: Vec<Vec<u8>> = rt
        .block_on(b.transaction(|tx| {
            let mut s = tx.prepare("SELECT body FROM outbox ORDER BY id")?;
            let rows = s.query_map([], |r| r.get(0))?;
            rows.collect::<Result<Vec<Vec<u8>>, _>>()
        }))
        .unwrap()
        .unwrap();
    let envs: Vec<eventyard::Envelope> = bodies
        .iter()
        .map(|b| eventyard::Envelope::from_json(b).unwrap())
        .collect();
    assert_eq!(envs.len(), 62);
    let ids: HashSet<String> = envs.iter().map(|e| e.event_id.to_string()).collect();
    for e in &envs {
        if let Some(c) = &e.causation_id {
            assert!(
                ids.contains(c.as_str()),
                "{}: cause {c} not produced",
                e.event_type
            );
        }
    }
    let fired = |key: &str, ty: &str| {
        envs.iter()
            .find(|e| e.correlation_id.as_str() == key && e.event_type.as_str() == ty)
            .unwrap_or_else(|| panic!("no {ty} for {key}"))
    };
    assert_eq!(
        fired(&timed_out, "WorkflowStepTimedOut").event_id.as_str(),
        t["history"][4]["eventId"].as_str().unwrap()
    );
    assert_eq!(
        fired(&rejected, "ApprovalTimedOut").event_id.as_str(),
        r["history"][7]["eventId"].as_str().unwrap()
    );
    assert_eq!(
        fired(&rejected, "ApprovalRejected").causation_id.as_ref(),
        Some(&fired(&rejected, "ApprovalTimedOut").event_id)
    );
    assert!(
        !envs
            .iter()
            .any(|e| e.correlation_id.as_str() == rejected
                && e.event_type.as_str() == "ApprovalGranted"),
        "the rejected workflow was never approved"
    );
}

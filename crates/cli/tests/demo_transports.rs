//! `yard demo --transport`: the reference scenario on RabbitMQ and NATS JetStream (skipped with a
//! printed reason when the broker is absent, failing under CI), and on another SQLite file
//! (which takes the transport-neutral dead-letter path without any server).

mod common;

use common::{broker, run, stderr, stdout};
use eventyard_testkit::services::{self, Service};

/// Runs the demo on `url` with a kept data file; checks what every transport must show and
/// returns the output.
fn demo_on(url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo.db");
    let o = run(&["demo", "--transport", url, "--data", data.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    // The causal chain, complete.
    assert!(out.contains("causal chain of connectsoft"), "{out}");
    let chain = &out[out.find("causal chain of").unwrap()..out.find("\nsummary").unwrap()];
    for ty in eventyard_cli::demo::ALL_TYPES {
        assert!(chain.contains(ty), "{ty} missing from the chain\n{out}");
    }
    // Tenant isolation, in the summary: each tenant saw its 21 events and nothing else.
    assert!(out.contains("events (connectsoft):      21"), "{out}");
    assert!(out.contains("events (acme-robotics):  21"), "{out}");
    assert!(
        out.contains("tenant isolation:       0 cross-tenant deliveries"),
        "{out}"
    );
    // The poison message went through the transport's own dead-letter queue.
    assert!(
        out.contains(
            "received through the transport's dead-letter receiver: reason ValidationError"
        ),
        "{out}"
    );
    assert!(
        out.contains("replayed 1 of 1 dead letter(s) by re-publishing"),
        "{out}"
    );
    assert!(out.contains("replayed after the fix"), "{out}");
    // Everything was produced through the outbox of the data file and relayed.
    assert!(
        out.contains(
            "62 events committed with their state changes (one transaction each; 18 by the WorkflowInstance saga) / 62 relayed"
        ),
        "{out}"
    );
    assert!(out.contains("backlog 0 (0 parked)"), "{out}");
    assert!(out.contains("demo_approvals"), "{out}");
    // The WorkflowInstance saga on this transport: the three paths, their timeouts fired.
    for end in ["= Completed (v8)", "= TimedOut (v5)", "= Rejected (v8)"] {
        assert!(out.contains(end), "{end}\n{out}");
    }
    assert!(!out.contains("UNEXPECTED"), "{out}");
    // The data file holds the state, the sagas and the outbox, with nothing left pending.
    let b = broker(&data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (pending, instances) = rt.block_on(async {
        use eventyard::outbox::OutboxStore;
        let status = b.outbox().status().await.unwrap();
        let instances: Vec<(String, String, i64)> = b
            .transaction(|tx| {
                let mut s = tx.prepare(
                    "SELECT tenant, state, version FROM saga_instances
                     WHERE saga = 'WorkflowInstance' AND completed = 1
                     ORDER BY tenant, state",
                )?;
                let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await
            .unwrap()
            .unwrap();
        (status.pending, instances)
    });
    assert_eq!(pending, 0);
    let expected: Vec<(String, String, i64)> = [
        ("acme-robotics", "Completed", 8),
        ("connectsoft", "Completed", 8),
        ("connectsoft", "Rejected", 8),
        ("connectsoft", "TimedOut", 5),
    ]
    .iter()
    .map(|(t, s, v)| ((*t).to_owned(), (*s).to_owned(), *v))
    .collect();
    assert_eq!(instances, expected);
    check_propagation(&b, &rt);
    out
}

/// The outbox keeps the relayed records (the demo runs no cleaner): per workflow (trace), one
/// root (ProjectCreated) and one correlation, every other event caused by an event of the same
/// run — propagation held through the outbox, also for the saga's events and fired timeouts.
fn check_propagation(b: &eventyard::sqlite::SqliteBroker, rt: &tokio::runtime::Runtime) {
    let bodies: Vec<Vec<u8>> = rt
        .block_on(b.transaction(|tx| {
            let mut s = tx.prepare("SELECT body FROM outbox ORDER BY id")?;
            let rows = s.query_map([], |r| r.get(0))?;
            rows.collect::<Result<Vec<Vec<u8>>, _>>()
        }))
        .unwrap()
        .unwrap();
    assert_eq!(
        bodies.len(),
        62,
        "2 × 21 + 5 + 13 events, the duplicate promotion twice"
    );
    let envs: Vec<eventyard::Envelope> = bodies
        .iter()
        .map(|b| eventyard::Envelope::from_json(b).unwrap())
        .collect();
    let ids: std::collections::HashSet<_> = envs.iter().map(|e| e.event_id.clone()).collect();
    for (tenant, workflows) in [
        ("connectsoft", vec![22, 5, 13]),
        ("acme-robotics", vec![22]),
    ] {
        let mine: Vec<_> = envs
            .iter()
            .filter(|e| e.tenant_id.as_str() == tenant)
            .collect();
        let roots: Vec<_> = mine.iter().filter(|e| e.causation_id.is_none()).collect();
        assert_eq!(
            roots.len(),
            workflows.len(),
            "{tenant}: one root per workflow"
        );
        let mut sizes = Vec::new();
        for root in roots {
            assert_eq!(root.event_type.as_str(), "ProjectCreated");
            let trace: Vec<_> = mine
                .iter()
                .filter(|e| e.trace_id == root.trace_id)
                .collect();
            for e in &trace {
                assert_eq!(e.correlation_id, root.correlation_id, "{}", e.event_type);
                if let Some(c) = &e.causation_id {
                    assert!(ids.contains(c), "{}: cause {c} not produced", e.event_type);
                }
            }
            sizes.push(trace.len());
        }
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let mut want = workflows.clone();
        want.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(sizes, want, "{tenant}: events per workflow");
        assert_eq!(mine.len(), want.iter().sum::<usize>(), "{tenant}");
    }
}

/// The demo on a shared broker, if it is there: names under a prefix of the run's own, deleted
/// at the end.
fn demo_on_broker(service: Service) -> Option<String> {
    let out = demo_on(&services::require(service)?);
    assert!(
        out.contains("names under the run's prefix yard-demo-"),
        "{out}"
    );
    assert!(out.contains("cleanup:                deleted "), "{out}");
    Some(out)
}

#[test]
fn demo_on_rabbitmq() {
    let Some(out) = demo_on_broker(Service::Amqp) else {
        return;
    };
    assert!(
        out.contains("applied once per tenant (2 duplicates answered by the inbox)"),
        "{out}"
    );
    assert!(
        out.contains("deleted 96 subscriptions and 26 exchanges"),
        "{out}"
    );
}

#[test]
fn demo_on_nats() {
    let Some(out) = demo_on_broker(Service::Nats) else {
        return;
    };
    // JetStream deduplicates the second publish (Nats-Msg-Id = eventId), or the inbox does.
    assert!(
        out.contains("NATS JetStream dropped the second publish itself")
            || out.contains("(2 duplicates answered by the inbox)"),
        "{out}"
    );
    assert!(out.contains("streams (with their 96 consumers)"), "{out}");
}

#[test]
fn demo_on_another_sqlite_file_uses_the_transport_neutral_path() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("broker.db");
    let out = demo_on(&format!("sqlite://{}", other.display()));
    assert!(
        out.contains("applied once per tenant (2 duplicates answered by the inbox)"),
        "{out}"
    );
    assert!(
        out.contains("cleanup:                deleted 96 subscriptions"),
        "{out}"
    );
}

#[test]
fn two_runs_on_one_broker_at_once_do_not_collide() {
    let Some(url) = services::require(Service::Nats) else {
        return;
    };
    let a = std::thread::spawn({
        let url = url.clone();
        move || demo_on(&url)
    });
    let b = demo_on(&url);
    let a = a.join().unwrap();
    let prefix = |out: &str| {
        let i = out.find("prefix yard-demo-").unwrap() + "prefix ".len();
        out[i..i + "yard-demo-".len() + 8].to_owned()
    };
    assert_ne!(prefix(&a), prefix(&b));
}

#[test]
fn an_unreachable_transport_fails_with_a_clear_error() {
    let o = run(&[
        "demo",
        "--transport",
        "nats://127.0.0.1:1?connect_timeout_ms=200",
        "--timeout",
        "5s",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("--transport nats://127.0.0.1:1"), "{err}");
}

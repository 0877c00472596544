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
            "44 events committed with their state changes (one transaction each) / 44 relayed"
        ),
        "{out}"
    );
    assert!(out.contains("backlog 0 (0 parked)"), "{out}");
    assert!(out.contains("demo_workflows"), "{out}");
    // The data file holds the state and the outbox, with nothing left pending.
    let b = broker(&data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (pending, rows) = rt.block_on(async {
        use eventyard::outbox::OutboxStore;
        let status = b.outbox().status().await.unwrap();
        let rows: i64 = b
            .transaction(|tx| {
                tx.query_row(
                    "SELECT count(*) FROM demo_workflows WHERE state = 'approver'",
                    [],
                    |r| r.get(0),
                )
            })
            .await
            .unwrap()
            .unwrap();
        (status.pending, rows)
    });
    assert_eq!(pending, 0);
    assert_eq!(rows, 2, "one workflow row per tenant");
    check_propagation(&b, &rt);
    out
}

/// The outbox keeps the relayed records (the demo runs no cleaner): per tenant, one root
/// (ProjectCreated), one trace and one correlation, and every other event caused by an event of
/// the same run — propagation held through the outbox.
fn check_propagation(b: &eventyard::sqlite::SqliteBroker, rt: &tokio::runtime::Runtime) {
    let bodies: Vec<Vec<u8>> = rt
        .block_on(b.transaction(|tx| {
            let mut s = tx.prepare("SELECT body FROM outbox ORDER BY id")?;
            let rows = s.query_map([], |r| r.get(0))?;
            rows.collect::<Result<Vec<Vec<u8>>, _>>()
        }))
        .unwrap()
        .unwrap();
    assert_eq!(bodies.len(), 44, "42 events, the duplicate promotion twice");
    let envs: Vec<eventyard::Envelope> = bodies
        .iter()
        .map(|b| eventyard::Envelope::from_json(b).unwrap())
        .collect();
    let ids: std::collections::HashSet<_> = envs.iter().map(|e| e.event_id.clone()).collect();
    for tenant in ["connectsoft", "acme-robotics"] {
        let mine: Vec<_> = envs
            .iter()
            .filter(|e| e.tenant_id.as_str() == tenant)
            .collect();
        assert_eq!(mine.len(), 22, "{tenant}");
        let roots: Vec<_> = mine.iter().filter(|e| e.causation_id.is_none()).collect();
        assert_eq!(roots.len(), 1, "{tenant}: one root");
        assert_eq!(roots[0].event_type.as_str(), "ProjectCreated");
        for e in &mine {
            assert_eq!(e.trace_id, roots[0].trace_id, "{tenant}: {}", e.event_type);
            assert_eq!(e.correlation_id, roots[0].correlation_id);
            if let Some(c) = &e.causation_id {
                assert!(ids.contains(c), "{}: cause {c} not produced", e.event_type);
            }
        }
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
        out.contains("deleted 80 subscriptions and 23 exchanges"),
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
    assert!(out.contains("streams (with their 80 consumers)"), "{out}");
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
        out.contains("cleanup:                deleted 80 subscriptions"),
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

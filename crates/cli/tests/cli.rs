//! The `yard` command line from outside: demo, publish, tail, and its errors.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{run, stderr, stdout};

#[test]
fn demo_runs_and_prints_the_causal_chain() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo.db");
    let o = run(&["demo", "--data", data.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("causal chain of connectsoft"), "{out}");
    for ty in eventyard_cli::demo::ALL_TYPES {
        assert!(out.contains(ty), "{ty} missing from\n{out}");
    }
    assert!(out.contains("0 cross-tenant deliveries"), "{out}");
    // Step 6: a duplicate applied once, a poison message dead-lettered then replayed.
    assert!(out.contains("DUPLICATE of evt"), "{out}");
    assert!(
        out.contains("applied once per tenant (2 duplicates answered by the inbox)"),
        "{out}"
    );
    assert!(out.contains("reason ValidationError"), "{out}");
    assert!(out.contains("replayed 1 of 1 dead letter(s)"), "{out}");
    assert!(out.contains("replayed after the fix"), "{out}");
    // Producers wrote their state and events through the outbox; the relay published them all.
    assert!(out.contains("tx: apr-"), "{out}");
    assert!(
        out.contains("62 events committed with their state changes (one transaction each; 18 by the WorkflowInstance saga) / 62 relayed to sqlite / backlog 0 (0 parked)"),
        "{out}"
    );
    // The Control Plane's workflows are saga instances: one completes, one step times out, one
    // approval is auto-rejected (tests/demo_saga.rs reads them back with `yard saga`).
    for end in [
        "booking-saas      corr-",
        "= Completed (v8)",
        "= TimedOut (v5)",
        "= Rejected (v8)",
    ] {
        assert!(out.contains(end), "{end}\n{out}");
    }
    assert!(data.exists(), "--data keeps the file");
    let o = run(&[
        "outbox",
        "status",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["dispatched"], 62, "{status}");
    // The kept file is usable afterwards: the lineage subscription is there, and empty.
    let o = run(&[
        "tail",
        "--data",
        data.to_str().unwrap(),
        "--topic",
        "ProjectCreated",
        "--subscription",
        "observability.lineage.connectsoft",
        "--timeout",
        "300ms",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

#[test]
fn help_lists_every_subcommand() {
    let o = run(&["--help"]);
    let out = stdout(&o);
    for sub in ["demo", "publish", "tail", "bench"] {
        assert!(out.contains(sub), "{out}");
        let o = run(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help");
    }
}

#[test]
fn publish_then_tail_with_filter() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pt.db");
    let d = data.to_str().unwrap();
    // A durable subscription filtered to one tenant, declared by a first (empty) tail.
    let filter = "[cs-tenant-id] = 'connectsoft' AND [cs-schema-version] >= 2";
    let o = run(&[
        "tail",
        "--data",
        d,
        "--topic",
        "ArtifactCreated",
        "--subscription",
        "ops",
        "--filter",
        filter,
        "--timeout",
        "100ms",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (tenant, v) in [("connectsoft", "2"), ("acme", "2"), ("connectsoft", "1")] {
        let o = run(&[
            "publish",
            "--data",
            d,
            "--type",
            "ArtifactCreated",
            "--tenant",
            tenant,
            "--schema-version",
            v,
            "--project",
            "proj-booking-saas",
            "--payload",
            r#"{"artifactId":"art-1"}"#,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert!(line["eventId"].as_str().unwrap().starts_with("evt-"));
    }
    let o = run(&[
        "tail",
        "--data",
        d,
        "--topic",
        "ArtifactCreated",
        "--subscription",
        "ops",
        "--count",
        "1",
        "--timeout",
        "5s",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["envelope"]["tenantId"], "connectsoft");
    assert_eq!(v["envelope"]["schemaVersion"], 2);
    assert_eq!(v["envelope"]["projectId"], "proj-booking-saas");
    assert_eq!(v["properties"]["cs-event-type"], "ArtifactCreated");
    // Acked: nothing left.
    let o = run(&[
        "tail",
        "--data",
        d,
        "--topic",
        "ArtifactCreated",
        "--subscription",
        "ops",
        "--count",
        "1",
        "--timeout",
        "300ms",
    ]);
    assert_eq!(o.status.code(), Some(3), "timeout before --count is exit 3");
}

#[test]
fn publish_from_stdin_and_tail_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("stdin.db");
    let d = d.to_str().unwrap();
    run(&[
        "tail",
        "--data",
        d,
        "--topic",
        "ModelInvoked",
        "--subscription",
        "s",
        "--timeout",
        "50ms",
    ]);
    let env = serde_json::json!({
        "eventId": "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00",
        "eventType": "ModelInvoked",
        "tenantId": "connectsoft",
        "traceId": "trace-abc",
        "correlationId": "corr-abc",
        "causationId": null,
        "occurredAt": "2026-11-27T10:00:00Z",
        "payload": {"model": "m"}
    });
    let mut child = common::yard()
        .args(["publish", "--data", d, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{env}").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).contains("evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00"));
    // Dead-letter it through tail, then read the dead-letter sub-queue.
    let o = run(&[
        "tail",
        "--data",
        d,
        "--topic",
        "ModelInvoked",
        "--subscription",
        "s",
        "--count",
        "1",
        "--settle",
        "dead-letter",
        "--timeout",
        "5s",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "tail",
        "--data",
        d,
        "--topic",
        "ModelInvoked",
        "--subscription",
        "s",
        "--dead-letter",
        "--count",
        "1",
        "--timeout",
        "5s",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["properties"]["cs-dead-letter-reason"], "ManualDeadLetter");
    assert_eq!(
        v["envelope"]["eventId"],
        "evt-0190b6a2-7c1e-7c4a-9f3e-2b8f5c1d9e00"
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("bad.db");
    let d = d.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "publish",
                "--data",
                d,
                "--type",
                "createProject",
                "--tenant",
                "a",
            ],
            "eventType",
        ),
        (
            &[
                "publish",
                "--data",
                d,
                "--type",
                "ProjectCreated",
                "--tenant",
                "Bad Tenant",
            ],
            "tenantId",
        ),
        (
            &[
                "publish",
                "--data",
                d,
                "--type",
                "ProjectCreated",
                "--tenant",
                "a",
                "--trace",
                "x",
            ],
            "traceId",
        ),
        (
            &[
                "publish",
                "--data",
                d,
                "--type",
                "ProjectCreated",
                "--tenant",
                "a",
                "--payload",
                "[1]",
            ],
            "payload",
        ),
        (
            &[
                "tail",
                "--data",
                d,
                "--topic",
                "T",
                "--filter",
                "a = = 1",
                "--timeout",
                "10ms",
            ],
            "column",
        ),
        (
            &[
                "tail",
                "--data",
                d,
                "--topic",
                "bad topic!",
                "--timeout",
                "10ms",
            ],
            "invalid topic name",
        ),
        (
            &[
                "publish",
                "--transport",
                "kafka://x",
                "--type",
                "ProjectCreated",
                "--tenant",
                "a",
            ],
            "unknown transport scheme",
        ),
    ];
    for (args, needle) in cases {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Malformed JSON on stdin names the problem.
    let mut child = common::yard()
        .args(["publish", "--data", d, "--stdin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), r#"{{"eventId": "evt-x", "#).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("stdin line 1"), "{}", stderr(&o));
}

#[test]
fn data_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.txt");
    std::fs::write(
        &f,
        "these are not the bytes you are looking for\n".repeat(100),
    )
    .unwrap();
    let o = run(&[
        "publish",
        "--data",
        f.to_str().unwrap(),
        "--type",
        "ProjectCreated",
        "--tenant",
        "a",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a database"), "{}", stderr(&o));
    // An SQLite database of another application is refused too, and left untouched.
    let other = dir.path().join("other.db");
    let c = rusqlite::Connection::open(&other).unwrap();
    c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY);")
        .unwrap();
    drop(c);
    let o = run(&[
        "publish",
        "--data",
        other.to_str().unwrap(),
        "--type",
        "ProjectCreated",
        "--tenant",
        "a",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("another application"), "{}", stderr(&o));
}

#[test]
fn tail_in_another_process_wakes_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("wake.db");
    let d = d.to_str().unwrap();
    let mut tail = common::yard()
        .args([
            "tail",
            "--data",
            d,
            "--topic",
            "AlertTriggered",
            "--subscription",
            "ops",
        ])
        .args(["--count", "3", "--timeout", "30s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    // Wait until the tail has declared its subscription.
    let b = common::broker(std::path::Path::new(d));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t0 = Instant::now();
    while rt.block_on(b.stats()).unwrap().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "tail never subscribed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut worst = Duration::ZERO;
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        let sent = Instant::now();
        let o = run(&[
            "publish",
            "--data",
            d,
            "--type",
            "AlertTriggered",
            "--tenant",
            "connectsoft",
            "--payload",
            &format!(r#"{{"n":{i}}}"#),
        ]);
        assert!(o.status.success());
        let line = lines.next().unwrap().unwrap();
        worst = worst.max(sent.elapsed());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["envelope"]["payload"]["n"], i);
    }
    assert!(tail.wait().unwrap().success());
    // Includes starting a `yard publish` process; the wake-up itself polls every 5 ms.
    println!("worst publish-process → tail-process latency: {worst:?}");
    assert!(worst < Duration::from_secs(3), "{worst:?}");
}

#[test]
fn two_consumer_processes_compete_on_one_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("compete.db");
    let d = d.to_str().unwrap();
    let b = common::broker(std::path::Path::new(d));
    let rt = tokio::runtime::Runtime::new().unwrap();
    use eventyard::Transport;
    rt.block_on(b.ensure_subscription(&eventyard::SubscriptionSpec::new(
        "BuildCompleted",
        "workers",
    )))
    .unwrap();
    let n = 400;
    let spawn = || {
        common::yard()
            .args([
                "tail",
                "--data",
                d,
                "--topic",
                "BuildCompleted",
                "--subscription",
                "workers",
            ])
            .args(["--timeout", "4s"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, c) = (spawn(), spawn());
    let tenant = eventyard::TenantId::parse("connectsoft").unwrap();
    let batch: Vec<eventyard::OutgoingMessage> = (0..n)
        .map(|i| {
            let e = eventyard::Envelope::new(
                eventyard::EventType::event("BuildCompleted").unwrap(),
                tenant.clone(),
                serde_json::json!({ "i": i }),
            );
            (&e).into()
        })
        .collect();
    for chunk in batch.chunks(20) {
        rt.block_on(b.publish("BuildCompleted", chunk.to_vec()))
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut per = Vec::new();
    for child in [a, c] {
        let o = child.wait_with_output().unwrap();
        let out = stdout(&o);
        per.push(out.lines().count());
        for l in out.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            seen.push(v["envelope"]["payload"]["i"].as_i64().unwrap());
        }
    }
    seen.sort_unstable();
    let expected: Vec<i64> = (0..n).collect();
    assert_eq!(
        seen, expected,
        "each message exactly once across both processes"
    );
    println!("split between processes: {per:?}");
}

//! `yard dlq` from outside, on a data file whose dead letters were made through the library.

mod common;

use common::json_lines;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{broker, run, stderr, stdout};
use eventyard::{
    DeadLetterInfo, Delivery, Envelope, EventType, Filter, OutgoingMessage, PropertyValue,
    Receiver, SubQueue, SubscriptionSpec, TenantId, Transport,
};
use serde_json::{Value, json};

const FP: &str = "3f9a0c1d2b4e";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn receive(r: &mut dyn Receiver, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} arrived",
            got.len()
        );
        got.extend(
            r.receive(n - got.len(), Duration::from_secs(1))
                .await
                .unwrap(),
        );
    }
    got
}

/// OrderPlaced × (acme, acme, globex); dead letters:
/// - billing.invoice: 3 × HandlerFailed with the runtime's fault context (fingerprint FP);
/// - shipping (max delivery 1): 3 × MaxDeliveryCountExceeded.
///
/// billing.audit (tenant acme only) is empty. Returns the event ids.
fn prepare(path: &Path) -> Vec<String> {
    rt().block_on(async {
        let b = broker(path);
        for spec in [
            SubscriptionSpec::new("OrderPlaced", "billing.invoice"),
            SubscriptionSpec::new("OrderPlaced", "billing.audit")
                .filter(Filter::sql("[cs-tenant-id] = 'acme'").unwrap()),
            SubscriptionSpec::new("OrderPlaced", "shipping").max_delivery_count(1),
        ] {
            b.ensure_subscription(&spec).await.unwrap();
        }
        let envs: Vec<Envelope> = ["acme", "acme", "globex"]
            .iter()
            .map(|t| {
                Envelope::new(
                    EventType::event("OrderPlaced").unwrap(),
                    TenantId::parse(*t).unwrap(),
                    json!({ "orderId": "o-1" }),
                )
            })
            .collect();
        b.publish(
            "OrderPlaced",
            envs.iter().map(OutgoingMessage::from).collect(),
        )
        .await
        .unwrap();
        let mut r = b
            .receiver("OrderPlaced", "billing.invoice", SubQueue::Main)
            .await
            .unwrap();
        for d in receive(&mut *r, 3).await {
            d.dead_letter(DeadLetterInfo {
                reason: "HandlerFailed".into(),
                description: "payment failed: gateway timeout".into(),
                context: json!({
                    "handler": "billing.invoice", "subscription": "billing.invoice",
                    "topic": "OrderPlaced", "errorKind": "External",
                    "errors": ["payment failed", "gateway timeout"], "fingerprint": FP,
                    "attempts": 5, "firstFailureAt": "2026-11-27T10:00:00Z",
                    "lastFailureAt": "2026-11-27T10:02:00Z", "host": "h", "pid": 42
                }),
            })
            .await
            .unwrap();
        }
        let mut r = b
            .receiver("OrderPlaced", "billing.audit", SubQueue::Main)
            .await
            .unwrap();
        for d in receive(&mut *r, 2).await {
            d.ack().await.unwrap();
        }
        let mut r = b
            .receiver("OrderPlaced", "shipping", SubQueue::Main)
            .await
            .unwrap();
        for d in receive(&mut *r, 3).await {
            d.abandon(Duration::ZERO).await.unwrap();
        }
        // The next claim finds them over the limit and dead-letters them.
        assert!(
            r.receive(10, Duration::from_millis(20))
                .await
                .unwrap()
                .is_empty()
        );
        b.close().await.unwrap();
        envs.iter().map(|e| e.event_id.to_string()).collect()
    })
}

fn yard_dlq(data: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["dlq", args[0], "--data", data.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    run(&all)
}

/// Runs, asserts success, returns stdout.
fn ok(data: &Path, args: &[&str]) -> String {
    let o = yard_dlq(data, args);
    assert!(
        o.status.success(),
        "yard dlq {args:?} failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs, asserts failure, returns stderr.
fn fails(data: &Path, args: &[&str]) -> String {
    let o = yard_dlq(data, args);
    assert!(
        !o.status.success(),
        "yard dlq {args:?} should fail:\n{}",
        stdout(&o)
    );
    stderr(&o)
}

fn count(data: &Path, filters: &[&str]) -> usize {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(filters);
    json_lines(&ok(data, &args)).len()
}

#[test]
fn list_groups_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dlq.db");
    let ids = prepare(&data);

    let all = json_lines(&ok(&data, &["list", "--json"]));
    assert_eq!(all.len(), 6);
    assert!(
        all.iter()
            .all(|e| ids.contains(&e["eventId"].as_str().unwrap().to_owned()))
    );
    assert_eq!(count(&data, &["--subscription", "shipping"]), 3);
    assert_eq!(count(&data, &["--topic", "OrderPlaced"]), 6);
    assert_eq!(count(&data, &["--tenant", "globex"]), 2);
    assert_eq!(count(&data, &["--type", "OrderPlaced"]), 6);
    assert_eq!(count(&data, &["--fingerprint", FP]), 3);
    assert_eq!(count(&data, &["--reason", "MaxDeliveryCountExceeded"]), 3);
    assert_eq!(count(&data, &["--since", "1h"]), 6);
    assert_eq!(count(&data, &["--until", "1h ago"]), 0);
    assert_eq!(count(&data, &["--since", "2000-01-01T00:00:00Z"]), 6);
    assert_eq!(count(&data, &["--limit", "2"]), 2);
    let err = fails(&data, &["list", "--since", "someday"]);
    assert!(err.contains("not a time"), "{err}");

    let table = ok(&data, &["list", "--subscription", "billing.invoice"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for col in [
        "SEQ",
        "DEAD-LETTERED",
        "SUBSCRIPTION",
        "TENANT",
        "FINGERPRINT",
        "ATTEMPTS",
    ] {
        assert!(lines[0].contains(col), "{table}");
    }
    assert!(lines[1].contains("OrderPlaced/billing.invoice"), "{table}");
    assert!(
        lines[1].contains(FP) && lines[1].contains("HandlerFailed"),
        "{table}"
    );
    assert!(lines[1].contains("payment failed"), "{table}");

    let groups = json_lines(&ok(&data, &["groups", "--json"]));
    assert_eq!(groups.len(), 2);
    assert!(groups.iter().all(|g| g["count"] == 3));
    let invoice = groups.iter().find(|g| g["fingerprint"] == FP).unwrap();
    assert_eq!(invoice["errorKind"], "External");
    assert_eq!(invoice["subscription"], "billing.invoice");
    let table = ok(&data, &["groups", "--tenant", "acme"]);
    assert!(
        table.lines().next().unwrap().starts_with("COUNT"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.lines().skip(1).all(|l| l.starts_with("2 ")),
        "{table}"
    );

    let seq = all.iter().find(|e| e["fingerprint"] == FP).unwrap()["seq"]
        .as_u64()
        .unwrap()
        .to_string();
    let shown = ok(&data, &["show", &seq]);
    for want in [
        "billing.invoice",
        "HandlerFailed",
        FP,
        "External",
        "h (pid 42)",
        "error chain",
        "1. payment failed",
        "2. gateway timeout",
        "envelope",
        "\"orderId\": \"o-1\"",
        "cs-tenant-id = ",
    ] {
        assert!(shown.contains(want), "{want} missing in\n{shown}");
    }
    let v: Value = serde_json::from_str(&ok(&data, &["show", &seq, "--json"])).unwrap();
    assert_eq!(v["seq"].to_string(), seq);
    assert_eq!(v["attempts"], 5);
    assert_eq!(v["envelope"]["eventId"], v["eventId"]);
    let err = fails(&data, &["show", "999999"]);
    assert!(err.contains("no dead letter with seq 999999"), "{err}");
}

#[test]
fn replay_purge_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dlq.db");
    let ids = prepare(&data);

    let err = fails(&data, &["replay", "--yes"]);
    assert!(
        err.contains("refusing to replay every dead letter"),
        "{err}"
    );
    let err = fails(&data, &["replay", "--subscription", "billing.invoice"]);
    assert!(err.contains("pass --yes"), "{err}");
    assert_eq!(count(&data, &[]), 6);

    let out = ok(
        &data,
        &["replay", "--subscription", "billing.invoice", "--dry-run"],
    );
    assert!(out.contains("dry run: would replay 3 of 3"), "{out}");
    assert!(
        out.contains("OrderPlaced: billing.invoice -> billing.invoice  3"),
        "{out}"
    );
    assert_eq!(count(&data, &[]), 6);

    let out = ok(
        &data,
        &["replay", "--subscription", "billing.invoice", "--yes"],
    );
    assert!(out.starts_with("replayed 3 of 3"), "{out}");
    assert_eq!(count(&data, &["--subscription", "billing.invoice"]), 0);
    // Back in the main queue: same event ids, marked as replayed, first delivery.
    rt().block_on(async {
        let b = broker(&data);
        let mut r = b
            .receiver("OrderPlaced", "billing.invoice", SubQueue::Main)
            .await
            .unwrap();
        let got = receive(&mut *r, 3).await;
        let mut got_ids: Vec<String> = got
            .iter()
            .map(|d| d.message.envelope().unwrap().event_id.to_string())
            .collect();
        got_ids.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(got_ids, want);
        for d in got {
            assert_eq!(d.delivery_count, 1);
            assert_eq!(
                d.message.properties.get("cs-replayed"),
                Some(&PropertyValue::Bool(true))
            );
            d.ack().await.unwrap();
        }
        b.close().await.unwrap();
    });

    let err = fails(
        &data,
        &[
            "replay",
            "--subscription",
            "shipping",
            "--to",
            "nope",
            "--yes",
        ],
    );
    assert!(err.contains("unknown target subscription `nope`"), "{err}");
    let out = ok(
        &data,
        &[
            "replay",
            "--subscription",
            "shipping",
            "--to",
            "billing.audit",
            "--rate",
            "20/s",
            "--yes",
            "--actor",
            "carol@ops",
        ],
    );
    assert!(out.starts_with("replayed 2 of 3"), "{out}");
    assert!(out.contains("shipping -> billing.audit  2"), "{out}");
    assert!(out.contains("1 skipped"), "{out}");
    let left = json_lines(&ok(&data, &["list", "--json"]));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["tenant"], "globex");

    let err = fails(&data, &["purge", "--yes"]);
    assert!(err.contains("refusing to purge every dead letter"), "{err}");
    let out = ok(&data, &["purge", "--all", "--dry-run"]);
    assert!(out.contains("would purge 1"), "{out}");
    let out = ok(&data, &["purge", "--all", "--yes", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({ "purged": 1, "dryRun": false })
    );
    assert_eq!(ok(&data, &["list"]).trim(), "no dead letters match");

    let audit = json_lines(&ok(&data, &["audit", "--json"]));
    let summary: Vec<(String, bool, u64)> = audit
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a["dryRun"].as_bool().unwrap(),
                a["affected"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("purge".to_owned(), false, 1),
            ("purge".to_owned(), true, 1),
            ("replay".to_owned(), false, 2),
            ("replay".to_owned(), false, 3),
            ("replay".to_owned(), true, 3),
        ]
    );
    assert_eq!(audit[2]["actor"], "carol@ops");
    assert_eq!(audit[2]["query"]["targetSubscription"], "billing.audit");
    assert_eq!(audit[2]["query"]["ratePerSec"], 20);
    assert!(audit[0]["actor"].as_str().unwrap().contains('@'));
    let table = ok(&data, &["audit", "--limit", "2"]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains("purge (dry run)"), "{table}");
}

#[test]
fn only_the_embedded_store_is_supported() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["dlq", "list", "--transport", "amqp://localhost:5672"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("only available on the embedded store"),
        "{}",
        stderr(&o)
    );
    let missing = dir.path().join("missing.db");
    let o = run(&["dlq", "groups", "--data", missing.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(!missing.exists(), "not created");
    let o = run(&["dlq", "--help"]);
    let out = stdout(&o);
    for sub in ["list", "groups", "show", "replay", "purge", "audit"] {
        assert!(out.contains(sub), "{out}");
    }
}
